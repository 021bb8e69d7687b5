"""The benchmarks run to completion and print their tables (speed itself is not asserted here)."""

import subprocess
import sys

import pytest

from tests.servers import REPO

pytestmark = pytest.mark.e2e


def test_predict_benchmark_prints_its_ratios():
    run = subprocess.run([sys.executable, "bench/predict.py", "--requests", "64"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode in (0, 1), run.stderr[-3000:]  # 1: a target was missed, which is reported
    assert "in-process floor" in run.stdout and "throughput at c=32 / HTTP floor" in run.stdout
    assert run.stdout.count("batching off") >= 6

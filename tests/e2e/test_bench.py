"""The benchmarks run to completion and print their tables (speed itself is not asserted here)."""

import re
import subprocess
import sys

import pytest

from tests.support.servers import REPO

pytestmark = pytest.mark.e2e


def test_predict_benchmark_prints_its_ratios():
    # A short run is too noisy to judge the targets, so it reports them without failing on them;
    # any other failure (a crash, a server that does not start) still exits non-zero.
    run = subprocess.run(
        [sys.executable, "-m", "bench.predict", "--requests", "64", "--report-only"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ratios = re.findall(r"throughput at c=32 / HTTP floor:\s+([0-9.]+) \(target >= [0-9.]+\) (MET|MISSED)", run.stdout)
    assert len(ratios) == 2 and all(float(ratio) > 0 for ratio, _ in ratios), run.stdout
    assert "in-process floor" in run.stdout
    assert run.stdout.count("batching off") >= 6


def test_a_short_soak_stays_flat():
    """bench/soak.py in small: predicts and jobs on one stack leave memory, open files and database
    connections where warm-up left them (the full run's figures are in bench/RESULTS.md)."""
    run = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--predicts", "1200", "--jobs", "8"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count(" MET") == 5 and "MISSED" not in run.stdout


def test_api_memory_benchmark_measures_each_api_process_at_each_stage():
    """bench/api_memory.py in small (the full run's figures are in bench/RESULTS.md)."""
    run = subprocess.run(
        [sys.executable, "-m", "bench.api_memory", "--test-images", "300", "--train-images", "64", "--report-only"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for stage in ("fresh", "after training", "after evaluation", "after predicts"):
        row = rf"\n  {stage} +API 1: +\d+ MB \(anon \d+ \+ file \d+\); API 2: +\d+ MB"
        assert re.search(row, run.stdout), run.stdout
    assert re.search(r"largest API process after the predicts: \d+ MB \(target < 500 MB\) (MET|MISSED)", run.stdout)

"""The benchmarks run to completion and print their tables (speed itself is not asserted here)."""

import re
import subprocess
import sys

import pytest

from tests.support.object_store import require_seaweed
from tests.support.servers import REPO

pytestmark = pytest.mark.e2e


def run_bench(name: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """`python -m bench.<name> ARGS` from the repository, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", f"bench.{name}", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_predict_benchmark_prints_its_ratios():
    # A short run is too noisy to judge the targets, so it reports them without failing on them;
    # any other failure (a crash, a server that does not start) still exits non-zero.
    run = run_bench("predict", "--smoke", "--report-only", timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ratios = re.findall(r"throughput at c=32 / HTTP floor:\s+([0-9.]+) \(target >= [0-9.]+\) (MET|MISSED)", run.stdout)
    assert len(ratios) == 2 and all(float(ratio) > 0 for ratio, _ in ratios), run.stdout
    assert "in-process floor" in run.stdout
    assert run.stdout.count("batching off") >= 6


def test_a_short_soak_stays_flat():
    """bench/soak.py in small: predicts and jobs on one stack leave memory, open files and database
    connections where warm-up left them (the full run's figures are in bench/RESULTS.md)."""
    run = run_bench("soak", "--predicts", "400", "--jobs", "5", timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count(" MET") == 5 and "MISSED" not in run.stdout


def test_api_memory_benchmark_measures_each_api_process_at_each_stage():
    """bench/api_memory.py in small (the full run's figures are in bench/RESULTS.md)."""
    run = run_bench("api_memory", "--test-images", "100", "--train-images", "32", "--report-only", timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for stage in ("fresh", "after training", "after evaluation", "after predicts"):
        row = rf"\n  {stage} +API 1: +\d+ MB \(anon \d+ \+ file \d+\); API 2: +\d+ MB"
        assert re.search(row, run.stdout), run.stdout
    assert re.search(r"largest API process after the predicts: \d+ MB \(target < 500 MB\) (MET|MISSED)", run.stdout)


def test_storage_benchmark_prints_its_table():
    """bench/storage.py in small, on a real SeaweedFS S3 server: a one-epoch job through the home's
    folders and through the store, a 16 MiB stored set read twice, two checkpoints uploaded (the
    full run's figures are in bench/RESULTS.md)."""
    require_seaweed()
    run = run_bench("storage", "--quick", "--report-only", timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    number = r"([0-9][0-9,]*\.?[0-9]*)"
    assert re.search(rf"\nfolders +{number} +{number}", run.stdout), run.stdout
    assert re.search(rf"\nstore +{number} +{number}", run.stdout), run.stdout
    ratio = re.search(rf"training wall time, store / folders: {number} .*\(target <= 1\.1\) (MET|MISSED)", run.stdout)
    assert ratio and float(ratio[1]) > 0, run.stdout
    assert re.search(rf"first fetch \(uncached: download \+ sha256 \+ fsync\): {number} s, {number} MB/s", run.stdout)
    assert re.search(rf"second fetch \(cached\): {number} ms", run.stdout), run.stdout
    assert re.search(rf"first fetch / plain get_object speed: {number}", run.stdout), run.stdout
    uploads = re.findall(
        r"checkpoint upload (LeNet|ResNet-18) .* put / plain speed [0-9.]+ \(target >= 0\.8\) (MET|MISSED)", run.stdout
    )
    assert [name for name, _ in uploads] == ["LeNet", "ResNet-18"], run.stdout
    assert re.search(r"\n(ALL TARGETS MET|[0-9] TARGET\(S\) MISSED)\n", run.stdout), run.stdout


def test_sweeps_benchmark_compares_random_search_with_tpe_and_asha():
    """bench/sweeps.py in small (the full run's figures are in bench/RESULTS.md)."""
    run = run_bench(
        "sweeps", "--trials", "3", "--epochs", "2", "--seeds", "1", "--images", "500", "--report-only", timeout=600
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert re.search(r"TPE \+ ASHA / random: \d+ / \d+ = [0-9.]+ \(target <= 0.5\) (MET|MISSED)", run.stdout)
    assert re.search(r"\n +0  TPE \+ ASHA +0\.\d{4} ", run.stdout), run.stdout


def test_distributed_benchmark_compares_two_processes_with_one():
    """bench/distributed.py in small, without the service's launch time (the full run's figures are
    in bench/RESULTS.md; tests/e2e/test_distributed_jobs.py runs distributed jobs through the service)."""
    run = run_bench("distributed", "--images", "256", "--epochs", "1", "--reps", "1", "--skip-service", timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for model in ("LeNet", "ResNet-18"):
        assert re.search(rf"\n{model} +\d+ s/s +\d+ s/s +[0-9.]+  [0-9.]+ +>= 0.85 (MET|MISSED)\n", run.stdout), (
            run.stdout
        )
    assert re.search(r"\n(ALL TARGETS MET|[0-9] TARGET\(S\) MISSED)\n", run.stdout), run.stdout


def test_checkpoint_benchmark_compares_the_writers():
    """bench/checkpoint.py in small (the full run's figures are in bench/RESULTS.md)."""
    run = run_bench("checkpoint", "--mb", "24", "--rounds", "1", "--report-only", timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for writer in ("streamed", "save_file", "bytes"):
        assert re.search(rf"\n{writer} +[0-9.]+ +\d+ +\d+ +[0-9.]+\n", run.stdout), run.stdout
    assert re.search(r"streamed extra memory / state size: [0-9.]+ \(target <= 0.10\) (met|MISSED)", run.stdout)

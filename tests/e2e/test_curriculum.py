"""Course techniques through the service: early stopping, time limits, K-fold, reproducibility."""

from __future__ import annotations

import statistics

import pytest

from tests.support.backends import embedded_only
from tests.support.specs import submit

pytestmark = pytest.mark.e2e

BASE = {
    "model": {"arch": "softmax_regression"},
    "data": {"dataset": "fashion-mnist", "limit_train": 600},
    "optimizer": {"name": "sgd", "lr": 0.5},
    "batch_size": 50,
}


def metrics(client, job_id):
    return client.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]


@embedded_only
def test_early_stopped_job_says_why_and_keeps_the_best_checkpoint(stack, client):
    spec = {
        **BASE,
        "epochs": 20,
        "data": {**BASE["data"], "val_fraction": 0.2},
        "early_stopping": {"metric": "val_loss", "patience": 1, "min_delta": 0.5},
    }
    job = stack.wait_for_job(client, submit(client, spec))
    assert (job["status"], job["reason"]) == ("succeeded", "early_stopped")
    rows = metrics(client, job["id"])
    assert len(rows) == 2 and all(r["val_loss"] is not None for r in rows)
    best = min(rows, key=lambda r: r["val_loss"])["epoch"]
    assert job["best_checkpoint"]["epoch"] == best


@embedded_only
def test_max_runtime_stops_the_job_and_resume_finishes_it(stack, client):
    spec = {
        "model": {"arch": "lenet", "activation": "relu"},
        "data": {"dataset": "fashion-mnist"},
        "optimizer": {"lr": 0.05},
        "epochs": 2,
        "batch_size": 4,
        "max_runtime_seconds": 1.0,
    }
    job = stack.wait_for_job(client, submit(client, spec), timeout=60)
    assert (job["status"], job["reason"]) == ("failed", "max_runtime_exceeded")
    assert "resume" in job["error"]
    positions = []
    # Each resume grants a fresh second, part of it spent before the first batch (more under load):
    # keep going until it is done, with room for a busy machine.
    for _ in range(60):
        if job["status"] == "succeeded":
            break
        assert job["reason"] == "max_runtime_exceeded"
        assert client.post(f"/v1/jobs/{job['id']}/resume").status_code == 202
        job = stack.wait_for_job(client, job["id"], timeout=60)
        detail = [t for t in job["transitions"] if t["to_status"] == "running"][-1]["detail"]
        positions.append((detail["resumed_from_epoch"], detail["resumed_from_batch"]))
    assert job["status"] == "succeeded" and job["reason"] is None
    assert positions == sorted(positions) and positions[0] > (1, 0)  # every attempt went on from the last
    assert [r["epoch"] for r in metrics(client, job["id"])] == [1, 2]
    # An epoch an attempt began mid-way is timed over the batches it trained, and says so
    lines = [line["message"] for line in client.get(f"/v1/jobs/{job['id']}/logs").json()["lines"]]
    assert any(line.startswith("epoch ") and "where this attempt resumed)" in line for line in lines), lines[-5:]


@embedded_only
def test_cross_validation_results_are_on_the_job(stack, client):
    spec = {**BASE, "epochs": 2, "cross_validation": {"folds": 3}}
    job = stack.wait_for_job(client, submit(client, spec))
    assert job["status"] == "succeeded", job
    cv = job["cross_validation"]
    assert cv["complete"] and [f["fold"] for f in cv["folds"]] == [1, 2, 3]
    values = [f["val_acc"] for f in cv["folds"]]
    assert 0.5 < cv["summary"]["val_acc"]["mean"] <= 1.0
    assert cv["summary"]["val_acc"]["mean"] == pytest.approx(statistics.fmean(values))
    assert cv["summary"]["val_acc"]["std"] == pytest.approx(statistics.pstdev(values))
    assert [r["epoch"] for r in metrics(client, job["id"])] == [1, 2]
    logged = [line["message"] for line in client.get(f"/v1/jobs/{job['id']}/logs").json()["lines"]]
    assert [m.split(":")[0] for m in logged if m.startswith("fold ")] == ["fold 1/3", "fold 2/3", "fold 3/3"], logged


@embedded_only
def test_same_spec_and_seed_give_identical_metrics(stack, client):
    spec = {**BASE, "model": {"arch": "mlp", "hidden": [32], "dropout": 0.2}, "epochs": 2, "seed": 5}
    first, second = (stack.wait_for_job(client, submit(client, spec)) for _ in range(2))

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_second", "recorded_at")} for r in rows]

    assert strip(metrics(client, first["id"])) == strip(metrics(client, second["id"]))
    assert first["environment"]["spec_hash"] == second["environment"]["spec_hash"]
    assert first["environment"]["dataset_checksum"] == second["environment"]["dataset_checksum"]


def test_cuda_jobs_wait_for_a_gpu_worker(stack, client):
    """Jobs that ask for CUDA go to the GPU queue, which this stack's CPU worker does not serve."""
    job_id = submit(client, {**BASE, "epochs": 1, "device": "cuda"})
    cpu_job = stack.wait_for_job(client, submit(client, {**BASE, "epochs": 1, "device": "cpu"}))
    assert cpu_job["status"] == "succeeded"
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"

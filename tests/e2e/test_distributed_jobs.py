"""A distributed job end to end: torchrun under a real Celery worker, two CPU processes (gloo),
recorded once, stopped, restarted after a killed rank, failed by a hung one, and waiting for a
worker that can give it the processes it asks."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time

import pytest
import torch

from models.checkpoint import read_checkpoint
from tests.support.servers import Stack, wait_until
from tests.support.specs import submit

pytestmark = pytest.mark.e2e

# A LeNet without batch norm or dropout: two processes train exactly what one does.
SPEC = {
    "name": "lenet-ddp",
    "model": {"arch": "lenet"},
    "data": {"dataset": "fashion-mnist", "limit_train": 1000},
    "optimizer": {"name": "sgd", "lr": 0.3, "momentum": 0.9},
    "epochs": 2,
    "batch_size": 128,
    "seed": 3,
    "device": "cpu",
    "checkpoints": {"keep": "all"},
}
TWO = {"distributed": {"nproc_per_node": 2}}


@pytest.fixture(scope="module")
def ddp_stack(tmp_path_factory, data_dir):
    env = {
        "TRAINYARD_TRAIN_THREADS": "2",
        "TRAINYARD_MAX_JOB_PROCESSES": "2",
        "TRAINYARD_DISTRIBUTED_TIMEOUT_SECONDS": "8",
        "TRAINYARD_DISTRIBUTED_MAX_RESTARTS": "1",
    }
    with Stack(home=tmp_path_factory.mktemp("ddp"), data_dir=data_dir, extra_env=env) as stack:
        yield stack


def rank_pids(job_id: str) -> dict[int, int]:
    """The job's live rank processes: {local rank: pid} (from each process's environment)."""
    found = {}
    out = subprocess.run(["pgrep", "-f", f"workers.rank {job_id}"], capture_output=True, text=True).stdout
    for pid in map(int, out.split()):
        try:
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        values = dict(item.split(b"=", 1) for item in environ if b"=" in item)
        if b"LOCAL_RANK" in values:
            found[int(values[b"LOCAL_RANK"])] = pid
    return found


def metrics(client, job_id: str) -> list[dict]:
    return client.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]


def started(client, spec: dict) -> tuple[str, dict[int, int]]:
    """Submit a distributed job; its id and rank processes once its first epoch is recorded."""
    job_id = submit(client, spec)
    wait_until(lambda: len(metrics(client, job_id)) >= 1, timeout=120, what="epoch 1 recorded")
    return job_id, wait_until(lambda: rank_pids(job_id) or None, timeout=30, what="the ranks")


def last_weights(stack: Stack, job_id: str) -> dict[str, torch.Tensor]:
    files = sorted((stack.home / "checkpoints" / job_id).glob("epoch-*.safetensors"))
    return read_checkpoint(files[-1])[0]


def test_two_processes_train_what_one_trains_and_record_it_once(ddp_stack):
    with ddp_stack.client() as client:
        one = submit(client, SPEC)
        two = submit(client, {**SPEC, **TWO})
        assert ddp_stack.wait_for_job(client, one)["status"] == "succeeded"
        job = ddp_stack.wait_for_job(client, two)
        assert job["status"] == "succeeded", job
        single, distributed = metrics(client, one), metrics(client, two)
        assert [m["epoch"] for m in distributed] == [1, 2]
        for a, b in zip(single, distributed, strict=True):
            for key in ("train_loss", "test_loss"):
                assert math.isclose(a[key], b[key], rel_tol=1e-4), (key, a, b)
            for key in ("train_acc", "test_acc"):
                assert abs(a[key] - b[key]) <= 0.002, (key, a, b)
        for name, weight in last_weights(ddp_stack, one).items():
            assert torch.allclose(weight, last_weights(ddp_stack, two)[name], rtol=1e-4, atol=1e-5), name
        environment = job["environment"]["distributed"]
        assert environment["world_size"] == 2 and environment["backend"] == "gloo"
        assert [r["rank"] for r in environment["ranks"]] == [0, 1]
        assert all(r["host"] and r["device"] == "cpu" for r in environment["ranks"])
        assert environment["threads_per_process"] == 1
        page = " ".join(client.get(f"/ui/jobs/{two}").text.split())
        batch = SPEC["batch_size"]
        assert f"distributed: 2 processes (gloo, 1 thread each), global batch {batch}, {batch // 2} examples" in page
        assert page.count("<td>cpu</td>") == 2 and "<td>0 (records)</td>" in page
        assert 'id="distributed"' not in client.get(f"/ui/jobs/{one}").text
        logs = client.get(f"/v1/jobs/{two}/logs").json()["lines"]
        assert any("starting 2 processes with torchrun" in line["message"] for line in logs)
        assert any(line["message"].startswith("epoch 2/2") for line in logs)
    assert rank_pids(two) == {}


def test_a_killed_rank_restarts_the_group_which_resumes_with_no_epoch_lost_or_repeated(ddp_stack):
    spec = {**SPEC, **TWO, "epochs": 4, "batch_size": 16, "name": "killed-rank"}
    with ddp_stack.client() as client:
        job_id, pids = started(client, spec)
        os.kill(pids[1], signal.SIGKILL)
        job = ddp_stack.wait_for_job(client, job_id, timeout=240)
        assert job["status"] == "succeeded", (job["error"], job["reason"])
        assert [m["epoch"] for m in metrics(client, job_id)] == [1, 2, 3, 4]
        assert job["attempt"] == 1  # torchrun restarted the processes; the worker kept the job
        running = [t for t in job["transitions"] if t["to_status"] == "running"]
        assert running[-1]["detail"]["group_restarts"] == 1, running
        assert running[-1]["detail"]["resumed_from_epoch"] >= 2
        logs = " ".join(line["message"] for line in client.get(f"/v1/jobs/{job_id}/logs").json()["lines"])
        assert "after the group's restart 1" in logs, logs


def test_past_its_restarts_the_job_goes_back_to_the_queue_and_a_new_attempt_finishes_it(ddp_stack):
    spec = {**SPEC, **TWO, "epochs": 4, "batch_size": 16, "name": "killed-twice"}
    with ddp_stack.client() as client:
        job_id, first = started(client, spec)
        os.kill(first[1], signal.SIGKILL)
        again = wait_until(
            lambda: (pids := rank_pids(job_id)).get(1) not in (None, first[1]) and pids,
            timeout=60,
            what="the restarted ranks",
        )
        os.kill(again[1], signal.SIGKILL)  # past TRAINYARD_DISTRIBUTED_MAX_RESTARTS (1)
        job = ddp_stack.wait_for_job(client, job_id, timeout=240)
        assert job["status"] == "succeeded", (job["error"], job["reason"])
        assert job["attempt"] == 2
        given_back = [t for t in job["transitions"] if t["to_status"] == "queued"][-1]
        assert given_back["reason"] == "distributed_processes_lost", job["transitions"]
        assert [m["epoch"] for m in metrics(client, job_id)] == [1, 2, 3, 4]


def test_cancel_stops_every_rank_and_resume_finishes_the_job(ddp_stack):
    # More epochs than it trains before the cancel is seen: with 3, an epoch of 0.6 s could end the job first.
    spec = {**SPEC, **TWO, "epochs": 8, "batch_size": 16, "name": "cancelled"}
    with ddp_stack.client() as client:
        job_id, _ = started(client, spec)
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code in (200, 202)
        job = ddp_stack.wait_for_job(client, job_id, states=("cancelled",), timeout=60)
        assert job["reason"] == "user_cancelled"
        assert rank_pids(job_id) == {}
        assert client.post(f"/v1/jobs/{job_id}/resume").status_code in (200, 202)
        job = ddp_stack.wait_for_job(client, job_id, timeout=180)
        assert job["status"] == "succeeded", job
        assert [m["epoch"] for m in metrics(client, job_id)] == list(range(1, 9))


def test_a_worker_told_to_stop_stops_every_rank_and_the_next_worker_resumes_the_job(ddp_stack):
    spec = {**SPEC, **TWO, "epochs": 8, "batch_size": 16, "name": "worker-stopped"}  # more than it trains meanwhile
    with ddp_stack.client() as client:
        job_id, _ = started(client, spec)
        worker = ddp_stack.procs["worker"]
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
            job, ranks_left = client.get(f"/v1/jobs/{job_id}").json(), rank_pids(job_id)
        finally:
            ddp_stack.start_worker()  # the module's other tests need one, whatever happens here
        assert (job["status"], job["transitions"][-1]["reason"]) == ("queued", "worker_stopped"), job
        assert ranks_left == {}
        job = ddp_stack.wait_for_job(client, job_id, timeout=180)
        assert (job["status"], job["attempt"]) == ("succeeded", 2), job
        assert [m["epoch"] for m in metrics(client, job_id)] == list(range(1, 9))


def test_a_hung_rank_fails_the_job_with_a_reason_instead_of_hanging(ddp_stack):
    spec = {**SPEC, **TWO, "epochs": 3, "batch_size": 16, "name": "hung"}
    with ddp_stack.client() as client:
        job_id, pids = started(client, spec)
        os.kill(pids[1], signal.SIGSTOP)
        try:
            wait_until(
                lambda: "rank 0 failed (collective_timeout)" in ddp_stack.log("worker"),
                timeout=60,
                what="rank 0 to time out",
            )
        finally:
            # torchrun stops the hung process with SIGTERM, which a stopped process only takes once
            # continued (or with SIGKILL, 30 s later).
            os.kill(pids[1], signal.SIGCONT)
        job = ddp_stack.wait_for_job(client, job_id, timeout=120)
        assert job["status"] == "failed", job
        assert job["reason"] == "collective_timeout", job
        assert "TRAINYARD_DISTRIBUTED_TIMEOUT_SECONDS" in job["error"]
        wait_until(lambda: rank_pids(job_id) == {}, timeout=30, what="the ranks to be gone")


def test_a_job_wanting_more_processes_than_any_worker_gives_waits_and_says_why(ddp_stack):
    with ddp_stack.client() as client:
        job_id = submit(client, {**SPEC, "distributed": {"nproc_per_node": 4}, "name": "too-wide"})
        time.sleep(3)  # long enough for the worker to have been offered it
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "queued"
        assert job["waiting_reason"] == "no_worker_with_4_processes"
        assert job["waiting_detail"] == (
            "it trains on 4 processes and no live worker gives one job 4 processes (TRAINYARD_MAX_JOB_PROCESSES)"
        )
        page = client.get(f"/ui/jobs/{job_id}").text
        assert f"waiting: no_worker_with_4_processes ({job['waiting_detail']})" in page
        assert rank_pids(job_id) == {}
        assert [w["processes"] for w in client.get("/v1/workers").json()["workers"]] == [2]
        client.post(f"/v1/jobs/{job_id}/cancel")


@pytest.mark.parametrize(
    ("distributed", "batch_size", "loc", "words"),
    [
        ({"nproc_per_node": 3}, 128, ["body", "distributed"], "multiple of 3"),
        ({"nproc_per_node": 2, "nnodes": 2}, 128, ["body", "distributed", "nnodes"], "needs an object store"),
        ({"nproc_per_node": 0}, 128, ["body", "distributed", "nproc_per_node"], "greater than or equal to 1"),
    ],
)
def test_a_distributed_spec_that_cannot_run_is_a_422_naming_the_field(ddp_stack, distributed, batch_size, loc, words):
    with ddp_stack.client() as client:
        answer = client.post("/v1/jobs", json={**SPEC, "batch_size": batch_size, "distributed": distributed})
    assert answer.status_code == 422, answer.text
    errors = answer.json()["detail"]
    assert any(e["loc"] == loc and words in e["msg"] for e in errors), errors

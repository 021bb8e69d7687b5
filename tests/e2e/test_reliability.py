"""No job or metric lost: worker crashes, broker restarts, concurrent retries, cancel and resume."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest
from celery import Celery

from tests.support.backends import embedded_only
from tests.support.servers import REDIS_URL, Stack, free_port, redis_available, require, wait_until
from tests.support.specs import submit

pytestmark = pytest.mark.e2e

# LeNet with tiny batches: a second or more an epoch on half the 4000-image fixture, long enough to
# catch a job mid-epoch.
SLOW_SPEC = {
    "name": "slow-lenet",
    "model": {"arch": "lenet", "activation": "relu", "pool": "max"},
    "data": {"dataset": "fashion-mnist", "limit_train": 2000},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "epochs": 3,
    "batch_size": 4,
    "seed": 3,
    "device": "cpu",
}
TINY_SPEC = {
    "model": {"arch": "softmax_regression"},
    "data": {"dataset": "fashion-mnist", "limit_train": 64, "limit_test": 32},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "epochs": 1,
    "batch_size": 32,
}


def epochs_recorded(client, job_id) -> list[int]:
    return [e["epoch"] for e in client.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]]


def running_events(job) -> list[dict]:
    return [t for t in job["transitions"] if t["to_status"] == "running"]


def assert_handed_back_once_then_finished(job: dict) -> None:
    """A job its stopped worker handed back (not a counted attempt), which the next attempt finished."""
    assert job["status"] == "succeeded" and job["attempt"] == 2, job["transitions"]
    steps = [(t["from_status"], t["to_status"], t["reason"]) for t in job["transitions"]]
    assert steps[2:] == [
        ("running", "queued", "worker_stopped"),
        ("queued", "running", None),
        ("running", "succeeded", None),
    ], steps


def test_worker_killed_mid_epoch_resumes_from_last_checkpoint(stack, client):
    submitted_at = time.time()
    job_id = submit(client, SLOW_SPEC)
    wait_until(
        lambda: epochs_recorded(client, job_id) == [1],
        timeout=120,
        interval=0.05,
        what=f"epoch 1 of job {job_id}\n{stack.logs()}",
    )
    first_epoch_s = time.time() - submitted_at  # this machine's pace, start-up included
    pid = running_events(client.get(f"/v1/jobs/{job_id}").json())[0]["detail"]["pid"]
    assert pid in stack.worker_pool_pids()
    os.kill(pid, signal.SIGKILL)
    killed_at = time.time()

    job = stack.wait_for_job(client, job_id, timeout=180)
    assert job["status"] == "succeeded", job
    assert job["attempt"] == 2
    steps = [(t["from_status"], t["to_status"], t["reason"]) for t in job["transitions"]]
    assert steps == [
        (None, "queued", None),
        ("queued", "running", None),
        ("running", "queued", "worker_lost"),
        ("queued", "running", None),
        ("running", "succeeded", None),
    ], steps
    # Its worker saw the process dead at its next registry beat and took the job back at once
    lost = next(t for t in job["transitions"] if t["reason"] == "worker_lost")
    assert lost["detail"]["died"] == pid, lost
    lines = [line["message"] for line in client.get(f"/v1/jobs/{job_id}/logs").json()["lines"] if line["attempt"] == 1]
    worker = running_events(job)[0]["detail"]["worker"]
    assert f"attempt 1 lost: its training process ({pid}) on {worker} died" in lines[-1], lines[-3:]
    resumed = running_events(job)[1]["detail"]
    metrics = client.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]
    assert [e["epoch"] for e in metrics] == [1, 2, 3]  # each epoch exactly once
    # The second attempt started after the last epoch the first one finished, from its state.
    assert resumed["resumed_from_batch"] == 0
    assert 2 <= resumed["resumed_from_epoch"] <= 3
    # At most two epochs were left, each taking no longer than the first one did.
    assert time.time() - killed_at < 3 * first_epoch_s + 30


def test_a_worker_shut_down_remotely_hands_its_job_back_and_the_next_worker_resumes_it(tmp_path, data_dir):
    """A remote `shutdown` (Flower, `celery control shutdown`; a SIGTERM does the same, see
    tests/e2e/test_distributed_jobs.py): the running job stops after its current batch instead of
    running to its end, goes back to the queue at once (not a failed attempt), and the worker
    started next resumes it where it stopped."""
    require(redis_available(), "Redis is not reachable on 127.0.0.1:6379")
    with Stack(home=tmp_path / "home", data_dir=data_dir, broker_url=REDIS_URL) as stack, stack.client() as client:
        job_id = submit(client, {**SLOW_SPEC, "epochs": 4})
        wait_until(
            lambda: epochs_recorded(client, job_id) == [1],
            timeout=120,
            interval=0.05,
            what=f"epoch 1 of job {job_id}\n{stack.logs()}",
        )
        worker = stack.procs["worker"]
        node = f"test-worker-{stack.home.name}-{stack.port}@{socket.gethostname()}"
        Celery(broker=REDIS_URL).control.shutdown(destination=[node])  # it answers nothing
        worker.wait(timeout=60)
        assert "Got shutdown from remote" in stack.log("worker")
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "queued" and job["transitions"][-1]["reason"] == "worker_stopped", job
        assert len(epochs_recorded(client, job_id)) < 4  # it did not train on to its end
        log = [line["message"] for line in client.get(f"/v1/jobs/{job_id}/logs").json()["lines"]]
        assert any("stops after its current batch" in line for line in log), log
        stack.start_worker()
        job = stack.wait_for_job(client, job_id, timeout=180)
        epochs = epochs_recorded(client, job_id)
    assert_handed_back_once_then_finished(job)
    resumed = running_events(job)[1]["detail"]
    assert (resumed["resumed_from_epoch"], resumed["resumed_from_batch"]) >= (2, 0)  # epoch 2 or later
    assert epochs == [1, 2, 3, 4]


def test_a_worker_restarted_by_sighup_hands_its_job_back_and_resumes_it(tmp_path, data_dir):
    """SIGHUP restarts a Celery worker in place (it executes itself again, same pid): the running
    job stops after its current batch and goes back to the queue (not a failed attempt) instead
    of holding the restart until its end, and the restarted worker resumes it."""
    with Stack(home=tmp_path / "home", data_dir=data_dir) as stack, stack.client() as client:
        job_id = submit(client, {**SLOW_SPEC, "epochs": 2})
        wait_until(
            lambda: running_events(client.get(f"/v1/jobs/{job_id}").json()),
            timeout=120,
            what=f"job {job_id} to run\n{stack.logs()}",
        )
        os.kill(stack.procs["worker"].pid, signal.SIGHUP)

        def handed_back():
            job = client.get(f"/v1/jobs/{job_id}").json()
            return any(t["reason"] == "worker_stopped" for t in job["transitions"]) and job

        job = wait_until(handed_back, timeout=60, what=f"job {job_id} handed back\n{stack.logs()}")
        assert len(epochs_recorded(client, job_id)) < 2, job  # it did not train on to its end
        job = stack.wait_for_job(client, job_id, timeout=180)
        assert "Restarting celery worker" in stack.log("worker") and stack.procs["worker"].poll() is None
        epochs = epochs_recorded(client, job_id)
    assert_handed_back_once_then_finished(job)
    assert epochs == [1, 2]


def test_cancel_queued_and_running_then_resume(stack, client):
    running = submit(client, {**SLOW_SPEC, "name": "to-cancel-running"})
    queued = submit(client, {**TINY_SPEC, "name": "to-cancel-queued"})
    wait_until(lambda: client.get(f"/v1/jobs/{running}").json()["status"] == "running", timeout=60)

    answer = client.post(f"/v1/jobs/{queued}/cancel")
    assert answer.status_code == 202 and answer.json()["status"] == "cancelled"
    assert answer.json()["reason"] == "user_cancelled"

    wait_until(lambda: client.get(f"/v1/jobs/{running}").json()["epoch"] >= 1, timeout=120)
    answer = client.post(f"/v1/jobs/{running}/cancel")
    assert answer.status_code == 202 and answer.json()["status"] == "cancelling"
    job = stack.wait_for_job(client, running, states=("cancelled",), timeout=60)
    assert job["reason"] == "user_cancelled"
    done_before = epochs_recorded(client, running)
    assert done_before and done_before == list(range(1, len(done_before) + 1))
    assert client.post(f"/v1/jobs/{running}/cancel").status_code == 409

    # The queued job's message still reaches the worker, which drops it: it never runs.
    resumed = client.post(f"/v1/jobs/{running}/resume")
    assert resumed.status_code == 202 and resumed.json()["status"] == "queued"
    job = stack.wait_for_job(client, running, timeout=180)
    assert job["status"] == "succeeded", job
    assert epochs_recorded(client, running) == [1, 2, 3]
    detail = running_events(job)[-1]["detail"]
    assert (detail["resumed_from_epoch"], detail["resumed_from_batch"]) > (len(done_before), 0)
    if detail["resumed_from_batch"]:  # the epoch it resumed in was timed over the batches it trained
        lines = [line["message"] for line in client.get(f"/v1/jobs/{running}/logs").json()["lines"]]
        after = f"samples/s over the batches after {detail['resumed_from_batch']}, where this attempt resumed)"
        assert any(line.startswith(f"epoch {detail['resumed_from_epoch']}/3: ") and after in line for line in lines)
    assert client.get(f"/v1/jobs/{queued}").json()["status"] == "cancelled"
    assert running_events(client.get(f"/v1/jobs/{queued}").json()) == []
    assert client.post(f"/v1/jobs/{running}/resume").status_code == 409
    assert client.post("/v1/jobs/00000000-0000-0000-0000-000000000000/cancel").status_code == 404


def test_resumed_run_matches_an_uninterrupted_one(stack, client):
    spec = {**SLOW_SPEC, "name": "exact", "epochs": 2, "seed": 11}
    reference = submit(client, spec)
    assert stack.wait_for_job(client, reference, timeout=180)["status"] == "succeeded"
    interrupted = submit(client, spec)
    wait_until(lambda: client.get(f"/v1/jobs/{interrupted}").json()["status"] == "running", timeout=60)
    time.sleep(0.5)  # part-way into epoch 1
    client.post(f"/v1/jobs/{interrupted}/cancel")
    stack.wait_for_job(client, interrupted, states=("cancelled", "succeeded"), timeout=60)
    client.post(f"/v1/jobs/{interrupted}/resume")
    assert stack.wait_for_job(client, interrupted, timeout=180)["status"] == "succeeded"
    a = client.get(f"/v1/jobs/{reference}/metrics").json()["epochs"]
    b = client.get(f"/v1/jobs/{interrupted}/metrics").json()["epochs"]
    for x, y in zip(a, b, strict=True):
        assert x["test_loss"] == pytest.approx(y["test_loss"], rel=1e-5)
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-5)


@embedded_only
def test_init_from_starts_from_another_jobs_weights(stack, client):
    first = submit(
        client, {**TINY_SPEC, "epochs": 2, "data": {"dataset": "fashion-mnist", "limit_train": 512, "limit_test": 32}}
    )
    assert stack.wait_for_job(client, first)["status"] == "succeeded"
    trained_loss = client.get(f"/v1/jobs/{first}/metrics").json()["epochs"][-1]["test_loss"]
    fresh = submit(client, {**TINY_SPEC, "optimizer": {"name": "sgd", "lr": 1e-6}})
    warm = submit(
        client,
        {**TINY_SPEC, "optimizer": {"name": "sgd", "lr": 1e-6}, "init_from": {"job_id": first, "checkpoint": "last"}},
    )
    for job_id in (fresh, warm):
        assert stack.wait_for_job(client, job_id)["status"] == "succeeded"

    def loss(j):
        return client.get(f"/v1/jobs/{j}/metrics").json()["epochs"][0]["test_loss"]

    assert loss(warm) == pytest.approx(trained_loss, rel=0.01) and loss(warm) < 0.5 * loss(fresh)
    bad = client.post("/v1/jobs", json={**TINY_SPEC, "init_from": {"job_id": "00000000-0000-0000-0000-000000000000"}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "init_from"]
    mismatched = submit(client, {**TINY_SPEC, "model": {"arch": "mlp", "hidden": [8]}, "init_from": {"job_id": first}})
    job = stack.wait_for_job(client, mismatched)
    assert (
        job["status"] == "failed" and "do not fit this model: 1.weight is 10x784 in them and 8x784 here" in job["error"]
    )


def test_concurrent_submissions_with_idempotency_keys_run_once_each(stack, client):
    prefix = f"idem-{time.time_ns()}"
    keys = [f"{prefix}-{i % 30}" for i in range(50)]  # 30 distinct keys, 20 retries
    answers: list = [None] * 50
    barrier = threading.Barrier(50)

    def post(i):
        barrier.wait()
        with stack.client() as c:
            answers[i] = c.post("/v1/jobs", json={**TINY_SPEC, "name": keys[i]}, headers={"Idempotency-Key": keys[i]})

    threads = [threading.Thread(target=post, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a.status_code == 202 for a in answers), [a.text for a in answers if a.status_code != 202]
    by_key: dict[str, set] = {}
    for key, answer in zip(keys, answers, strict=True):
        by_key.setdefault(key, set()).add(answer.json()["id"])
    assert all(len(ids) == 1 for ids in by_key.values()), by_key
    job_ids = {next(iter(ids)) for ids in by_key.values()}
    assert len(job_ids) == 30
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 20
    for job_id in job_ids:
        job = stack.wait_for_job(client, job_id)
        assert job["status"] == "succeeded" and job["attempt"] == 1
        assert len(running_events(job)) == 1
        assert epochs_recorded(client, job_id) == [1]
    reused = client.post("/v1/jobs", json={**TINY_SPEC, "epochs": 2}, headers={"Idempotency-Key": keys[0]})
    assert reused.status_code == 409


@pytest.fixture
def private_redis(tmp_path):
    """A Redis server of the test's own (no persistence), restartable on the same port."""
    binary = shutil.which("redis-server")
    require(binary is not None, "redis-server is not installed")
    port = free_port()

    class Server:
        url = f"redis://127.0.0.1:{port}/0"
        proc = None

        def start(self):
            self.proc = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(tmp_path),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_until(
                lambda: (
                    subprocess.run(
                        ["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True
                    ).stdout.strip()
                    == "PONG"
                ),
                timeout=20,
                what="redis",
            )

        def stop(self):
            self.proc.kill()
            self.proc.wait()

    server = Server()
    server.start()
    yield server
    server.stop()


def test_redis_restart_loses_no_job(tmp_path, data_dir, private_redis):
    with Stack(home=tmp_path / "home", data_dir=data_dir, broker_url=private_redis.url) as stack:
        with stack.client() as client:
            first = submit(client, {**SLOW_SPEC, "epochs": 2, "name": "running-through-restart"})
            waiting = [submit(client, {**TINY_SPEC, "name": f"queued-{i}"}) for i in range(3)]
            wait_until(lambda: client.get(f"/v1/jobs/{first}").json()["status"] == "running", timeout=60)
            private_redis.stop()  # every queued message is gone with it
            time.sleep(1)
            private_redis.start()
            for job_id in [first, *waiting]:
                job = stack.wait_for_job(client, job_id, timeout=180)
                assert job["status"] == "succeeded", job
                assert epochs_recorded(client, job_id) == list(range(1, job["epochs"] + 1))
                assert len(running_events(job)) == 1
        assert "reaper sent" in stack.log("api")  # the lost messages were sent again

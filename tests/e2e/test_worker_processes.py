"""Training workers as the API sees them: the registry, routing by device, and no silent waits;
then two workers sharing PostgreSQL, Redis and a checkpoint folder, one of them killed mid-job."""

from __future__ import annotations

import json
import os
import signal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.datagen import png_bytes
from tests.support.servers import (
    REDIS_URL,
    PostgresSchema,
    Stack,
    postgres_available,
    redis_available,
    require,
    wait_until,
)
from tests.support.specs import SOFTMAX_SPEC, submit

pytestmark = pytest.mark.e2e

TINY = {**SOFTMAX_SPEC, "epochs": 1, "data": {"dataset": "fashion-mnist", "limit_train": 256, "limit_test": 64}}


def live_workers(client) -> list[dict]:
    return client.get("/v1/workers").json()["workers"]


@pytest.fixture
def api(embedded_stack):
    with embedded_stack.client() as client:
        yield client


def test_the_running_worker_is_listed_with_its_queues_and_devices(embedded_stack, api):
    client = api
    (worker,) = live_workers(client)
    assert worker["queues"] == [embedded_stack.env["TRAINYARD_QUEUE"]]
    assert worker["devices"][0] == {"name": "cpu", "kind": "cpu", "memory_bytes": None}
    assert worker["pid"] == embedded_stack.procs["worker"].pid and worker["torch"]
    listed = embedded_stack.cli("workers", "--url", embedded_stack.url)
    assert listed.returncode == 0 and str(worker["pid"]) in listed.stdout, listed.stderr
    assert "1 live worker(s)" in listed.stdout
    page = client.get("/ui/workers")
    assert page.status_code == 200 and worker["id"] in page.text
    assert f'<td class="processes">{worker["processes"]}</td>' in page.text
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    gauge = {(s.labels["device"], s.labels["state"]): s.value for s in families["trainyard_workers"].samples}
    assert gauge[("cpu", "idle")] + gauge[("cpu", "busy")] == 1 and gauge[("cuda", "idle")] == 0


def test_a_cuda_job_with_no_gpu_worker_says_why_and_is_never_taken(embedded_stack, api):
    client = api
    answer = client.post("/v1/jobs", json={**TINY, "device": "cuda"})
    assert answer.status_code == 202 and answer.json()["waiting_reason"] == "no_gpu_worker"
    job_id = answer.json()["id"]
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        lines = stream.iter_lines()
        for line in lines:
            if line == "event: waiting":
                assert json.loads(next(lines).removeprefix("data: ")) == {
                    "reason": "no_gpu_worker",
                    "detail": "it asks for a GPU and no live worker with a GPU serves the GPU queue (its queue is "
                    f"{embedded_stack.env['TRAINYARD_GPU_QUEUE']!r}: a worker serves its TRAINYARD_GPU_QUEUE, or the "
                    "queues its --queues or TRAINYARD_WORKER_QUEUES name)",
                }
                break
    auto = submit(client, {**TINY, "device": "auto"})  # the CPU worker runs this one meanwhile
    ran = embedded_stack.wait_for_job(client, auto)
    assert ran["status"] == "succeeded"
    (taken,) = [t for t in ran["transitions"] if t["to_status"] == "running"]
    assert taken["detail"]["worker"] == live_workers(client)[0]["id"]  # the registry's name, not its pool child's
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert (job["status"], job["attempt"], job["waiting_reason"]) == ("queued", 0, "no_gpu_worker")
    shown = client.get(f"/ui/jobs/{job_id}").text
    assert "no_gpu_worker" in shown
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["waiting_reason"] is None


def test_a_killed_worker_leaves_the_registry_and_its_jobs_say_so(tmp_path, data_dir):
    with Stack(home=tmp_path / "home", data_dir=data_dir, extra_env={"TRAINYARD_REQUIRE_WORKER": "true"}) as stack:
        with stack.client() as client:
            assert len(live_workers(client)) == 1
            refused = client.post("/v1/jobs", json={**TINY, "device": "cuda"})
            assert refused.status_code == 409 and "no_gpu_worker" in refused.json()["detail"]
            wide = {**TINY, "batch_size": 64, "distributed": {"nproc_per_node": 64}}
            refused = client.post("/v1/jobs", json=wide)
            assert refused.status_code == 409 and refused.json()["detail"].startswith(
                "no_worker_with_64_processes: it trains on 64 processes and no live worker gives one job 64 "
                "processes (TRAINYARD_MAX_JOB_PROCESSES); on queue "
            ), refused.json()
            assert refused.json()["detail"].endswith(
                ": lower distributed.nproc_per_node or start a worker that gives more; retry then"
            )
            os.killpg(stack.procs["worker"].pid, signal.SIGKILL)
            stack.procs["worker"].wait()
            wait_until(lambda: live_workers(client) == [], timeout=10, what="the killed worker to leave the list")
            refused = client.post("/v1/jobs", json=TINY)
            assert refused.status_code == 409 and "no_worker" in refused.json()["detail"]


def test_two_workers_share_the_jobs_and_one_finishes_what_the_other_was_killed_in(tmp_path, data_dir):
    require(postgres_available(), "PostgreSQL is not reachable on 127.0.0.1:5432")
    require(redis_available(), "Redis is not reachable on 127.0.0.1:6379")
    shared = tmp_path / "shared"
    with PostgresSchema() as schema:
        common = {
            "TRAINYARD_CHECKPOINT_DIR": str(shared / "checkpoints"),
            "TRAINYARD_REGISTRY_DIR": str(shared / "registry"),
            "TRAINYARD_DATASETS_DIR": str(shared / "datasets"),
            "TRAINYARD_QUEUE": f"scale-{schema.name}",
            "TRAINYARD_GPU_QUEUE": f"scale-{schema.name}-gpu",
        }
        first = Stack(
            home=tmp_path / "machine-1",
            data_dir=data_dir,
            database_url=schema.url,
            broker_url=REDIS_URL,
            extra_env=common,
        )
        second = Stack(
            home=tmp_path / "machine-2",
            data_dir=data_dir,
            database_url=schema.url,
            broker_url=REDIS_URL,
            extra_env=common,
            port=first.port,
        )
        try:
            first.start()
            second.home.mkdir(parents=True)
            second.start_worker()
            second.wait_for_worker()
            with first.client() as client:
                assert len(live_workers(client)) == 2
                slow = submit(
                    client,
                    {
                        "model": {"arch": "lenet", "activation": "relu", "pool": "max"},
                        "data": {"dataset": "fashion-mnist", "limit_train": 2000},  # a second or more an epoch
                        "optimizer": {"lr": 0.05, "momentum": 0.9},
                        "epochs": 3,
                        "batch_size": 4,
                        "seed": 3,
                        "device": "cpu",
                    },
                )
                quick = [submit(client, {**TINY, "seed": n}) for n in range(19)]
                wait_until(  # logged once epoch 1's resumable state is saved (after its metrics)
                    lambda: any(
                        line["message"].startswith("epoch 1/3")
                        for line in client.get(f"/v1/jobs/{slow}/logs").json()["lines"]
                    ),
                    timeout=180,
                    interval=0.05,
                    what="the slow job's first epoch",
                )
                (busy,) = [w for w in live_workers(client) if w["current_job"] == slow]
                victim = first if busy["pid"] == first.procs["worker"].pid else second
                os.killpg(victim.procs["worker"].pid, signal.SIGKILL)  # the whole machine's worker, mid-epoch 2
                results = [first.wait_for_job(client, job_id, timeout=240) for job_id in [slow, *quick]]
                assert [job["status"] for job in results] == ["succeeded"] * 20
                ran_on = {
                    event["detail"]["worker"]
                    for job in results
                    for event in job["transitions"]
                    if event["to_status"] == "running"
                }
                assert len(ran_on) == 2  # both workers
                resumed = [t for t in results[0]["transitions"] if t["to_status"] == "running"]
                assert len(resumed) == 2 and resumed[1]["detail"]["resumed_from_epoch"] == 2
                epochs = [e["epoch"] for e in client.get(f"/v1/jobs/{slow}/metrics").json()["epochs"]]
                assert epochs == [1, 2, 3]
                image = png_bytes(4, seed=9)
                for job in results:
                    answer = client.post(
                        f"/v1/models/job:{job['id']}/predict", content=image, headers={"content-type": "image/png"}
                    )
                    assert answer.status_code == 200, answer.text
        finally:
            second.stop(wait=False)
            first.stop(wait=False)


def test_a_worker_left_on_the_store_the_service_moved_from_stops_before_its_next_job(tmp_path, data_dir):
    """It passed its check at its start; after `storage migrate` and an API started on the target,
    its next job goes back to the queue and it stops (status 78), so no job's weights go where the
    API no longer reads. A worker on the target then trains the job."""
    from service.core.background import EXIT_MISCONFIGURED

    with Stack(home=tmp_path / "a", data_dir=data_dir) as stack, stack.client() as client:
        target = f"file://{tmp_path / 'moved'}"
        migrated = stack.cli("storage", "migrate", "--to", target)
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        moving = Stack(
            home=tmp_path / "b",
            data_dir=data_dir,
            database_url=f"sqlite:///{stack.home / 'trainyard.db'}",
            broker_url=f"sqla+sqlite:///{stack.home / 'broker.db'}",
            extra_env={"TRAINYARD_STORAGE_URL": target, "TRAINYARD_QUEUE": stack.env["TRAINYARD_QUEUE"]},
            with_worker=False,
        )
        with moving:  # the API started on the target: the service's store is the target from now on
            assert f"the service's store is now {target}" in moving.log("api"), moving.logs()
            job_id = submit(client, TINY)
            assert stack.procs["worker"].wait(timeout=60) == EXIT_MISCONFIGURED, stack.logs()
            assert "is one the service moved away from on " in stack.log("worker")
            assert "Traceback" not in stack.log("worker")  # a message given back on purpose is logged in a line
            assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
            moving.start_worker()
            assert moving.wait_for_job(client, job_id, timeout=120)["status"] == "succeeded", moving.logs()

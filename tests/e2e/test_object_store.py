"""Workers on other machines: an API and two workers, each with its own home and no folder
between them, sharing only SQL, the broker and a real S3 server (SeaweedFS). An upload on the API
trains on a worker; that worker is killed and the other finishes the job from the store; the API
serves what was trained; the store stops mid-job and comes back; a corrupt object is refused."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import pytest

from service.core.background import EXIT_MISCONFIGURED
from service.core.storage.check import MARK_FOLDER
from tests.support.datagen import image_folder_zip, png_bytes
from tests.support.servers import (
    REDIS_URL,
    PostgresSchema,
    Stack,
    postgres_available,
    redis_available,
    require,
    wait_until,
)
from tests.support.specs import submit

pytestmark = pytest.mark.e2e

CLASSES = ["circle", "square", "triangle"]
CACHE_BYTES = 1024 * 1024


class Machines:
    """An API on one home, workers each on a home of its own, all on one database, broker and store."""

    def __init__(self, root, data_dir, database_url, broker_url, store):
        self.root, self.data_dir, self.store = root, data_dir, store
        self.database_url, self.broker_url = database_url, broker_url
        queue = f"trainyard-s3-{uuid.uuid4().hex[:8]}"
        self.env = {
            **store.env(),
            "TRAINYARD_QUEUE": queue,
            "TRAINYARD_GPU_QUEUE": f"{queue}-gpu",
            "TRAINYARD_STORAGE_RETRY_SECONDS": "4",  # long enough to see a job wait for the store
            "TRAINYARD_MAX_ATTEMPTS": "10",
        }
        self.api = Stack(
            home=root / "api",
            data_dir=data_dir,
            database_url=database_url,
            broker_url=broker_url,
            extra_env=self.env,
            with_worker=False,
        )
        self.workers: dict[str, Stack] = {}

    def start_worker(self, name: str, **env) -> Stack:
        worker = Stack(
            home=self.root / name,
            data_dir=self.data_dir,
            database_url=self.database_url,
            broker_url=self.broker_url,
            extra_env={**self.env, **env},
        )
        worker.home.mkdir(parents=True)
        worker.start_worker()
        worker.wait_for_worker()
        self.workers[name] = worker
        return worker

    def refused_worker(self, name: str, **env) -> int:
        """Start a worker with `env` changed (None: unset), which should refuse to start: its exit status."""
        changed = {**self.env, **env}
        worker = Stack(
            home=self.root / name,
            data_dir=self.data_dir,
            database_url=self.database_url,
            broker_url=self.broker_url,
            extra_env={key: value for key, value in changed.items() if value is not None},
        )
        worker.home.mkdir(parents=True)
        worker.start_worker()
        self.workers[name] = worker
        return worker.procs["worker"].wait(timeout=90)

    def kill(self, name: str) -> None:
        os.killpg(self.workers[name].procs["worker"].pid, signal.SIGKILL)
        self.workers[name].procs["worker"].wait()

    def logs(self) -> str:
        return "\n".join([self.api.logs(), *(w.logs() for w in self.workers.values()), self.store.log_tail(2000)])

    def stop(self) -> None:
        for stack in [*self.workers.values(), self.api]:
            stack.stop(wait=False)  # all at once; they wind down while the next test starts


@pytest.fixture(params=["embedded", "postgres+redis"])
def machines(request, tmp_path, data_dir, object_store):
    if request.param == "embedded":
        shared = tmp_path / "database"  # SQLite stands for the database server here; no file is shared else
        shared.mkdir()
        setup = Machines(
            tmp_path,
            data_dir,
            f"sqlite:///{shared / 'trainyard.db'}",
            f"sqla+sqlite:///{shared / 'broker.db'}",
            object_store,
        )
        try:
            setup.api.start()
            yield setup
        finally:
            setup.stop()
        return
    require(postgres_available(), "PostgreSQL is not reachable on 127.0.0.1:5432")
    require(redis_available(), "Redis is not reachable on 127.0.0.1:6379")
    with PostgresSchema() as schema:
        setup = Machines(tmp_path, data_dir, schema.url, REDIS_URL, object_store)
        try:
            setup.api.start()
            yield setup
        finally:
            setup.stop()


def upload_shapes(api, name: str, per_class: int, test_per_class: int) -> dict:
    answer = api.post(
        "/v1/datasets",
        files={
            "file": (
                "shapes.zip",
                image_folder_zip(CLASSES, per_class=per_class, test_per_class=test_per_class),
                "application/zip",
            )
        },
        data={"name": name},
    )
    assert answer.status_code == 201, answer.text
    return answer.json()


def epochs(client, job_id) -> list[int]:
    return [e["epoch"] for e in client.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]]


def reasons(client, job_id) -> list[str | None]:
    return [t["reason"] for t in client.get(f"/v1/jobs/{job_id}").json()["transitions"]]


def stored_keys(store, prefix: str) -> list[str]:
    """Keys under a prefix, but for the service's marks (unless the prefix names them)."""
    listed = store.client().list_objects_v2(Bucket=store.bucket, Prefix=f"{store.prefix}/{prefix}")
    keys = [item["Key"].removeprefix(f"{store.prefix}/") for item in listed.get("Contents", [])]
    return [key for key in keys if MARK_FOLDER in prefix or f"/{MARK_FOLDER}/" not in key]


def stored_sha256(store, key: str) -> str:
    answer = store.client().head_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}")
    return answer["Metadata"]["sha256"]


def local_files(home, pattern: str = "*.safetensors") -> list:
    """Files of ours in a home outside its object cache."""
    return [p for p in home.rglob(pattern) if "cache" not in p.relative_to(home).parts]


# On PostgreSQL and Redis, what machines that share no disk share in production (SQLite can only
# stand in for a database server on one machine). Training through the store on the embedded
# default is run by tests/e2e/test_bench.py (bench/storage.py); claiming, leases and resuming by
# tests/e2e/test_reliability.py, on both.
@pytest.mark.parametrize("machines", ["postgres+redis"], indirect=True)
def test_workers_without_a_shared_folder_train_uploads_resume_each_other_and_hand_models_to_the_api(machines):
    store = machines.store
    with machines.api.client() as api:
        dataset = upload_shapes(api, "shapes", per_class=40, test_per_class=10)
        assert stored_keys(store, "datasets/") == [f"datasets/{dataset['id']}.safetensors"]

        # A worker whose store is not the API's (none named: its own folders; a secret the store
        # refuses) says why and exits before it takes a job, which it would lose.
        deadline = time.monotonic() + 30  # the API's housekeeping leaves its mark in its store
        while not (marks := stored_keys(store, f"checkpoints/{MARK_FOLDER}/")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(marks) == 1, marks
        for name, misconfigured, said in (
            (
                "worker-no-store",
                {"TRAINYARD_STORAGE_URL": None},
                f"lacks the mark the API left ({marks[0]})",
            ),
            ("worker-wrong-secret", {"AWS_SECRET_ACCESS_KEY": "not-the-secret"}, "store refuses it: "),
        ):
            assert machines.refused_worker(name, **misconfigured) == EXIT_MISCONFIGURED, machines.logs()
            assert said in machines.workers[name].log("worker"), machines.workers[name].log("worker")

        machines.start_worker("worker-b")
        spec = {
            "model": {"arch": "lenet", "activation": "relu", "pool": "max"},
            "data": {"dataset": "uploaded:shapes"},
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
            "epochs": 8,
            "batch_size": 2,
            "seed": 1,
            "device": "cpu",
        }
        job_id = submit(api, spec)
        wait_until(lambda: len(epochs(api, job_id)) >= 2, timeout=120, what=f"two epochs\n{machines.logs()}")
        machines.kill("worker-b")  # the machine is gone: its cache and files with it
        machines.start_worker("worker-c", TRAINYARD_CACHE_BYTES=str(CACHE_BYTES))
        job = machines.api.wait_for_job(api, job_id, timeout=240)
        assert job["status"] == "succeeded", (job, machines.logs())
        assert job["attempt"] == 2 and epochs(api, job_id) == list(range(1, 9))  # each epoch once
        resumed = [t for t in job["transitions"] if t["to_status"] == "running"][1]["detail"]
        assert resumed["resumed_from_epoch"] >= 2, resumed
        # The best and the last epochs' checkpoints are kept; a succeeded job's state goes just after its end.
        wait_until(
            lambda: all("epoch-" in key for key in stored_keys(store, f"checkpoints/{job_id}/")),
            timeout=10,
            what="the training state to go",
        )
        assert 1 <= len(stored_keys(store, f"checkpoints/{job_id}/")) <= 2
        assert job["disk_bytes"] > 0
        # Nor does the worker's cache keep copies of them: superseded states, dropped checkpoints.
        stored_digests = {stored_sha256(store, key) for key in stored_keys(store, "")}
        cached = machines.workers["worker-c"].home / "cache" / "objects"
        cached_digests = {p.name for p in cached.glob("??/*") if p.suffix != ".lock"}
        assert cached_digests and cached_digests <= stored_digests  # the dataset and the kept checkpoints

        registered = api.post("/v1/models", json={"name": "shapes", "job_id": job_id, "checkpoint": "best"})
        assert registered.status_code == 201, registered.text
        files = [("files", (f"{n}.png", png_bytes(i, seed=777 + i), "image/png")) for i, n in enumerate(CLASSES)]
        predicted = api.post("/v1/predict", data={"model": "shapes:1"}, files=files)
        assert predicted.status_code == 200, predicted.text
        assert [p["label"] for p in predicted.json()["predictions"]] == CLASSES
        # Nothing was shared: the API holds no checkpoint, and the workers no dataset, outside their caches.
        assert not local_files(machines.api.home)
        for worker in machines.workers.values():
            assert not local_files(worker.home)

        # The store stops mid-job: the worker waits, gives the job back, and it ends as if nothing happened.
        second = submit(api, {**spec, "epochs": 10, "name": "through-an-outage"})
        wait_until(lambda: len(epochs(api, second)) >= 2, timeout=120, what=f"two epochs\n{machines.logs()}")
        said, watching = [], threading.Event()

        def watch():  # the job as its owner polls it while the worker retries the store
            with machines.api.client() as own:
                while not watching.wait(0.1):
                    job = own.get(f"/v1/jobs/{second}").json()
                    said.append((job["status"], job["waiting_reason"], job["waiting_detail"]))

        watcher = threading.Thread(target=watch)
        watcher.start()
        store.stop()
        try:
            hot = api.post("/v1/predict", data={"model": "shapes:1"}, files=files)
            assert hot.status_code == 200, hot.text  # cached models keep serving
            cold = api.post("/v1/predict", data={"model": f"job:{second}"}, files=files)
            assert cold.status_code == 503 and cold.headers["Retry-After"], cold.text
            why = cold.json()["detail"]
            assert "cannot be reached" in why and why.endswith("; try again once it is back"), why
            refused = api.post(
                "/v1/datasets",
                files={
                    "file": ("more.zip", image_folder_zip(CLASSES, per_class=5, test_per_class=2), "application/zip")
                },
                data={"name": "more-shapes"},
            )
            assert refused.status_code == 503 and refused.headers["Retry-After"], refused.text
            assert [d["name"] for d in api.get("/v1/datasets").json()["data"]] == ["shapes"]  # nothing half-made
            # Down until the worker, failing to store an epoch, has given the job back.
            wait_until(
                lambda: "storage_unavailable" in reasons(api, second),
                timeout=60,
                what=f"the worker to give the job back\n{machines.logs()}",
            )
        finally:
            watching.set()
            watcher.join()
            store.start()
        stalled = [detail for status, reason, detail in said if status == "running" and reason == "store_unavailable"]
        assert stalled and stalled[0].startswith(f"the store s3://{store.bucket}/{store.prefix} is unavailable"), said
        outage = machines.api.wait_for_job(api, second, timeout=240)
        assert outage["status"] == "succeeded", (outage, machines.logs())
        assert epochs(api, second) == list(range(1, 11))
        cache = machines.workers["worker-c"].home / "cache" / "objects"
        assert 0 < sum(p.stat().st_size for p in cache.glob("??/*")) <= CACHE_BYTES  # LeNet's epochs came to more
        assert "storage_unavailable" in [t["reason"] for t in outage["transitions"]], outage["transitions"]

        # A corrupt object is refused by name, never served.
        version_key = f"{store.prefix}/registry/shapes/v1.safetensors"
        store.client().put_object(Bucket=store.bucket, Key=version_key, Body=b"not the weights")
        for cached in (machines.api.home / "cache" / "objects").glob("??/*"):
            cached.unlink()
        exported = api.get("/v1/models/shapes/versions/1/export", params={"format": "safetensors"})
        assert exported.status_code == 500, exported.text
        assert "version 1 of model 'shapes'" in exported.json()["detail"] and "corrupt" in exported.json()["detail"]

        # Deleting a version, a job or a dataset deletes its objects.
        assert api.delete("/v1/models/shapes/versions/1").status_code == 204
        assert api.delete(f"/v1/jobs/{second}").status_code == 204
        assert api.delete(f"/v1/datasets/{dataset['id']}").status_code == 204
        assert stored_keys(store, "registry/") == [] and stored_keys(store, "datasets/") == []
        assert stored_keys(store, f"checkpoints/{second}/") == [] and stored_keys(store, f"checkpoints/{job_id}/")


@pytest.mark.parametrize("machines", ["postgres+redis"], indirect=True)
def test_a_job_on_two_machines_meets_at_a_rendezvous_trains_what_one_trains_and_records_once(machines):
    """nnodes 2: the worker that takes the job hosts the rendezvous, the other joins it; the data
    comes from the store and the checkpoints go there, and the job trains what one process does."""
    one_each = {"TRAINYARD_WORKER_ADDRESS": "127.0.0.1", "TRAINYARD_MAX_JOB_PROCESSES": "1"}
    with machines.api.client() as api:
        upload_shapes(api, "shapes-two-machines", per_class=30, test_per_class=8)
        spec = {
            "model": {"arch": "mlp", "hidden": [32]},
            "data": {"dataset": "uploaded:shapes-two-machines"},
            "optimizer": {"name": "sgd", "lr": 0.1},
            "epochs": 2,
            "batch_size": 16,
            "seed": 2,
            "device": "cpu",
        }
        two_machines = {**spec, "distributed": {"nproc_per_node": 1, "nnodes": 2}}
        machines.start_worker("worker-a", **one_each)
        job_id = submit(api, two_machines)
        wait_until(
            lambda: api.get(f"/v1/jobs/{job_id}").json()["waiting_reason"] == "no_2_workers_with_1_processes",
            timeout=30,
            what="the job to wait for a second machine",
        )
        machines.start_worker("worker-b", **one_each)
        job = machines.api.wait_for_job(api, job_id, timeout=300)
        assert job["status"] == "succeeded", (job["error"], machines.logs())
        ran = job["environment"]["distributed"]
        assert ran["world_size"] == 2 and [r["rank"] for r in ran["ranks"]] == [0, 1]
        logs = [machines.workers[name].log("worker") for name in ("worker-a", "worker-b")]
        assert sum("asked 1 other worker(s) to join this job at 127.0.0.1:" in log for log in logs) == 1
        assert sum(f"joining job {job_id}" in log for log in logs) == 1
        assert stored_keys(machines.store, f"checkpoints/{job_id}/")
        for name in ("worker-a", "worker-b"):
            assert local_files(machines.workers[name].home) == []
        single = machines.api.wait_for_job(api, submit(api, spec), timeout=120)
        assert single["status"] == "succeeded"
        for a, b in zip(
            api.get(f"/v1/jobs/{single['id']}/metrics").json()["epochs"],
            api.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"],
            strict=True,
        ):
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
            assert b["test_acc"] == pytest.approx(a["test_acc"], abs=0.002)

        # The joining worker shuts down mid-job: the processes on both machines stop at one batch,
        # and the leading worker hands the job back (not a failed attempt); it finishes once a second
        # machine is there again.
        longer = submit(api, {**two_machines, "epochs": 12, "batch_size": 4, "name": "joiner-stops"})
        wait_until(lambda: epochs(api, longer)[:1] == [1], timeout=120, what=f"epoch 1\n{machines.logs()}")
        [joiner] = [n for n in ("worker-a", "worker-b") if f"joining job {longer}" in machines.workers[n].log("worker")]
        machines.workers[joiner].procs["worker"].send_signal(signal.SIGTERM)
        machines.workers[joiner].procs["worker"].wait(timeout=60)

        def handed_back() -> list:
            transitions = api.get(f"/v1/jobs/{longer}").json()["transitions"]
            return [t["reason"] for t in transitions if t["from_status"] == "running"]

        wait_until(handed_back, timeout=90, what=f"the leading worker to hand the job back\n{machines.logs()}")
        assert handed_back() == ["worker_stopped"], machines.logs()
        assert len(epochs(api, longer)) < 12  # it did not train on to its end
        machines.workers[joiner].start_worker()
        job = machines.api.wait_for_job(api, longer, timeout=300)
        assert job["status"] == "succeeded", (job["error"], machines.logs())
        assert epochs(api, longer) == list(range(1, 13))

"""PostgreSQL goes away for twenty seconds while a job trains, then comes back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import pytest

from models.spec.job import JobSpec
from service.core.tables import JobStatus
from tests.support.servers import Stack, wait_until
from tests.support.specs import SOFTMAX_SPEC, submit

pytestmark = pytest.mark.e2e

OUTAGE_SECONDS = 20
LONGEST_OUTAGE_SECONDS = 120  # on a loaded machine the worker may need longer for the job's epochs
# Every epoch's checkpoint kept, so that the files show what was trained while the database was away.
SPEC = {**SOFTMAX_SPEC, "name": "through-an-outage", "epochs": 8, "checkpoints": {"keep": "all"}}


def _calls_during_outage(client: httpx.Client, job_id: str, until: Callable[[], bool]) -> dict[str, list[int]]:
    """Every kind of call, again and again for the whole outage (OUTAGE_SECONDS, and on until
    `until()` holds, at most LONGEST_OUTAGE_SECONDS): the status codes they got."""
    calls = {
        "read job": lambda: client.get(f"/v1/jobs/{job_id}"),
        "list jobs": lambda: client.get("/v1/jobs"),
        "submit": lambda: client.post("/v1/jobs", json=SPEC),
        "metrics": lambda: client.get(f"/v1/jobs/{job_id}/metrics"),
        "models": lambda: client.get("/v1/models"),
        "workers": lambda: client.get("/v1/workers"),
        "cancel": lambda: client.post(f"/v1/jobs/{job_id}/cancel"),
    }
    seen = {name: [] for name in calls}
    started = time.monotonic()
    while time.monotonic() < started + OUTAGE_SECONDS or (
        time.monotonic() < started + LONGEST_OUTAGE_SECONDS and not until()
    ):
        for name, call in calls.items():
            response = call()
            seen[name].append(response.status_code)
            if response.status_code == 503:
                assert "database is unavailable" in response.json()["detail"]
                assert response.headers["retry-after"]
        readiness = client.get("/readyz")
        assert readiness.status_code == 503 and readiness.json()["checks"]["database"].startswith("error")
        assert readiness.json()["checks"]["broker"] == "ok"  # it says which check fails
        assert client.get("/healthz").status_code == 200
        time.sleep(0.5)
    return seen


def test_a_database_outage_pauses_the_job_and_the_api_answers_503(tmp_path, data_dir, private_postgres):
    with Stack(home=tmp_path / "home", data_dir=data_dir, database_url=private_postgres.url) as stack:
        with stack.client() as client:
            job_id = submit(client, SPEC)
            wait_until(lambda: client.get(f"/v1/jobs/{job_id}").json()["epoch"] >= 2, timeout=120, what="two epochs")
            private_postgres.stop()

            def on_disk() -> list[str]:
                return sorted(p.name for p in (stack.home / "checkpoints" / job_id).glob("epoch-*.safetensors"))

            seen = _calls_during_outage(client, job_id, until=lambda: len(on_disk()) == SPEC["epochs"])
            trained = on_disk()
            private_postgres.start()

            # The worker trained on while the database was away: every epoch's checkpoint is on disk.
            assert len(trained) == SPEC["epochs"], trained

            assert all(code == 503 for codes in seen.values() for code in codes), seen
            job = stack.wait_for_job(client, job_id, timeout=120)
            assert job["status"] == "succeeded", job
            assert job["attempt"] == 1, "the worker kept its job through the outage"
            epochs = [row["epoch"] for row in client.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]]
            assert epochs == list(range(1, SPEC["epochs"] + 1))
            assert client.get("/readyz").status_code == 200
        worker_log = stack.log("worker")
        assert "is kept to record later, and training goes on" in worker_log
        assert "the database is back: recorded epochs" in worker_log


def test_an_outage_between_an_epochs_record_and_its_state_does_not_pause_training(
    service_env_on_private_postgres, private_postgres, monkeypatch, caplog
):
    """The database goes away in the instant after epoch 1 is recorded, before the state to
    resume from is named (the outage above can begin there): the worker trains every epoch while
    it is away instead of waiting for it, and records them once it is back."""
    from service.core import db, jobs
    from workers.runner import run_job

    spec = JobSpec.model_validate({**SPEC, "epochs": 3})
    with db.session_scope() as session:
        job_id = jobs.create_job(session, spec=spec, task="classification").id
    name_state = jobs.set_resume_state

    def database_goes_away_first(session, **kwargs):
        if not outage_began.is_set():
            outage_began.set()
            private_postgres.stop()
        return name_state(session, **kwargs)

    outage_began, trained_while_away = threading.Event(), threading.Event()
    last_checkpoint = service_env_on_private_postgres.checkpoint_dir / job_id / "epoch-0003.safetensors"

    def database_comes_back():
        if not outage_began.wait(timeout=120):
            return
        try:
            wait_until(last_checkpoint.is_file, timeout=60, what="the last epoch's checkpoint")
            trained_while_away.set()
        except AssertionError:
            pass
        finally:
            private_postgres.start()

    monkeypatch.setattr(jobs, "set_resume_state", database_goes_away_first)
    caplog.set_level("WARNING", logger="workers.runner")
    restarter = threading.Thread(target=database_comes_back)
    restarter.start()
    try:
        assert run_job(job_id) == JobStatus.SUCCEEDED
    finally:
        restarter.join()
    assert outage_began.is_set() and trained_while_away.is_set(), "the worker waited for the database"
    assert "the database went away after epoch 1 was recorded" in caplog.text
    with db.session_scope() as session:
        job = jobs.get_job(session, job_id=job_id)
        assert (job.attempt, job.epoch) == (1, 3)
        assert [row.epoch for row in jobs.get_metrics(session, job_id=job_id)] == [1, 2, 3]


def test_a_state_the_database_missed_goes_once_a_later_one_is_named(
    service_env_on_private_postgres, private_postgres, monkeypatch
):
    """Epoch 1's state is stored but its naming fails (the database is away for that instant):
    the file stays, as its naming might have committed unanswered, until epoch 2's state is named;
    then it goes, and an outage leaves no file per epoch behind."""
    from service.core import db, jobs
    from workers.runner import run_job

    spec = JobSpec.model_validate({**SPEC, "epochs": 3})
    with db.session_scope() as session:
        job_id = jobs.create_job(session, spec=spec, task="classification").id
    folder = service_env_on_private_postgres.checkpoint_dir / job_id
    name_state, states_when_named = jobs.set_resume_state, []

    def database_away_for_the_first(session, **kwargs):
        states_when_named.append(len(list(folder.glob("training-state-*"))))
        if len(states_when_named) > 1:
            return name_state(session, **kwargs)
        private_postgres.stop()
        try:
            return name_state(session, **kwargs)
        finally:
            private_postgres.start()

    monkeypatch.setattr(jobs, "set_resume_state", database_away_for_the_first)
    assert run_job(job_id) == JobStatus.SUCCEEDED
    # Epoch 1's unnamed state and epoch 2's when epoch 2's is named; epoch 2's and 3's at epoch 3.
    assert states_when_named == [1, 2, 2]
    assert list(folder.glob("training-state-*")) == []  # the job's success clears the rest

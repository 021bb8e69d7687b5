"""The job runner in-process, against a real SQLite database: failures end jobs with clear reasons."""

from __future__ import annotations

import pytest

from models.spec import JobSpec
from service import db, jobs, settings as settings_module
from service.migrate import upgrade
from service.tables import JobStatus
from workers.runner import run_job

SPEC = JobSpec.model_validate({"model": {"arch": "softmax_regression"}, "epochs": 2, "batch_size": 64,
                               "data": {"dataset": "fashion-mnist", "limit_train": 256, "limit_test": 64}})


def _clear_caches():
    for cached in (settings_module.get_settings, db.get_engine, db.get_sessionmaker):
        cached.cache_clear()


@pytest.fixture
def service_env(tmp_path, monkeypatch, data_dir):
    """Settings, database and folders of a private trainyard home, for code run in this process."""
    for key in ("TRAINYARD_DATABASE_URL", "TRAINYARD_BROKER_URL", "TRAINYARD_CHECKPOINT_DIR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TRAINYARD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TRAINYARD_DATA_DIR", str(data_dir))
    _clear_caches()
    settings = settings_module.get_settings()
    settings.ensure_dirs()
    upgrade()
    yield settings
    db.get_engine().dispose()
    _clear_caches()


def new_job() -> str:
    with db.session_scope() as session:
        return jobs.create_job(session, spec=SPEC, task="classification").id


def read_job(job_id):
    with db.session_scope() as session:
        return jobs.get_job(session, job_id=job_id)


def test_a_job_runs_to_success_and_a_second_delivery_is_dropped(service_env):
    job_id = new_job()
    assert run_job(job_id) == JobStatus.SUCCEEDED
    assert run_job(job_id) is None
    job = read_job(job_id)
    assert job.attempt == 1 and job.epoch == 2
    assert (service_env.checkpoint_dir / job_id / "epoch-0002.safetensors").is_file()
    assert (service_env.checkpoint_dir / job_id / "training-state.safetensors").is_file()


def test_unwritable_checkpoint_folder_fails_the_job_with_a_clear_reason(service_env):
    job_id = new_job()
    blocker = service_env.checkpoint_dir / job_id
    blocker.write_text("a file where the job's checkpoint folder should be")
    assert run_job(job_id) == JobStatus.FAILED
    job = read_job(job_id)
    assert job.reason == "storage_error" and str(blocker) in job.error
    with db.session_scope() as session:
        assert jobs.get_metrics(session, job_id=job_id) == []
    assert blocker.read_text().startswith("a file")  # nothing was overwritten


def test_a_cancelled_job_is_never_run(service_env):
    job_id = new_job()
    with db.session_scope() as session:
        jobs.request_cancel(session, job_id=job_id)
    assert run_job(job_id) is None
    assert read_job(job_id).status == JobStatus.CANCELLED


def test_queue_depth_gives_back_its_database_connections(service_env, monkeypatch):
    """kombu's SQL transport leaves a session open per channel; queue_depth must end it itself
    rather than wait for the garbage collector (which the API runs rarely)."""
    import gc

    from kombu.transport.sqlalchemy import Channel

    from workers import celery_app

    monkeypatch.setattr(celery_app, "app", celery_app.make_celery(service_env))
    gc.disable()
    try:
        for _ in range(20):  # more than the transport's pool holds (5 + 10 overflow)
            assert celery_app.queue_depth(service_env.queue) == 0
        checked_out = sum(engine.pool.checkedout() for engine, _ in Channel._engines.values())
    finally:
        gc.enable()
    assert checked_out == 0

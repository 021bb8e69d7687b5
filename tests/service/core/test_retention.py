"""Deleting jobs and purging old ones: what goes, and what a registered version keeps."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select, text, update

from models.checkpoint import read_checkpoint
from models.spec.job import JobSpec
from service.core import broker, db, embedded_broker, jobs, model_registry, retention
from service.core.errors import Conflict, NotFound, NotReady
from service.core.references import resolve
from service.core.settings import Settings
from service.core.storage import StoredFile, get_storage
from service.core.tables import Checkpoint, EpochMetric, Job, JobEvent, JobStatus, ModelVersion, utcnow

SPEC = JobSpec.model_validate({"model": {"arch": "mlp"}, "data": {"dataset": "fashion-mnist"}})


def files_size(settings: Settings, job_id: str) -> int:
    """Bytes the job's files take on disk now."""
    return sum(path.stat().st_size for path in retention.job_dir(settings, job_id).rglob("*") if path.is_file())


def count(session, table, job_id) -> int:
    return session.scalar(select(func.count()).select_from(table).where(table.job_id == job_id))


def test_deleting_a_job_cascades_on_each_database(Session, tmp_path):
    settings = Settings(home=tmp_path)
    with Session() as session:
        job_id = jobs.create_job(session, spec=SPEC, task="classification").id
        jobs.claim_job(session, job_id=job_id, worker="w", lease_seconds=30, max_attempts=3)
        jobs.record_epoch(
            session,
            job_id=job_id,
            attempt=1,
            metrics={"epoch": 1, "train_loss": 0.5},
            checkpoint=StoredFile("checkpoints/" + f"{job_id}/epoch-0001.safetensors", 10),
        )
        session.commit()
        with pytest.raises(Conflict, match="cannot delete job .* it is running; cancel it first .*, then delete it"):
            retention.delete_job(session, job_id=job_id, settings=settings)
        session.rollback()
        jobs.finish_job(session, job_id=job_id, attempt=1, status=JobStatus.FAILED)
        session.commit()
        (tmp_path / "checkpoints" / job_id).mkdir(parents=True)
        (tmp_path / "checkpoints" / job_id / "epoch-0001.safetensors").write_bytes(b"0" * 10)
        assert files_size(settings, job_id) == 10
        retention.delete_job(session, job_id=job_id, settings=settings)
    with Session() as session:
        assert session.get(Job, job_id) is None
        assert [count(session, t, job_id) for t in (EpochMetric, Checkpoint, JobEvent)] == [0, 0, 0]
        with pytest.raises(NotFound):
            retention.delete_job(session, job_id=job_id, settings=settings)
    assert not (tmp_path / "checkpoints" / job_id).exists() and files_size(settings, job_id) == 0


def test_a_registered_version_outlives_its_deleted_job(service_env, trained_job):
    with db.session_scope() as session:
        version = model_registry.register(
            session, name="kept", job_id=trained_job, checkpoint="best", settings=service_env
        )
    assert files_size(service_env, trained_job) > 0
    with db.session_scope() as session:
        retention.delete_job(session, job_id=trained_job, settings=service_env)
    assert not (service_env.checkpoint_dir / trained_job).exists()
    with db.session_scope(write=False) as session:
        with pytest.raises(NotFound):
            jobs.require_job(session, job_id=trained_job)
        kept = session.scalars(select(ModelVersion).where(ModelVersion.name == "kept")).one()
        assert kept.job_id == trained_job  # where it came from is still on record
        target = resolve(session, reference="kept", settings=service_env)
    weights, meta = read_checkpoint(get_storage(service_env).fetch(target.file, what="kept"))
    assert weights and meta["epoch"] == version.epoch == 2


def test_a_queued_job_cannot_be_deleted(service_env):
    with db.session_scope() as session:
        job_id = jobs.create_job(session, spec=SPEC, task="classification").id
    with db.session_scope() as session, pytest.raises(Conflict, match="it is queued"):
        retention.delete_job(session, job_id=job_id, settings=service_env)


def test_retention_removes_old_unregistered_checkpoints_and_keeps_records(service_env, trained_job):
    service_env.retention_days = 1
    with db.session_scope(write=False) as session:
        assert retention.expired_jobs(session, settings=service_env) == []  # it finished just now
    with db.session_scope() as session:
        session.execute(update(Job).where(Job.id == trained_job).values(finished_at=utcnow() - timedelta(days=2)))
    assert retention.purge_expired(service_env) == [trained_job]
    assert retention.purge_expired(service_env) == []  # nothing left to purge
    assert not (service_env.checkpoint_dir / trained_job).exists()
    with db.session_scope(write=False) as session:
        job = jobs.require_job(session, job_id=trained_job)
        assert job.checkpoints == [] and len(jobs.get_metrics(session, job_id=trained_job)) == 3
    with db.session_scope(write=False) as session:  # predict and export say why there is nothing to serve
        with pytest.raises(NotReady, match="trained 3 epoch\\(s\\), whose checkpoints retention removed"):
            resolve(session, reference=f"job:{trained_job}", settings=service_env)
        with pytest.raises(NotFound, match="it keeps none: it trained 3 epoch"):
            resolve(session, reference=f"job:{trained_job}:2", settings=service_env)


def test_retention_spares_a_job_with_a_registered_version_and_is_off_by_default(service_env, trained_job):
    with db.session_scope() as session:
        session.execute(update(Job).where(Job.id == trained_job).values(finished_at=utcnow() - timedelta(days=400)))
    assert retention.purge_expired(service_env) == []  # no TRAINYARD_RETENTION_DAYS: keep everything
    service_env.retention_days = 1
    with db.session_scope() as session:
        model_registry.register(session, name="kept", job_id=trained_job, checkpoint="last", settings=service_env)
    assert retention.purge_expired(service_env) == []
    assert (service_env.checkpoint_dir / trained_job).exists()


def test_the_embedded_broker_forgets_consumed_messages(service_env):
    for _ in range(3):
        broker.send_train_job("00000000-0000-0000-0000-000000000000", service_env.queue)
    engine = db.make_engine(service_env.broker_url.removeprefix("sqla+"))
    with engine.begin() as connection:  # as the transport marks a message a worker took
        connection.execute(
            text(
                "UPDATE kombu_message SET visible = :no, timestamp = :at "
                "WHERE id IN (SELECT id FROM kombu_message ORDER BY id LIMIT 2)"
            ),
            {"no": False, "at": datetime.now() - timedelta(hours=3)},
        )  # its clock: local, naive
    assert embedded_broker.purge_consumed(service_env.broker_url, older_than_seconds=3600) == 2
    assert embedded_broker.purge_consumed(service_env.broker_url, older_than_seconds=3600) == 0
    assert broker.queue_depth(service_env.queue) == 1  # the message nobody took is still there
    engine.dispose()


def test_a_deleted_job_dataset_or_version_leaves_this_machines_cache_of_an_object_store(
    service_env, object_store, monkeypatch, tmp_path
):
    """The API that deletes them drops its cached copies with the objects (they stayed until the
    cache's bound pushed them out), but for a copy another record still names: a version registered
    from a checkpoint is the same bytes, one file in the cache."""
    import io

    from service.core import datasets
    from tests.support.checkpoints import write_model
    from tests.support.datagen import image_folder_zip

    for name, value in object_store.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(service_env, "storage_url", object_store.env()["TRAINYARD_STORAGE_URL"])
    storage = get_storage(service_env)
    stored = {}
    for kept in ("deleted", "registered"):
        with db.session_scope() as session:
            job_id = jobs.create_job(session, spec=SPEC, task="classification").id
            attempt = jobs.claim_job(session, job_id=job_id, worker="w", lease_seconds=30, max_attempts=3).attempt
        write_model(tmp_path / f"{kept}.safetensors", seed=len(stored))  # two jobs, two different files
        stored[kept] = (
            job_id,
            storage.put(f"checkpoints/{job_id}/epoch-0001.safetensors", tmp_path / f"{kept}.safetensors"),
        )
        with db.session_scope() as session:
            jobs.record_epoch(session, job_id=job_id, attempt=attempt, checkpoint=stored[kept][1], metrics={"epoch": 1})
            jobs.finish_job(session, job_id=job_id, attempt=attempt, status=JobStatus.SUCCEEDED)
    with db.session_scope() as session:
        model_registry.register(
            session, name="kept", job_id=stored["registered"][0], checkpoint=1, settings=service_env
        )
    archive = image_folder_zip(["a", "b"], per_class=5, test_per_class=2)
    with db.session_scope() as session:
        dataset = datasets.store_upload(
            session, data=io.BytesIO(archive), name="few", options=datasets.UploadOptions(), settings=service_env
        )
        dataset_id, decoded = dataset.id, dataset.file
    (deleted_job, deleted), (registered_job, registered) = stored["deleted"], stored["registered"]
    assert storage.cached(deleted) and storage.cached(registered) and storage.cached(decoded)
    for job_id in (deleted_job, registered_job):
        with db.session_scope() as session:
            retention.delete_job(session, job_id=job_id, settings=service_env)
    with db.session_scope() as session:
        datasets.delete_dataset(session, dataset_id=dataset_id, settings=service_env)
    assert not storage.cached(deleted) and not storage.cached(decoded)
    assert storage.store.head(deleted.key) is None and storage.store.head(decoded.key) is None
    assert storage.cached(registered)  # the version's file: the same bytes
    with db.session_scope() as session:
        model_registry.delete_version(session, name="kept", version=1, settings=service_env)
    assert not storage.cached(registered)

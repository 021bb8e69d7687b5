"""Fixtures the whole suite shares: small real datasets on disk, a private trainyard home (its
settings, database and a finished job) for code run in this process, and an S3 server of a test's
own. The running stacks that the end-to-end tests share are in tests/e2e/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.core import broker, db, studies
from service.core import settings as settings_module
from service.core.migrate import upgrade
from service.core.storage import StoredFile
from tests.support.datagen import make_cifar10, make_idx_dataset
from tests.support.object_store import SeaweedS3, require_seaweed
from tests.support.servers import PostgresSchema, PrivatePostgres, postgres_available, require


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data folder holding a small learnable FashionMNIST (gzipped IDX), a CIFAR-10 stand-in
    (binary layout, 400 colour images) and no MNIST.

    4000 training images: quick for a linear model, a few seconds an epoch for LeNet with tiny
    batches, which is what the crash and cancel tests need to catch a job mid-epoch.
    """
    root = tmp_path_factory.mktemp("data")
    make_idx_dataset(root, "FashionMNIST", n_train=4000, n_test=200, gz=True)
    make_cifar10(root, "bin", per_batch=80, n_test=100)
    return root


def _clear_caches():
    for cached in (settings_module.get_settings, db.get_engine, db.get_sessionmaker):
        cached.cache_clear()


def _private_home(tmp_path, monkeypatch, data_dir, database_url: str | None = None):
    for key in ("TRAINYARD_DATABASE_URL", "TRAINYARD_BROKER_URL", "TRAINYARD_CHECKPOINT_DIR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TRAINYARD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TRAINYARD_DATA_DIR", str(data_dir))
    if database_url:
        monkeypatch.setenv("TRAINYARD_DATABASE_URL", database_url)
    _clear_caches()
    settings = settings_module.get_settings()
    settings.ensure_dirs()
    upgrade()
    monkeypatch.setattr(broker, "app", broker.make_celery(settings))  # publish to this home's broker
    yield settings
    studies.close()
    db.get_engine().dispose()
    _clear_caches()


@pytest.fixture
def service_env(tmp_path, monkeypatch, data_dir):
    """Settings, database and folders of a private trainyard home, for code run in this process."""
    yield from _private_home(tmp_path, monkeypatch, data_dir)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def service_env_on(request, tmp_path, monkeypatch, data_dir):
    """service_env on the embedded database, then on a private schema of the real PostgreSQL server."""
    if request.param == "sqlite":
        yield from _private_home(tmp_path, monkeypatch, data_dir)
        return
    require(postgres_available(), "PostgreSQL is not reachable on 127.0.0.1:5432")
    with PostgresSchema() as schema:
        yield from _private_home(tmp_path, monkeypatch, data_dir, schema.url)


@pytest.fixture
def private_postgres():
    """A PostgreSQL server of the test's own, which the test may stop and start (an outage)."""
    server = PrivatePostgres()
    require(server.available, "PostgreSQL's server programs (initdb, pg_ctl) are not installed")
    try:
        yield server.init()
    finally:
        server.remove()


@pytest.fixture
def service_env_on_private_postgres(tmp_path, monkeypatch, data_dir, private_postgres):
    """service_env on private_postgres."""
    yield from _private_home(tmp_path, monkeypatch, data_dir, private_postgres.url)


@pytest.fixture
def object_store():
    """A SeaweedFS S3 server of the test's own (weed mini: one bucket, one key pair, a private data
    folder, loopback ports), stopped and deleted after it; the test may stop and restart it. About
    1.3 s to start and 1.2 s to stop. Skipped where the weed binary is missing, a failure under
    CI=true. Its env() is what a trainyard process needs to use it."""
    require_seaweed()
    with SeaweedS3() as server:
        yield server


@pytest.fixture
def trained_job_twin(trained_job) -> str:
    """A job recorded beside trained_job whose id begins with the same 8 characters (and no more)."""
    from service.core.tables import Job

    twin = trained_job[:8] + ("-0000" if trained_job[8:13] != "-0000" else "-1111") + "-4000-8000-000000000000"
    with db.session_scope() as session:
        session.add(Job(id=twin, spec={}, task="classification", epochs=1))
    return twin


@pytest.fixture
def trained_job(service_env):
    """A finished classification job with a validation split, recorded in SQL with a real checkpoint
    file per epoch: validation accuracy 0.5, 0.9, 0.7, so its best epoch is 2 and its last is 3
    (test accuracy 0.6, 0.5, 0.95 would choose 3: best is chosen on validation, never on test)."""
    import torch

    from models.checkpoint import checkpoint_name, write_checkpoint
    from models.data.contract import InputContract
    from models.nets.archs import build_model
    from models.spec.job import JobSpec
    from service.core import jobs
    from service.core.tables import JobStatus

    spec = JobSpec.model_validate(
        {
            "model": {"arch": "softmax_regression"},
            "data": {"dataset": "fashion-mnist", "val_fraction": 0.1},
            "epochs": 3,
        }
    )
    with db.session_scope() as session:
        job_id = jobs.create_job(session, spec=spec, task="classification").id
    with db.session_scope() as session:
        attempt = jobs.claim_job(session, job_id=job_id, worker="test", lease_seconds=30, max_attempts=3).attempt
    for epoch, (accuracy, test_accuracy) in enumerate(((0.5, 0.6), (0.9, 0.5), (0.7, 0.95)), start=1):
        torch.manual_seed(epoch)
        relative = f"{job_id}/{checkpoint_name(epoch)}"
        size = write_checkpoint(
            service_env.checkpoint_dir / relative,
            build_model(spec.model, (1, 28, 28), 10).state_dict(),
            {
                "spec": spec.model_dump(mode="json"),
                "task": "classification",
                "classes": [str(i) for i in range(10)],
                "input_shape": [1, 28, 28],
                "epoch": epoch,
                "metrics": {"val_acc": accuracy, "test_acc": test_accuracy},
                "input": InputContract.image(1, 28, 28, [str(i) for i in range(10)]).to_json(),
            },
        )
        with db.session_scope() as session:
            jobs.record_epoch(
                session,
                job_id=job_id,
                attempt=attempt,
                checkpoint=StoredFile("checkpoints/" + relative, size),
                metrics={
                    "epoch": epoch,
                    "train_loss": 1.0 / epoch,
                    "test_loss": 1.0,
                    "test_acc": test_accuracy,
                    "val_acc": accuracy,
                },
            )
    with db.session_scope() as session:
        jobs.finish_job(session, job_id=job_id, attempt=attempt, status=JobStatus.SUCCEEDED)
    return job_id

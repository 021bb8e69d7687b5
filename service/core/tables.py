"""ORM tables. Schema changes go through Alembic (migrations/).

jobs             a training job: its spec, status, attempt and lease (the source of truth)
job_events       each status transition of a job, in order
job_logs         what a job's worker logged while running it
epoch_metrics    one row per job and epoch: losses, accuracies, timing
checkpoints      one row per job and epoch kept: the checkpoint file's key, size and sha256
sweeps           a base spec with varied values; its trials and how many have their job
datasets         uploaded datasets (their decoded tensors live in the datasets folder)
model_versions   registered models: immutable copies of a checkpoint, or imported weights
model_aliases    movable names (such as `production`) for one version of a model
evaluation_reports  a job checkpoint's evaluation report, computed once
workers          live training workers: their queues, devices, weights and datasets, renewed by heartbeat
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column, relationship

from service.core.storage import StoredFile


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on every database (SQLite stores none, so it is added back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given; use an aware UTC datetime")
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)  # PostgreSQL answers in its session's time zone


class Base(DeclarativeBase):
    pass


class JobStatus:
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    PRUNED = "pruned"  # a sweep's pruner stopped it after an epoch: it did worse than its peers
    ALL = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLING, CANCELLED, PRUNED)
    FINAL = (SUCCEEDED, FAILED, CANCELLED, PRUNED)
    ACTIVE = (RUNNING, CANCELLING)  # a worker holds the job
    RESUMABLE = (CANCELLED, FAILED, PRUNED)  # a user may queue it again to train on


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("idempotency_key", name="uq_jobs_idempotency_key"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), index=True, default=JobStatus.QUEUED)
    reason: Mapped[str | None] = mapped_column(String(50))
    error: Mapped[str | None] = mapped_column(Text)
    spec: Mapped[dict] = mapped_column(JSON)
    task: Mapped[str] = mapped_column(String(20))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    epochs: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str | None] = mapped_column(String(200))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    environment: Mapped[dict | None] = mapped_column(JSON)
    cross_validation: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The largest share of its memory budget, or of the machine's memory, that the running attempt
    # held in the interval its worker last reported: a lost attempt near 1 was killed for memory.
    memory_peak: Mapped[float | None] = mapped_column(Float)
    # What the running attempt's worker waits for, as its last heartbeat said (the store, while it
    # retries it); cleared by the next heartbeat that waits for nothing and by every transition.
    stalled: Mapped[str | None] = mapped_column(Text)
    warnings: Mapped[list | None] = mapped_column(JSON)  # what its submission warned of
    # The training state its next attempt resumes from: {"key", "size", "sha256"} in the store.
    resume_state: Mapped[dict | None] = mapped_column(JSON)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The sweep that created the job, and which of its trials it runs.
    sweep_id: Mapped[str | None] = mapped_column(ForeignKey("sweeps.id", ondelete="SET NULL"), index=True)
    sweep_trial: Mapped[int | None] = mapped_column(Integer)

    metrics: Mapped[list[EpochMetric]] = relationship(
        back_populates="job", order_by="EpochMetric.epoch", cascade="all, delete-orphan"
    )
    checkpoints: Mapped[list[Checkpoint]] = relationship(
        back_populates="job", order_by="Checkpoint.epoch", cascade="all, delete-orphan"
    )
    events: Mapped[list[JobEvent]] = relationship(
        back_populates="job", order_by="JobEvent.id", cascade="all, delete-orphan"
    )
    # Log lines stay out of the ORM's cascade: the database deletes them with the job.


class Sweep(Base):
    """Jobs made from one base spec with some values varied: a grid, random draws or TPE's."""

    __tablename__ = "sweeps"
    __table_args__ = (UniqueConstraint("idempotency_key", name="uq_sweeps_idempotency_key"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    request: Mapped[dict] = mapped_column(JSON)  # as submitted
    # [{"params": {dotted path: value}, "number": its Optuna trial's, if adaptive}], in order; a
    # TPE sweep's grows as its trials are drawn.
    trials: Mapped[list] = mapped_column(JSON)
    size: Mapped[int] = mapped_column(Integer)  # how many trials it runs in all
    launched: Mapped[int] = mapped_column(Integer, default=0)  # trials[:launched] have their jobs
    metric: Mapped[str] = mapped_column(String(30))
    mode: Mapped[str] = mapped_column(String(3))
    max_parallel: Mapped[int | None] = mapped_column(Integer)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Why it launches no more trials although nobody cancelled it: its last trials failed alike.
    stopped: Mapped[str | None] = mapped_column(Text)
    # The Optuna study that samples its trials (tpe) or prunes them, in Optuna's own storage.
    study: Mapped[str | None] = mapped_column(String(100))
    # Once every trial it will run has ended (and its study was told): nothing is left to do.
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)


class JobEvent(Base):
    """One status transition of a job: the job's history, in order."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    from_status: Mapped[str | None] = mapped_column(String(20))
    to_status: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(String(50))
    attempt: Mapped[int] = mapped_column(Integer)
    detail: Mapped[dict | None] = mapped_column(JSON)

    job: Mapped[Job] = relationship(back_populates="events")


class JobLog(Base):
    """One line a job's worker logged while running it (a traceback is one multi-line entry)."""

    __tablename__ = "job_logs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    level: Mapped[str] = mapped_column(String(10))
    logger: Mapped[str] = mapped_column(String(100))
    message: Mapped[str] = mapped_column(Text)


class PerJobEpoch:
    """The key of a table with one row per job and epoch: metrics and checkpoints are upserted on it."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True, sort_order=-1)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True, sort_order=-1)
    epoch: Mapped[int] = mapped_column(Integer, sort_order=-1)

    @declared_attr.directive
    def __table_args__(cls) -> tuple:
        return (UniqueConstraint("job_id", "epoch", name=f"uq_{cls.__tablename__}_job_epoch"),)


class EpochMetric(PerJobEpoch, Base):
    __tablename__ = "epoch_metrics"

    train_loss: Mapped[float | None] = mapped_column(Float)
    train_acc: Mapped[float | None] = mapped_column(Float)
    test_loss: Mapped[float | None] = mapped_column(Float)
    test_acc: Mapped[float | None] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    val_acc: Mapped[float | None] = mapped_column(Float)
    seconds: Mapped[float | None] = mapped_column(Float)
    samples_per_second: Mapped[float | None] = mapped_column(Float)
    lr: Mapped[float | None] = mapped_column(Float)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    job: Mapped[Job] = relationship(back_populates="metrics")


class Checkpoint(PerJobEpoch, Base):
    __tablename__ = "checkpoints"

    path: Mapped[str] = mapped_column(String(500))  # in the store's checkpoints area
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str | None] = mapped_column(String(64))  # None: recorded before digests were
    metrics: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    job: Mapped[Job] = relationship(back_populates="checkpoints")

    @property
    def file(self) -> StoredFile:
        return StoredFile(f"checkpoints/{self.path}", self.size_bytes, self.sha256)


class DatasetStatus:
    PROCESSING = "processing"  # a large upload being decoded in the background
    READY = "ready"
    FAILED = "failed"


class StoredDataset(Base):
    """An uploaded dataset; its decoded tensors are the stored file datasets/<id>.safetensors. What
    decoding finds (kind, task, classes, shape, counts) is null while it is processing."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default=DatasetStatus.READY, server_default=DatasetStatus.READY)
    error: Mapped[str | None] = mapped_column(Text)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # renewed while it is decoded
    kind: Mapped[str | None] = mapped_column(String(20))
    task: Mapped[str | None] = mapped_column(String(20))
    classes: Mapped[list | None] = mapped_column(JSON)
    input_shape: Mapped[list | None] = mapped_column(JSON)
    columns: Mapped[list | None] = mapped_column(JSON)  # a CSV's feature columns, in the order models take them
    color: Mapped[str | None] = mapped_column(String(20))  # rgb | grayscale for images
    warnings: Mapped[list | None] = mapped_column(JSON)
    num_train: Mapped[int | None] = mapped_column(Integer)
    num_test: Mapped[int | None] = mapped_column(Integer)
    checksum: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)  # of the stored file
    file_sha256: Mapped[str | None] = mapped_column(String(64))  # of the stored file; None: recorded before
    # While processing: the stored archive being decoded ({"size", "sha256"}; key upload_key(id)).
    upload_file: Mapped[dict | None] = mapped_column(JSON)
    # sha256 of the uploaded archive with its name and options: the same upload again finds this one.
    upload_digest: Mapped[str | None] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    @property
    def file(self) -> StoredFile:
        return StoredFile(dataset_key(self.id), self.size_bytes, self.file_sha256)


def dataset_key(dataset_id: str) -> str:
    return f"datasets/{dataset_id}.safetensors"


class ModelVersion(Base):
    """An immutable registered model: a frozen copy of one job checkpoint."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_versions_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    # The job whose checkpoint was registered (kept after the job is deleted: the version holds
    # its own copy); None for weights imported from elsewhere.
    job_id: Mapped[str | None] = mapped_column(String(36), index=True)
    epoch: Mapped[int | None] = mapped_column(Integer)  # of the job it was registered from; None: imported
    selector: Mapped[str] = mapped_column(String(20))  # what was asked for: best, last or an epoch
    path: Mapped[str] = mapped_column(String(500))  # in the store's registry area
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))  # None: recorded before digests were
    task: Mapped[str] = mapped_column(String(20))
    classes: Mapped[list | None] = mapped_column(JSON)
    input_shape: Mapped[list] = mapped_column(JSON)
    metrics: Mapped[dict | None] = mapped_column(JSON)
    # Predict withholds a label whose probability is below it, unless the request gives its own.
    threshold: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    @property
    def file(self) -> StoredFile:
        return StoredFile(f"registry/{self.path}", self.size_bytes, self.sha256)


class ModelAlias(Base):
    """A movable name (such as `production`) for one version of a model."""

    __tablename__ = "model_aliases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class EvaluationReport(Base):
    """A job checkpoint's evaluation report on the job's test set (models/inference/evaluation.py),
    computed once by whichever API process was asked first, and kept after the test set is gone."""

    __tablename__ = "evaluation_reports"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    checkpoint_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    report: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class SignedOutSession(Base):
    """A dashboard session signed out before it expired: its cookie opens nothing any more (a
    session is otherwise a signed cookie, kept by no table; see service/api/auth.py)."""

    __tablename__ = "signed_out_sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class MarkState:
    CURRENT = "current"  # in the service's store: a worker's store must hold it
    NEXT = "next"  # in the store `storage migrate` copies to, until an API starts on that store
    LEFT = "left"  # in a store the service moved away from: a worker's store must not be that one
    DROPPED = "dropped"  # in a store `storage migrate` copied to, the service having moved to another or withdrawn
    GONE = (LEFT, DROPPED)


class StoreMark(Base):
    """A mark the API leaves in its store (service/core/storage/check.py): a worker whose store
    lacks the current one is not the service's. One current row; two only if two processes chose
    one at once."""

    __tablename__ = "store_marks"

    token: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    state: Mapped[str] = mapped_column(String(8), default=MarkState.CURRENT, server_default=MarkState.CURRENT)
    store_url: Mapped[str | None] = mapped_column(String(1000))  # where it was left, for people
    changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # when it became current or left


class Worker(Base):
    """A live training worker: what it serves and holds, renewed by its heartbeat."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)  # its Celery node name
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[list] = mapped_column(JSON)
    devices: Mapped[list] = mapped_column(JSON)  # [{"name", "kind": cpu|cuda, "memory_bytes"}]
    torch: Mapped[str] = mapped_column(String(50))
    cuda: Mapped[str | None] = mapped_column(String(50))
    current_job: Mapped[str | None] = mapped_column(String(36))
    weights: Mapped[list | None] = mapped_column(JSON)  # pretrained weights files it has on disk
    datasets: Mapped[list | None] = mapped_column(JSON)  # built-in datasets whose files it has
    processes: Mapped[int | None] = mapped_column(Integer)  # CPU processes it gives one job at most
    store: Mapped[str | None] = mapped_column(String(1000))  # the URL of the store it reads and writes
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


METRIC_FIELDS = (
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "val_loss",
    "val_acc",
    "seconds",
    "samples_per_second",
    "lr",
)

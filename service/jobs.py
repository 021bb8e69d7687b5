"""Job records in SQL: create, read, claim, record epochs and checkpoints, finish.

The SQL row is the source of truth for a job; the broker only carries its id.
"""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, selectinload

from models.spec import JobSpec
from service.tables import METRIC_FIELDS, Checkpoint, EpochMetric, Job, JobStatus, utcnow


def create_job(session: Session, *, spec: JobSpec) -> Job:
    """Insert a queued job for a validated spec."""
    job = Job(
        name=spec.name,
        status=JobStatus.QUEUED,
        spec=spec.model_dump(mode="json"),
        task=spec.task,
        epochs=spec.epochs,
    )
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, *, job_id: str) -> Job | None:
    """One job with its checkpoints, or None."""
    return session.get(Job, job_id, options=[selectinload(Job.checkpoints)])


def list_jobs(session: Session, *, status: str | None, limit: int, offset: int) -> tuple[list[Job], int]:
    """A page of jobs, newest first, and the total count for the filter."""
    query = select(Job)
    count = select(func.count()).select_from(Job)
    if status:
        query = query.where(Job.status == status)
        count = count.where(Job.status == status)
    query = query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
    jobs = list(session.scalars(query.options(selectinload(Job.checkpoints))))
    return jobs, session.scalar(count)


def get_metrics(session: Session, *, job_id: str) -> list[EpochMetric]:
    """Per-epoch metrics of a job in epoch order."""
    return list(session.scalars(select(EpochMetric).where(EpochMetric.job_id == job_id).order_by(EpochMetric.epoch)))


def latest_metric(session: Session, *, job_id: str) -> EpochMetric | None:
    return session.scalars(
        select(EpochMetric).where(EpochMetric.job_id == job_id).order_by(EpochMetric.epoch.desc()).limit(1)
    ).first()


def monitored(task: str) -> tuple[str, str]:
    """The metric that decides the best checkpoint, and whether higher is better ('max')."""
    return ("test_acc", "max") if task == "classification" else ("test_loss", "min")


def best_checkpoint(job: Job) -> Checkpoint | None:
    """The checkpoint with the best monitored metric; the earliest wins a tie."""
    metric, mode = monitored(job.task)
    scored = [c for c in job.checkpoints if c.metrics and c.metrics.get(metric) is not None]
    if not scored:
        return None
    sign = -1 if mode == "max" else 1
    return min(scored, key=lambda c: (sign * c.metrics[metric], c.epoch))


def last_checkpoint(job: Job) -> Checkpoint | None:
    return max(job.checkpoints, key=lambda c: c.epoch, default=None)


def claim_job(session: Session, *, job_id: str, worker: str) -> bool:
    """Atomically move a queued job to running; False if someone else has it or it is gone."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.RUNNING, attempt=Job.attempt + 1, worker=worker,
                started_at=func.coalesce(Job.started_at, now), heartbeat_at=now)
    )
    return result.rowcount == 1


def _upsert(session: Session, table, values: dict, conflict: list[str], update_fields: list[str]) -> None:
    dialect = session.get_bind().dialect.name
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(dialect)
    if insert is None:
        raise RuntimeError(f"unsupported database dialect {dialect!r}")
    stmt = insert(table).values(**values)
    stmt = stmt.on_conflict_do_update(index_elements=conflict,
                                      set_={f: stmt.excluded[f] for f in update_fields})
    session.execute(stmt)


def record_epoch(session: Session, *, job_id: str, metrics: dict,
                 checkpoint_path: str, checkpoint_size: int) -> None:
    """Upsert one epoch's metrics and checkpoint row and advance the job's epoch counter."""
    epoch = metrics["epoch"]
    row = {field: metrics.get(field) for field in METRIC_FIELDS}
    _upsert(session, EpochMetric.__table__, {"job_id": job_id, "epoch": epoch, "recorded_at": utcnow(), **row},
            ["job_id", "epoch"], [*METRIC_FIELDS, "recorded_at"])
    _upsert(session, Checkpoint.__table__,
            {"job_id": job_id, "epoch": epoch, "path": checkpoint_path, "size_bytes": checkpoint_size,
             "metrics": row, "created_at": utcnow()},
            ["job_id", "epoch"], ["path", "size_bytes", "metrics", "created_at"])
    session.execute(update(Job).where(Job.id == job_id)
                    .values(epoch=epoch, heartbeat_at=utcnow()))


def heartbeat(session: Session, *, job_id: str) -> None:
    """Renew a running job's lease."""
    session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING)
                    .values(heartbeat_at=utcnow()))


def set_environment(session: Session, *, job_id: str, environment: dict) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(environment=environment))


def finish_job(session: Session, *, job_id: str, status: str, reason: str | None = None,
               error: str | None = None) -> None:
    """Move a running job to a final state."""
    session.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING)
        .values(status=status, reason=reason, error=error, finished_at=utcnow())
    )


def fail_queued_job(session: Session, *, job_id: str, reason: str, error: str) -> None:
    """Fail a job that never started (e.g. its message could not be sent)."""
    session.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.FAILED, reason=reason, error=error, finished_at=utcnow())
    )

"""Job records in SQL: create, read, and move through the job life cycle.

The SQL row is the source of truth for a job; the broker only carries its id. Every status
change is one conditional UPDATE (so concurrent actors cannot both win) plus a row in
job_events. Writes by a worker are fenced by the attempt number it claimed: once a job has
been handed to a later attempt, the earlier worker can no longer change it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, selectinload

from models.spec.job import EarlyStoppingSpec, JobSpec
from service.core import evaluation_reports, job_logs
from service.core.errors import Conflict, NotFound
from service.core.ids import not_found, resolve_id
from service.core.storage import StoredFile
from service.core.tables import METRIC_FIELDS, Checkpoint, EpochMetric, Job, JobEvent, JobStatus, utcnow


class InvalidTransition(Conflict):
    """The job is not in a state that allows the requested change."""

    def __init__(self, job: Job, action: str):
        hint = _next_step(action, job.status, job.id)
        super().__init__(f"cannot {action} job {job.id}: {_where(job.status)}" + (f"; {hint}" if hint else ""))
        self.status = job.status


def _where(status: str) -> str:
    """Where a job is, as a sentence says it: "it is running", "it succeeded"."""
    ended = {
        JobStatus.SUCCEEDED: "it succeeded",
        JobStatus.FAILED: "it failed",
        JobStatus.CANCELLED: "it was cancelled",
    }
    return ended.get(status, f"it was {status}" if status in JobStatus.FINAL else f"it is {status}")


def _next_step(action: str, status: str, job_id: str) -> str:
    """What a user can do instead of an action the job's state refuses."""
    if action == "delete" and status in (JobStatus.QUEUED, JobStatus.RUNNING):
        return f"cancel it first (POST /v1/jobs/{job_id}/cancel, or trainyard jobs cancel), then delete it"
    if action == "delete" and status == JobStatus.CANCELLING:
        return "it stops after its current batch; delete it once it is cancelled"
    if action == "cancel" and status in JobStatus.RESUMABLE:
        return "resume it to train on"
    if action == "resume" and status == JobStatus.SUCCEEDED:
        return 'submit a new job (init_from: {"job_id": ...}) to train on from it'
    return ""


class LeaseLost(Exception):
    """This worker's attempt no longer owns the job (it was re-queued or cancelled away)."""


def create_job(
    session: Session,
    *,
    spec: JobSpec,
    task: str,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    sweep: tuple[str, int] | None = None,
    warnings: list[str] | None = None,
) -> Job:
    """Insert a queued job for a validated spec (`sweep`: the sweep and trial it runs; `warnings`:
    what will make it fail unless someone acts, kept with it)."""
    job = Job(
        name=spec.name,
        status=JobStatus.QUEUED,
        spec=spec.model_dump(mode="json"),
        task=task,
        epochs=spec.epochs,
        attempt=0,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        dispatched_at=utcnow(),
        sweep_id=sweep[0] if sweep else None,
        sweep_trial=sweep[1] if sweep else None,
        warnings=warnings or None,
    )
    session.add(job)
    session.flush()
    session.add(JobEvent(job_id=job.id, from_status=None, to_status=JobStatus.QUEUED, attempt=0))
    return job


def get_job(session: Session, *, job_id: str) -> Job | None:
    """One job with its checkpoints and events, or None."""
    return session.get(
        Job, job_id, options=[selectinload(Job.checkpoints), selectinload(Job.events)], populate_existing=True
    )


def require_job(session: Session, *, job_id: str) -> Job:
    """One job, named by its id or a unique prefix of it, with its checkpoints and events; NotFound
    if there is none (AmbiguousId, a Conflict, if the prefix begins several)."""
    job = get_job(session, job_id=resolve_id(session, Job, job_id, kind="job"))
    if job is None:
        raise NotFound(not_found("job", job_id))
    return job


def get_job_by_idempotency_key(session: Session, *, key: str) -> Job | None:
    return session.scalars(select(Job).where(Job.idempotency_key == key)).first()


def list_jobs(session: Session, *, status: Sequence[str] | None, limit: int, offset: int) -> tuple[list[Job], int]:
    """A page of jobs, newest first (of any of the statuses given), and the total count for the filter."""
    query = select(Job)
    count = select(func.count()).select_from(Job)
    if status:
        query = query.where(Job.status.in_(status))
        count = count.where(Job.status.in_(status))
    query = query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
    jobs = list(session.scalars(query.options(selectinload(Job.checkpoints), selectinload(Job.events))))
    return jobs, session.scalar(count)


def get_metrics(session: Session, *, job_id: str) -> list[EpochMetric]:
    """Per-epoch metrics of a job in epoch order."""
    return list(session.scalars(select(EpochMetric).where(EpochMetric.job_id == job_id).order_by(EpochMetric.epoch)))


def latest_metric(session: Session, *, job_id: str) -> EpochMetric | None:
    return latest_metrics(session, job_ids=[job_id]).get(job_id)


def latest_metrics(session: Session, *, job_ids: list[str]) -> dict[str, EpochMetric]:
    """Each job's newest epoch row, in one query (for pages of jobs)."""
    if not job_ids:
        return {}
    newest = (
        select(EpochMetric.job_id, func.max(EpochMetric.epoch).label("epoch"))
        .where(EpochMetric.job_id.in_(job_ids))
        .group_by(EpochMetric.job_id)
        .subquery()
    )
    rows = session.scalars(
        select(EpochMetric).join(
            newest, and_(EpochMetric.job_id == newest.c.job_id, EpochMetric.epoch == newest.c.epoch)
        )
    )
    return {row.job_id: row for row in rows}


def monitored(job: Job) -> tuple[str, str] | None:
    """The metric that decides the best checkpoint, and whether higher is better ('max').

    Early stopping's metric when the spec has one; else validation accuracy (validation loss for
    regression) when the job holds out a validation split; else None: without validation data the
    best checkpoint is the last one, so that no reported result is selected on the test set.
    (A k-fold job's final model trains on every training example, so it has no validation split.)
    """
    spec = job.spec or {}
    stopping = spec.get("early_stopping")
    if stopping:
        spec_ = EarlyStoppingSpec.model_validate(stopping)
        return spec_.metric, spec_.direction
    if (spec.get("data") or {}).get("val_fraction"):
        return ("val_acc", "max") if job.task == "classification" else ("val_loss", "min")
    return None


def best_selected_on(job: Job) -> str:
    """What `best` means for this job: the metric it is chosen on, or last_epoch."""
    chosen = monitored(job)
    return chosen[0] if chosen else "last_epoch"


# An accuracy often ties on a small validation set; the lower loss on the same data breaks the tie.
TIE_BREAKERS = {"val_acc": "val_loss", "train_acc": "train_loss", "test_acc": "test_loss"}


def best_checkpoint(job: Job) -> Checkpoint | None:
    """The checkpoint with the best monitored metric (on a tie, the lower matching loss, then the
    earliest), or the last one."""
    chosen = monitored(job)
    if chosen is None:
        return last_checkpoint(job)
    metric, mode = chosen
    scored = [c for c in job.checkpoints if c.metrics and c.metrics.get(metric) is not None]
    if not scored:
        return None
    sign = -1 if mode == "max" else 1

    def rank(checkpoint: Checkpoint) -> tuple:
        loss = checkpoint.metrics.get(TIE_BREAKERS.get(metric, ""))
        return sign * checkpoint.metrics[metric], math.inf if loss is None else loss, checkpoint.epoch

    return min(scored, key=rank)


def last_checkpoint(job: Job) -> Checkpoint | None:
    return max(job.checkpoints, key=lambda c: c.epoch, default=None)


def checkpoints_to_drop(job: Job, *, needed: frozenset[int] = frozenset()) -> list[Checkpoint]:
    """The checkpoints the job's spec says not to keep: all but the best and the last (the default),
    none, or all but the last N; never those of the epochs in `needed`. A spec recorded before the
    policy was (it has no `checkpoints`) keeps all, as it did then."""
    keep = ((job.spec or {}).get("checkpoints") or {"keep": "all"}).get("keep", "best_and_last")
    ordered = sorted(job.checkpoints, key=lambda c: c.epoch)
    if keep == "all":
        return []
    if isinstance(keep, int):
        dropped = ordered[:-keep]
    else:
        kept = {c.epoch for c in (best_checkpoint(job), last_checkpoint(job)) if c is not None}
        dropped = [c for c in ordered if c.epoch not in kept]
    return [c for c in dropped if c.epoch not in needed]


def epochs_to_start_from(session: Session, *, job_id: str) -> frozenset[int]:
    """The epochs of a job whose checkpoints unfinished jobs start from (init_from job:ID:EPOCH)."""
    unfinished = session.scalars(select(Job.spec).where(Job.status.not_in(JobStatus.FINAL)))
    epochs = set()
    for spec in unfinished:
        start = (spec or {}).get("init_from") or {}
        named = str(start.get("job_id") or "").lower()  # the id or a unique prefix of it
        if named and job_id.startswith(named) and str(start.get("checkpoint", "")).isdigit():
            epochs.add(int(start["checkpoint"]))
    return frozenset(epochs)


def drop_checkpoints(session: Session, *, job_id: str) -> list[StoredFile]:
    """Delete the rows of the checkpoints the job's policy drops; returns their files, to delete
    after the commit (a crash in between leaves files no row names, never a row without its file)."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        return []
    dropped = checkpoints_to_drop(job, needed=epochs_to_start_from(session, job_id=job_id))
    for checkpoint in dropped:
        session.delete(checkpoint)
    if dropped:
        evaluation_reports.forget_reports_of_dropped(session, job_id=job_id)
    return [checkpoint.file for checkpoint in dropped]


def set_resume_state(session: Session, *, job_id: str, attempt: int, state: StoredFile | None) -> StoredFile | None:
    """Record the training state the job's next attempt resumes from (None: none); returns the
    state recorded before, whose file may go. LeaseLost if this attempt no longer owns the job."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.attempt != attempt or job.status not in JobStatus.ACTIVE:
        raise LeaseLost(f"attempt {attempt} no longer owns job {job_id}")
    before = resume_state(job)
    job.resume_state = None if state is None else {"key": state.key, "size": state.size, "sha256": state.sha256}
    return before


def clear_resume_state(session: Session, *, job_id: str) -> StoredFile | None:
    """Forget the state a finished job would resume from; returns it, whose file may go."""
    job = session.get(Job, job_id, populate_existing=True)
    before = resume_state(job) if job is not None else None
    if before is not None:
        job.resume_state = None
    return before


def resume_state(job: Job) -> StoredFile | None:
    """The stored training state the job's next attempt resumes from, if it has one."""
    state = job.resume_state
    return StoredFile(state["key"], state.get("size"), state.get("sha256")) if state else None


def held_bytes(job: Job) -> int:
    """The bytes of stored files the job holds: its checkpoints and resumable state."""
    state = resume_state(job)
    return sum(c.size_bytes or 0 for c in job.checkpoints) + ((state.size or 0) if state else 0)


def transition(
    session: Session,
    *,
    job_id: str,
    to: str,
    from_any: tuple[str, ...],
    owner_attempt: int | None = None,
    where: tuple = (),
    reason: str | None = None,
    error: str | None = None,
    detail: dict | None = None,
    **values,
) -> str | None:
    """Move a job from one of `from_any` to `to`, logging the event; returns the old status or None.

    With `owner_attempt`, only that attempt's worker may make the change; `where` adds further
    conditions; `values` sets other columns in the same UPDATE.
    """
    for from_status in from_any:
        condition = [Job.id == job_id, Job.status == from_status, *where]
        if owner_attempt is not None:
            condition.append(Job.attempt == owner_attempt)
        result = session.execute(
            update(Job).where(*condition).values(status=to, reason=reason, error=error, stalled=None, **values)
        )
        if result.rowcount == 1:
            current_attempt = session.scalar(select(Job.attempt).where(Job.id == job_id))
            session.add(
                JobEvent(
                    job_id=job_id,
                    from_status=from_status,
                    to_status=to,
                    reason=reason,
                    attempt=current_attempt,
                    detail=detail,
                )
            )
            session.flush()
            return from_status
    return None


@dataclass
class Claim:
    attempt: int
    spec: dict
    resumed_by_user: bool = False  # queued again from cancelled or failed by POST .../resume


def claim_job(
    session: Session,
    *,
    job_id: str,
    worker: str,
    lease_seconds: float,
    max_attempts: int,
    oom_fraction: float = 0.9,
    pid: int | None = None,
    instance: str | None = None,
) -> Claim | None:
    """Take a queued job (or one whose worker's lease expired) for this worker; None if not ours.
    The transition names the worker, and where given `pid`, the process that trains the job, and
    `instance`, the start of the worker that forked it (take_back_dead)."""
    reap_one(
        session,
        job_id=job_id,
        cutoff=utcnow() - timedelta(seconds=lease_seconds),
        max_attempts=max_attempts,
        oom_fraction=oom_fraction,
    )
    now = utcnow()
    taken = transition(
        session,
        job_id=job_id,
        to=JobStatus.RUNNING,
        from_any=(JobStatus.QUEUED,),
        detail={
            "worker": worker,
            **({"pid": pid} if pid is not None else {}),
            **({"instance": instance} if instance is not None else {}),
        },
        attempt=Job.attempt + 1,
        worker=worker,
        started_at=func.coalesce(Job.started_at, now),
        heartbeat_at=now,
        finished_at=None,
        memory_peak=None,
    )
    if not taken:
        return None
    job = session.get(Job, job_id, populate_existing=True)
    requeue = session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.to_status == JobStatus.QUEUED)
        .order_by(JobEvent.id.desc())
        .limit(1)
    ).first()
    by_user = requeue is not None and requeue.from_status in JobStatus.RESUMABLE
    return Claim(attempt=job.attempt, spec=job.spec, resumed_by_user=by_user)


@dataclass(frozen=True)
class Died:
    """An attempt whose training process its own worker saw die: taken back without waiting for its lease."""

    attempt: int
    pid: int


def take_back_dead(
    session: Session,
    *,
    worker: str,
    instance: str,
    process_alive: Callable[[int], bool],
    max_attempts: int,
    oom_fraction: float,
) -> list[str]:
    """The jobs this worker (`worker`, its name, and `instance`: its start, which its pool processes
    inherit) started in a process that has died since (one the kernel killed, the worker itself
    alive), taken back at once rather than a lease later: re-queued, or ended as the reaper would.
    Another worker's jobs, one of the same name on another machine included, are left to their
    leases. Returns the ids re-queued."""
    requeued = []
    for job in session.scalars(select(Job).where(Job.worker == worker, Job.status.in_(JobStatus.ACTIVE))).all():
        started = session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job.id, JobEvent.attempt == job.attempt, JobEvent.to_status == JobStatus.RUNNING)
            .order_by(JobEvent.id.desc())
            .limit(1)
        ).first()
        detail = (started.detail or {}) if started is not None else {}
        pid = detail.get("pid")
        if detail.get("instance") != instance or not isinstance(pid, int) or process_alive(pid):
            continue
        died = Died(attempt=job.attempt, pid=pid)
        if reap_one(session, job_id=job.id, max_attempts=max_attempts, oom_fraction=oom_fraction, died=died) == (
            JobStatus.QUEUED
        ):
            requeued.append(job.id)
    return requeued


def note_resume(session: Session, *, job_id: str, attempt: int, detail: dict) -> None:
    """Record where an attempt resumed from, on its running event."""
    event = session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.attempt == attempt, JobEvent.to_status == JobStatus.RUNNING)
        .order_by(JobEvent.id.desc())
        .limit(1)
    ).first()
    if event is not None:
        event.detail = {**(event.detail or {}), **detail}


def heartbeat(
    session: Session,
    *,
    job_id: str,
    attempt: int,
    memory_peak: float | None = None,
    stalled: str | None = None,
    said_before: str | None = None,
) -> str | None:
    """Renew this attempt's lease (and record the share of its memory it has held at most, and what
    it waits for, if anything); returns the job's status, or None if the attempt lost the job.
    Waiting for nothing, it clears what the job says it waits for only where that is what this
    worker said before (`said_before`): a machine that joined the job may have said it (report_stall)."""
    values = {
        "heartbeat_at": utcnow(),
        **({"stalled": stalled} if stalled is not None else {}),
        **({"memory_peak": memory_peak} if memory_peak is not None else {}),
    }
    owned = (Job.id == job_id, Job.attempt == attempt, Job.status.in_(JobStatus.ACTIVE))
    result = session.execute(update(Job).where(*owned).values(**values))
    if result.rowcount != 1:
        return None
    if stalled is None and said_before is not None:
        session.execute(update(Job).where(*owned, Job.stalled == said_before).values(stalled=None))
    return session.scalar(select(Job.status).where(Job.id == job_id))


def report_stall(session: Session, *, job_id: str, attempt: int, stalled: str | None, said_before: str | None) -> None:
    """Say what a machine that joined a running attempt of a job on several machines waits for; None
    takes back what it said before (`said_before`), and only that. The leading worker's heartbeat
    leaves it, unless it waits too."""
    running = (Job.id == job_id, Job.attempt == attempt, Job.status == JobStatus.RUNNING)
    if stalled is not None:
        session.execute(update(Job).where(*running).values(stalled=stalled))
    elif said_before is not None:
        session.execute(update(Job).where(*running, Job.stalled == said_before).values(stalled=None))


def _upsert(session: Session, table, values: dict, conflict: list[str], update_fields: list[str]) -> None:
    dialect = session.get_bind().dialect.name
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(dialect)
    if insert is None:
        raise RuntimeError(f"unsupported database dialect {dialect!r}")
    stmt = insert(table).values(**values)
    stmt = stmt.on_conflict_do_update(index_elements=conflict, set_={f: stmt.excluded[f] for f in update_fields})
    session.execute(stmt)


def record_epoch(
    session: Session, *, job_id: str, attempt: int, metrics: dict, checkpoint: StoredFile
) -> StoredFile | None:
    """Upsert one epoch's metrics and checkpoint row and advance the job's epoch counter; returns
    the file of the checkpoint this epoch had before (an earlier attempt's), to delete after the commit.

    Raises LeaseLost (and writes nothing) if this attempt no longer owns the job.
    """
    epoch = metrics["epoch"]
    owned = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.status.in_(JobStatus.ACTIVE))
        .values(epoch=epoch, heartbeat_at=utcnow())
    )
    if owned.rowcount != 1:
        raise LeaseLost(f"attempt {attempt} no longer owns job {job_id}")
    row = {field: metrics.get(field) for field in METRIC_FIELDS}
    replaced = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.epoch == epoch)).first()
    replaced = replaced.file if replaced is not None and replaced.file.key != checkpoint.key else None
    _upsert(
        session,
        EpochMetric.__table__,
        {"job_id": job_id, "epoch": epoch, "recorded_at": utcnow(), **row},
        ["job_id", "epoch"],
        [*METRIC_FIELDS, "recorded_at"],
    )
    _upsert(
        session,
        Checkpoint.__table__,
        {
            "job_id": job_id,
            "epoch": epoch,
            "path": checkpoint.key.removeprefix("checkpoints/"),
            "size_bytes": checkpoint.size,
            "sha256": checkpoint.sha256,
            "metrics": row,
            "created_at": utcnow(),
        },
        ["job_id", "epoch"],
        ["path", "size_bytes", "sha256", "metrics", "created_at"],
    )
    if replaced is not None and replaced.sha256 != checkpoint.sha256:
        evaluation_reports.forget_reports_of_dropped(session, job_id=job_id)
    return replaced


def set_cross_validation(session: Session, *, job_id: str, attempt: int, results: dict) -> None:
    session.execute(update(Job).where(Job.id == job_id, Job.attempt == attempt).values(cross_validation=results))


def set_environment(session: Session, *, job_id: str, environment: dict) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(environment=environment))


def finish_job(
    session: Session,
    *,
    job_id: str,
    attempt: int,
    status: str,
    reason: str | None = None,
    error: str | None = None,
    detail: dict | None = None,
) -> bool:
    """Move this attempt's running (or cancelling) job to a final state."""
    if status == JobStatus.CANCELLED:
        asked = session.scalar(select(Job.reason).where(Job.id == job_id, Job.status == JobStatus.CANCELLING))
        reason = cancel_reason(asked)
    return (
        transition(
            session,
            job_id=job_id,
            to=status,
            from_any=JobStatus.ACTIVE,
            owner_attempt=attempt,
            reason=reason,
            error=error,
            detail=detail,
            finished_at=utcnow(),
        )
        is not None
    )


USER_CANCELLED = "user_cancelled"


def cancel_reason(asked: str | None) -> str:
    """Why a cancelling job ends cancelled: the reason its cancel was asked with (a user's, a
    stopped sweep's), which the cancelling transition recorded."""
    return asked or USER_CANCELLED


def request_cancel(session: Session, *, job_id: str, reason: str = USER_CANCELLED) -> Job:
    """Cancel a queued job at once, or ask a running one's worker to stop."""
    job = session.get(Job, job_id, populate_existing=True)
    if transition(
        session,
        job_id=job_id,
        to=JobStatus.CANCELLED,
        from_any=(JobStatus.QUEUED,),
        reason=reason,
        finished_at=utcnow(),
    ):
        return job
    if transition(session, job_id=job_id, to=JobStatus.CANCELLING, from_any=(JobStatus.RUNNING,), reason=reason):
        return job
    session.refresh(job)
    raise InvalidTransition(job, "cancel")


def request_resume(session: Session, *, job_id: str) -> Job:
    """Queue a cancelled, failed or pruned job again; its worker continues from the saved state."""
    job = session.get(Job, job_id, populate_existing=True)
    if transition(
        session,
        job_id=job_id,
        to=JobStatus.QUEUED,
        from_any=JobStatus.RESUMABLE,
        detail={"resume": True},
        finished_at=None,
        dispatched_at=utcnow(),
    ):
        return job
    session.refresh(job)
    raise InvalidTransition(job, "resume")


WORKER_STOPPED = "worker_stopped"  # a give-back that does not count as a failed attempt
LONG_AGO = timedelta(days=2)  # older than any TRAINYARD_RESEND_AFTER_SECONDS (a day at most)


def counted_attempts(session: Session, job: Job) -> int:
    """The job's attempts that count toward TRAINYARD_MAX_ATTEMPTS: those since the user last
    resumed it (a resume gives the job the whole limit again), less those its worker's shutdown
    handed back."""
    last_resume = session.execute(
        select(JobEvent.id, JobEvent.attempt)
        .where(
            JobEvent.job_id == job.id,
            JobEvent.to_status == JobStatus.QUEUED,
            JobEvent.from_status.in_(JobStatus.RESUMABLE),
        )
        .order_by(JobEvent.id.desc())
        .limit(1)
    ).first()
    since_id, attempts_before = last_resume if last_resume is not None else (0, 0)
    handed_back = session.scalar(
        select(func.count())
        .select_from(JobEvent)
        .where(
            JobEvent.job_id == job.id,
            JobEvent.id > since_id,
            JobEvent.reason == WORKER_STOPPED,
            JobEvent.to_status == JobStatus.QUEUED,
        )
    )
    return job.attempt - attempts_before - (handed_back or 0)


def reap_one(
    session: Session,
    *,
    job_id: str,
    cutoff: datetime | None = None,
    max_attempts: int,
    oom_fraction: float = 0.9,
    died: Died | None = None,
) -> str | None:
    """If the job's lease expired (its last heartbeat before `cutoff`), or its attempt `died`,
    re-queue it (or end it); returns its new status, or None.

    An attempt lost while it held `oom_fraction` of its memory budget or of its machine's memory
    was killed for memory (by the kernel, most likely): retrying it would do the same again, so the
    job fails with out_of_memory."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.status not in JobStatus.ACTIVE or job.heartbeat_at is None:
        return None
    lost = died.attempt == job.attempt if died is not None else cutoff is not None and job.heartbeat_at < cutoff
    if not lost:  # a later attempt holds it now, or its lease runs yet
        return None
    old_status, attempt, heartbeat_at = job.status, job.attempt, job.heartbeat_at
    if job.memory_peak is not None and job.memory_peak >= oom_fraction:
        to, values = JobStatus.FAILED, {"finished_at": utcnow()}
        reason = "out_of_memory"
        error = (
            f"the training process was lost while it held {job.memory_peak:.0%} of its memory budget or of "
            "its machine's memory: killed for memory, so it is not retried; lower batch_size or the "
            "model's size (or raise TRAINYARD_MAX_JOB_MEMORY), then resume it"
        )
    elif old_status == JobStatus.CANCELLING:
        to, values = JobStatus.CANCELLED, {"finished_at": utcnow()}
        reason, error = cancel_reason(job.reason), "the worker was lost while cancelling"
    elif (counted := counted_attempts(session, job)) >= max_attempts:
        to, values = JobStatus.FAILED, {"finished_at": utcnow()}
        reason, error = "worker_lost", f"the worker was lost {counted} times (limit {max_attempts})"
    else:
        to, values = JobStatus.QUEUED, {"dispatched_at": utcnow()}
        reason, error = "worker_lost", None
    moved = transition(
        session,
        job_id=job_id,
        to=to,
        from_any=(old_status,),
        owner_attempt=attempt,
        where=() if died is not None else (Job.heartbeat_at < cutoff,),  # renewed meanwhile: not lost
        reason=reason,
        error=error,
        detail={  # without `died`, its lease ran out a lease after this
            "last_heartbeat_at": heartbeat_at.isoformat(),
            **({"died": died.pid} if died is not None else {}),
        },
        **values,
    )
    if moved:  # the attempt's own lines stop mid-way: its log says what became of it
        ended = {
            JobStatus.QUEUED: "the job goes back to the queue and resumes from its last saved state",
            JobStatus.CANCELLED: "the job is cancelled",
        }.get(to, f"the job fails: {error}")
        lost = (
            f"its training process ({died.pid}) on {job.worker} died"
            if died is not None
            else f"its worker ({job.worker}) was not heard from after {heartbeat_at:%H:%M:%S} UTC, for a lease"
        )
        said = f"attempt {attempt} lost: {lost}; {ended}"
        job_logs.append(
            session,
            job_id=job_id,
            attempt=attempt,
            lines=[{"at": utcnow(), "level": "WARNING", "logger": "trainyard.reaper", "message": said}],
        )
    return to if moved else None


def give_back(
    session: Session,
    *,
    job_id: str,
    attempt: int,
    max_attempts: int | None,
    reason: str,
    error: str,
    send_again_soon: bool = False,
) -> str | None:
    """An attempt that cannot go on for a while (its store unreachable, its worker shutting down)
    hands the job back: queued again, to resume from its last stored state, and sent to a worker by
    the reaper after TRAINYARD_RESEND_AFTER_SECONDS (with `send_again_soon`, at its next pass: the
    job is marked as sent long ago); failed with `reason` once it has had max_attempts (None: the
    attempt does not count); cancelled if the user asked for that meanwhile. Returns the new status."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.attempt != attempt:
        return None
    if job.status == JobStatus.CANCELLING:  # the user's cancel came while the attempt stopped: it wins
        to, values, reason, error = JobStatus.CANCELLED, {"finished_at": utcnow()}, cancel_reason(job.reason), None
    elif max_attempts is not None and (counted := counted_attempts(session, job)) >= max_attempts:
        to, values = JobStatus.FAILED, {"finished_at": utcnow()}
        error = f"{error}; tried {counted} times (limit {max_attempts})"
    else:
        sent = utcnow() - (LONG_AGO if send_again_soon else timedelta(0))
        to, values = JobStatus.QUEUED, {"dispatched_at": sent}
    moved = transition(
        session,
        job_id=job_id,
        to=to,
        from_any=(JobStatus.RUNNING, JobStatus.CANCELLING),
        owner_attempt=attempt,
        reason=reason,
        error=error if to == JobStatus.FAILED else None,
        detail={"error": error} if error else None,
        **values,
    )
    return to if moved else None


def expired_leases(session: Session, *, cutoff: datetime) -> list[str]:
    return list(session.scalars(select(Job.id).where(Job.status.in_(JobStatus.ACTIVE), Job.heartbeat_at < cutoff)))


def queued_dispatches(session: Session, *, sent_before: datetime) -> list[tuple[str, datetime]]:
    """The queued jobs whose message last went out before `sent_before`, and when, oldest first."""
    rows = session.execute(
        select(Job.id, Job.dispatched_at)
        .where(Job.status == JobStatus.QUEUED, Job.dispatched_at < sent_before)
        .order_by(Job.dispatched_at)
    )
    return [(job_id, sent) for job_id, sent in rows]


def get_jobs(session: Session, *, job_ids: list[str]) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.id.in_(job_ids)))) if job_ids else []


def mark_dispatched(session: Session, *, job_ids: list[str]) -> None:
    if job_ids:
        session.execute(update(Job).where(Job.id.in_(job_ids)).values(dispatched_at=utcnow()))

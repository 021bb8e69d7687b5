"""Training jobs: submit, list, read, metrics, cancel, resume, and the event stream."""

from __future__ import annotations

import json
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Query, Response, status
from pydantic import AfterValidator, StringConstraints
from sqlalchemy.orm import Session
from sse_starlette import EventSourceResponse

from models.spec.explain import worded
from models.spec.job import JobSpec
from service.api.deps import DeletesFiles, SessionDep, SettingsDep, WriteSessionDep, read
from service.api.errors import validation_error
from service.api.events import Cursor, Snapshot, new_events
from service.api.routes import GuardedRoute
from service.api.schemas.jobs import (
    EpochMetricPublic,
    JobPublic,
    JobsPublic,
    LogLinePublic,
    LogsPublic,
    MetricsPublic,
    TransitionPublic,
    job_public,
    jobs_public,
)
from service.core import job_logs, job_pages, jobs, retention, submission, worker_registry
from service.core.idempotency import IDEMPOTENCY_KEY_RULE, checked_idempotency_key
from service.core.settings import Settings, get_settings
from service.core.tables import JobStatus

STATUS_PATTERN = worded("^(" + "|".join(JobStatus.ALL) + ")$", "one of " + ", ".join(JobStatus.ALL))
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=GuardedRoute)

JOB_NOT_FOUND = {404: {"description": "No such job"}}
CONFLICT = {409: {"description": "The job's state does not allow this"}}


def _public(session, job_id: str, settings: Settings) -> JobPublic:
    """The job as it is now."""
    return job_public(job_pages.view(session, job_id=job_id, settings=settings))


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    responses={
        409: {"description": "Idempotency-Key reused with another spec"},
        413: {"description": "The request body is larger than the limit"},
    },
)
def submit_job(
    spec: JobSpec,
    session: WriteSessionDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: Annotated[
        str | None, Header(description=IDEMPOTENCY_KEY_RULE), AfterValidator(checked_idempotency_key)
    ] = None,
) -> JobPublic:
    """Queue a training job; the response's Location is where to poll it.

    With an Idempotency-Key header, retrying the same request returns the first job.
    """
    submitted = submission.submit_job(session, spec=spec, settings=settings, idempotency_key=idempotency_key)
    response.headers["Location"] = f"/v1/jobs/{submitted.job_id}"
    if submitted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return job_public(submitted.view)


@router.get("", response_model=JobsPublic)
def list_jobs(
    session: SessionDep,
    settings: SettingsDep,
    status_filter: Annotated[
        list[Annotated[str, StringConstraints(pattern=STATUS_PATTERN)]] | None,
        Query(
            alias="status",
            description="only jobs in this state; repeat it for several (?status=failed&status=cancelled)",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> JobsPublic:
    """Jobs, newest first, optionally filtered by status (one or several)."""
    views, count = job_pages.page(session, status=status_filter, limit=limit, offset=offset, settings=settings)
    return JobsPublic(data=jobs_public(views), count=count)


@router.get("/{job_id}", response_model=JobPublic, responses=JOB_NOT_FOUND)
def read_job(job_id: str, session: SessionDep, settings: SettingsDep) -> JobPublic:
    """One job with its latest metrics, best checkpoint, transitions, and why it waits if it does."""
    return _public(session, job_id, settings)


@router.get("/{job_id}/metrics", response_model=MetricsPublic, responses=JOB_NOT_FOUND)
def read_metrics(job_id: str, session: SessionDep) -> MetricsPublic:
    """Per-epoch metrics of a job, one entry per completed epoch, and which epoch `best` serves."""
    job = jobs.require_job(session, job_id=job_id)
    best = jobs.best_checkpoint(job)
    rows = jobs.get_metrics(session, job_id=job.id)
    return MetricsPublic(
        job_id=job.id,
        best_epoch=best.epoch if best else None,
        best_selected_on=jobs.best_selected_on(job),
        epochs=[EpochMetricPublic.model_validate(r) for r in rows],
    )


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    responses={**JOB_NOT_FOUND, **CONFLICT},
)
def cancel_job(job_id: str, session: WriteSessionDep, settings: SettingsDep) -> JobPublic:
    """Cancel a queued job now, or ask a running one to stop: its worker hears of it at its next
    lease renewal (TRAINYARD_HEARTBEAT_SECONDS), and the job stops after the batch it is on."""
    submission.cancel_job(session, job_id=job_id)
    return _public(session, job_id, settings)


@router.post(
    "/{job_id}/resume",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    responses={**JOB_NOT_FOUND, **CONFLICT},
)
def resume_job(job_id: str, session: WriteSessionDep, settings: SettingsDep) -> JobPublic:
    """Queue a cancelled or failed job again, to continue from its last saved state."""
    submission.resume_job(session, job_id=job_id, settings=settings)
    return _public(session, job_id, settings)


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**JOB_NOT_FOUND, **CONFLICT},
    dependencies=[DeletesFiles],
)
def delete_job(job_id: str, session: WriteSessionDep, settings: SettingsDep) -> None:
    """Delete a finished job: its record, metrics, events and checkpoints (409 while it is queued
    or running: cancel it first). Versions registered from it stay, with their own copy."""
    retention.delete_job(session, job_id=job_id, settings=settings)


@router.get("/{job_id}/logs", response_model=LogsPublic, responses=JOB_NOT_FOUND)
def read_logs(
    job_id: str,
    session: SessionDep,
    after: Annotated[int, Query(ge=0, le=2**31 - 1, description="the `next` of the previous page")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> LogsPublic:
    """What the job's worker logged while running it, every attempt, oldest first: its progress,
    warnings and, if it failed, the traceback."""
    job_id = jobs.require_job(session, job_id=job_id).id
    lines = [
        LogLinePublic.model_validate(line) for line in job_logs.read(session, job_id=job_id, after=after, limit=limit)
    ]
    return LogsPublic(job_id=job_id, lines=lines, next=lines[-1].id if lines else after)


EVENT_POLL_SECONDS = 0.25
STOPPING_GRACE_SECONDS = 2.0  # for a stream to end by itself once the service stops; it takes one read at most


def _snapshot(session: Session, job_id: str, logs_after: int | None) -> Snapshot:
    """The job's status, waiting reason, transitions, metrics and (if asked) new log lines (read in
    one short transaction: `read`)."""
    job = jobs.require_job(session, job_id=job_id)
    waiting = worker_registry.waiting_reasons(session, jobs=[job], settings=get_settings()).get(job.id)
    transitions = [TransitionPublic.model_validate(e).model_dump(mode="json") for e in job.events]
    metrics = [
        EpochMetricPublic.model_validate(m).model_dump(mode="json") for m in jobs.get_metrics(session, job_id=job.id)
    ]
    logs = (
        []
        if logs_after is None
        else [
            LogLinePublic.model_validate(line).model_dump(mode="json")
            for line in job_logs.read(session, job_id=job.id, after=logs_after)
        ]
    )
    return Snapshot(
        job.status, waiting, transitions, metrics, logs, worker_registry.waiting_detail(job, waiting, get_settings())
    )


@router.get("/{job_id}/events", responses={**JOB_NOT_FOUND, 200: {"content": {"text/event-stream": {}}}})
async def job_events(
    job_id: str,
    settings: SettingsDep,
    logs: Annotated[bool, Query(description="also send each log line as a `log` event")] = False,
    last_event_id: Annotated[str | None, Header(max_length=200, description="resume after this event")] = None,
) -> EventSourceResponse:
    """Server-sent events: `status` for each transition, `waiting` when the reason a queued job
    cannot start, or a running one's worker waits (store_unavailable), appears or goes
    (`{"reason": "no_gpu_worker", "detail": ...}`, then `{"reason": null}`), `epoch`
    for each epoch's metrics as they land, `log` for each log line (with `?logs=true`), and `end`
    when the job reaches a final state (the stream then closes). Every event has an id; a client
    that reconnects with `Last-Event-ID` gets the events after it, none twice. A comment line goes
    out every TRAINYARD_EVENTS_KEEPALIVE_SECONDS when nothing else does."""
    try:
        cursor = Cursor.parse(last_event_id) if last_event_id else Cursor()
    except ValueError as exc:
        raise validation_error([(("header", "last-event-id"), str(exc))]) from None
    first = await read(_snapshot, job_id, cursor.log if logs else None)  # 404 before streaming
    stopping = anyio.Event()  # set when the service stops

    async def stream():
        snapshot = first
        while True:
            for event, data, event_id in new_events(snapshot, cursor):
                yield {"event": event, "id": event_id, "data": json.dumps(data)}
                if event == "end":
                    return
            with anyio.move_on_after(EVENT_POLL_SECONDS):
                await stopping.wait()
            if stopping.is_set():  # the stream ends whole; a client resumes it with Last-Event-ID
                return
            snapshot = await read(_snapshot, job_id, cursor.log if logs else None)

    return EventSourceResponse(
        stream(),
        ping=settings.events_keepalive_seconds,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        # Cancelled at once, a stream was cut mid-body ("ASGI callable returned without completing response").
        shutdown_event=stopping,
        shutdown_grace_period=STOPPING_GRACE_SECONDS,
    )

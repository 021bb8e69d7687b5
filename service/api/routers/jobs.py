"""Training jobs: submit, list, read, metrics, cancel, resume, and the event stream."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from models.spec import JobSpec
from service.api.deps import SessionDep, SettingsDep, WriteSessionDep
from service.api.schemas.jobs import (
    EpochMetricPublic,
    JobPublic,
    JobsPublic,
    MetricsPublic,
    TransitionPublic,
    jobs_public,
)
from service.core import jobs, retention, submission, worker_registry
from service.core.db import session_scope
from service.core.settings import Settings, get_settings
from service.core.tables import Job, JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JOB_NOT_FOUND = {404: {"description": "No such job"}}
CONFLICT = {409: {"description": "The job's state does not allow this"}}


def _public(session, job_id: str, settings: Settings) -> JobPublic:
    """The job as it is now, with the session's transaction ended before the response is sent."""
    return _page(session, [jobs.require_job(session, job_id=job_id)], settings)[0]


def _page(session, page: list[Job], settings: Settings) -> list[JobPublic]:
    public = jobs_public(session, page, settings)
    session.commit()
    return public


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic,
             responses={409: {"description": "Idempotency-Key reused with another spec"},
                        413: {"description": "The request body is larger than the limit"}})
def submit_job(
    spec: JobSpec,
    session: WriteSessionDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> JobPublic:
    """Queue a training job; the response's Location is where to poll it.

    With an Idempotency-Key header, retrying the same request returns the first job.
    """
    submitted = submission.submit_job(session, spec=spec, settings=settings, idempotency_key=idempotency_key)
    response.headers["Location"] = f"/v1/jobs/{submitted.job_id}"
    if submitted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return _public(session, submitted.job_id, settings)


@router.get("", response_model=JobsPublic)
def list_jobs(
    session: SessionDep,
    settings: SettingsDep,
    status_filter: Annotated[str | None, Query(alias="status", pattern="^(" + "|".join(JobStatus.ALL) + ")$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> JobsPublic:
    """Jobs, newest first, optionally filtered by status."""
    page, count = jobs.list_jobs(session, status=status_filter, limit=limit, offset=offset)
    return JobsPublic(data=_page(session, page, settings), count=count)


@router.get("/{job_id}", response_model=JobPublic, responses=JOB_NOT_FOUND)
def read_job(job_id: str, session: SessionDep, settings: SettingsDep) -> JobPublic:
    """One job with its latest metrics, best checkpoint, transitions, and why it waits if it does."""
    return _public(session, job_id, settings)


@router.get("/{job_id}/metrics", response_model=MetricsPublic, responses=JOB_NOT_FOUND)
def read_metrics(job_id: str, session: SessionDep) -> MetricsPublic:
    """Per-epoch metrics of a job, one entry per completed epoch."""
    jobs.require_job(session, job_id=job_id)
    rows = jobs.get_metrics(session, job_id=job_id)
    return MetricsPublic(job_id=job_id, epochs=[EpochMetricPublic.model_validate(r) for r in rows])


@router.post("/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic,
             responses={**JOB_NOT_FOUND, **CONFLICT})
def cancel_job(job_id: str, session: WriteSessionDep, settings: SettingsDep) -> JobPublic:
    """Cancel a queued job now, or ask a running one to stop after its current batch."""
    submission.cancel_job(session, job_id=job_id)
    return _public(session, job_id, settings)


@router.post("/{job_id}/resume", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic,
             responses={**JOB_NOT_FOUND, **CONFLICT})
def resume_job(job_id: str, session: WriteSessionDep, settings: SettingsDep) -> JobPublic:
    """Queue a cancelled or failed job again, to continue from its last saved state."""
    submission.resume_job(session, job_id=job_id, settings=settings)
    return _public(session, job_id, settings)


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT, responses={**JOB_NOT_FOUND, **CONFLICT})
def delete_job(job_id: str, session: WriteSessionDep, settings: SettingsDep) -> None:
    """Delete a finished job: its record, metrics, events and checkpoints (409 while it is queued
    or running: cancel it first). Versions registered from it stay, with their own copy."""
    retention.delete_job(session, job_id=job_id, settings=settings)


EVENT_POLL_SECONDS = 0.25


def _snapshot(job_id: str) -> tuple[str, str | None, list[dict], list[dict]]:
    """The job's status, waiting reason, transitions and metrics, read in one short transaction."""
    with session_scope(write=False) as session:
        job = jobs.require_job(session, job_id=job_id)
        waiting = worker_registry.waiting_reasons(session, jobs=[job], settings=get_settings()).get(job.id)
        transitions = [TransitionPublic.model_validate(e).model_dump(mode="json") for e in job.events]
        metrics = [EpochMetricPublic.model_validate(m).model_dump(mode="json")
                   for m in jobs.get_metrics(session, job_id=job_id)]
        return job.status, waiting, transitions, metrics


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


@router.get("/{job_id}/events", responses={**JOB_NOT_FOUND, 200: {"content": {"text/event-stream": {}}}})
async def job_events(job_id: str, request: Request) -> StreamingResponse:
    """Server-sent events: `status` for each transition, `waiting` when the reason a queued job
    cannot start appears or goes (`{"reason": "no_gpu_worker"}`, then `{"reason": null}`), `epoch`
    for each epoch's metrics as they land, and `end` when the job reaches a final state (the
    stream then closes)."""
    first = await run_in_threadpool(_snapshot, job_id)  # NotFound -> 404 before the stream starts

    async def stream():
        sent_transitions, sent_epochs, sent_waiting = 0, {}, None
        status_now, waiting, transitions, metrics = first
        while True:
            for transition in transitions[sent_transitions:]:
                yield _sse("status", transition)
            sent_transitions = len(transitions)
            if waiting != sent_waiting:
                yield _sse("waiting", {"reason": waiting})
                sent_waiting = waiting
            for row in metrics:
                if sent_epochs.get(row["epoch"]) != row:
                    sent_epochs[row["epoch"]] = row
                    yield _sse("epoch", row)
            if status_now in JobStatus.FINAL:
                yield _sse("end", {"status": status_now})
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(EVENT_POLL_SECONDS)
            status_now, waiting, transitions, metrics = await run_in_threadpool(_snapshot, job_id)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

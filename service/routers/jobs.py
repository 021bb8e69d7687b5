"""Training jobs: submit, list, read, metrics, cancel, resume."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import IntegrityError

from models.spec import JobSpec, spec_problems
from service import datasets, jobs
from service.db import session_scope
from service.deps import SessionDep, SettingsDep, WriteSessionDep
from service.model_store import ModelNotFound, ModelNotReady, init_from_reference, resolve
from service.schemas import (
    CheckpointPublic,
    EpochMetricPublic,
    JobPublic,
    JobsPublic,
    MetricsPublic,
    TransitionPublic,
)
from service.tables import EpochMetric, Job, JobStatus
from workers.celery_app import send_train_job

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JOB_NOT_FOUND = {404: {"description": "No such job"}}
CONFLICT = {409: {"description": "The job's state does not allow this"}}


def job_public(session, job: Job) -> JobPublic:
    return jobs_public(session, [job])[0]


def jobs_public(session, page: list[Job]) -> list[JobPublic]:
    """The public form of jobs, with their latest metrics read in one query."""
    latest = jobs.latest_metrics(session, job_ids=[job.id for job in page])
    return [_public(job, latest.get(job.id)) for job in page]


def _public(job: Job, latest: EpochMetric | None) -> JobPublic:
    best = jobs.best_checkpoint(job)
    return JobPublic(
        id=job.id, name=job.name, status=job.status, reason=job.reason, error=job.error,
        spec=job.spec, task=job.task, attempt=job.attempt, epoch=job.epoch, epochs=job.epochs,
        progress=round(min(job.epoch / job.epochs, 1.0), 4) if job.epochs else 0.0,
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        environment=job.environment,
        latest_metrics=EpochMetricPublic.model_validate(latest) if latest else None,
        best_checkpoint=CheckpointPublic.model_validate(best) if best else None,
        transitions=[TransitionPublic.model_validate(e) for e in job.events],
        cross_validation=job.cross_validation,
    )


def _respond(session, job_id: str) -> JobPublic:
    """The job as it is now, with the session's transaction ended before the response is sent."""
    public = job_public(session, jobs.get_job(session, job_id=job_id))
    session.commit()
    return public


def _get_or_404(session, job_id: str) -> Job:
    job = jobs.get_job(session, job_id=job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    return job


def _check_spec(session, spec: JobSpec, settings) -> str:
    """Raise a 422 for problems that need the dataset or other jobs to see; returns the task."""
    problems = []
    info = datasets.dataset_info(session, spec)
    if info is None:
        problems.append((("body", "data", "dataset"), f"{spec.data.dataset} not found; upload it to /v1/datasets"))
    else:
        problems += [(("body", *p.loc), p.msg) for p in spec_problems(spec, info)]
    if spec.init_from is not None:
        try:
            resolve(session, reference=init_from_reference(spec.init_from), settings=settings)
        except (ModelNotFound, ModelNotReady) as exc:
            problems.append((("body", "init_from"), str(exc)))
    if problems:
        raise RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg, "input": None}
                                      for loc, msg in problems])
    return info.task


def _replayed(job: Job, request_hash: str) -> str:
    if job.request_hash != request_hash:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            f"this Idempotency-Key was used for job {job.id} with a different spec")
    return job.id


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
    job_id, replayed = queue_job(session, spec, settings, idempotency_key)
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return _respond(session, job_id)


def queue_job(session, spec: JobSpec, settings, idempotency_key: str | None = None) -> tuple[str, bool]:
    """Check a spec, queue its job in SQL and send it to a worker; (job id, whether it was a replay).

    Raises RequestValidationError for a spec that cannot run, HTTPException 409 for a reused key.
    """
    task = _check_spec(session, spec, settings)
    request_hash = hashlib.sha256(spec.model_dump_json().encode()).hexdigest()
    if idempotency_key:
        existing = jobs.get_job_by_idempotency_key(session, key=idempotency_key)
        if existing is not None:
            return _replayed(existing, request_hash), True
    try:
        job = jobs.create_job(session, spec=spec, task=task, idempotency_key=idempotency_key,
                              request_hash=request_hash)
        session.commit()
    except IntegrityError:
        # Another request with the same key committed first; answer with its job.
        session.rollback()
        existing = jobs.get_job_by_idempotency_key(session, key=idempotency_key)
        if existing is None:
            raise
        return _replayed(existing, request_hash), True
    try:
        send_train_job(job.id, settings.queue_for(spec.device))
    except Exception as exc:
        # The job is safely queued in SQL; the reaper sends it when the broker is back.
        log.warning("could not publish job %s now (%s); the reaper will send it", job.id, exc)
    return job.id, False


@router.get("", response_model=JobsPublic)
def list_jobs(
    session: SessionDep,
    status_filter: Annotated[str | None, Query(alias="status", pattern="^(" + "|".join(JobStatus.ALL) + ")$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> JobsPublic:
    """Jobs, newest first, optionally filtered by status."""
    page, count = jobs.list_jobs(session, status=status_filter, limit=limit, offset=offset)
    return JobsPublic(data=jobs_public(session, page), count=count)


@router.get("/{job_id}", response_model=JobPublic, responses=JOB_NOT_FOUND)
def read_job(job_id: str, session: SessionDep) -> JobPublic:
    """One job with its latest metrics, best checkpoint and transitions."""
    return job_public(session, _get_or_404(session, job_id))


@router.get("/{job_id}/metrics", response_model=MetricsPublic, responses=JOB_NOT_FOUND)
def read_metrics(job_id: str, session: SessionDep) -> MetricsPublic:
    """Per-epoch metrics of a job, one entry per completed epoch."""
    _get_or_404(session, job_id)
    rows = jobs.get_metrics(session, job_id=job_id)
    return MetricsPublic(job_id=job_id, epochs=[EpochMetricPublic.model_validate(r) for r in rows])


@router.post("/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic,
             responses={**JOB_NOT_FOUND, **CONFLICT})
def cancel_job(job_id: str, session: WriteSessionDep) -> JobPublic:
    """Cancel a queued job now, or ask a running one to stop after its current batch."""
    _get_or_404(session, job_id)
    try:
        jobs.request_cancel(session, job_id=job_id)
    except jobs.InvalidTransition as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    session.commit()
    return _respond(session, job_id)


@router.post("/{job_id}/resume", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic,
             responses={**JOB_NOT_FOUND, **CONFLICT})
def resume_job(job_id: str, session: WriteSessionDep, settings: SettingsDep) -> JobPublic:
    """Queue a cancelled or failed job again, to continue from its last saved state."""
    _get_or_404(session, job_id)
    try:
        jobs.request_resume(session, job_id=job_id)
    except jobs.InvalidTransition as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    session.commit()
    try:
        send_train_job(job_id, settings.queue_for(jobs.get_job(session, job_id=job_id).spec.get("device", "auto")))
    except Exception as exc:
        log.warning("could not publish job %s now (%s); the reaper will send it", job_id, exc)
    return _respond(session, job_id)


EVENT_POLL_SECONDS = 0.25


def _snapshot(job_id: str) -> tuple[str, list[dict], list[dict]]:
    """The job's status, transitions and metrics, read in one short transaction."""
    with session_scope(write=False) as session:
        job = jobs.get_job(session, job_id=job_id)
        transitions = [TransitionPublic.model_validate(e).model_dump(mode="json") for e in job.events]
        metrics = [EpochMetricPublic.model_validate(m).model_dump(mode="json")
                   for m in jobs.get_metrics(session, job_id=job_id)]
        return job.status, transitions, metrics


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


@router.get("/{job_id}/events", responses={**JOB_NOT_FOUND, 200: {"content": {"text/event-stream": {}}}})
async def job_events(job_id: str, request: Request, session: SessionDep) -> StreamingResponse:
    """Server-sent events: `status` for each transition, `epoch` for each epoch's metrics as they
    land, and `end` when the job reaches a final state (the stream then closes)."""
    await run_in_threadpool(_get_or_404, session, job_id)
    session.close()

    async def stream():
        sent_transitions, sent_epochs = 0, {}
        while True:
            status_now, transitions, metrics = await run_in_threadpool(_snapshot, job_id)
            for transition in transitions[sent_transitions:]:
                yield _sse("status", transition)
            sent_transitions = len(transitions)
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

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

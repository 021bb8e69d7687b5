"""Training jobs: submit, list, read, metrics."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.exceptions import RequestValidationError

from models.spec import JobSpec, spec_problems
from service import jobs
from service.deps import SessionDep
from service.schemas import CheckpointPublic, EpochMetricPublic, JobPublic, JobsPublic, MetricsPublic
from service.tables import Job, JobStatus
from workers.celery_app import send_train_job

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def job_public(session, job: Job) -> JobPublic:
    latest = jobs.latest_metric(session, job_id=job.id)
    best = jobs.best_checkpoint(job)
    return JobPublic(
        id=job.id, name=job.name, status=job.status, reason=job.reason, error=job.error,
        spec=job.spec, task=job.task, attempt=job.attempt, epoch=job.epoch, epochs=job.epochs,
        progress=round(min(job.epoch / job.epochs, 1.0), 4) if job.epochs else 0.0,
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        environment=job.environment,
        latest_metrics=EpochMetricPublic.model_validate(latest) if latest else None,
        best_checkpoint=CheckpointPublic.model_validate(best) if best else None,
    )


def _get_or_404(session, job_id: str) -> Job:
    job = jobs.get_job(session, job_id=job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    return job


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic)
def submit_job(spec: JobSpec, session: SessionDep, response: Response) -> JobPublic:
    """Queue a training job; the response's Location is where to poll it."""
    problems = spec_problems(spec)
    if problems:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("body", *p.loc), "msg": p.msg, "input": None} for p in problems]
        )
    job = jobs.create_job(session, spec=spec)
    session.commit()
    try:
        send_train_job(job.id)
    except Exception as exc:
        log.error("could not publish job %s: %s", job.id, exc)
        jobs.fail_queued_job(session, job_id=job.id, reason="broker_unavailable",
                             error=f"the job could not be queued: {exc}")
        session.commit()
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            f"the broker is unavailable; job {job.id} was not queued, submit it again") from exc
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job_public(session, job)


@router.get("", response_model=JobsPublic)
def list_jobs(
    session: SessionDep,
    status_filter: Annotated[str | None, Query(alias="status", pattern="^(" + "|".join(JobStatus.ALL) + ")$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobsPublic:
    """Jobs, newest first, optionally filtered by status."""
    page, count = jobs.list_jobs(session, status=status_filter, limit=limit, offset=offset)
    return JobsPublic(data=[job_public(session, j) for j in page], count=count)


@router.get("/{job_id}", response_model=JobPublic)
def read_job(job_id: str, session: SessionDep) -> JobPublic:
    """One job with its latest metrics and best checkpoint."""
    return job_public(session, _get_or_404(session, job_id))


@router.get("/{job_id}/metrics", response_model=MetricsPublic)
def read_metrics(job_id: str, session: SessionDep) -> MetricsPublic:
    """Per-epoch metrics of a job, one entry per completed epoch."""
    _get_or_404(session, job_id)
    rows = jobs.get_metrics(session, job_id=job_id)
    return MetricsPublic(job_id=job_id, epochs=[EpochMetricPublic.model_validate(r) for r in rows])

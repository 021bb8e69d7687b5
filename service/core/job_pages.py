"""Jobs as the API and the dashboard show them: each job with its newest epoch's metrics, why it
waits (if it is queued and no live worker serves it), and what its checkpoints take on disk.

A page of jobs costs the same few queries however long it is (the jobs with their checkpoints and
events, the newest metrics, the live workers) and no file-system calls: disk use is what the
checkpoints table recorded when each checkpoint was written."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from service.core import jobs, worker_registry
from service.core.settings import Settings
from service.core.tables import EpochMetric, Job


@dataclass(frozen=True)
class JobView:
    """A job (with its checkpoints and events loaded) and what its page shows beside it."""

    job: Job
    latest: EpochMetric | None
    waiting_reason: str | None
    waiting_detail: str | None
    disk_bytes: int


def views(session: Session, page: list[Job], settings: Settings) -> list[JobView]:
    """The views of jobs loaded with their checkpoints and events (list_jobs, get_job), in at most two more queries."""
    latest = jobs.latest_metrics(session, job_ids=[job.id for job in page])
    waiting = worker_registry.waiting_reasons(session, jobs=page, settings=settings)
    return [
        JobView(
            job,
            latest.get(job.id),
            waiting.get(job.id),
            worker_registry.waiting_detail(job, waiting.get(job.id), settings),
            jobs.held_bytes(job),
        )
        for job in page
    ]


def view(session: Session, *, job_id: str, settings: Settings) -> JobView:
    """One job's view; NotFound if there is no such job."""
    return views(session, [jobs.require_job(session, job_id=job_id)], settings)[0]


def page(
    session: Session, *, status: Sequence[str] | None, limit: int, offset: int, settings: Settings
) -> tuple[list[JobView], int]:
    """A page of jobs, newest first (optionally of some statuses), and how many there are in all."""
    found, count = jobs.list_jobs(session, status=status, limit=limit, offset=offset)
    return views(session, found, settings), count

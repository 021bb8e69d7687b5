"""Schemas of the jobs API: a job, its metrics and checkpoints, and pages of jobs."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from service.core.job_pages import JobView
from service.core.jobs import best_checkpoint, best_selected_on
from service.core.tables import EpochMetric


class EpochMetricPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    epoch: int
    train_loss: float | None
    train_acc: float | None
    test_loss: float | None
    test_acc: float | None
    val_loss: float | None
    val_acc: float | None
    seconds: float | None
    samples_per_second: float | None
    lr: float | None
    recorded_at: datetime | None = None


class MetricsPublic(BaseModel):
    job_id: str
    # The epoch that `best` and `job:<id>` serve, and what it was chosen on.
    best_epoch: int | None = None
    best_selected_on: str = "last_epoch"
    epochs: list[EpochMetricPublic]


class CheckpointPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    epoch: int
    size_bytes: int
    metrics: dict | None
    created_at: datetime


class TransitionPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    at: datetime
    from_status: str | None
    to_status: str
    reason: str | None
    attempt: int
    detail: dict | None


class JobPublic(BaseModel):
    id: str
    name: str | None
    status: str
    reason: str | None
    error: str | None
    spec: dict
    task: str
    attempt: int
    epoch: int
    epochs: int
    progress: float
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    environment: dict | None
    latest_metrics: EpochMetricPublic | None
    # The metrics of the epoch that `best` and `job:<id>` serve (best_selected_on says how it was
    # chosen); null before the first checkpoint.
    best_metrics: EpochMetricPublic | None = None
    best_checkpoint: CheckpointPublic | None
    # What `best` (and `job:<id>`) is chosen on: early stopping's metric, val_acc / val_loss with a
    # validation split, or last_epoch without one (never the test set, unless early stopping says so).
    best_selected_on: str
    transitions: list[TransitionPublic]
    cross_validation: dict | None = None
    # Why a queued job cannot start: no live worker serves its queue (no_worker, no_gpu_worker), or
    # none can give a distributed job its processes (no_worker_with_4_processes, ...); or why a
    # running one makes no progress: its worker retries the store (store_unavailable), or has not
    # been heard from for a while (worker_silent); and in words.
    waiting_reason: str | None = None
    waiting_detail: str | None = None
    # Bytes of stored files the job holds: the checkpoints its policy keeps and, for a failed or
    # cancelled job, the state it resumes from (sizes as recorded when each was written).
    disk_bytes: int = 0
    # The sweep that created the job, if one did.
    sweep_id: str | None = None
    # The largest share of its memory budget (or of its machine's memory) the running attempt held
    # in the interval its worker last reported; an attempt lost near 1 fails with out_of_memory.
    memory_peak: float | None = None
    # What its submission warned will make it fail unless someone acts (missing weights or data files).
    warnings: list[str] = []


class LogLinePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    attempt: int
    at: datetime
    level: str
    logger: str
    message: str


class LogsPublic(BaseModel):
    job_id: str
    lines: list[LogLinePublic]
    # Pass as `after` to read on from here.
    next: int


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


def jobs_public(views: list[JobView]) -> list[JobPublic]:
    """Jobs in their public form, from views core built (a page costs a few queries, see core.job_pages)."""
    return [job_public(view) for view in views]


def job_public(view: JobView) -> JobPublic:
    """The public form of a job, with its newest epoch's metrics: a pure function of the view."""
    job, latest = view.job, view.latest
    best = best_checkpoint(job)
    return JobPublic(
        id=job.id,
        name=job.name,
        status=job.status,
        reason=job.reason,
        error=job.error,
        spec=job.spec,
        task=job.task,
        attempt=job.attempt,
        epoch=job.epoch,
        epochs=job.epochs,
        progress=round(min(job.epoch / job.epochs, 1.0), 4) if job.epochs else 0.0,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        environment=job.environment,
        latest_metrics=EpochMetricPublic.model_validate(latest) if latest else None,
        best_metrics=EpochMetricPublic.model_validate({**best.metrics, "epoch": best.epoch})
        if best and best.metrics
        else None,
        best_checkpoint=CheckpointPublic.model_validate(best) if best else None,
        best_selected_on=best_selected_on(job),
        memory_peak=job.memory_peak,
        transitions=[TransitionPublic.model_validate(e) for e in job.events],
        cross_validation=job.cross_validation,
        waiting_reason=view.waiting_reason,
        waiting_detail=view.waiting_detail,
        disk_bytes=view.disk_bytes,
        sweep_id=job.sweep_id,
        warnings=job.warnings or [],
    )


def metric_rows(metrics: list[EpochMetric]) -> list[dict]:
    """Epoch metrics as plain rows (for plots and pages)."""
    return [EpochMetricPublic.model_validate(m).model_dump() for m in metrics]

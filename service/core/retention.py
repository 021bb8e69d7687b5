"""Deleting jobs, and purging what is old: unregistered jobs' checkpoints after
TRAINYARD_RETENTION_DAYS, and the embedded broker's consumed messages.

A registered version keeps its own copy of the weights in the registry area, so deleting or
purging a job never touches a registered model; a version goes only when it is deleted itself.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, exists, select, update
from sqlalchemy.orm import Session

from models.checkpoint import checkpoint_name
from models.training.state import TRAINING_STATE
from service.core import evaluation_reports, jobs
from service.core.db import read_scope, session_scope
from service.core.ids import resolve_id
from service.core.settings import Settings
from service.core.storage import StoredFile, get_storage
from service.core.tables import Checkpoint, Job, JobStatus, ModelVersion, StoredDataset, utcnow

log = logging.getLogger(__name__)


def job_dir(settings: Settings, job_id: str) -> Path:
    """Where a job's checkpoints and resumable state live."""
    return settings.checkpoint_dir / job_id


def checkpoint_key(job_id: str, epoch: int, attempt: int = 1) -> str:
    """The stored file of a job's checkpoint of an epoch, as an attempt writes it: each attempt
    after the first writes files of its own, so that one that trains an epoch again leaves the
    file SQL names whole until SQL names the new one (and an attempt that lost its lease cannot
    overwrite its successor's)."""
    name = checkpoint_name(epoch)
    if attempt > 1:
        name = name.replace(".safetensors", f".attempt-{attempt}.safetensors")
    return f"checkpoints/{job_id}/{name}"


def resumable_state_key(job_id: str) -> str:
    """A new stored file for the training state of a job (each save has its own, so that the one
    SQL names stays whole until SQL names the next)."""
    return f"checkpoints/{job_id}/{TRAINING_STATE.removesuffix('.safetensors')}-{uuid.uuid4().hex[:12]}.safetensors"


def resumable_state_path(settings: Settings, job_id: str) -> Path:
    """The file an interrupted attempt resumed from before states were recorded in SQL (read
    where a home has one)."""
    return job_dir(settings, job_id) / TRAINING_STATE


def delete_job(session: Session, *, job_id: str, settings: Settings) -> None:
    """Delete a finished job's record with its metrics, events and checkpoint rows (the database
    cascades), commit, then remove its files; InvalidTransition while it is queued or running.

    Files go only after the commit, so a failed delete never leaves a job without its files."""
    job_id = resolve_id(session, Job, job_id, kind="job")
    held = _stored_files(session, job_id)
    deleted = session.execute(delete(Job).where(Job.id == job_id, Job.status.in_(JobStatus.FINAL)))
    if deleted.rowcount != 1:
        job = jobs.require_job(session, job_id=job_id)
        raise jobs.InvalidTransition(job, "delete")
    session.commit()
    _remove_files(settings, job_id, held)


def _stored_files(session: Session, job_id: str) -> list[StoredFile]:
    """The files a job's records name: its checkpoints and its training state."""
    job = session.get(Job, job_id)
    state = jobs.resume_state(job) if job is not None else None
    checkpoints = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id))
    return [checkpoint.file for checkpoint in checkpoints] + ([state] if state else [])


def _remove_files(settings: Settings, job_id: str, held: list[StoredFile]) -> None:
    """The job's files, from the store and from this machine's cache (other machines' caches let
    them go as they fill)."""
    get_storage(settings).delete_prefix(f"checkpoints/{job_id}/")
    uncache(settings, held)
    shutil.rmtree(job_dir(settings, job_id), ignore_errors=True)


def uncache(settings: Settings, deleted: list[StoredFile]) -> None:
    """Remove this machine's cached copies of files deleted with their records, but for a copy
    another record names: the cache keeps one file per digest, and a registered version and the
    checkpoint it came from are the same bytes."""
    digests = {stored.sha256 for stored in deleted if stored.sha256}
    if not digests:
        return
    with read_scope() as session:
        named = {
            digest
            for column in (Checkpoint.sha256, ModelVersion.sha256, StoredDataset.file_sha256)
            for digest in session.scalars(select(column).where(column.in_(digests)))
        }
    get_storage(settings).uncache(*(stored for stored in deleted if stored.sha256 not in named))


def expired_jobs(session: Session, *, settings: Settings) -> list[str]:
    """Finished jobs older than the retention period that no registered version came from and
    that still hold checkpoints."""
    if settings.retention_days is None:
        return []
    cutoff = utcnow() - timedelta(days=settings.retention_days)
    registered = exists().where(ModelVersion.job_id == Job.id)
    has_files = exists().where(Checkpoint.job_id == Job.id)
    return list(
        session.scalars(
            select(Job.id).where(Job.status.in_(JobStatus.FINAL), Job.finished_at < cutoff, ~registered, has_files)
        )
    )


def purge_expired(settings: Settings) -> list[str]:
    """Remove the checkpoints (files and rows) of expired jobs; their records and metrics stay."""
    with session_scope(write=False) as session:
        expired = expired_jobs(session, settings=settings)
    for job_id in expired:
        with session_scope() as session:
            held = _stored_files(session, job_id)
            session.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id))
            evaluation_reports.forget_reports_of_dropped(session, job_id=job_id)
            # Its training state goes with the folder: a resume starts afresh rather than from nothing.
            session.execute(update(Job).where(Job.id == job_id).values(resume_state=None))
        _remove_files(settings, job_id, held)
    if expired:
        log.info(
            "retention: removed the checkpoints of %d job(s) finished over %s days ago",
            len(expired),
            settings.retention_days,
        )
    return expired

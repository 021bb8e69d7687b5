"""Run one training job: claim it in SQL, fit, record each epoch, finish it."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import traceback

import torch
import torchvision

from models.checkpoint import CheckpointError, checkpoint_name, write_checkpoint
from models.data import DatasetError
from models.engine import Callbacks, EpochMetrics, TrainingError, TrainingRun, fit
from models.spec import JobSpec
from service import jobs
from service.db import session_scope
from service.settings import get_settings
from service.tables import JobStatus, utcnow

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 5.0


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    """Renews the job's heartbeat_at from a background thread while it trains."""

    def __init__(self, job_id: str, interval: float = HEARTBEAT_INTERVAL_S):
        self.job_id = job_id
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with session_scope() as session:
                    jobs.heartbeat(session, job_id=self.job_id)
            except Exception:  # a missed beat is not fatal; the next one may get through
                log.warning("heartbeat for job %s failed", self.job_id, exc_info=True)


class RecordingCallbacks(Callbacks):
    """Writes a checkpoint and upserts metrics in SQL after every epoch."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        self.settings = get_settings()

    def on_start(self, run: TrainingRun) -> None:
        environment = {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "device": str(run.device),
            "dataset_checksum": run.dataset.checksum,
            "spec_hash": hashlib.sha256(run.spec.model_dump_json().encode()).hexdigest(),
            "num_train": len(run.dataset.x_train),
            "num_test": len(run.dataset.x_test),
        }
        with session_scope() as session:
            jobs.set_environment(session, job_id=self.job_id, environment=environment)

    def on_epoch_end(self, run: TrainingRun, metrics: EpochMetrics) -> None:
        relative = f"{self.job_id}/{checkpoint_name(metrics.epoch)}"
        meta = {
            "job_id": self.job_id,
            "epoch": metrics.epoch,
            "spec": run.spec.model_dump(mode="json"),
            "task": run.dataset.task,
            "classes": list(run.dataset.classes) if run.dataset.classes else None,
            "input_shape": list(run.dataset.input_shape),
            "preprocess": run.dataset.preprocess,
            "metrics": metrics.as_dict(),
            "dataset_checksum": run.dataset.checksum,
            "torch": torch.__version__,
        }
        size = write_checkpoint(self.settings.checkpoint_dir / relative, run.model.state_dict(), meta)
        with session_scope() as session:
            jobs.record_epoch(session, job_id=self.job_id, metrics=metrics.as_dict(),
                              checkpoint_path=relative, checkpoint_size=size)


def _failure(exc: BaseException) -> tuple[str, str]:
    """Map an exception to a (reason, message) pair for the job record."""
    if isinstance(exc, DatasetError):
        return "invalid_data", str(exc)
    if isinstance(exc, CheckpointError):
        return "checkpoint_error", str(exc)
    if isinstance(exc, OSError) and exc.filename:
        return "storage_error", f"{exc.strerror}: {exc.filename}"
    if isinstance(exc, torch.OutOfMemoryError):
        return "out_of_memory", str(exc).splitlines()[0]
    if isinstance(exc, TrainingError):
        return "training_error", str(exc)
    return "internal_error", f"{type(exc).__name__}: {exc}"


def run_job(job_id: str) -> str | None:
    """Train a queued job to a final state; returns that state, or None if it was not ours."""
    with session_scope() as session:
        if not jobs.claim_job(session, job_id=job_id, worker=worker_name()):
            log.info("job %s is not queued (already taken or gone); dropping this delivery", job_id)
            return None
        job = jobs.get_job(session, job_id=job_id)
        spec = JobSpec.model_validate(job.spec)
    settings = get_settings()
    status, reason, error = JobStatus.SUCCEEDED, None, None
    try:
        with Heartbeat(job_id):
            fit(spec, RecordingCallbacks(job_id), data_dir=settings.data_dir,
                allow_download=settings.allow_download)
    except Exception as exc:
        reason, error = _failure(exc)
        status = JobStatus.FAILED
        log.error("job %s failed (%s): %s\n%s", job_id, reason, error, traceback.format_exc())
    with session_scope() as session:
        jobs.finish_job(session, job_id=job_id, status=status, reason=reason, error=error)
    log.info("job %s %s at %s", job_id, status, utcnow().isoformat())
    return status

"""Model references -> checkpoints on disk -> loaded predictors, kept in an LRU cache."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from models.predictor import Predictor
from service import jobs
from service.tables import Checkpoint, Job

_JOB_REF = re.compile(r"^job:(?P<id>[0-9a-fA-F-]{1,36})(?::(?P<which>best|last|[1-9][0-9]{0,6}))?$")


class ModelNotFound(Exception):
    """No model answers to this reference."""


class ModelNotReady(Exception):
    """The reference names a job that has no checkpoint yet."""


@dataclass
class ResolvedCheckpoint:
    reference: str
    job: Job
    checkpoint: Checkpoint
    path: Path


def resolve(session: Session, *, reference: str, checkpoint_dir: Path) -> ResolvedCheckpoint:
    """Find the checkpoint a reference names: `job:ID` (best epoch), `job:ID:best|last|EPOCH`."""
    match = _JOB_REF.match(reference.strip())
    if not match:
        raise ModelNotFound(f"model {reference!r} not found; use a reference like job:<job id>")
    job = jobs.get_job(session, job_id=match["id"].lower())
    if job is None:
        raise ModelNotFound(f"model {reference!r} not found: there is no job {match['id']}")
    which = match["which"] or "best"
    if which.isdigit():
        checkpoint = next((c for c in job.checkpoints if c.epoch == int(which)), None)
        if checkpoint is None:
            raise ModelNotFound(f"model {reference!r} not found: job {job.id} has no checkpoint for epoch {which}")
    else:
        checkpoint = jobs.best_checkpoint(job) if which == "best" else jobs.last_checkpoint(job)
        checkpoint = checkpoint or jobs.last_checkpoint(job)
    if checkpoint is None:
        raise ModelNotReady(f"job {job.id} has no checkpoint yet (status {job.status})")
    root = checkpoint_dir.resolve()
    path = (root / checkpoint.path).resolve()
    if not path.is_relative_to(root):
        raise ModelNotFound(f"checkpoint of {reference!r} lies outside the checkpoint folder")
    return ResolvedCheckpoint(reference=reference, job=job, checkpoint=checkpoint, path=path)


class PredictorCache:
    """Loaded predictors by checkpoint file, least recently used evicted first."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[tuple[str, int], Predictor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> Predictor:
        try:
            key = (str(path), path.stat().st_mtime_ns)
        except FileNotFoundError:
            raise ModelNotFound(f"checkpoint file {path.name} is missing from the checkpoint folder") from None
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        predictor = Predictor.from_checkpoint(path)
        with self._lock:
            self._items[key] = predictor
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return predictor

    def __len__(self) -> int:
        return len(self._items)


def init_from_reference(init_from) -> str:
    """The model reference for a spec's init_from."""
    return f"job:{init_from.job_id}:{init_from.checkpoint}"

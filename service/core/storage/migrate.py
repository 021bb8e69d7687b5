"""Copying every file SQL records into another store: `trainyard storage migrate --to URL`.

A home written before files had digests keeps them in its folders (checkpoint_dir, datasets_dir,
registry_dir) under rows whose sha256 is NULL, and they are read there, unverified. migrate() takes
such a home (or any store) to another store, one file at a time, each file on its own, so that a
run stopped anywhere (the store unreachable, Ctrl-C) is taken up by the next, and a run after a
complete one copies nothing:

1. What SQL records: every checkpoint, registered version, ready dataset and job's training state,
   and the training state that a failed or cancelled job left in its checkpoint folder
   (`training-state.safetensors`) before states were recorded in SQL.
2. A file the target has under its key with the recorded size and sha256 (an object store's
   `sha256` metadata; a folder's file is hashed) is skipped without reading the source.
3. Otherwise the file is read from the current store (TRAINYARD_STORAGE_URL's), or, recorded
   without a digest, from the home's folders where that store has no such file. A recorded digest
   (or size) must match: a file that does not is reported corrupt and not copied; a missing one,
   missing.
4. It is uploaded under the same key (whole or not at all) and looked up there; only then does SQL
   change: a row without a digest gets the digest and size of what was copied, a legacy training
   state becomes its job's resume_state. Rows with a digest need no change: the key is the same.

A file whose record goes while the run goes on (a job deleted, a checkpoint dropped) is counted
as gone; one recorded anew meanwhile (a resumed job's epoch) is left to the next run: run the
last one with the workers stopped.

Source files are never deleted: once every process has TRAINYARD_STORAGE_URL set to the target,
the old folders (or objects) can go.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from sqlalchemy import func, select, update

from models.units import human_bytes
from service.core.db import session_scope
from service.core.retention import resumable_state_path
from service.core.settings import STORAGE_URL_PATTERN, Settings
from service.core.storage import (
    ObjectCorrupt,
    ObjectMissing,
    Storage,
    StorageError,
    StorageUnavailable,
    StoredFile,
    get_storage,
)
from service.core.storage.cache import file_sha256
from service.core.storage.check import PROBE_PREFIX, SOURCE, ask_store, leave_mark, leave_next_mark, same_store
from service.core.storage.stores import Store, checked_key, open_store
from service.core.tables import Checkpoint, DatasetStatus, Job, JobStatus, ModelVersion, StoredDataset

log = logging.getLogger(__name__)
T = TypeVar("T")

COPIED, SKIPPED, GONE = "copied", "skipped", "gone"
CORRUPT, MISSING, CHANGED = "corrupt", "missing", "changed"
# A job whose next attempt would resume from a training state of the old kind, left in its folder.


@dataclass(frozen=True)
class Entry:
    """A file SQL records, and the row that records it."""

    what: str  # for people
    stored: StoredFile  # as recorded (a legacy training state: its key only)
    table: str  # checkpoints, model_versions, datasets or jobs
    row: str | int
    legacy_state: bool = False


@dataclass(frozen=True)
class Step:
    """What became of one file."""

    outcome: str  # copied, skipped (already in the target), gone (no longer recorded), corrupt, missing, changed
    what: str
    key: str
    size: int | None
    error: str | None = None

    def as_dict(self) -> dict:
        return {"what": self.what, "key": self.key, "size": self.size, "error": self.error}


@dataclass
class Tally:
    files: int = 0
    bytes: int = 0

    def add(self, size: int | None) -> None:
        self.files += 1
        self.bytes += size or 0

    def as_dict(self) -> dict:
        return {"files": self.files, "bytes": self.bytes}


@dataclass
class MigrationReport:
    source: str
    target: str
    copied: Tally = field(default_factory=Tally)
    skipped: Tally = field(default_factory=Tally)  # already in the target
    gone: Tally = field(default_factory=Tally)  # deleted with their records while the run went on: nothing to copy
    corrupt: list[Step] = field(default_factory=list)  # not copied: their bytes are not the recorded ones
    missing: list[Step] = field(default_factory=list)  # not copied: not in the source
    changed: list[Step] = field(default_factory=list)  # rewritten while they were copied: the next run copies them
    digests_recorded: int = 0  # rows recorded without a digest that now have one
    states_recorded: int = 0  # legacy training states now their jobs' resume_state
    active_jobs: int = 0  # running when the run began: what they write later is for the next run
    stopped: str | None = None  # why the run stopped before the end (run it again to go on)

    @property
    def complete(self) -> bool:
        """Every recorded file is in the target with its digest recorded."""
        return self.stopped is None and not (self.corrupt or self.missing or self.changed)

    def add(self, step: Step) -> None:
        if step.outcome == COPIED:
            self.copied.add(step.size)
        elif step.outcome == SKIPPED:
            self.skipped.add(step.size)
        elif step.outcome == GONE:
            self.gone.add(step.size)
        else:
            getattr(self, step.outcome).append(step)

    def as_dict(self) -> dict:
        def problems(steps: list[Step]) -> dict:
            total = sum(s.size or 0 for s in steps)
            return {"files": len(steps), "bytes": total, "items": [s.as_dict() for s in steps]}

        return {
            "source": self.source,
            "target": self.target,
            "complete": self.complete,
            "copied": self.copied.as_dict(),
            "skipped": self.skipped.as_dict(),
            "gone": self.gone.as_dict(),
            "corrupt": problems(self.corrupt),
            "missing": problems(self.missing),
            "changed": problems(self.changed),
            "digests_recorded": self.digests_recorded,
            "states_recorded": self.states_recorded,
            "active_jobs": self.active_jobs,
            "stopped": self.stopped,
            "sources_deleted": False,
        }

    def summary(self) -> list[str]:
        """The report for people, a line each."""
        lines = []
        if self.copied.files == 0 and self.stopped is None:
            lines.append(
                f"nothing copied: {self.skipped.files} file(s), {human_bytes(self.skipped.bytes)}, "
                f"were already in {self.target}"
            )
        else:
            lines.append(f"copied {self.copied.files} file(s), {human_bytes(self.copied.bytes)}, to {self.target}")
            lines.append(f"skipped {self.skipped.files} file(s), {human_bytes(self.skipped.bytes)}, already there")
        if self.gone.files:
            lines.append(f"{self.gone.files} file(s) no longer recorded when their turn came (deleted meanwhile)")
        if self.digests_recorded or self.states_recorded:
            lines.append(
                f"recorded {self.digests_recorded} digest(s) of files recorded without one"
                + (f", and {self.states_recorded} job(s)' training state" if self.states_recorded else "")
            )
        for name, hint in (
            (CORRUPT, "not copied: their bytes are not the ones recorded"),
            (MISSING, "not copied: not in the store"),
            (CHANGED, "rewritten while they were copied: run again"),
        ):
            steps = getattr(self, name)
            if steps:
                total = human_bytes(sum(s.size or 0 for s in steps))
                lines.append(f"{len(steps)} file(s) {name}, {total}, {hint}")
        if self.active_jobs:
            lines.append(
                f"{self.active_jobs} job(s) were running: run again after stopping the workers, "
                "to copy what they wrote since"
            )
        if self.stopped:
            lines.append(f"stopped before the end: {self.stopped}; run the command again to go on")
        if self.complete:
            lines.append(f"the files in {self.source} stay there: delete them once every process uses the new store")
        else:
            lines.append(f"{self.target} lacks files: no API or worker should use it before a run copies them all")
        return lines


def home_roots(settings: Settings) -> dict[str, Path]:
    return {
        "checkpoints": settings.checkpoint_dir,
        "datasets": settings.datasets_dir,
        "registry": settings.registry_dir,
    }


def recorded_files(settings: Settings) -> list[Entry]:
    """Every file SQL records, datasets first, then registered versions, checkpoints and training
    states; with the legacy training states of failed and cancelled jobs."""
    entries: list[Entry] = []
    with session_scope(write=False) as session:
        ready = select(StoredDataset).where(StoredDataset.status == DatasetStatus.READY).order_by(StoredDataset.id)
        for dataset in session.scalars(ready):
            entries.append(Entry(f"dataset {dataset.name!r} ({dataset.id})", dataset.file, "datasets", dataset.id))
        for version in session.scalars(select(ModelVersion).order_by(ModelVersion.name, ModelVersion.version)):
            entries.append(
                Entry(f"model {version.name} version {version.version}", version.file, "model_versions", version.id)
            )
        for checkpoint in session.scalars(select(Checkpoint).order_by(Checkpoint.job_id, Checkpoint.epoch)):
            entries.append(
                Entry(
                    f"job {checkpoint.job_id}'s checkpoint of epoch {checkpoint.epoch}",
                    checkpoint.file,
                    "checkpoints",
                    checkpoint.id,
                )
            )
        for job_id, status, state in session.execute(select(Job.id, Job.status, Job.resume_state).order_by(Job.id)):
            what = f"job {job_id}'s training state"
            if state:
                stored = StoredFile(state["key"], state.get("size"), state.get("sha256"))
                entries.append(Entry(what, stored, "jobs", job_id))
            elif status in JobStatus.RESUMABLE and resumable_state_path(settings, job_id).is_file():
                key = f"checkpoints/{job_id}/{resumable_state_path(settings, job_id).name}"
                entries.append(Entry(what, StoredFile(key), "jobs", job_id, legacy_state=True))
    return entries


class Changed(Exception):
    """The file or its row changed while it was copied."""


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


class Migration:
    """One run: its stores, and its report as it goes."""

    def __init__(self, settings: Settings, target_url: str):
        if not re.fullmatch(STORAGE_URL_PATTERN, target_url):
            raise ValueError(f"the target must be file:///path or s3://bucket/prefix, not {target_url!r}")
        self.settings = settings
        self.source: Storage = get_storage(settings)
        self.target: Store = open_store(target_url, home_roots(settings))
        self.home: Store = open_store(None, home_roots(settings))  # where files without a digest were written
        self.report = MigrationReport(self.source.url, self.target.url)

    def check(self) -> None:
        """ValueError when this run must not copy: the target is the source itself (under its URL or
        another), or the source is not the service's store (this machine's settings name a store
        the service left, say), so that what the target got would be old or missing files. A store
        that cannot be reached now is left to the steps, which stop there. A target that refuses (no
        such bucket: some stores would make one of a mistyped name at the first write) copies nothing."""
        try:
            self.target.list(PROBE_PREFIX)
        except StorageUnavailable:
            return
        except StorageError as refused:
            raise ValueError(str(refused)) from None
        try:
            if same_store(self.source.store, self.target):
                raise ValueError(f"{self.target.url} is the store this machine uses already ({self.source.url})")
            problem = ask_store(self.source.store, SOURCE)
        except StorageError:  # unreachable or refusing now: the copy's first step stops there, saying so
            return
        if problem:
            raise ValueError(f"{problem}; run storage migrate where the service's API runs, with its settings")

    def steps(self) -> Iterator[Step]:
        """One step per recorded file, as it is done; the run stops (report.stopped says why) at
        the first error of a store that cannot be reached or refuses."""
        with session_scope(write=False) as session:
            self.report.active_jobs = session.scalar(
                select(func.count()).select_from(Job).where(Job.status.in_(JobStatus.ACTIVE))
            )
        for entry in recorded_files(self.settings):
            try:
                step = self.run(entry)
            except (ObjectMissing, ObjectCorrupt, Changed) as exc:
                step = self._failed(entry, exc)
            except StorageError as exc:
                self.report.stopped = str(exc)
                log.warning("storage migration to %s stopped: %s", self.target.url, exc)
                return
            self.report.add(step)
            yield step
        if not self.report.complete:  # an API started on a target that lacks files would fail on them
            return
        try:  # the source's mark (a home whose API never started has none yet), then the target's
            leave_mark(self.source.store)
            leave_next_mark(self.target)
        except StorageError as exc:
            self.report.stopped = str(exc)

    def _failed(self, entry: Entry, exc: Exception) -> Step:
        """What a file that could not be copied means: nothing, if its record went meanwhile (a
        job deleted, a checkpoint dropped, a newer training state); a file rewritten since it was
        listed is for the next run; else missing, corrupt or changed as found."""
        now = self.recorded_now(entry)
        if now is None:
            return Step(GONE, entry.what, entry.stored.key, entry.stored.size)
        if now != entry.stored:
            outcome, error = CHANGED, f"{entry.what} was recorded anew while it was copied"
        else:
            kinds = ((ObjectMissing, MISSING), (ObjectCorrupt, CORRUPT), (Changed, CHANGED))
            outcome, error = next(name for kind, name in kinds if isinstance(exc, kind)), str(exc)
        return Step(outcome, entry.what, entry.stored.key, entry.stored.size, error)

    def recorded_now(self, entry: Entry) -> StoredFile | None:
        """The file the entry's row records now; None if it records none."""
        with session_scope(write=False) as session:
            if entry.table == "checkpoints":
                row = session.get(Checkpoint, entry.row)
            elif entry.table == "model_versions":
                row = session.get(ModelVersion, entry.row)
            elif entry.table == "datasets":
                row = session.get(StoredDataset, entry.row)
                row = row if row is not None and row.status == DatasetStatus.READY else None
            else:
                job = session.get(Job, entry.row)
                if job is None:
                    return None
                if entry.legacy_state:
                    return entry.stored if not job.resume_state and job.status in JobStatus.RESUMABLE else None
                state = job.resume_state
                return StoredFile(state["key"], state.get("size"), state.get("sha256")) if state else None
            return row.file if row is not None else None

    def run(self, entry: Entry) -> Step:
        try:
            checked_key(entry.stored.key)
        except StorageError as exc:
            raise ObjectMissing(f"{entry.what}: {exc}") from None
        if entry.stored.sha256 is not None:
            return self._recorded(entry)
        return self._undigested(entry)

    def _target(self, what: str, call: Callable[[], T]) -> T:
        """A call on the target store: whatever it refuses stops the run (a missing bucket answers
        404, which a store reports as a missing object)."""
        try:
            return call()
        except ObjectMissing as exc:
            raise StorageError(f"{what}: {exc} (does the bucket exist?)") from None

    def present(self, key: str, size: int | None, sha256: str, source: Path | None = None) -> bool:
        """Whether the target has these bytes under the key."""
        there = self._target(f"looking up {key}", lambda: self.target.head(key))
        if there is None or (size is not None and there[0] != size):
            return False
        digest = there[1]
        if digest is None and self.target.local:
            path = self.target.path(key)
            if source is not None and os.path.samefile(path, source):
                return True
            digest = file_sha256(path)
        return digest == sha256

    def upload(self, key: str, path: Path, size: int, sha256: str) -> None:
        """Store the file under the key and check that the target now has it."""
        self._target(f"writing {key}", lambda: self.target.upload(key, path, sha256))
        there = self._target(f"looking up {key}", lambda: self.target.head(key))
        if there is None or there[0] != size or there[1] not in (None, sha256):
            raise StorageError(f"{key} was written to {self.target.url} but reads back as {there}, not {size} bytes")

    def _recorded(self, entry: Entry) -> Step:
        """A file with a recorded digest: skipped if the target has it, else read from the current
        store, verified, and copied."""
        stored = entry.stored
        if self.present(stored.key, stored.size, stored.sha256):
            return Step(SKIPPED, entry.what, stored.key, stored.size)
        local = self.source.store.path(stored.key) if self.source.store.local else None
        before = _identity(local) if local is not None else None
        with self.source.opened(stored, what=entry.what) as path:  # ObjectMissing, ObjectCorrupt
            size = path.stat().st_size
            self.upload(stored.key, path, size, stored.sha256)
        if local is not None and _identity(local) != before:
            raise Changed(f"{local} was rewritten while it was copied")
        return Step(COPIED, entry.what, stored.key, size)

    def _legacy_path(self, entry: Entry) -> Path:
        """Where a file recorded without a digest is: in the current store if it is a folder that
        has it, else in the home's folders (a legacy training state: in its job's folder)."""
        if entry.legacy_state:
            places = [resumable_state_path(self.settings, str(entry.row))]
        else:
            places = [self.source.store.path(entry.stored.key)] if self.source.store.local else []
            places.append(self.home.path(entry.stored.key))
        for path in places:
            if path.is_file():
                return path
        places = list(dict.fromkeys(places))
        where = f"{places[0]} does not exist" if len(places) == 1 else f"neither {places[0]} nor {places[1]} exists"
        raise ObjectMissing(f"{entry.what} is missing: {where}")

    def _undigested(self, entry: Entry) -> Step:
        """A file recorded without a digest (before digests were): hashed where it is, copied
        unless the target has it, and then its digest recorded."""
        stored = entry.stored
        path = self._legacy_path(entry)
        before = _identity(path)
        size, sha256 = path.stat().st_size, file_sha256(path)
        if stored.size is not None and size != stored.size:
            raise ObjectCorrupt(f"{entry.what} is corrupt: {path} has {size} bytes, not the {stored.size} recorded")
        if self.present(stored.key, size, sha256, source=path):
            outcome = SKIPPED
        else:
            self.upload(stored.key, path, size, sha256)
            outcome = COPIED
        if _identity(path) != before:
            raise Changed(f"{path} was rewritten while it was copied")
        self._record(entry, size, sha256)
        return Step(outcome, entry.what, stored.key, size)

    def _record(self, entry: Entry, size: int, sha256: str) -> None:
        """Give the row the digest and size of what was copied, if it is still as it was read."""
        key = entry.stored.key
        with session_scope() as session:
            if entry.table == "checkpoints":
                changed = session.execute(
                    update(Checkpoint)
                    .where(
                        Checkpoint.id == entry.row,
                        Checkpoint.path == key.removeprefix("checkpoints/"),
                        Checkpoint.sha256.is_(None),
                    )
                    .values(sha256=sha256, size_bytes=size)
                ).rowcount
            elif entry.table == "model_versions":
                changed = session.execute(
                    update(ModelVersion)
                    .where(
                        ModelVersion.id == entry.row,
                        ModelVersion.path == key.removeprefix("registry/"),
                        ModelVersion.sha256.is_(None),
                    )
                    .values(sha256=sha256, size_bytes=size)
                ).rowcount
            elif entry.table == "datasets":
                changed = session.execute(
                    update(StoredDataset)
                    .where(
                        StoredDataset.id == entry.row,
                        StoredDataset.status == DatasetStatus.READY,
                        StoredDataset.file_sha256.is_(None),
                    )
                    .values(file_sha256=sha256, size_bytes=size)
                ).rowcount
            else:
                job = session.get(Job, entry.row, populate_existing=True, with_for_update=True)
                state = job.resume_state if job is not None else None
                if entry.legacy_state:
                    changed = job is not None and not state and job.status in JobStatus.RESUMABLE
                else:
                    changed = bool(state) and state.get("key") == key and not state.get("sha256")
                if changed:
                    job.resume_state = {"key": key, "size": size, "sha256": sha256}
        if not changed:
            raise Changed(f"{entry.what} changed in the database while it was copied")
        if entry.legacy_state:
            self.report.states_recorded += 1
        else:
            self.report.digests_recorded += 1


def migrate(settings: Settings, target_url: str, *, progress: Callable[[Step], None] | None = None) -> MigrationReport:
    """Copy every file SQL records from the current store into the store at target_url, under the
    same keys, recording the digests of files recorded without one (see the module's docstring);
    progress(step) after each file. ValueError for a URL that names no store, and for a run that
    must not copy (Migration.check)."""
    migration = Migration(settings, target_url)
    migration.check()
    for step in migration.steps():
        if progress is not None:
            progress(step)
    return migration.report

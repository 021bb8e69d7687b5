"""Whether a process's store is the one its database records files in, asked by a worker before
it takes a job: a worker on another machine that names no store (so its own folders), another
bucket, or credentials the store refuses would fail every job it took on an upload
(missing_file, storage_error), or finish one with weights the API cannot read.

Two looks, both cheap: a listing of a prefix nothing uses (the store answers it only for a key
pair it accepts, in a bucket that exists), and a lookup of the newest files SQL records with a
digest: a store holding none of them is not this service's. A store or database that cannot be
reached right now is no answer either way (the worker goes on, and waits for it job by job)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.storage import Storage, StorageError, StorageUnavailable, StoredFile
from service.core.tables import Checkpoint, DatasetStatus, ModelVersion, StoredDataset

SAMPLE = 5  # the newest recorded files looked up
PROBE_PREFIX = "checkpoints/.trainyard-probe/"  # no job id starts with a dot
STORE_HINT = "set TRAINYARD_STORAGE_URL and the store's AWS_* settings as the API has them (docs/storage.md)"


def newest_recorded(session: Session, limit: int = SAMPLE) -> list[StoredFile]:
    """The newest checkpoints, ready datasets and registered versions SQL records with a digest
    (a file recorded without one is read from the home's folders, wherever the store is)."""
    rows = [
        *session.scalars(
            select(Checkpoint).where(Checkpoint.sha256.is_not(None)).order_by(Checkpoint.created_at.desc()).limit(limit)
        ),
        *session.scalars(
            select(StoredDataset)
            .where(StoredDataset.status == DatasetStatus.READY, StoredDataset.file_sha256.is_not(None))
            .order_by(StoredDataset.created_at.desc())
            .limit(limit)
        ),
        *session.scalars(
            select(ModelVersion)
            .where(ModelVersion.sha256.is_not(None))
            .order_by(ModelVersion.created_at.desc())
            .limit(limit)
        ),
    ]
    return [row.file for row in sorted(rows, key=lambda row: row.created_at, reverse=True)[:limit]]


def store_problem(storage: Storage, recorded: list[StoredFile]) -> str | None:
    """Why this store cannot be the one whose files `recorded` lists (SQL's newest), or None.
    StorageUnavailable when it cannot be reached."""
    try:
        storage.store.list(PROBE_PREFIX)
        held = [storage.store.head(stored.key) for stored in recorded]
    except StorageUnavailable:
        raise
    except StorageError as refused:
        return f"this worker's store refuses it: {refused}; {STORE_HINT}"
    if recorded and not any(held):
        return (
            f"this worker's store ({storage.url}) holds none of the {len(recorded)} newest files the "
            f"service's database records (such as {recorded[0].key}): it is not the store the API and the "
            f"other workers use, and every job it took would fail or keep its weights where no one else "
            f"reads them; {STORE_HINT}"
        )
    return None

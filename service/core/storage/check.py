"""Whether a process's store is the one its database records files in, asked by a worker before
it takes a job: a worker on another machine that names no store (so its own folders), another
bucket, or credentials the store refuses would fail every job it took on an upload
(missing_file, storage_error), or finish one with weights the API cannot read.

Two looks, both cheap:
- a listing of a prefix nothing uses, which an object store answers with an error code for a key
  pair it does not know or a bucket that does not exist (a key pair merely not allowed to list,
  AccessDenied, says nothing either way);
- a lookup of the newest files the API wrote (uploaded datasets, registered versions): a store
  holding none of them is not the service's. Checkpoints are not asked about: a misconfigured
  worker writes those, and its own would vouch for its store.

A store or database that cannot be reached right now is no answer either way (the worker goes on,
and waits for it job by job); nor is a service with no upload or version yet."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.storage import ObjectMissing, Storage, StorageError, StorageUnavailable, StoredFile
from service.core.tables import DatasetStatus, ModelVersion, StoredDataset

SAMPLE = 5  # the newest files the API wrote, looked up
PROBE_PREFIX = "checkpoints/.trainyard-probe/"  # no job id starts with a dot
# What a store answers a key pair or a bucket that cannot be this service's.
MISCONFIGURED_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket"})
STORE_HINT = "set TRAINYARD_STORAGE_URL and the store's AWS_* settings as the API has them (docs/storage.md)"


def newest_written_by_the_api(session: Session, limit: int = SAMPLE) -> list[StoredFile]:
    """The newest ready uploads and registered versions SQL records with a digest (a file recorded
    without one is read from the home's folders, wherever the store is)."""
    rows = [
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
    """Why this store cannot be the one whose files `recorded` lists, or None (also when it cannot
    tell). StorageUnavailable when the store cannot be reached."""
    try:
        storage.store.list(PROBE_PREFIX)
    except StorageUnavailable:
        raise
    except StorageError as refused:
        if refused.code in MISCONFIGURED_CODES:
            return f"this worker's store refuses it: {refused}; {STORE_HINT}"
    found = []
    for stored in recorded:
        try:
            found.append(storage.store.head(stored.key) is not None)
        except ObjectMissing:
            found.append(False)
        except StorageUnavailable:
            raise
        except StorageError:
            return None  # not allowed to look (a 403 for any HEAD it may not make): no answer
    if found and not any(found):
        return (
            f"this worker's store ({storage.url}) holds none of the {len(found)} newest files the API "
            f"recorded (such as {recorded[0].key}): it is not the store the API and the other workers "
            f"use, and every job it took would fail or keep its weights where no one else reads them; "
            f"{STORE_HINT}"
        )
    return None

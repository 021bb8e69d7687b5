"""Whether a process's store is the one its database records files in, asked by a worker before
it takes a job: a worker on another machine that names no store (so its own folders), another
bucket, or credentials the store refuses would fail every job it took on an upload
(missing_file, storage_error), or finish one with weights the API cannot read.

The API leaves a mark in each area of its store (checkpoints, datasets, registry: they may be
folders of their own): an object named by a token SQL records (store_marks), written before SQL
records it, so that no store is ever asked for a mark it could not yet hold. A store without the
mark is not the service's, unless it holds one of the newest files SQL records: then the mark went
(a folder emptied, an expiry rule) and the API puts it back. Before that, a listing of a prefix
nothing uses tells apart a key pair the store does not know or a bucket that does not exist (a key
pair merely not allowed to list, AccessDenied, says nothing).

A store or database that cannot be reached right now is no answer either way (the worker goes on,
and waits for it job by job); nor is a service whose API has not yet left its mark.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import uuid
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.db import read_scope, session_scope
from service.core.storage import ObjectMissing, StorageError, StorageUnavailable, StoredFile
from service.core.storage.stores import AREAS, Store
from service.core.tables import Checkpoint, DatasetStatus, ModelVersion, StoredDataset, StoreMark, utcnow

log = logging.getLogger(__name__)

MARK_FOLDER = ".trainyard-mark"  # no job id, dataset id or model name starts with a dot
PROBE_PREFIX = "checkpoints/.trainyard-probe/"
SAMPLE = 5  # the newest recorded files looked up when the mark is missing
# What a store answers a key pair or a bucket that cannot be this service's.
MISCONFIGURED_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket"})
STORE_HINT = "set TRAINYARD_STORAGE_URL and the store's AWS_* settings as the API has them (docs/storage.md)"


def mark_keys(token: str) -> list[str]:
    return [f"{area}/{MARK_FOLDER}/{token}" for area in AREAS]


def recorded_mark(session: Session) -> str | None:
    """The token of the service's mark, None until the API has left one."""
    return session.scalar(select(StoreMark.token).order_by(StoreMark.created_at, StoreMark.token).limit(1))


def newest_recorded(session: Session, limit: int = SAMPLE) -> list[StoredFile]:
    """The newest checkpoints, ready uploads and registered versions SQL records with a digest (a
    file recorded without one is read from the home's folders, wherever the store is)."""
    rows = []
    for table, digest, *where in (
        (Checkpoint, Checkpoint.sha256),
        (StoredDataset, StoredDataset.file_sha256, StoredDataset.status == DatasetStatus.READY),
        (ModelVersion, ModelVersion.sha256),
    ):
        query = select(table).where(digest.is_not(None), *where).order_by(table.created_at.desc()).limit(limit)
        rows.extend(session.scalars(query))
    return [row.file for row in sorted(rows, key=lambda row: row.created_at, reverse=True)[:limit]]


def leave_mark(store: Store, *, choose: bool = True) -> str | None:
    """Make sure `store` holds the service's mark; its token. With none recorded, choose one (the
    API's start and housekeeping), or leave nothing (`storage migrate`: the API chooses it, for its
    store). A mark missing from a store that holds none of the newest recorded files is not put
    back: that store is not the service's (the process's settings are not the others')."""
    with read_scope() as session:
        token, recorded = recorded_mark(session), newest_recorded(session)
    if token is None:
        if not choose:
            return None
        token = uuid.uuid4().hex
        _write(store, mark_keys(token), token)
        with session_scope() as session:
            session.add(StoreMark(token=token))
        log.info("left the service's mark in %s: %s", store.url, ", ".join(mark_keys(token)))
        return token
    missing = [key for key in mark_keys(token) if not _held(store, key)]
    if missing and recorded and not _holds_any(store, recorded):
        log.warning("%s lacks the service's mark and %s: not putting the mark there", store.url, _sample(recorded))
        return token
    _write(store, missing, token)
    return token


def store_problem(store: Store, mark: str | None, recorded: list[StoredFile]) -> str | None:
    """Why this store cannot be the one whose mark is `mark` and which holds the `recorded` files,
    or None (also when it cannot tell). StorageUnavailable when the store cannot be reached."""
    try:
        store.list(PROBE_PREFIX)
    except StorageUnavailable:
        raise
    except StorageError as refused:
        if refused.code in MISCONFIGURED_CODES:
            return f"this worker's store refuses it: {refused}; {STORE_HINT}"
    if mark is None:
        return None
    try:
        missing = [key for key in mark_keys(mark) if not _held(store, key)]
        if not missing or _holds_any(store, recorded):
            return None
    except StorageUnavailable:
        raise
    except StorageError:
        return None  # not allowed to look (a 403 for any HEAD it may not make): no answer
    return (
        f"this worker's store ({store.url}) lacks the mark the API left ({missing[0]}) in the store the API "
        f"and the other workers use, and {_sample(recorded)}: it is not that store, and every job it took "
        f"would fail or keep its weights where no one else reads them; {_hint(store, missing[0])}"
    )


def _hint(store: Store, key: str) -> str:
    """What to set, and for folders whether they are there at all (a shared mount that did not come up)."""
    if not store.local:
        return STORE_HINT
    area = store.path(key).parent.parent
    there = area.is_dir() and any(area.iterdir())
    absent = "" if there else f" ({area} is empty or missing: is its file system mounted?)"
    return f"set TRAINYARD_STORAGE_URL as the API has it{absent} (docs/storage.md)"


def _sample(recorded: list[StoredFile]) -> str:
    if not recorded:
        return "the database records no file yet"
    return f"none of the {len(recorded)} newest files the database records (such as {recorded[0].key})"


def _held(store: Store, key: str) -> bool:
    try:
        return store.head(key) is not None
    except ObjectMissing:
        return False


def _holds_any(store: Store, recorded: list[StoredFile]) -> bool:
    return any(_held(store, stored.key) for stored in recorded)


def _write(store: Store, keys: list[str], token: str) -> None:
    mark = (json.dumps({"service": token, "written_at": utcnow().isoformat()}) + "\n").encode()
    with tempfile.TemporaryDirectory(prefix="trainyard-mark-") as folder:
        source = Path(folder) / token
        source.write_bytes(mark)
        for key in keys:
            store.upload(key, source, hashlib.sha256(mark).hexdigest())

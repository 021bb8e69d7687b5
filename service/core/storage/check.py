"""Whether a process's store is the one its database records files in, asked by a worker before
it takes a job: a worker on another machine that names no store (so its own folders), another
bucket, or credentials the store refuses would fail every job it took on an upload
(missing_file, storage_error), or finish one with weights the API cannot read.

The API leaves a mark in its store: an object named by a token that SQL records (store_marks),
written to the store before SQL records it, so that a store is never asked for a mark it could not
yet hold. A worker asks its store for that object: one without it is not the service's. Before
that, a listing of a prefix nothing uses tells apart a key pair the store does not know or a bucket
that does not exist (a key pair merely not allowed to list, AccessDenied, says nothing).

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
from service.core.storage import ObjectMissing, StorageError, StorageUnavailable
from service.core.storage.stores import Store
from service.core.tables import StoreMark, utcnow

log = logging.getLogger(__name__)

MARKS = "checkpoints/.trainyard-mark/"  # no job id starts with a dot
PROBE_PREFIX = "checkpoints/.trainyard-probe/"
# What a store answers a key pair or a bucket that cannot be this service's.
MISCONFIGURED_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket"})
STORE_HINT = "set TRAINYARD_STORAGE_URL and the store's AWS_* settings as the API has them (docs/storage.md)"


def recorded_mark(session: Session) -> str | None:
    """The token of the service's mark, None until the API has left one."""
    return session.scalar(select(StoreMark.token).order_by(StoreMark.created_at, StoreMark.token).limit(1))


def leave_mark(store: Store, *, choose: bool = True) -> str | None:
    """Make sure `store` holds the service's mark; its token. With none recorded, choose one (the
    API's housekeeping), or leave nothing (`storage migrate`: the API chooses it, for its store)."""
    with read_scope() as session:
        token = recorded_mark(session)
    if token is not None:
        if not _held(store, token):
            _write(store, token)
        return token
    if not choose:
        return None
    token = uuid.uuid4().hex
    _write(store, token)
    with session_scope() as session:
        session.add(StoreMark(token=token))
    log.info("left the service's mark in %s: %s%s", store.url, MARKS, token)
    return token


def store_problem(store: Store, mark: str | None) -> str | None:
    """Why this store cannot be the one whose mark is `mark`, or None (also when it cannot tell).
    StorageUnavailable when the store cannot be reached."""
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
        if _held(store, mark):
            return None
    except StorageUnavailable:
        raise
    except StorageError:
        return None  # not allowed to look (a 403 for any HEAD it may not make): no answer
    return (
        f"this worker's store ({store.url}) lacks the mark the API left ({MARKS}{mark}) in the store the "
        f"API and the other workers use: it is not that store, and every job it took would fail or keep its "
        f"weights where no one else reads them; {STORE_HINT}"
    )


def _held(store: Store, token: str) -> bool:
    try:
        return store.head(MARKS + token) is not None
    except ObjectMissing:
        return False


def _write(store: Store, token: str) -> None:
    mark = (json.dumps({"service": token, "written_at": utcnow().isoformat()}) + "\n").encode()
    with tempfile.TemporaryDirectory(prefix="trainyard-mark-") as folder:
        source = Path(folder) / token
        source.write_bytes(mark)
        store.upload(MARKS + token, source, hashlib.sha256(mark).hexdigest())

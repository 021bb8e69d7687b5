"""Whether a process's store is the one its database records files in, asked by a worker before
it takes a job: a worker on another machine that names no store (so its own folders), another
bucket, or credentials the store refuses would fail every job it took on an upload
(missing_file, storage_error), or finish one with weights the API cannot read.

The API leaves a mark in each area of its store (checkpoints, datasets, registry: they may be
folders of their own): an object named by a token SQL records (store_marks), written before SQL
records it, so that no store is ever asked for a mark it could not yet hold. A store without the
mark is not the service's, unless it holds one of the newest files SQL records: then the mark went
(a folder emptied, an expiry rule) and the API puts it back.

`storage migrate` leaves a mark of its own in the store it copies to (next): a worker on that
store is refused until the first API started on it makes that mark the service's and the old one
left; from then on a worker still on the store the service left is refused (at its start, and
before its next job when it runs already). The API's /readyz asks its own store the same question.

Before the marks, a listing of a prefix nothing uses tells apart a key pair the store does not
know or a bucket that does not exist (a key pair merely not allowed to list, AccessDenied, says
nothing).

A store or database that cannot be reached right now is no answer either way (the worker goes on,
and waits for it job by job); nor is a service whose API has not yet left its mark.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.core.db import read_scope, session_scope
from service.core.storage import ObjectMissing, StorageError, StorageUnavailable, StoredFile
from service.core.storage.stores import AREAS, Store
from service.core.tables import (
    Checkpoint,
    DatasetStatus,
    MarkState,
    ModelVersion,
    StoredDataset,
    StoreMark,
    utcnow,
)

log = logging.getLogger(__name__)

MARK_FOLDER = ".trainyard-mark"  # no job id, dataset id or model name starts with a dot
PROBE_PREFIX = "checkpoints/.trainyard-probe/"
SAMPLE = 5  # the newest recorded files looked up when the mark is missing
# What a store answers a key pair or a bucket that cannot be this service's.
MISCONFIGURED_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket"})
STORE_HINT = "set TRAINYARD_STORAGE_URL and the store's AWS_* settings as the API has them (docs/storage.md)"


@dataclass(frozen=True)
class Subject:
    """Whose store is asked, and what goes wrong when it is not the service's, for the messages."""

    store: str
    harm: str


WORKER = Subject("this worker's store", "every job it took would fail, or keep its weights where the API does not read")
API = Subject(
    "this API's store", "it reads old files or none, and its uploads and versions would go where no one reads"
)
MACHINE = Subject("this machine's store", "a worker started here is refused")
SOURCE = Subject(
    "the store this machine's settings name", "what storage migrate copied from it would be old or missing"
)


def mark_keys(token: str) -> list[str]:
    return [f"{area}/{MARK_FOLDER}/{token}" for area in AREAS]


@dataclass(frozen=True)
class Marks:
    """The marks SQL records: the service's (current), those of stores `storage migrate` copied to
    (next), and those of the stores the service left or did not move to, newest first (a few: each
    costs a look)."""

    current: StoreMark | None = None
    next: tuple[StoreMark, ...] = ()
    left: tuple[StoreMark, ...] = ()


def recorded_marks(session: Session) -> Marks:
    rows = session.scalars(select(StoreMark).order_by(StoreMark.created_at, StoreMark.token)).all()
    current = [row for row in rows if row.state == MarkState.CURRENT]
    left = sorted((row for row in rows if row.state in MarkState.GONE), key=lambda row: row.changed_at, reverse=True)
    return Marks(
        current=current[0] if current else None,
        next=tuple(row for row in rows if row.state == MarkState.NEXT),
        left=tuple(left[:SAMPLE]),
    )


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


def leave_mark(store: Store, *, move: bool = False) -> str:
    """Make sure the API's `store` holds the service's mark; its token. With none recorded, choose
    one. `move` (an API starting, not its housekeeping): a store holding the mark `storage migrate`
    left in its target becomes the service's, and the store it left is refused from then on. A
    mark missing from a store the service left, or from one that holds none of the newest recorded
    files, is not put back: that store is not the service's (the process's settings are not the
    others'). With no file recorded yet, an API vouches for its own store (a home emptied).
    StorageError for a store that refuses it, StorageUnavailable for one that cannot be reached."""
    with read_scope() as session:
        marks, recorded = recorded_marks(session), newest_recorded(session)
    # A store that refuses (no such bucket, a wrong key pair) says so here: its mark's keys would
    # otherwise read as missing, as if it were another store.
    store.list(PROBE_PREFIX)
    if marks.current is None:
        token = uuid.uuid4().hex
        _write(store, mark_keys(token), token)
        with session_scope() as session:
            session.add(StoreMark(token=token, store_url=store.url, changed_at=utcnow()))
        log.info("left the service's mark in %s: %s", store.url, ", ".join(mark_keys(token)))
        return token
    current, found = marks.current, _find(store, marks, recorded)
    if found.holds == NEXT and move:
        return _move_to(store, found.mark, current)
    if found.holds == CURRENT and current.store_url is None:  # recorded before stores' URLs were
        with session_scope() as session:
            session.execute(update(StoreMark).where(StoreMark.token == current.token).values(store_url=store.url))
    elif found.holds == GONE:
        log.warning("%s holds only a mark of the service's past stores: not putting the mark there", store.url)
    elif found.holds == FOREIGN and recorded:
        log.warning("%s lacks the service's mark and %s: not putting the mark there", store.url, _sample(recorded))
    elif found.holds in (FILES, FOREIGN):
        _write(store, list(found.missing), current.token)
    return current.token


def settle(store: Store, *, first_delay: float = 1.0, max_delay: float = 60.0) -> str:
    """leave_mark(store, move=True) until it gets through, for an API process starting while its
    store or the database is away (the reaper's housekeeping, in one process of all, never moves
    the service); the token then."""
    delay = first_delay
    while True:
        try:
            return leave_mark(store, move=True)
        except Exception as error:  # a store or database away: the move, or the mark, waits for them
            log.warning("could not check this API's store against the service's yet: %s; trying again", error)
            time.sleep(delay)
            delay = min(delay * 2, max_delay)


def leave_next_mark(target: Store) -> str | None:
    """Leave in the store `storage migrate` copies to a mark of its own, which makes it the
    service's store once an API starts on it; its token (None while no mark is the service's)."""
    with read_scope() as session:
        marks = recorded_marks(session)
    if marks.current is None:
        return None
    if not _missing(target, marks.current.token) and marks.current.store_url == target.url:
        return marks.current.token  # the service's store already
    if held := _held(target, marks.next):  # marked by an earlier run: the same mark, put back whole
        _write(target, _missing(target, held.token), held.token)
        return held.token
    token = uuid.uuid4().hex
    _write(target, mark_keys(token), token)
    with session_scope() as session:
        session.add(StoreMark(token=token, state=MarkState.NEXT, store_url=target.url))
    return token


def withdraw_next(url: str) -> int:
    """Call off the service's move to the store at `url` that `storage migrate` prepared: an API
    started on it no longer moves the service there, and workers on it are refused as on any store
    the service did not move to. The files copied there stay. Returns how many marks it withdrew."""
    written = {url.rstrip("/"), url.rstrip("/") + "/"}  # as given, with or without its last slash
    with session_scope() as session:
        return session.execute(
            update(StoreMark)
            .where(StoreMark.state == MarkState.NEXT, StoreMark.store_url.in_(written))
            .values(state=MarkState.DROPPED, changed_at=utcnow())
        ).rowcount


def ask_store(store: Store, subject: Subject = WORKER) -> str | None:
    """Why `store` is not the service's, or None: store_problem with what SQL records now.
    StorageUnavailable, or the database's error, when either cannot be asked."""
    with read_scope() as session:
        marks, recorded = recorded_marks(session), newest_recorded(session)
    return store_problem(store, marks, recorded, subject)


def readiness(store: Store, subject: Subject = API) -> str:
    """The API's store for /readyz: "ok"; "error: why" when it is not the service's (its predicts
    and uploads would fail, or go where no worker reads); "unchecked: why" when the store or the
    database cannot be asked now (no answer either way)."""
    try:
        problem = ask_store(store, subject)
    except Exception as error:  # the store or the database away now; the database's own check says so
        return f"unchecked: {type(error).__name__}: {error}"
    return f"error: {problem}" if problem else "ok"


class StoreReadiness:
    """readiness() for the probes, asked at most once per `ttl` seconds and by one thread at a time:
    a probe that comes while it is being asked gets the last answer, so a store that hangs holds
    one thread, not one per probe."""

    def __init__(self, ttl: float = 10.0):
        self.ttl = ttl
        self._asking = threading.Lock()
        self._said: str | None = None
        self._at = -math.inf

    def status(self, store: Store) -> str:
        age = time.monotonic() - self._at
        if self._said is not None and age < self.ttl:
            return self._said
        if not self._asking.acquire(blocking=False):  # asked now by another thread, which may hang
            return self._said if self._said is not None and age < 3 * self.ttl else "unchecked: being asked"
        try:
            self._said, self._at = readiness(store), time.monotonic()
        finally:
            self._asking.release()
        return self._said

    def problem(self, store: Store) -> str | None:
        """Why the store is not the service's, as status() says it; None when it is, or cannot be asked."""
        return problem_in(self.status(store))


def problem_in(said: str) -> str | None:
    """The why of a readiness() answer that says the store is not the service's; else None."""
    return said.removeprefix("error: ") if said.startswith("error: ") else None


def store_problem(store: Store, marks: Marks, recorded: list[StoredFile], subject: Subject = WORKER) -> str | None:
    """Why this store cannot be the one whose marks are `marks` and which holds the `recorded`
    files, or None (also when it cannot tell). StorageUnavailable when the store cannot be reached."""
    try:
        store.list(PROBE_PREFIX)
    except StorageUnavailable:
        raise
    except StorageError as refused:
        if refused.code in MISCONFIGURED_CODES:
            return f"{subject.store} refuses it: {refused}; {STORE_HINT}"
    if marks.current is None:
        return None
    try:
        found = _find(store, marks, recorded)
    except StorageUnavailable:
        raise
    except StorageError:
        return None  # not allowed to look (a 403 for any HEAD it may not make): no answer
    if found.holds in (CURRENT, FILES):
        return None
    now = f"the service's store is {marks.current.store_url}" if marks.current.store_url else "the service is elsewhere"
    this = f"{subject.store} ({store.url})"
    if found.holds == NEXT:
        return (
            f"{this} is the one `storage migrate` copied the service's files to on {_day(found.mark.created_at)}, "
            f"but the service has not moved there yet ({now}): the first API started on it (trainyard api) moves "
            f"it, and workers on it start after that; until then {subject.harm}"
        )
    if found.holds == GONE and found.mark.state == MarkState.DROPPED:
        return (
            f"{this} is one `storage migrate` copied the service's files to on {_day(found.mark.created_at)}, and "
            f"the service did not move there ({now}): {subject.harm}; {_hint(store, None)}"
        )
    if found.holds == GONE:
        return (
            f"{this} is one the service moved away from on {_day(found.mark.changed_at)} ({now}): {subject.harm}; "
            f"{_hint(store, None)}"
        )
    return (
        f"{this} lacks the mark the API left ({found.missing[0]}) in the service's store, and "
        f"{_sample(recorded)}: it is not that store ({now}), and {subject.harm}; {_hint(store, found.missing[0])}"
    )


def same_store(one: Store, other: Store) -> bool:
    """Whether two stores are one (a folder under two paths, a bucket under two URLs): for folders,
    one area's folder is the other's; for object stores, an object written to `other` is in `one`."""
    if one.local or other.local:
        return one.local and other.local and any(_same_folder(one.roots[area], other.roots[area]) for area in AREAS)
    key = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
    _write(other, [key], "probe")
    try:
        return _has(one, key)
    finally:
        try:
            other.delete([key])
        except StorageError as error:  # a key pair that may write but not delete: a few bytes stay
            log.warning("could not delete %s from %s: %s", key, other.url, error)


# What a store holds of the service's (_find): the mark `storage migrate` left in it; the current
# mark; only the mark of a store the service left or did not move to; no mark, but files SQL
# records; none of these.
NEXT, CURRENT, GONE, FILES, FOREIGN = "next", "current", "gone", "files", "foreign"


@dataclass(frozen=True)
class Found:
    holds: str
    mark: StoreMark | None = None  # the next or gone mark it holds
    missing: tuple[str, ...] = ()  # the current mark's keys it lacks


def _find(store: Store, marks: Marks, recorded: list[StoredFile]) -> Found:
    """What `store` holds of the service's, the one reading of it that leave_mark and store_problem
    share (marks.current is not None)."""
    missing = tuple(_missing(store, marks.current.token))
    if held := _held(store, marks.next):
        return Found(NEXT, held, missing)
    if not missing:
        return Found(CURRENT)
    if gone := _held(store, marks.left):
        return Found(GONE, gone, missing)
    # The mark gone from an area (an expiry rule, a folder emptied) but kept in another: the files
    # say whether it is the service's store. A store with none of it (a copy storage migrate did
    # not finish, a backup of the files alone) is not, whatever files it holds.
    partly = len(missing) < len(AREAS)
    return Found(FILES if partly and _holds_any(store, recorded) else FOREIGN, None, missing)


def _move_to(store: Store, mark: StoreMark, current: StoreMark) -> str:
    """Make `mark`, which `storage migrate` left in `store`, the service's, and every other mark one
    of a store the service left; the service's token then (another's, when another API moved the
    service first)."""
    _write(store, _missing(store, mark.token), mark.token)  # whole before SQL names it the service's
    now = utcnow()
    with session_scope() as session:
        moved = session.execute(
            update(StoreMark)
            .where(StoreMark.token == mark.token, StoreMark.state == MarkState.NEXT)
            .values(state=MarkState.CURRENT, store_url=store.url, changed_at=now)
        ).rowcount
        if moved:
            for was, becomes in ((MarkState.CURRENT, MarkState.LEFT), (MarkState.NEXT, MarkState.DROPPED)):
                session.execute(
                    update(StoreMark)
                    .where(StoreMark.token != mark.token, StoreMark.state == was)
                    .values(state=becomes, changed_at=now)
                )
    if not moved:
        with read_scope() as session:
            now_current = recorded_marks(session).current
        if now_current is None or now_current.token != mark.token:
            log.warning("%s was not made the service's store: another API moved the service first", store.url)
        return now_current.token if now_current else current.token
    log.warning(
        "the service's store is now %s, which storage migrate copied its files to: a worker still on %s is "
        "refused at its start and before its next job",
        store.url,
        current.store_url or "the store it left",
    )
    return mark.token


def _hint(store: Store, key: str | None) -> str:
    """What to set, and for folders whether they are there at all (a shared mount that did not come up)."""
    if not store.local:
        return STORE_HINT
    absent = ""
    if key is not None:
        area = store.path(key).parent.parent
        if not (area.is_dir() and any(area.iterdir())):
            absent = f" ({area} is empty or missing: is its file system mounted?)"
    return f"set TRAINYARD_STORAGE_URL as the service's API and workers have it{absent} (docs/storage.md)"


def _sample(recorded: list[StoredFile]) -> str:
    if not recorded:
        return "the database records no file yet"
    return f"none of the {len(recorded)} newest files the database records (such as {recorded[0].key})"


def _day(at) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC") if at else "an earlier day"


def _same_folder(one: Path, other: Path) -> bool:
    try:
        return one.samefile(other)
    except OSError:  # one is not there (yet)
        return one.resolve() == other.resolve()


def _has(store: Store, key: str) -> bool:
    try:
        return store.head(key) is not None
    except ObjectMissing:
        return False


def _missing(store: Store, token: str) -> list[str]:
    return [key for key in mark_keys(token) if not _has(store, key)]


def _held(store: Store, marks: tuple[StoreMark, ...]) -> StoreMark | None:
    """The first of `marks` the store holds (looked for in its checkpoints area)."""
    return next((mark for mark in marks if _has(store, mark_keys(mark.token)[0])), None)


def _holds_any(store: Store, recorded: list[StoredFile]) -> bool:
    return any(_has(store, stored.key) for stored in recorded)


def _write(store: Store, keys: list[str], token: str) -> None:
    mark = (json.dumps({"service": token, "written_at": utcnow().isoformat()}) + "\n").encode()
    with tempfile.TemporaryDirectory(prefix="trainyard-mark-") as folder:
        source = Path(folder) / token
        source.write_bytes(mark)
        for key in keys:
            store.upload(key, source, hashlib.sha256(mark).hexdigest())

"""The files other processes and machines read: uploaded datasets, checkpoints and resumable
training state, registered versions. They live in one store (TRAINYARD_STORAGE_URL: the home's
folders by default, or an S3-compatible object store) and SQL records each one's size and sha256
once it is written; a reader gets a local path to bytes that match the record, or an error saying
which file is missing or corrupt.

With an object store, each machine keeps its copies in a cache shared by its processes
(cache.py); with folders, files are read where they are.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from service.core.settings import Settings, get_settings
from service.core.storage.cache import DigestMismatch, ObjectCache, file_sha256
from service.core.storage.stores import (
    AREAS,
    ObjectCorrupt,
    ObjectMissing,
    StorageError,
    StorageUnavailable,
    Store,
    open_store,
)

__all__ = [
    "AREAS",
    "ObjectCorrupt",
    "ObjectMissing",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "StoredFile",
    "get_storage",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class StoredFile:
    """A file as SQL records it. `sha256` is None for files recorded before digests were (read
    where they are, from the home's folders)."""

    key: str
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Waiting:
    """A call that patiently() retries while the store is unavailable."""

    what: str
    since: datetime
    until: datetime  # when it gives up
    error: str  # the store's last answer


class Storage:
    def __init__(self, settings: Settings):
        self.store: Store = open_store(
            settings.storage_url,
            {
                "checkpoints": settings.checkpoint_dir,
                "datasets": settings.datasets_dir,
                "registry": settings.registry_dir,
            },
        )
        self.cache = ObjectCache(settings.object_cache_dir, settings.cache_bytes)
        self.retry_seconds = settings.storage_retry_seconds
        self._verified: dict[tuple, str] = {}  # local files whose digest this process checked
        self._waiting: dict[int, Waiting] = {}  # by thread
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self.store.url

    def staging(self, key: str) -> Path:
        """Where to write a new file for `key` before put(): in a local store the file's own place
        (writers there replace files atomically), else a temporary file in the cache."""
        if self.store.local:
            path = self.store.path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            return path
        return self.cache.staging()

    def put(self, key: str, source: Path) -> StoredFile:
        """Store the file at `source` under `key` (whole or not at all) and say what was stored:
        record that in SQL only after this returns. With an object store, the source becomes this
        machine's cached copy."""
        size, sha256 = source.stat().st_size, file_sha256(source)
        self.store.upload(key, source, sha256)
        if not self.store.local:
            self.cache.adopt(source, sha256)
        return StoredFile(key, size, sha256)

    def write(self, key: str, write: Callable[[Path], object], *, retrying: str | None = None) -> StoredFile:
        """write(path) a new file for `key` and store it: what to record in SQL. A write or a store
        that fails leaves nothing (with an object store the file becomes this machine's cached
        copy). `retrying` names the file for patiently(): the store is waited for, not the write."""
        staged = self.staging(key)
        try:
            write(staged)
            return self.patiently(retrying, lambda: self.put(key, staged)) if retrying else self.put(key, staged)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise

    def copy(self, stored: StoredFile, key: str) -> StoredFile:
        """The same bytes under another key (a registered version's own copy of a checkpoint)."""
        if stored.sha256 is None:
            with self.opened(stored, what=stored.key) as path:
                return self.put(key, path)
        self.store.copy(stored.key, key)
        return StoredFile(key, stored.size, stored.sha256)

    @contextlib.contextmanager
    def opened(self, stored: StoredFile, *, what: str) -> Iterator[Path]:
        """A local path to the file's recorded bytes, kept (not evicted from the cache) until the
        block ends. `what` names the file for people: ObjectMissing or ObjectCorrupt say it,
        StorageUnavailable when the store cannot be reached and this machine has no copy."""
        if self.store.local:
            yield self._local(stored, what)
            return
        if stored.sha256 is None:
            raise ObjectMissing(f"{what} was recorded without a digest and is not in {self.url}")
        try:
            with self.cache.opened(
                stored.sha256, stored.size or 0, lambda fh: self.store.download(stored.key, fh)
            ) as p:
                yield p
        except ObjectMissing:
            raise ObjectMissing(f"{what} is missing from {self.url} ({stored.key})") from None
        except DigestMismatch as bad:
            raise ObjectCorrupt(
                f"{what} in {self.url} is corrupt: {stored.key} holds {bad.size} bytes with sha256 "
                f"{bad.sha256[:12]}…, not the {stored.size} bytes with sha256 {stored.sha256[:12]}… recorded"
            ) from None

    def fetch(self, stored: StoredFile, *, what: str) -> Path:
        """A local path to the file's recorded bytes, for a reader that opens it at once."""
        with self.opened(stored, what=what) as path:
            return path

    def cached(self, stored: StoredFile) -> bool:
        """Whether reading the file needs no byte from the store."""
        return self.store.local or (stored.sha256 is not None and self.cache.contains(stored.sha256))

    def _local(self, stored: StoredFile, what: str) -> Path:
        path = self.store.path(stored.key)
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise ObjectMissing(f"{what} is missing: {path} does not exist") from None
        if stored.sha256 is None:
            return path
        if stored.size is not None and stat.st_size != stored.size:
            raise ObjectCorrupt(f"{what} is corrupt: {path} has {stat.st_size} bytes, not the {stored.size} recorded")
        seen = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            known = self._verified.get(seen)
        if known is None:
            known = file_sha256(path)
            with self._lock:
                self._verified[seen] = known
        if known != stored.sha256:
            raise ObjectCorrupt(
                f"{what} is corrupt: {path} has sha256 {known[:12]}…, not the {stored.sha256[:12]}… recorded"
            )
        return path

    def delete(self, *keys: str) -> None:
        """Delete files; a store that cannot be reached is logged, not raised (the records are gone)."""
        self._quietly(lambda: self.store.delete(list(keys)), f"delete {', '.join(keys)}")

    def discard(self, *files: StoredFile) -> None:
        """Delete files no record names any more, and this machine's cached copies of them (a
        worker's superseded training states and dropped checkpoints would otherwise fill its cache
        up to TRAINYARD_CACHE_BYTES)."""
        self.delete(*(stored.key for stored in files))
        self.uncache(*files)

    def uncache(self, *files: StoredFile) -> None:
        """Remove this machine's cached copies of files (deleted from the store by a prefix, say)."""
        if not self.store.local:
            for stored in files:
                if stored.sha256:
                    self.cache.discard(stored.sha256)

    def delete_prefix(self, prefix: str) -> None:
        self._quietly(lambda: self.store.delete_prefix(prefix), f"delete {prefix}")

    def _quietly(self, call: Callable[[], None], what: str) -> None:
        try:
            call()
        except StorageError as exc:
            log.warning("could not %s from %s: %s (left there)", what, self.url, exc)

    def patiently(self, what: str, call: Callable[[], T], *, give_up_after: float | None = None) -> T:
        """call(), retried with back-off while the store is unavailable, for at most
        TRAINYARD_STORAGE_RETRY_SECONDS; then StorageUnavailable."""
        limit = self.retry_seconds if give_up_after is None else give_up_after
        deadline, delay, tries = time.monotonic() + limit, 0.5, 0
        thread, since = threading.get_ident(), datetime.now(UTC)
        try:
            while True:
                try:
                    return call()
                except StorageUnavailable as exc:
                    tries += 1
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:  # the last try was at the deadline: the whole time was waited
                        raise StorageUnavailable(f"{exc} (gave up after {tries} tries in {limit:.0f} s)") from None
                    wait = min(delay, remaining)
                    log.warning("%s: %s; trying again in %.1f s", what, exc, wait)
                    with self._lock:
                        self._waiting[thread] = Waiting(what, since, since + timedelta(seconds=limit), str(exc))
                    time.sleep(wait)
                    delay = min(delay * 2, 15.0)
        finally:
            with self._lock:
                self._waiting.pop(thread, None)

    def waiting(self) -> Waiting | None:
        """The call of this process that has waited longest for the store, while one does."""
        with self._lock:
            return min(self._waiting.values(), key=lambda waiting: waiting.since, default=None)


_opened: dict[tuple, Storage] = {}
_opened_lock = threading.Lock()


def get_storage(settings: Settings | None = None) -> Storage:
    """The storage these settings name (one per process and configuration)."""
    settings = settings or get_settings()
    key = (
        settings.storage_url,
        str(settings.checkpoint_dir),
        str(settings.datasets_dir),
        str(settings.registry_dir),
        str(settings.object_cache_dir),
        settings.cache_bytes,
        settings.storage_retry_seconds,
        os.getpid(),  # boto3 clients are not shared across a fork
    )
    with _opened_lock:
        if key not in _opened:
            _opened[key] = Storage(settings)
        return _opened[key]

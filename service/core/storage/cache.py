"""This machine's copies of stored objects, by the sha256 of their bytes.

One folder serves every process of a machine: an object is fetched once (the first process to want
it holds its `.lock` while it downloads; the others wait and then find it), and verified before it
gets its name, so a file named by a digest always has those bytes. Readers hold a shared lock on
the file while they use it; the oldest files beyond TRAINYARD_CACHE_BYTES are removed, never one
that a reader holds.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
# A file being written into the cache's staging folder is touched at least this often (a checkpoint,
# a dataset, a download); one older belongs to a process that died.
STAGING_MAX_AGE_SECONDS = 6 * 3600


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class HashingWriter:
    """A binary file that counts what is written to it and hashes it on a thread of its own, so
    that hashing a download overlaps with receiving it (sha256 releases the GIL)."""

    def __init__(self, fh: BinaryIO):
        self.fh, self.size = fh, 0
        self._digest = hashlib.sha256()
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
        self._thread = threading.Thread(target=self._hash, name="cache-hash", daemon=True)
        self._thread.start()

    def _hash(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            self._digest.update(chunk)

    def write(self, data: bytes) -> int:
        data = bytes(data)
        self.size += len(data)
        self._chunks.put(data)
        return self.fh.write(data)

    def hexdigest(self) -> str:
        """The sha256 of everything written (call once, after the last write)."""
        self.close()
        return self._digest.hexdigest()

    def close(self) -> None:
        if self._thread.is_alive():
            self._chunks.put(None)
            self._thread.join()


class DigestMismatch(Exception):
    def __init__(self, size: int, sha256: str):
        super().__init__(f"{size} bytes with sha256 {sha256}")
        self.size, self.sha256 = size, sha256


class ObjectCache:
    def __init__(self, root: Path, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = max_bytes

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def staging(self) -> Path:
        """A new temporary file in the cache's folder (a file written here is adopted by a rename)."""
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.root / "tmp", prefix="new-")
        os.close(fd)
        return Path(name)

    @contextlib.contextmanager
    def _download_lock(self, sha256: str) -> Iterator[None]:
        lock = self.path(sha256).with_suffix(".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    @contextlib.contextmanager
    def _held(self, path: Path) -> Iterator[bool]:
        """A shared lock on the cached file, if it is there (False if not)."""
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            yield False
            return
        with fh:
            fcntl.flock(fh, fcntl.LOCK_SH)
            try:
                same = os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False  # evicted between the open and the lock
            if same:
                os.utime(path)  # recently used
            yield same

    def adopt(self, source: Path, sha256: str) -> None:
        """Take a file this process wrote and verified (its digest known) as the cached copy."""
        target = self.path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # the same bytes are here already (and may be held by a reader)
            source.unlink(missing_ok=True)
            os.utime(target)
            return
        try:
            os.replace(source, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            source.unlink(missing_ok=True)
            return
        self.trim(keep=sha256)

    @contextlib.contextmanager
    def opened(self, sha256: str, size: int, fill: Callable[[BinaryIO], None]) -> Iterator[Path]:
        """The cached file with these bytes, fetched by fill(file) if this machine has none yet,
        locked against eviction until the block ends. DigestMismatch if what fill wrote is not it."""
        path = self.path(sha256)
        for _ in range(3):
            with self._held(path) as present:
                if present:
                    yield path
                    return
            with self._download_lock(sha256):
                if not path.exists():
                    self._fill(path, sha256, fill)
        raise OSError(f"cached object {sha256} keeps being evicted: raise TRAINYARD_CACHE_BYTES")

    def _fill(self, path: Path, sha256: str, fill: Callable[[BinaryIO], None]) -> None:
        tmp = self.staging()
        try:
            with open(tmp, "wb") as fh:
                writer = HashingWriter(fh)
                try:
                    fill(writer)
                finally:
                    writer.close()
                fh.flush()
                os.fsync(fh.fileno())
            got = writer.hexdigest()
            if got != sha256:
                raise DigestMismatch(writer.size, got)
            self.trim(keep=sha256, incoming=writer.size)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def _sweep_staging(self) -> None:
        """Remove staging files a killed process left (any older than STAGING_MAX_AGE_SECONDS)."""
        cutoff = time.time() - STAGING_MAX_AGE_SECONDS
        for path in (self.root / "tmp").glob("*") if (self.root / "tmp").is_dir() else []:
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except FileNotFoundError:
                pass

    def discard(self, sha256: str) -> None:
        """Remove the cached copy of bytes no record names any more, unless a reader holds it (the
        bound's trim takes it later then)."""
        _unlink_unless_held(self.path(sha256))

    def contains(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def entries(self) -> list[tuple[float, int, Path]]:
        found = []
        if not self.root.is_dir():
            return found
        for folder in self.root.iterdir():
            if len(folder.name) != 2 or not folder.is_dir():
                continue
            for path in folder.iterdir():
                if path.suffix == ".lock":
                    continue
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                found.append((stat.st_mtime, stat.st_size, path))
        return sorted(found)

    def used_bytes(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def trim(self, *, keep: str | None = None, incoming: int = 0) -> int:
        """Remove the least recently used files until the cache (with `incoming` more bytes) fits
        its bound, skipping `keep` and any file a reader holds; returns the bytes freed."""
        self._sweep_staging()
        entries = self.entries()
        excess = sum(size for _, size, _ in entries) + incoming - self.max_bytes
        freed = 0
        for _, size, path in entries:
            if excess - freed <= 0:
                break
            if path.name == keep or not _unlink_unless_held(path):
                continue  # in use
            freed += size
        if excess - freed > 0:
            log.info(
                "the object cache holds %d bytes over TRAINYARD_CACHE_BYTES (%d): its files are in use",
                excess - freed,
                self.max_bytes,
            )
        return freed


def _unlink_unless_held(path: Path) -> bool:
    """Remove a cached file no reader holds (a shared lock); whether it is gone. The name is
    removed only while it still names the file locked: one evicted and fetched again meanwhile
    is another file, which a reader may hold."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return True
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            if os.stat(path).st_ino != os.fstat(fh.fileno()).st_ino:
                return False
        except FileNotFoundError:
            return True
        path.unlink(missing_ok=True)
        return True

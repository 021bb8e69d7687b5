"""One holder of a role among every process that shares the database: the reaper runs in one
API process, however many there are and on however many machines.

PostgreSQL: a session-level advisory lock, held by a connection kept open for as long as the
role is held (it is released if that connection or its process dies). SQLite, which only
processes on one machine can share: an exclusive lock on a file beside the database.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
from pathlib import Path

from sqlalchemy import Connection, make_url, text

from service.core.db import get_engine

log = logging.getLogger(__name__)


def _lock_id(role: str) -> int:
    """A stable 63-bit key for pg_try_advisory_lock."""
    return int.from_bytes(hashlib.sha256(f"trainyard:{role}".encode()).digest()[:8], "big") >> 1


class Leadership:
    """Whether this process holds `role`; held() takes it when it is free and confirms it after."""

    def __init__(self, role: str):
        self.role = role
        self._connection: Connection | None = None
        self._file = None

    def held(self) -> bool:
        engine = get_engine()
        if engine.dialect.name == "postgresql":
            return self._held_postgres(engine)
        return self._held_file(Path(f"{make_url(engine.url).database}.{self.role}.lock"))

    def _held_postgres(self, engine) -> bool:
        if self._connection is not None:
            try:
                self._connection.execute(text("SELECT 1"))
                return True
            except Exception:  # the connection died, and the lock with it; try to take it again
                log.warning("lost the %s role's database connection", self.role)
                self.release()
        connection = engine.connect()
        try:
            taken = connection.execute(text("SELECT pg_try_advisory_lock(:id)"), {"id": _lock_id(self.role)}).scalar()
            connection.commit()
        except Exception:
            connection.close()
            raise
        if not taken:
            connection.close()
            return False
        self._connection = connection
        log.info("this process now runs the %s", self.role)
        return True

    def _held_file(self, path: Path) -> bool:
        if self._file is not None:
            return True
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._file = handle
        log.info("this process now runs the %s", self.role)
        return True

    def release(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except Exception:
                pass
            self._connection = None
        if self._file is not None:
            self._file.close()  # closing the file releases its lock
            self._file = None

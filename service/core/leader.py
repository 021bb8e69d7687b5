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

from sqlalchemy import Connection, Engine, make_url, text

from service.core.db import get_engine

log = logging.getLogger(__name__)


def _lock_id(role: str, url) -> int:
    """A 63-bit key for pg_try_advisory_lock, one per role and deployment: advisory locks are per
    database, and two deployments may share one in different schemas (the URL says which)."""
    key = f"trainyard:{role}:{url.render_as_string(hide_password=True)}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") >> 1


class Leadership:
    """Whether this process holds `role`; held() takes it when it is free and confirms it after."""

    def __init__(self, role: str, engine: Engine | None = None):
        self.role = role
        self.engine = engine  # default: the configured database
        self._connection: Connection | None = None
        self._backend: int | None = None
        self._file = None

    def held(self) -> bool:
        engine = self.engine or get_engine()
        if engine.dialect.name == "postgresql":
            return self._held_postgres(engine)
        return self._held_file(Path(f"{make_url(engine.url).database}.{self.role}.lock"))

    def _held_postgres(self, engine) -> bool:
        if self._connection is not None:
            try:  # the same server session still holds it (a reconnected one would not)
                if self._connection.execute(text("SELECT pg_backend_pid()")).scalar() == self._backend:
                    return True
            except Exception:
                pass
            log.warning("lost the %s role with its database connection", self.role)
            self.release()
        connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            lock = {"id": _lock_id(self.role, engine.url)}
            taken = connection.execute(text("SELECT pg_try_advisory_lock(:id)"), lock).scalar()
            backend = connection.execute(text("SELECT pg_backend_pid()")).scalar()
        except Exception:
            connection.close()
            raise
        if not taken:
            connection.close()
            return False
        self._connection, self._backend = connection, backend
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
                # Discard the server session rather than return it to the pool: a session-level
                # lock would otherwise stay held by a pooled connection nobody uses.
                self._connection.invalidate()
                self._connection.close()
            except Exception:
                pass
            self._connection = None
        if self._file is not None:
            self._file.close()  # closing the file releases its lock
            self._file = None

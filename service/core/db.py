"""Engine and sessions for the configured database (SQLite by default, PostgreSQL in production)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event, exc, make_url, text
from sqlalchemy.orm import Session, sessionmaker

from service.core import sqlite_fork  # noqa: F401  (forks wait for other threads' SQLite connections)
from service.core.settings import get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")

# What a database that is down, restarting or unreachable raises (SQLite: locked past the busy
# timeout). Anything else is a bug or bad data, and retrying it would not help.
UNAVAILABLE = (exc.OperationalError, exc.InterfaceError, exc.DisconnectionError, exc.TimeoutError)

SQLITE_BUSY_TIMEOUT_MS = 30_000
WRITE_OPTION = "trainyard_write"
# Enough connections for every thread of the API's thread pool (40) and the reaper, so that a
# request never waits for a connection that another waiting request holds.
POOL_SIZE, MAX_OVERFLOW = 10, 40


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite gets WAL and a busy timeout so the API and workers can share it."""
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            pool_size=POOL_SIZE,
            max_overflow=MAX_OVERFLOW,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            # Let SQLAlchemy's "begin" below open transactions instead of the driver.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(connection):
            # Writing transactions take the write lock when they start: one that reads and then
            # writes would otherwise fail at once with "database is locked" if another process
            # wrote in between, instead of waiting for the busy timeout. Reading transactions
            # stay deferred, so that WAL readers never wait for writers.
            immediate = connection.get_execution_options().get(WRITE_OPTION)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW)


@lru_cache
def get_engine() -> Engine:
    return make_engine(get_settings().database_url)


@lru_cache
def get_sessionmaker(write: bool = True) -> sessionmaker[Session]:
    """Sessions for work that writes (the default) or only reads (`write=False`)."""
    engine = get_engine()
    return sessionmaker(
        bind=engine.execution_options(**{WRITE_OPTION: True}) if write else engine, expire_on_commit=False
    )


def forget_inherited_connections() -> None:
    """Call first thing in a forked child: pooled connections it inherited belong to the parent
    (which still uses them), so the child must open its own rather than share a socket."""
    if get_engine.cache_info().currsize:
        get_engine().dispose(close=False)


@contextmanager
def session_scope(write: bool = True) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = get_sessionmaker(write)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def read_scope() -> Iterator[Session]:
    """A read-only session that ends by closing: a read has nothing to commit."""
    with get_sessionmaker(write=False)() as session:
        yield session


def ping() -> None:
    """Raise if the database cannot answer a trivial query."""
    with get_engine().connect() as conn:
        conn.execute(text("SELECT 1"))


MIGRATE_HINT = "the database's schema is not this version's: run `trainyard migrate`"
# SQLite's words for a table or column the schema lacks (SQLite speaks English only), and
# PostgreSQL's SQLSTATEs for them (undefined_table, undefined_column: its words follow lc_messages)
_UNMIGRATED = re.compile(r"no such (table|column)|has no column named")
_UNMIGRATED_SQLSTATES = {"42P01", "42703"}


def unmigrated(error: Exception) -> bool:
    """Whether a database error says a table or column is missing: a schema not migrated (yet) to
    this version's, rather than a database away."""
    original = getattr(error, "orig", error)
    if getattr(original, "sqlstate", None) in _UNMIGRATED_SQLSTATES:
        return True
    return _UNMIGRATED.search(str(error)) is not None


def retry_while_unavailable(
    work: Callable[[], T], *, what: str, give_up_after: float, first_delay: float = 0.25, max_delay: float = 5.0
) -> T:
    """work() (which opens its own sessions) until it gets through, retrying with backoff while
    the database is unavailable, for at most `give_up_after` seconds; then its error is raised."""
    deadline = time.monotonic() + give_up_after
    delay = first_delay
    while True:
        try:
            return work()
        except UNAVAILABLE as error:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("the database is unavailable (%s); will %s again in %.1f s", brief(error), what, delay)
        time.sleep(delay)
        delay = min(delay * 2, max_delay)


def brief(error: Exception) -> str:
    """The first line of a database error, for a log line."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]

"""Engine and sessions for the configured database (SQLite by default, PostgreSQL in production)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from pathlib import Path

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.orm import Session, sessionmaker

from service.core.settings import get_settings

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
        engine = create_engine(url, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW,
                               connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})

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
    return sessionmaker(bind=engine.execution_options(**{WRITE_OPTION: True}) if write else engine,
                        expire_on_commit=False)


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


def ping() -> None:
    """Raise if the database cannot answer a trivial query."""
    with get_engine().connect() as conn:
        conn.execute(text("SELECT 1"))

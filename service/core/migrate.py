"""Apply the Alembic migrations shipped with trainyard to the configured database."""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import exc, text

from service.core.db import MIGRATE_HINT, get_engine, make_engine, unmigrated
from service.core.settings import get_settings

ROOT = Path(__file__).resolve().parents[2]
# Any constant works; it only has to be the same in every process that migrates.
_MIGRATION_LOCK_ID = 0x7472_6169_6E79


def alembic_config() -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["configure_logging"] = False
    return config


class NewerSchema(Exception):
    """The database was migrated by a newer version of trainyard than this one."""


def upgrade(database_url: str | None = None) -> None:
    """Bring the database schema to the newest revision; NewerSchema if a newer version migrated it.

    On PostgreSQL an advisory lock serialises concurrent callers (the API and the workers all
    migrate at start-up), so exactly one of them applies each revision.
    """
    from alembic.util import CommandError

    engine = make_engine(database_url or get_settings().database_url)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
            current = _current(connection)
            if current is not None and _newer(current):
                raise NewerSchema(
                    f"the database is at revision {current}, which this version does not know: a newer trainyard "
                    f"migrated it; run that version (this one's newest revision is {head_revision()})"
                )
            config = alembic_config()
            config.attributes["connection"] = connection
            try:
                command.upgrade(config, "head")
            except CommandError as error:  # a revision gone missing meanwhile: said in one line
                raise NewerSchema(str(error)) from None
    finally:
        engine.dispose()


def current_revision(database_url: str | None = None) -> str | None:
    """The revision the database is at (None: never migrated)."""
    engine = make_engine(database_url or get_settings().database_url)
    try:
        with engine.connect() as connection:
            return _current(connection)
    finally:
        engine.dispose()


def _current(connection) -> str | None:
    from alembic.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


@functools.cache
def _scripts():
    """The revisions this code ships, read from migrations/ once."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


@functools.cache
def head_revision() -> str:
    """The newest revision of the schema this code ships."""
    return _scripts().get_current_head()


@functools.cache
def _known_revisions() -> frozenset[str]:
    return frozenset(script.revision for script in _scripts().walk_revisions())


def schema_problem() -> str | None:
    """Why the configured database's schema is not the one this code needs (never migrated, or
    migrated by another version), or None; an error if the database does not answer."""
    try:
        with get_engine().connect() as conn:
            current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except exc.DBAPIError as error:
        if not unmigrated(error):  # away, refused, timed out: not an answer about the schema
            raise
        current = None
    if current == head_revision() or (current is not None and _newer(current)):
        return None
    return f"{MIGRATE_HINT} (it is at revision {current or 'none'}, this version's is {head_revision()})"


def _newer(revision: str) -> bool:
    """Whether a revision is none this code knows: a newer version migrated the database (an
    upgrade under way), whose schema holds every table this one uses."""
    return revision not in _known_revisions()

"""Apply the Alembic migrations shipped with trainyard to the configured database."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from service.core.db import make_engine
from service.core.settings import get_settings

ROOT = Path(__file__).resolve().parents[2]
# Any constant works; it only has to be the same in every process that migrates.
_MIGRATION_LOCK_ID = 0x7472_6169_6E79


def alembic_config() -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["configure_logging"] = False
    return config


def upgrade(database_url: str | None = None) -> None:
    """Bring the database schema to the newest revision.

    On PostgreSQL an advisory lock serialises concurrent callers (the API and the workers all
    migrate at start-up), so exactly one of them applies each revision.
    """
    engine = make_engine(database_url or get_settings().database_url)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()

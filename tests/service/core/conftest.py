"""Databases for core's tests: a real SQLite file and a private schema of the real PostgreSQL server."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import sessionmaker

from service.core.db import WRITE_OPTION, make_engine
from service.core.migrate import upgrade
from tests.support.servers import PostgresSchema, postgres_available, require


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'db.sqlite'}"
        upgrade(url)
        engine = make_engine(url)
        yield engine
        engine.dispose()
        return
    require(postgres_available(), "PostgreSQL is not reachable on 127.0.0.1:5432")
    with PostgresSchema() as schema:
        upgrade(schema.url)
        engine = make_engine(schema.url)
        yield engine
        engine.dispose()


@pytest.fixture
def Session(engine):
    """Sessions as the service's writers get them (SQLite: transactions take the write lock)."""
    return sessionmaker(bind=engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False)

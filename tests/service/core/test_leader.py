"""One holder of a role per deployment, on a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import pytest

from service.core.db import make_engine
from service.core.leader import Leadership
from tests.support.servers import PostgresSchema, postgres_available, require


def test_one_process_holds_the_role_until_it_lets_go(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'a.sqlite'}")
    first, second = Leadership("reaper", engine), Leadership("reaper", engine)
    assert first.held() and first.held()  # taken, then confirmed
    assert not second.held()
    assert Leadership("other-role", engine).held()
    first.release()
    assert second.held() and not first.held()
    second.release()


@pytest.mark.postgres
def test_on_postgresql_deployments_in_other_schemas_do_not_compete():
    require(postgres_available(), "PostgreSQL is not reachable on 127.0.0.1:5432")
    with PostgresSchema() as one, PostgresSchema() as two:
        engines = [make_engine(one.url), make_engine(two.url)]
        try:
            first, rival, elsewhere = (
                Leadership("reaper", engines[0]),
                Leadership("reaper", engines[0]),
                Leadership("reaper", engines[1]),
            )
            assert first.held() and not rival.held() and elsewhere.held()
            first.release()
            assert rival.held()
            for leader in (rival, elsewhere):
                leader.release()
        finally:
            for engine in engines:
                engine.dispose()


@pytest.mark.postgres
def test_a_lost_connection_gives_the_role_up(tmp_path):
    require(postgres_available(), "PostgreSQL is not reachable on 127.0.0.1:5432")
    with PostgresSchema() as schema:
        engine = make_engine(schema.url)
        try:
            first, second = Leadership("reaper", engine), Leadership("reaper", engine)
            assert first.held()
            first._connection.invalidate()  # as if the server dropped it: the lock goes with it
            assert second.held()
            assert not first.held()  # it notices, and cannot take the role back while second holds it
            second.release()
        finally:
            engine.dispose()

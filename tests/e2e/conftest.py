"""The running trainyard stacks that the end-to-end tests share: one per backend for the whole
session, whichever files use them."""

from __future__ import annotations

import pytest

from tests.support.servers import REDIS_URL, PostgresSchema, Stack, postgres_available, redis_available, require
from tests.support.specs import SOFTMAX_SPEC, submit


@pytest.fixture(scope="session")
def embedded_stack(tmp_path_factory, data_dir):
    """API + worker on the embedded default: SQLite and the SQL-table broker, no servers."""
    with Stack(home=tmp_path_factory.mktemp("embedded"), data_dir=data_dir) as stack:
        yield stack


@pytest.fixture(scope="session")
def unsure_job(embedded_stack) -> str:
    """A classifier on embedded_stack trained too little to be always right: 300 images, one epoch
    (34 of the 200 test images wrong, its top probabilities 0.1 to 0.2)."""
    with embedded_stack.client() as client:
        job_id = submit(
            client,
            {
                **SOFTMAX_SPEC,
                "name": "unsure",
                "epochs": 1,
                "optimizer": {"name": "sgd", "lr": 0.05},
                "data": {"dataset": "fashion-mnist", "limit_train": 300},
            },
        )
        assert embedded_stack.wait_for_job(client, job_id)["status"] == "succeeded"
    return job_id


@pytest.fixture(scope="session")
def postgres_redis_stack(tmp_path_factory, data_dir):
    """API + worker on PostgreSQL (a private schema of the test database) and Redis."""
    require(postgres_available(), "PostgreSQL is not reachable on 127.0.0.1:5432")
    require(redis_available(), "Redis is not reachable on 127.0.0.1:6379")
    with PostgresSchema() as schema:
        with Stack(
            home=tmp_path_factory.mktemp("pgredis"), data_dir=data_dir, database_url=schema.url, broker_url=REDIS_URL
        ) as stack:
            yield stack


@pytest.fixture(params=["embedded", "postgres+redis"])
def stack(request) -> Stack:
    """Each end-to-end test runs once per backend configuration (tests/support/backends.py's
    embedded_only narrows it to the embedded one)."""
    name = {"embedded": "embedded_stack", "postgres+redis": "postgres_redis_stack"}[request.param]
    return request.getfixturevalue(name)


@pytest.fixture
def client(stack):
    with stack.client() as c:
        yield c

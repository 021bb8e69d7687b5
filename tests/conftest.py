"""Fixtures: small real datasets on disk and running trainyard stacks on each backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.datagen import make_idx_dataset
from tests.servers import REDIS_URL, PostgresSchema, Stack, postgres_available, redis_available, require


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data folder holding a small learnable FashionMNIST (gzipped IDX) and no MNIST.

    4000 training images: quick for a linear model, a few seconds an epoch for LeNet with tiny
    batches, which is what the crash and cancel tests need to catch a job mid-epoch.
    """
    root = tmp_path_factory.mktemp("data")
    make_idx_dataset(root, "FashionMNIST", n_train=4000, n_test=200, gz=True)
    return root


@pytest.fixture(scope="session")
def embedded_stack(tmp_path_factory, data_dir):
    """API + worker on the embedded default: SQLite and the SQL-table broker, no servers."""
    stack = Stack(home=tmp_path_factory.mktemp("embedded"), data_dir=data_dir)
    try:
        yield stack.start()
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def postgres_redis_stack(tmp_path_factory, data_dir):
    """API + worker on PostgreSQL (a private schema of the test database) and Redis."""
    require(postgres_available(), "PostgreSQL is not reachable on 127.0.0.1:5432")
    require(redis_available(), "Redis is not reachable on 127.0.0.1:6379")
    with PostgresSchema() as schema:
        stack = Stack(home=tmp_path_factory.mktemp("pgredis"), data_dir=data_dir,
                      database_url=schema.url, broker_url=REDIS_URL)
        try:
            yield stack.start()
        finally:
            stack.stop()


@pytest.fixture(params=["embedded", "postgres+redis"])
def stack(request) -> Stack:
    """Each end-to-end test runs once per backend configuration."""
    name = {"embedded": "embedded_stack", "postgres+redis": "postgres_redis_stack"}[request.param]
    return request.getfixturevalue(name)


@pytest.fixture
def client(stack):
    with stack.client() as c:
        yield c

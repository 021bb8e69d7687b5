"""Shared FastAPI dependencies."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.core.db import get_sessionmaker
from service.api.serving import ModelServer
from service.core.settings import Settings, get_settings


async def _session(write: bool) -> AsyncIterator[Session]:
    # Closed on the event loop, not in the thread pool: when every pool thread is busy waiting
    # for the database, a teardown queued for a thread could never return its connection.
    session = get_sessionmaker(write)()
    try:
        yield session
    finally:
        session.close()


async def get_session() -> AsyncIterator[Session]:
    """A read-only session per request."""
    async for session in _session(write=False):
        yield session


async def get_write_session() -> AsyncIterator[Session]:
    """A session for requests that change data; end its transaction before responding."""
    async for session in _session(write=True):
        yield session


# Dependencies are async on purpose: FastAPI runs a plain `def` dependency in its thread pool,
# a hop that would cost every request more than the work itself.
async def get_model_server(request: Request) -> ModelServer:
    return request.app.state.models


async def settings() -> Settings:
    return get_settings()


SessionDep = Annotated[Session, Depends(get_session)]
WriteSessionDep = Annotated[Session, Depends(get_write_session)]
SettingsDep = Annotated[Settings, Depends(settings)]
ModelServerDep = Annotated[ModelServer, Depends(get_model_server)]

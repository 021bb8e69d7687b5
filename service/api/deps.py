"""Shared FastAPI dependencies, and who ends a request's transaction.

The rule (service/core/__init__.py states it for core): the core function that carries out a
request owns its transaction and commits it; a router never commits. A route gets its session from
SessionDep (reads) or WriteSessionDep (changes), and the dependency closes it as soon as the route
function has returned and its answer is serialised, before the answer is sent: closing ends a
read's transaction without a commit and rolls back whatever a failed change left uncommitted.
Async routes that read and then do slow work (drawing a plot) read through `read()` instead, whose
session ends when the reading does; no route closes a session by hand.
"""

from collections.abc import AsyncIterator, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from service.api.evaluations import Evaluations
from service.api.schemas.workers import WorkerPublic, WorkersPublic
from service.api.serving import ModelServer
from service.core import worker_registry
from service.core.db import get_sessionmaker, read_scope
from service.core.errors import Unavailable
from service.core.settings import Settings, get_settings
from service.core.storage import get_storage


async def _session(write: bool) -> AsyncIterator[Session]:
    # Closed on the event loop, not in the thread pool: when every pool thread is busy waiting
    # for the database, a teardown queued for a thread could never return its connection.
    session = get_sessionmaker(write)()
    try:
        yield session
    finally:
        session.close()


async def get_session() -> AsyncIterator[Session]:
    """A read-only session per request, ended (closed, never committed) before the answer is sent."""
    async for session in _session(write=False):
        yield session


async def get_write_session() -> AsyncIterator[Session]:
    """A session for requests that change data; the core function the route calls commits it."""
    async for session in _session(write=True):
        yield session


T = TypeVar("T")


def _reading(work: Callable[..., T], args: tuple) -> T:
    with read_scope() as session:
        return work(session, *args)


async def read(work: Callable[..., T], *args) -> T:
    """work(session, *args) in the thread pool, in a read session of its own that ends when work returns."""
    return await run_in_threadpool(_reading, work, args)


# Dependencies are async on purpose: FastAPI runs a plain `def` dependency in its thread pool,
# a hop that would cost every request more than the work itself.
async def get_model_server(request: Request) -> ModelServer:
    return request.app.state.models


async def get_evaluations(request: Request) -> Evaluations:
    return request.app.state.evaluations


async def settings() -> Settings:
    return get_settings()


def _on_the_services_store(done: str):
    async def services_store(request: Request) -> None:
        """Refuse (503, saying why) a request that would change files in this API's store when that
        store is not the service's (as /readyz says): no worker or other API would read what it
        writes, and what it deletes would leave the service's copies behind, unrecorded."""
        problem = await run_in_threadpool(request.app.state.store_readiness.problem, get_storage().store)
        if problem:
            raise Unavailable(f"{problem}; {done}", retry_after=10)

    return services_store


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
WriteSessionDep = Annotated[Session, Depends(get_write_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(settings)]
ModelServerDep = Annotated[ModelServer, Depends(get_model_server)]
EvaluationsDep = Annotated[Evaluations, Depends(get_evaluations)]
WritesFiles = Depends(_on_the_services_store("nothing was written"))  # of a route that stores files
DeletesFiles = Depends(_on_the_services_store("nothing was deleted"))  # of a route that deletes stored files


def live_workers(request: Request, session: Session, settings: Settings) -> WorkersPublic:
    """The live workers, each saying whether its store is this API process's, with that store's URL
    and why it is not the service's (as /readyz says), if it is not."""
    store = get_storage(settings).store
    live = [WorkerPublic.model_validate(w) for w in worker_registry.live(session, settings=settings)]
    for worker in live:  # a URL with or without its trailing slash names one store
        worker.same_store = None if worker.store is None else worker.store.rstrip("/") == store.url.rstrip("/")
    return WorkersPublic(
        workers=live, count=len(live), store=store.url, store_problem=request.app.state.store_readiness.problem(store)
    )

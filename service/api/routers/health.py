"""Liveness and readiness."""

import os

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api import telemetry
from service.core.broker import ping_broker
from service.core.migrate import schema_problem
from service.core.storage import get_storage
from service.core.storage.check import problem_in

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=PlainTextResponse)
def prometheus_metrics() -> PlainTextResponse:
    """Prometheus text exposition of the service's metrics."""
    return PlainTextResponse(generate_latest(telemetry.registry()), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz")
def healthz() -> dict:
    """The process is up (`pid` says which of the API's processes answered)."""
    return {"status": "ok", "pid": os.getpid()}


@router.get(
    "/readyz",
    responses={503: {"description": "The database or the broker does not answer, or the store is not the service's"}},
)
async def readyz(request: Request) -> JSONResponse:
    """The database (migrated to this version's schema) and the broker answer, the preloaded models
    can serve, and this process's store is the service's (asked at most every 10 s; a store that
    cannot be asked now is `unchecked`, which does not count)."""
    checks = {"models": request.app.state.preload.status()}
    for name, probe in (("database", schema_problem), ("broker", ping_broker)):
        try:
            problem = await run_in_threadpool(probe)
            checks[name] = f"error: {problem}" if problem else "ok"
        except Exception as exc:  # any failure means not ready; say which and why
            checks[name] = f"error: {type(exc).__name__}: {exc}"
    checks["store"] = await run_in_threadpool(request.app.state.store_readiness.status, get_storage().store)
    ready = all(v == "ok" for k, v in checks.items() if k != "store") and not problem_in(checks["store"])
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503
    )

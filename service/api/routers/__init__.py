"""All routers of the API: health and the v2 health probes stay open, everything else under /v1
and /v2 needs a token when tokens are set."""

from fastapi import APIRouter, Depends, FastAPI

from service.api.auth import require_token
from service.api.routers import datasets, evaluation, health, jobs, plots, predict, registry, sweeps, v2, workers

AUTH_RESPONSES = {
    401: {"description": "Missing or invalid bearer token (only when API tokens are set)"},
    403: {"description": "A read-only token was used for a write"},
}
# Tried in this order: predict, the hot path, first.
PROTECTED = (
    predict.router,
    jobs.router,
    sweeps.router,
    datasets.router,
    registry.router,
    v2.router,
    plots.router,
    evaluation.router,
    workers.router,
)
OPEN = (health.router, v2.probes)


def include_api(app: FastAPI | APIRouter, *, auth: bool) -> None:
    """Include every router in the app itself: with `auth`, those under /v1 and /v2 check the
    bearer token. (Without tokens the check is left out altogether: a dependency costs every
    predict request ~10 us. And no router is nested in another: FastAPI matches a nested
    router's routes once per level it is nested under, for every request.)"""
    guard = [Depends(require_token)] if auth else []
    for router in PROTECTED:
        app.include_router(router, dependencies=guard, responses=AUTH_RESPONSES)
    for router in OPEN:
        app.include_router(router)

"""All routers of the API, composed: health and the v2 health probes stay open, everything else
under /v1 and /v2 needs a token when tokens are set."""

from fastapi import APIRouter, Depends

from service.api.auth import require_token
from service.api.routers import datasets, health, jobs, plots, predict, registry, sweeps, v2, workers

AUTH_RESPONSES = {
    401: {"description": "Missing or invalid bearer token (only when API tokens are set)"},
    403: {"description": "A read-only token was used for a write"},
}


def api_router(*, auth: bool) -> APIRouter:
    """The API's routes; with `auth`, those under /v1 and /v2 check the bearer token. (Without
    tokens the check is left out altogether: a dependency costs every predict request ~10 us.)"""
    router = APIRouter()
    router.include_router(health.router)
    router.include_router(v2.probes)
    protected = APIRouter(dependencies=[Depends(require_token)] if auth else [], responses=AUTH_RESPONSES)
    # Routes are matched in order, branch by branch: predict, the hot path, is tried first.
    for routes in (predict, jobs, sweeps, datasets, registry, v2, plots, workers):
        protected.include_router(routes.router)
    router.include_router(protected)
    return router

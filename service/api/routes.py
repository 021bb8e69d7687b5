"""All routers of the API, composed: health stays open, everything under /v1 and /v2 needs a token."""

from fastapi import APIRouter, Depends

from service.api.auth import require_token
from service.api.routers import datasets, health, jobs, plots, predict, registry, v2, workers

api_router = APIRouter()
api_router.include_router(health.router)

protected = APIRouter(dependencies=[Depends(require_token)], responses={
    401: {"description": "Missing or invalid bearer token (only when API tokens are set)"},
    403: {"description": "A read-only token was used for a write"},
})
# Routes are matched in order, branch by branch: predict, the hot path, is tried first.
protected.include_router(predict.router)
protected.include_router(jobs.router)
protected.include_router(datasets.router)
protected.include_router(registry.router)
protected.include_router(v2.router)
protected.include_router(plots.router)
protected.include_router(workers.router)
api_router.include_router(protected)

"""All routers of the API, composed."""

from fastapi import APIRouter

from service.routers import health, jobs, predict

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(jobs.router)
api_router.include_router(predict.router)

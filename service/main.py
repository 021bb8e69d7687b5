"""The FastAPI application."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from service.api import api_router
from service.limits import BodySizeLimit
from service.model_store import PredictorCache
from service.settings import get_settings


def create_app() -> FastAPI:
    settings = get_settings()
    settings.ensure_dirs()
    app = FastAPI(title="trainyard", version="0.1.0",
                  description="Train PyTorch models over HTTP and classify with them.")
    app.state.predictors = PredictorCache(settings.model_cache_size)
    app.include_router(api_router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    return app


logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
app = create_app()

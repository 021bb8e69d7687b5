"""The FastAPI application."""

from __future__ import annotations

import ipaddress
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.api import api_router
from service.auth import token_table
from service.limits import BodySizeLimit
from service.model_store import PredictorCache
from service.reaper import Reaper
from service.settings import Settings, get_settings

log = logging.getLogger("trainyard")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def announce_security(settings: Settings) -> None:
    """Say at start-up whether the API is protected, and warn when it is exposed without tokens."""
    if token_table().enabled:
        log.info("API tokens are set: /v1 routes require 'Authorization: Bearer <token>'")
    elif _is_loopback(settings.host):
        log.info("no API tokens set (TRAINYARD_API_TOKENS): authentication is off, "
                 "so the API listens on %s only", settings.host)
    else:
        log.warning("no API tokens set but listening on %s: anyone who can reach this port can "
                    "train and predict; set TRAINYARD_API_TOKENS", settings.host)


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings = get_settings()
    announce_security(settings)
    reaper = Reaper(settings)
    reaper.start()
    try:
        yield
    finally:
        reaper.stop()


def create_app() -> FastAPI:
    settings = get_settings()
    settings.ensure_dirs()
    app = FastAPI(title="trainyard", version="0.1.0", lifespan=lifespan,
                  description="Train PyTorch models over HTTP and classify with them.")
    app.state.predictors = PredictorCache(settings.model_cache_size)
    app.include_router(api_router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes,
                       overrides={"/v1/datasets": settings.max_dataset_upload_bytes})
    return app


logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
app = create_app()

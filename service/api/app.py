"""The FastAPI application, which every API process (service/api/server.py) serves; how those
processes are started and stopped, from `trainyard run` on, is in service/cli/supervisor.py."""

from __future__ import annotations

import asyncio
import logging
import threading
from contextlib import asynccontextmanager

import torch
from fastapi import Depends, FastAPI

from service.api import docs, errors, gc_tuning, telemetry
from service.api.auth import require_token, token_table
from service.api.evaluations import Evaluations
from service.api.limits import BodySizeLimit, Limit
from service.api.processes import ProcessBoard
from service.api.routers import include_api
from service.api.routers.dashboard import router as dashboard_router
from service.api.serving import ModelServer
from service.core.reaper import Reaper
from service.core.settings import Settings, get_settings
from service.core.storage import get_storage
from service.core.storage.check import StoreReadiness, settle

log = logging.getLogger("trainyard")


def announce_security(settings: Settings) -> None:
    """Say at start-up whether the API is protected; refuse to start exposed without tokens."""
    refusal = settings.exposure_refusal()
    if refusal:
        raise RuntimeError(refusal)
    if token_table().enabled:
        log.info("API tokens are set: /v1 and /v2 routes require 'Authorization: Bearer <token>'")
    elif settings.listens_on_loopback:
        log.info(
            "no API tokens set (TRAINYARD_API_TOKENS): authentication is off, so the API listens on %s only",
            settings.host,
        )
    else:
        log.warning(
            "no API tokens set and listening on %s: TRAINYARD_ALLOW_OPEN=true lets anyone who can "
            "reach this port train, predict and delete",
            settings.host,
        )


class Preload:
    """Loads and warms up the models named in TRAINYARD_PRELOAD_MODELS in the background, and
    reports this process's readiness on the board every API process shares."""

    def __init__(self, references: str, board: ProcessBoard):
        self.references = [r.strip() for r in references.split(",") if r.strip()]
        self.board = board
        self.errors: dict[str, str] = {}

    def start(self, server: ModelServer) -> None:
        self.board.report("loading")
        threading.Thread(target=self._run, args=(server,), name="preload", daemon=True).start()

    def _run(self, server: ModelServer) -> None:
        for reference in self.references:
            try:
                server.preload(reference)
                log.info("model %s loaded and warmed up", reference)
            except Exception as exc:  # reported by /readyz
                self.errors[reference] = f"{type(exc).__name__}: {exc}"
                log.error("could not preload model %s: %s", reference, exc)
        self.board.report(
            "error: " + "; ".join(f"{ref}: {err}" for ref, err in self.errors.items()) if self.errors else "ok"
        )

    def status(self) -> str:
        """'ok' when every API process has its preloaded models; else what is missing."""
        return self.board.summary()


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings = get_settings()
    announce_security(settings)
    reaper = Reaper(settings)
    reaper.start()
    # An API starting on the store `storage migrate` copied to moves the service there; the reaper's
    # housekeeping (in one process of all that share the database) puts the mark back, never moves.
    threading.Thread(target=settle, args=(get_storage(settings).store,), name="store-mark", daemon=True).start()
    app.state.preload.start(app.state.models)
    gc_tuning.tune()
    collector = asyncio.get_running_loop().create_task(gc_tuning.collect_periodically())
    try:
        yield
    finally:
        collector.cancel()
        reaper.stop()


def create_app() -> FastAPI:
    settings = get_settings()
    settings.ensure_dirs()
    app = FastAPI(
        title="trainyard",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="Train PyTorch models over HTTP and classify with them.",
    )
    torch.set_num_threads(settings.inference_threads)
    app.state.models = ModelServer(settings)
    app.state.evaluations = Evaluations(app.state.models)
    app.state.preload = Preload(settings.preload_models, ProcessBoard(settings.api_run_dir, settings.api_workers))
    app.state.store_readiness = StoreReadiness()
    include_api(app, auth=token_table().enabled)
    app.include_router(dashboard_router)
    docs.install(app)  # /docs and /redoc on assets installed with the project (no CDN), matched after the API
    if settings.bench_routes:
        from service.api.routers.bench import router as bench_router

        # Guarded exactly as the predict routes are, so that it measures the same HTTP cost.
        app.include_router(bench_router, dependencies=[Depends(require_token)] if token_table().enabled else [])
    app.add_middleware(
        BodySizeLimit,
        default=Limit(settings.max_upload_bytes, "TRAINYARD_MAX_UPLOAD_BYTES"),
        overrides={
            "/v1/datasets": Limit(settings.max_dataset_upload_bytes, "TRAINYARD_MAX_DATASET_UPLOAD_BYTES"),
            "/ui/datasets": Limit(settings.max_dataset_upload_bytes, "TRAINYARD_MAX_DATASET_UPLOAD_BYTES"),
            "/v1/models/import": Limit(settings.max_model_upload_bytes, "TRAINYARD_MAX_MODEL_UPLOAD_BYTES"),
        },
    )
    app.add_middleware(telemetry.RequestMetrics)
    telemetry.install()
    errors.install(app)
    return app


logging.basicConfig(level=get_settings().log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
app = create_app()

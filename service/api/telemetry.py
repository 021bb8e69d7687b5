"""Prometheus metrics: requests per route, jobs by status, queue depth, predict batches, model cache.

With several API processes (TRAINYARD_API_WORKERS > 1) the CLI sets PROMETHEUS_MULTIPROC_DIR
before they start: each process then writes its counters to files there, and /metrics, whichever
process answers it, adds up every process's (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import os
import time

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

disable_created_metrics()  # *_created series are per process and meaningless summed

REQUESTS = Counter("trainyard_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "trainyard_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PREDICT_BATCH = Histogram(
    "trainyard_predict_batch_size",
    "Inputs per forward pass of a served model",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
MODEL_CACHE = Counter("trainyard_model_cache", "Model cache lookups", ["result"])
MODELS_LOADED = Gauge(
    "trainyard_models_loaded", "Models held in the caches of the API processes", multiprocess_mode="livesum"
)


class RequestMetrics:
    """ASGI middleware counting requests and timing them, labelled by route template."""

    def __init__(self, app):
        self.app = app
        self._series: dict[tuple[str, str, int], tuple] = {}  # labels() looked up once per series

    def _observe(self, method: str, route: str, status: int, seconds: float) -> None:
        series = self._series.get((method, route, status))
        if series is None:
            series = self._series[method, route, status] = (
                REQUESTS.labels(method, route, str(status)),
                LATENCY.labels(method, route),
            )
        series[0].inc()
        series[1].observe(seconds)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def capture(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self._observe(scope["method"], route, status, time.perf_counter() - started)


class ServiceCollector:
    """Values read at scrape time from the database and the broker: jobs by status, queue depth."""

    def collect(self):
        from sqlalchemy import func, select

        from service.core import worker_registry
        from service.core.broker import queue_depth
        from service.core.db import session_scope
        from service.core.settings import get_settings
        from service.core.tables import Job, JobStatus

        jobs = GaugeMetricFamily("trainyard_jobs", "Jobs by status", labels=["status"])
        try:
            with session_scope(write=False) as session:
                counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            for state in JobStatus.ALL:
                jobs.add_metric([state], counts.get(state, 0))
        except Exception:  # a scrape must not fail because the database hiccups
            pass
        yield jobs
        depth = GaugeMetricFamily("trainyard_queue_depth", "Messages waiting in a training queue", labels=["queue"])
        for queue in get_settings().queues:
            try:
                depth.add_metric([queue], queue_depth(queue))
            except Exception:
                pass
        yield depth
        workers = GaugeMetricFamily(
            "trainyard_workers", "Live training workers by device kind and state", labels=["device", "state"]
        )
        try:
            with session_scope(write=False) as session:
                live = worker_registry.live(session, settings=get_settings())
            counts = {(kind, state): 0 for kind in ("cpu", "cuda") for state in ("busy", "idle")}
            for worker in live:
                kind = "cuda" if any(d["kind"] == "cuda" for d in worker.devices) else "cpu"
                counts[kind, "busy" if worker.current_job else "idle"] += 1
            for (kind, state), count in counts.items():
                workers.add_metric([kind, state], count)
        except Exception:
            pass
        yield workers


def registry() -> CollectorRegistry:
    """What /metrics exposes: every API process's metrics, and the service-wide values."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    combined = CollectorRegistry()
    MultiProcessCollector(combined)
    combined.register(ServiceCollector())
    return combined


def install() -> None:
    """Register the scrape-time collector in this process's registry (once)."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR") and not getattr(install, "done", False):
        REGISTRY.register(ServiceCollector())
        install.done = True

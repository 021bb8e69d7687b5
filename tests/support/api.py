"""The real app in this test's process, on the settings of its service_env (a private home)."""

from __future__ import annotations

from fastapi.testclient import TestClient


def make_api() -> TestClient:
    """A client of a new app; no `with`: the lifespan (reaper, preload, GC tuning) is not started."""
    from service.api.app import create_app

    return TestClient(create_app())

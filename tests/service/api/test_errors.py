"""The one mapping of core errors to HTTP answers, on a bare FastAPI app."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.api import errors
from service.core.errors import Conflict, Invalid, NotFound, Unavailable, Unprocessable


def test_each_kind_of_core_error_gets_its_status():
    app = FastAPI()
    errors.install(app)
    raised = {"missing": NotFound("job x not found"), "busy": Unavailable("queue full", retry_after=2),
              "state": Conflict("it is running"), "bad": Invalid([(("body", "data", "dataset"), "unknown")]),
              "unusable": Unprocessable("not a zip archive")}

    @app.get("/{kind}")
    def fail(kind: str):
        raise raised[kind]

    client = TestClient(app)
    assert (client.get("/missing").status_code, client.get("/missing").json()) == (404, {"detail": "job x not found"})
    busy = client.get("/busy")
    assert busy.status_code == 503 and busy.headers["retry-after"] == "2"
    assert client.get("/state").status_code == 409
    bad = client.get("/bad")
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "data", "dataset"]
    assert client.get("/unusable").json() == {"detail": "not a zip archive"}

"""The one mapping of core errors to HTTP answers, on a bare FastAPI app."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from models.spec import JobSpec
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


def test_a_database_that_cannot_be_reached_is_a_503_not_a_500():
    from sqlalchemy import create_engine, text

    app = FastAPI()
    errors.install(app)
    unreachable = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")

    @app.get("/jobs")
    def jobs():
        with unreachable.connect() as connection:
            connection.execute(text("SELECT 1"))

    answer = TestClient(app, raise_server_exceptions=False).get("/jobs")
    assert answer.status_code == 503 and answer.headers["retry-after"] == str(errors.DATABASE_RETRY_AFTER_S)
    assert "database is unavailable" in answer.json()["detail"] and "127.0.0.1" not in answer.text


class Epochs(BaseModel):
    epochs: int


def test_an_echoed_infinity_does_not_break_the_422():
    app = FastAPI()
    errors.install(app)

    @app.post("/jobs")
    def create(body: Epochs):
        return body

    answer = TestClient(app, raise_server_exceptions=False).post(
        "/jobs", content=b'{"epochs": 1e400, "": -1e400}', headers={"Content-Type": "application/json"})
    assert answer.status_code == 422 and answer.json()["detail"][0]["input"] == "inf"


def test_a_422_names_the_field_as_sent_without_union_tags():
    app = FastAPI()
    errors.install(app)

    @app.post("/jobs")
    def create(spec: JobSpec):
        return {}

    client = TestClient(app)
    bad = client.post("/jobs", json={"model": {"arch": "mlp", "activation": "swish"}, "data": {"dataset": "mnist"}})
    assert bad.status_code == 422 and [e["loc"] for e in bad.json()["detail"]] == [["body", "model", "activation"]]
    missing = client.post("/jobs", json={"model": {"arch": "lenet"}})
    assert [e["loc"] for e in missing.json()["detail"]] == [["body", "data"]]

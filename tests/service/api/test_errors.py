"""The one mapping of core errors to HTTP answers, on a bare FastAPI app."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, FastAPI, Form
from fastapi.testclient import TestClient
from pydantic import BaseModel

from models.spec.job import JobSpec
from models.spec.sweeps import SweepSpec
from service.api import errors
from service.core.errors import Conflict, Invalid, NotFound, Unavailable, Unprocessable


def test_each_kind_of_core_error_gets_its_status():
    app = FastAPI()
    errors.install(app)
    raised = {
        "missing": NotFound("job x not found"),
        "busy": Unavailable("queue full", retry_after=2),
        "state": Conflict("it is running"),
        "bad": Invalid([(("data", "dataset"), "unknown")]),
        "unusable": Unprocessable("not a zip archive"),
    }

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
        "/jobs", content=b'{"epochs": 1e400, "": -1e400}', headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 422 and answer.json()["detail"][0]["input"] == "inf"


def spec_client() -> TestClient:
    """A bare app with the one error mapping and a route whose whole body is a job spec."""
    app = FastAPI()
    errors.install(app)

    @app.post("/jobs")
    def create(spec: JobSpec):
        return {}

    @app.post("/sweeps")
    def create_sweep(sweep: SweepSpec):
        return {}

    return TestClient(app)


def test_a_422_names_the_field_as_sent_without_union_tags():
    client = spec_client()
    bad = client.post("/jobs", json={"model": {"arch": "mlp", "activation": "swish"}, "data": {"dataset": "mnist"}})
    assert bad.status_code == 422 and [e["loc"] for e in bad.json()["detail"]] == [["body", "model", "activation"]]
    missing = client.post("/jobs", json={"model": {"arch": "lenet"}})
    assert [e["loc"] for e in missing.json()["detail"]] == [["body", "data"]]


def test_a_body_that_is_not_json_says_where_it_stops_or_what_to_send():
    client = spec_client()
    comma = client.post("/jobs", content=b'{"epochs": 3,}', headers={"Content-Type": "application/json"})
    [problem] = comma.json()["detail"]
    assert comma.status_code == 422 and problem["msg"].startswith("the body is not JSON: Expecting property name")
    assert problem["msg"].endswith("at character 13") and problem["loc"] == ["body"]  # as docs/job-specs.md says
    empty = client.post("/jobs", content=b"", headers={"Content-Type": "application/json"})
    [problem] = empty.json()["detail"]
    assert empty.status_code == 422 and problem["loc"] == ["body"] and problem["msg"].startswith("the body is empty")
    form = client.post(
        "/jobs",
        content=b'{"model": {"arch": "lenet"}}',  # curl -d without -H
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    [problem] = form.json()["detail"]
    assert form.status_code == 422 and problem["loc"] == ["body"]
    assert "Content-Type: application/json, not application/x-www-form-urlencoded" in problem["msg"]


def test_a_body_that_cannot_be_read_is_a_422_saying_why_not_a_bare_400():
    client = spec_client()
    for body, why in (
        (b'{"epochs": "\xe9"}', "it is not UTF-8 text (byte 12: invalid continuation byte)"),
        (b"[" * 100_000, "it nests arrays or objects too deeply"),
    ):
        answer = client.post("/jobs", content=body, headers={"Content-Type": "application/json"})
        assert answer.status_code == 422 and answer.json()["detail"][0]["msg"] == f"the body is not JSON: {why}"
    app = FastAPI()
    errors.install(app)

    @app.post("/upload")
    def upload(name: Annotated[str, Form()]):
        return {}

    form = TestClient(app).post(
        "/upload", content=b"--x\r\n[[]]--x--\r\n", headers={"Content-Type": "multipart/form-data; boundary=x"}
    )
    [problem] = form.json()["detail"]
    assert form.status_code == 422 and problem["loc"] == ["body"]
    assert problem["msg"].startswith("malformed multipart body: Found invalid character")


def test_a_405_allows_every_method_of_the_path_and_only_of_its_most_concrete_template():
    app = FastAPI()
    errors.install(app)
    first, second = APIRouter(), APIRouter()
    first.get("/items/{item}")(lambda item: {})
    first.post("/items/import")(lambda: {})
    second.delete("/items/{item}")(lambda item: {})
    app.include_router(first)
    app.include_router(second)
    client = TestClient(app)
    assert client.request("OPTIONS", "/items/x").headers["allow"] == "DELETE, GET"
    assert client.put("/items/import").headers["allow"] == "POST"  # OpenAPI's /items/import, not /items/{item}


def spec_errors(spec: dict) -> dict[tuple, str]:
    answer = spec_client().post("/jobs", json=spec)
    assert answer.status_code == 422
    return {tuple(e["loc"]): e["msg"] for e in answer.json()["detail"]}


def test_unknown_spec_keys_get_did_you_mean_from_the_names_known_there():
    found = spec_errors(
        {
            "model": {"arch": "sequential", "layers": [{"type": "linear", "out_featurs": 10}]},
            "data": {"dataset": "mnist", "augment": {"random_crop": {"pad": 2}}},
            "optimizer": {"learning_rate": 0.1},
            "epoch": 3,
            "lr": 0.1,
            "colour": True,
        }
    )
    assert found[("body", "optimizer", "learning_rate")] == "unknown field 'learning_rate': did you mean 'lr'?"
    assert found[("body", "epoch")] == "unknown field 'epoch': did you mean 'epochs'?"
    assert found[("body", "lr")] == "unknown field 'lr': did you mean 'optimizer.lr'?"
    assert "did you mean 'out_features'?" in found[("body", "model", "layers", 0, "out_featurs")]
    assert "did you mean 'padding'?" in found[("body", "data", "augment", "random_crop", "pad")]
    assert found[("body", "colour")].startswith("unknown field 'colour'; the fields here are name, model, data,")


def test_a_missing_or_unknown_arch_lists_the_archs():
    missing = spec_errors({"model": {"architecture": "mlp"}, "data": {"dataset": "mnist"}})[("body", "model")]
    assert "discriminator" not in missing
    assert missing.startswith("model.arch is required (not 'architecture'): one of linear_regression, polynomial,")
    assert "mlp, lenet, resnet18, sequential, pretrained" in missing
    unknown = spec_errors({"model": {"arch": "resnet"}, "data": {"dataset": "mnist"}})[("body", "model")]
    assert unknown.startswith("unknown model.arch 'resnet': did you mean resnet18") and "softmax_regression" in unknown
    layers = {"arch": "sequential", "layers": [{"type": "maxpool"}]}
    layer = spec_errors({"model": layers, "data": {"dataset": "mnist"}})
    assert "did you mean maxpool2d" in layer[("body", "model", "layers", 0)]
    dataset = spec_errors({"model": {"arch": "mlp"}, "data": {"dataset": "fashion_mnist"}})[("body", "data", "dataset")]
    assert dataset.endswith("did you mean fashion-mnist?")
    named = spec_errors({"model": {"arch": "mlp"}, "data": {"dataset": "shapes"}})[("body", "data", "dataset")]
    assert named.endswith("an uploaded dataset is named with its prefix: uploaded:shapes")
    cased = spec_errors({"model": {"arch": "mlp"}, "data": {"dataset": "Uploaded:shapes"}})[("body", "data", "dataset")]
    assert cased.endswith("did you mean uploaded:shapes?")
    empty = spec_errors({"model": {"arch": "mlp"}, "data": {"dataset": "uploaded:"}})[("body", "data", "dataset")]
    assert empty.startswith("should be uploaded: and an uploaded dataset's id, a unique prefix of it or its name")


def test_a_number_is_never_a_boolean_or_a_string():
    found = spec_errors(
        {
            "model": {"arch": "mlp", "dropout": [True]},
            "epochs": "3",
            "data": {"dataset": "synthetic-linear", "noise": False, "true_w": [1, 2]},
        }
    )
    assert {("body", "epochs"), ("body", "data", "noise"), ("body", "model", "dropout", 0)} <= set(found)


def test_a_wrong_normalize_is_one_error_for_the_form_it_was_given_in():
    def normalize_errors(value) -> dict[tuple, str]:
        return spec_errors({"model": {"arch": "mlp"}, "data": {"dataset": "mnist", "normalize": value}})

    assert normalize_errors("standard") == {
        ("body", "data", "normalize"): "Input should be 'none' or 'dataset'; got 'standard'"
    }
    assert normalize_errors("datset") == {
        ("body", "data", "normalize"): "Input should be 'none' or 'dataset'; did you mean dataset?"
    }
    assert normalize_errors({"mean": [0.5]}) == {("body", "data", "normalize", "std"): "Field required"}
    [(loc, message)] = normalize_errors(3).items()
    assert loc == ("body", "data", "normalize") and message.startswith("normalize must be 'none', 'dataset' or {")


def test_a_sweep_sent_as_a_job_or_a_job_as_a_sweep_says_where_it_goes_once():
    """`trainyard submit sweep.json` was told "unknown field 'base': did you mean 'optimizer.betas'?",
    and then the same hint once for each of the sweep's fields, after "model: Field required"."""
    import json

    from tests.support.servers import REPO

    sweep = json.loads((REPO / "examples" / "sweeps" / "weight-decay.json").read_text())
    assert spec_errors(sweep) == {
        ("body",): "a sweep's fields (base, grid, metric, mode): send sweeps to POST /v1/sweeps (trainyard sweep FILE)"
    }
    job = json.loads((REPO / "examples" / "linear-regression.json").read_text())
    answer = spec_client().post("/sweeps", json=job)
    assert [(e["loc"], e["msg"]) for e in answer.json()["detail"]] == [
        (
            ["body"],
            "a job spec's fields (model, data, optimizer, epochs, batch_size, seed, device): a sweep takes the job "
            "spec it varies as its base (docs/sweeps.md)",
        )
    ]
    # A job spec with one sweep field too many is still a job spec: what it lacks is said.
    assert spec_errors({"grid": {}, "epochs": 2}) == {
        ("body",): "a sweep's fields (grid): send sweeps to POST /v1/sweeps (trainyard sweep FILE)",
        ("body", "model"): "Field required",
        ("body", "data"): "Field required",
    }

"""Ids and references as people type them, and errors that say what to do, through the real app
in this process (SQLite and the embedded broker of a private home, no worker)."""

from __future__ import annotations

import pytest

from tests.support.api import make_api
from tests.support.datagen import image_folder_zip, png_bytes
from tests.support.specs import SOFTMAX_SPEC


@pytest.fixture
def api(service_env):
    return make_api()


def upload(api, name: str, per_class: int) -> str:
    archive = image_folder_zip(["cat", "dog"], per_class=per_class, test_per_class=2)
    answer = api.post("/v1/datasets", data={"name": name}, files={"file": ("pets.zip", archive, "application/zip")})
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def test_job_routes_and_references_take_a_unique_prefix(api, trained_job, service_env):
    short = trained_job[:8]
    assert api.get(f"/v1/jobs/{short}").json()["id"] == trained_job
    metrics = api.get(f"/v1/jobs/{short.upper()}/metrics").json()
    assert metrics["job_id"] == trained_job and [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3]
    assert api.get(f"/v1/jobs/{trained_job[:6]}/logs").json()["job_id"] == trained_job
    too_short = api.get(f"/v1/jobs/{trained_job[:5]}")  # shorter than 6: never a prefix, and it says so
    assert too_short.status_code == 404 and "prefix needs at least 6 characters" in too_short.json()["detail"]
    not_hex = api.get("/v1/jobs/zzzz")
    assert not_hex.json()["detail"] == "job zzzz not found; ids are hex digits (0-9, a-f) and dashes"

    image = [("files", ("boot.png", png_bytes(9, seed=1), "image/png"))]
    predicted = api.post("/v1/predict", data={"model": f"job:{short}:last"}, files=image)
    assert predicted.status_code == 200 and predicted.json()["model"]["job_id"] == trained_job, predicted.text
    registered = api.post("/v1/models", json={"name": "by-prefix", "job_id": short, "checkpoint": "best"})
    assert registered.status_code == 201 and registered.json()["job_id"] == trained_job, registered.text
    started = api.post("/v1/jobs", json={**SOFTMAX_SPEC, "init_from": {"job_id": short, "checkpoint": "last"}})
    assert started.status_code == 202 and started.json()["spec"]["init_from"]["job_id"] == trained_job, started.text
    # A model named by its name or an alias is pinned to the version that means now.
    assert api.put("/v1/models/by-prefix/aliases/production", json={"version": 1}).status_code == 200
    for given in ("by-prefix", "by-prefix@production", "by-prefix:1"):
        started = api.post("/v1/jobs", json={**SOFTMAX_SPEC, "init_from": {"model": given}})
        assert started.status_code == 202 and started.json()["spec"]["init_from"]["model"] == "by-prefix:1", given

    assert api.delete(f"/v1/jobs/{short}").status_code == 204
    assert api.get(f"/v1/jobs/{trained_job}").status_code == 404
    assert not (service_env.checkpoint_dir / trained_job).exists()


def test_an_ambiguous_prefix_is_a_409_listing_the_jobs(api, trained_job, trained_job_twin):
    twin = trained_job_twin
    for path in (f"/v1/jobs/{trained_job[:8]}", f"/v1/jobs/{trained_job[:8]}/metrics"):
        answer = api.get(path)
        assert answer.status_code == 409 and twin in answer.json()["detail"] and trained_job in answer.json()["detail"]
    assert (
        api.post(
            "/v1/predict",
            data={"model": f"job:{trained_job[:6]}"},
            files=[("files", ("a.png", png_bytes(1, seed=1), "image/png"))],
        ).status_code
        == 409
    )
    assert api.get(f"/v1/jobs/{trained_job[:13]}").json()["id"] == trained_job


def test_a_bare_job_id_as_the_model_asks_whether_job_colon_was_meant(api, trained_job):
    image = [("files", ("boot.png", png_bytes(9, seed=1), "image/png"))]
    for model in (trained_job, trained_job[:8]):
        answer = api.post("/v1/predict", data={"model": model}, files=image)
        assert answer.status_code == 404 and f"did you mean job:{trained_job}?" in answer.json()["detail"]


def test_datasets_and_sweeps_take_prefixes_and_a_spec_names_its_dataset(api):
    pets = upload(api, "pets", per_class=5)
    assert api.get(f"/v1/datasets/{pets[:6]}").json()["id"] == pets
    for given in ("pets", pets[:8]):
        spec = {**SOFTMAX_SPEC, "data": {"dataset": f"uploaded:{given}"}}
        submitted = api.post("/v1/jobs", json=spec)
        assert submitted.status_code == 202, submitted.text
        assert submitted.json()["spec"]["data"]["dataset"] == f"uploaded:{pets}"  # what the worker will read

    unknown = api.post("/v1/jobs", json={**SOFTMAX_SPEC, "data": {"dataset": "uploaded:colours"}})
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["body", "data", "dataset"]
    assert "GET /v1/datasets" in unknown.json()["detail"][0]["msg"]
    archive = image_folder_zip(["cat", "dog"], per_class=6, test_per_class=2)
    taken = api.post("/v1/datasets", data={"name": "pets"}, files={"file": ("pets.zip", archive, "application/zip")})
    assert taken.status_code == 409 and pets in taken.json()["detail"]  # so uploaded:pets keeps meaning one dataset
    other = upload(api, "pets-2", per_class=6)

    base = {**SOFTMAX_SPEC, "data": {"dataset": f"uploaded:{pets[:8]}"}}
    sweep = api.post("/v1/sweeps", json={"name": "lr", "base": base, "grid": {"optimizer.lr": [0.1, 0.2]}})
    assert sweep.status_code == 202, sweep.text
    sweep_id = sweep.json()["id"]
    assert api.get(f"/v1/sweeps/{sweep_id[:8]}").json()["id"] == sweep_id
    assert api.post(f"/v1/sweeps/{sweep_id[:6]}/cancel").json()["status"] == "cancelled"
    launched = api.get(f"/v1/jobs/{api.get(f'/v1/sweeps/{sweep_id}').json()['jobs'][0]['job_id']}").json()
    assert launched["spec"]["data"]["dataset"] == f"uploaded:{pets}"
    assert api.delete(f"/v1/datasets/{other[:8]}").status_code == 204


def test_images_sent_as_json_are_told_how_images_go(api, trained_job):
    files = api.post("/v1/predict", json={"model": f"job:{trained_job}", "files": ["boot.png"]})
    assert files.status_code == 415 and "multipart/form-data" in files.json()["detail"]
    assert "raw body" in files.json()["detail"]
    no_inputs = api.post("/v1/predict", json={"model": f"job:{trained_job}"})
    assert no_inputs.status_code == 422, no_inputs.text
    (problem,) = no_inputs.json()["detail"]
    assert problem["loc"] == ["body", "inputs"] and "`files`" in problem["msg"] and "image/*" in problem["msg"]
    rows = api.post("/v1/predict", json={"model": f"job:{trained_job}", "inputs": [[0.0] * 784]})
    assert rows.status_code == 422 and "takes images" in rows.text and "multipart/form-data" in rows.text


def test_the_job_route_answers_unknown_keys_with_did_you_mean(api):
    answer = api.post("/v1/jobs", json={**SOFTMAX_SPEC, "epoch": 3, "model": {"architecture": "softmax_regression"}})
    found = {tuple(e["loc"]): e["msg"] for e in answer.json()["detail"]}
    assert found[("body", "epoch")] == "unknown field 'epoch': did you mean 'epochs'?"
    assert found[("body", "model")].startswith("model.arch is required (not 'architecture'): one of linear_regression")

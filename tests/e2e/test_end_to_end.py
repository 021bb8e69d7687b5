"""The whole path through real processes: submit over HTTP, a worker trains, metrics in SQL, predict."""

from __future__ import annotations

import pytest

from models.data.idx import FASHION_MNIST_CLASSES
from tests.support.backends import embedded_only
from tests.support.datagen import class_png
from tests.support.specs import SOFTMAX_SPEC, submit

pytestmark = pytest.mark.e2e

LENET_SPEC = {
    "name": "lenet-e2e",
    "model": {"arch": "lenet", "activation": "relu", "pool": "max", "init": "xavier"},
    "data": {"dataset": "fashion-mnist"},
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
    "epochs": 2,
    "batch_size": 32,
}


def test_train_then_predict(stack, client, tmp_path):
    job_id = submit(client, SOFTMAX_SPEC)
    job = stack.wait_for_job(client, job_id)
    assert job["status"] == "succeeded", job
    assert job["attempt"] == 1 and job["epoch"] == 3 and job["progress"] == 1.0
    assert job["started_at"] and job["finished_at"] and job["finished_at"] >= job["started_at"]
    assert job["environment"]["device"] == "cpu" and job["environment"]["num_train"] == 4000

    metrics = client.get(f"/v1/jobs/{job_id}/metrics").json()
    assert metrics["job_id"] == job_id
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3]
    for epoch in metrics["epochs"]:
        assert epoch["train_loss"] > 0 and epoch["test_loss"] > 0 and epoch["samples_per_second"] > 0
    assert metrics["epochs"][-1]["test_acc"] > 0.9, metrics
    assert job["best_checkpoint"]["epoch"] in (1, 2, 3)
    assert job["latest_metrics"]["epoch"] == 3

    labels = [0, 3, 7, 9]
    files = []
    for i, label in enumerate(labels):
        path = class_png(tmp_path / f"item-{i}.png", label, seed=100 + i)
        files.append(("files", (path.name, path.read_bytes(), "image/png")))
    response = client.post("/v1/predict", data={"model": f"job:{job_id}", "top_k": "3"}, files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["job_id"] == job_id
    assert body["model"]["classes"] == list(FASHION_MNIST_CLASSES)
    predicted = [p["index"] for p in body["predictions"]]
    assert predicted == labels, body
    for p, label in zip(body["predictions"], labels, strict=True):
        assert p["label"] == FASHION_MNIST_CLASSES[label]
        assert len(p["top_k"]) == 3 and p["top_k"][0]["index"] == p["index"]
        assert 0.0 < p["probability"] <= 1.0
        assert p["top_k"][0]["probability"] >= p["top_k"][1]["probability"] >= p["top_k"][2]["probability"]


@embedded_only
def test_lenet_job_trains_and_predicts_jpeg(stack, client, tmp_path):
    job_id = submit(client, LENET_SPEC)
    job = stack.wait_for_job(client, job_id)
    assert job["status"] == "succeeded", job
    rows = client.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]
    assert len(rows) == 2
    jpeg = class_png(tmp_path / "big.jpg", 5, seed=7, size=56, mode="RGB")
    response = client.post(
        "/v1/predict",
        data={"model": f"job:{job_id}:last"},
        files=[("files", ("big.jpg", jpeg.read_bytes(), "image/jpeg"))],
    )
    assert response.status_code == 200, response.text
    assert response.json()["model"]["epoch"] == 2


def test_job_listing_filters_and_pages(stack, client):
    ids = [submit(client, {**SOFTMAX_SPEC, "epochs": 1, "name": f"list-{i}"}) for i in range(3)]
    for job_id in ids:
        stack.wait_for_job(client, job_id)
    page = client.get("/v1/jobs", params={"status": "succeeded", "limit": 2}).json()
    assert len(page["data"]) == 2 and page["count"] >= 3
    assert all(j["status"] == "succeeded" for j in page["data"])
    newest_first = [j["created_at"] for j in page["data"]]
    assert newest_first == sorted(newest_first, reverse=True)
    second = client.get("/v1/jobs", params={"status": "succeeded", "limit": 2, "offset": 2}).json()
    assert not {j["id"] for j in second["data"]} & {j["id"] for j in page["data"]}
    assert client.get("/v1/jobs", params={"status": "bogus"}).status_code == 422

"""What users look at: learning-curve and confusion PNGs, and Prometheus metrics."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.datagen import png_bytes
from tests.specs import SOFTMAX_SPEC, submit

pytestmark = pytest.mark.e2e
BLUE, ORANGE = (31, 119, 180), (255, 127, 14)  # matplotlib's tab:blue and tab:orange


def pixels_of(image: Image.Image, colour) -> int:
    array = np.asarray(image.convert("RGB")).astype(int)
    return int((np.abs(array - np.array(colour)).sum(axis=2) < 40).sum())


@pytest.fixture(scope="module")
def two_jobs(embedded_stack):
    with embedded_stack.client() as client:
        ids = [submit(client, {**SOFTMAX_SPEC, "name": f"curve-{lr}", "optimizer": {"name": "sgd", "lr": lr}})
               for lr in (0.5, 0.05)]
        for job_id in ids:
            assert embedded_stack.wait_for_job(client, job_id)["status"] == "succeeded"
    return ids


def test_learning_curve_png(embedded_stack, two_jobs):
    with embedded_stack.client() as client:
        answer = client.get(f"/v1/jobs/{two_jobs[0]}/plot.png")
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
        image = Image.open(io.BytesIO(answer.content))
        assert image.format == "PNG" and image.width > 1.8 * image.height  # loss and accuracy side by side
        assert pixels_of(image, BLUE) > 200 and pixels_of(image, ORANGE) < 50  # one job: one colour
        compared = Image.open(io.BytesIO(client.get("/v1/plots/compare.png", params={"jobs": ",".join(two_jobs)}).content))
        assert pixels_of(compared, BLUE) > 200 and pixels_of(compared, ORANGE) > 200
        assert client.get("/v1/jobs/00000000-0000-0000-0000-000000000000/plot.png").status_code == 404
        assert client.get("/v1/plots/compare.png", params={"jobs": "only-one"}).status_code == 422


def test_regression_curve_has_one_panel(embedded_stack):
    with embedded_stack.client() as client:
        job = submit(client, {"model": {"arch": "linear_regression"}, "data": {"dataset": "synthetic-linear"},
                              "optimizer": {"lr": 0.03}, "epochs": 3, "batch_size": 10})
        embedded_stack.wait_for_job(client, job)
        image = Image.open(io.BytesIO(client.get(f"/v1/jobs/{job}/plot.png").content))
        assert image.width < 1.8 * image.height
        assert client.get(f"/v1/jobs/{job}/confusion").status_code == 422


def test_confusion_matrix_matches_the_jobs_own_test_accuracy(embedded_stack, two_jobs):
    with embedded_stack.client() as client:
        job = client.get(f"/v1/jobs/{two_jobs[0]}").json()
        data = client.get(f"/v1/jobs/{two_jobs[0]}/confusion").json()
        assert data["classes"][9] == "ankle boot" and data["epoch"] == job["best_checkpoint"]["epoch"]
        assert sum(map(sum, data["matrix"])) == 200
        assert data["accuracy"] == pytest.approx(job["best_checkpoint"]["metrics"]["test_acc"])
        image = Image.open(io.BytesIO(client.get(f"/v1/jobs/{two_jobs[0]}/confusion.png").content))
        assert image.format == "PNG" and abs(image.width - image.height) < 0.3 * image.width


def test_prometheus_metrics(embedded_stack, two_jobs):
    with embedded_stack.client() as client:
        client.get(f"/v1/jobs/{two_jobs[0]}")
        client.post("/v1/predict", data={"model": f"job:{two_jobs[0]}"},
                    files=[("files", ("a.png", png_bytes(1, seed=1), "image/png"))])
        text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = families["trainyard_http_requests"].samples
    assert any(s.labels.get("route") == "/v1/jobs/{job_id}" and s.labels["method"] == "GET" for s in requests)
    jobs = {s.labels["status"]: s.value for s in families["trainyard_jobs"].samples}
    assert jobs["succeeded"] >= 2 and set(jobs) >= {"queued", "running", "failed", "cancelled"}
    queues = {embedded_stack.env["TRAINYARD_QUEUE"], embedded_stack.env["TRAINYARD_GPU_QUEUE"]}
    assert {s.labels["queue"] for s in families["trainyard_queue_depth"].samples} >= queues
    batches = [s for s in families["trainyard_predict_batch_size"].samples if s.name.endswith("_count")]
    assert batches and batches[0].value >= 1
    cache = {s.labels["result"]: s.value for s in families["trainyard_model_cache"].samples}
    assert cache["miss"] >= 1

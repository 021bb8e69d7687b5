"""What users look at: learning-curve and confusion PNGs, and Prometheus metrics."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from models.data.idx import read_idx
from tests.support.datagen import png_bytes
from tests.support.servers import REPO
from tests.support.specs import SOFTMAX_SPEC, submit

pytestmark = pytest.mark.e2e
BLUE, ORANGE = (31, 119, 180), (255, 127, 14)  # matplotlib's tab:blue and tab:orange


def pixels_of(image: Image.Image, colour) -> int:
    array = np.asarray(image.convert("RGB")).astype(int)
    return int((np.abs(array - np.array(colour)).sum(axis=2) < 40).sum())


@pytest.fixture(scope="module")
def two_jobs(embedded_stack):
    with embedded_stack.client() as client:
        ids = [
            submit(client, {**SOFTMAX_SPEC, "name": f"curve-{lr}", "optimizer": {"name": "sgd", "lr": lr}})
            for lr in (0.5, 0.05)
        ]
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
        compared = Image.open(
            io.BytesIO(client.get("/v1/plots/compare.png", params={"jobs": ",".join(two_jobs)}).content)
        )
        assert pixels_of(compared, BLUE) > 200 and pixels_of(compared, ORANGE) > 200
        repeated = client.get("/v1/plots/compare.png", params=[("jobs", job_id) for job_id in two_jobs])
        assert (
            repeated.status_code == 200
            and repeated.content == client.get("/v1/plots/compare.png", params={"jobs": ",".join(two_jobs)}).content
        )
        assert client.get("/v1/jobs/00000000-0000-0000-0000-000000000000/plot.png").status_code == 404
        one = client.get("/v1/plots/compare.png", params={"jobs": "only-one"})
        assert one.status_code == 422 and one.json()["detail"][0]["msg"].startswith("give 2 to 8 job ids"), one.text
        nine = client.get("/v1/plots/compare.png", params=[("jobs", two_jobs[0])] * 9)
        assert nine.status_code == 422 and nine.json()["detail"][0]["msg"].endswith("; 9 given"), nine.text
        unknown = client.get("/v1/plots/compare.png", params={"jobs": f"{two_jobs[0]},nosuch1"})
        assert unknown.status_code == 404 and unknown.json()["detail"] == (
            "job nosuch1 not found; ids are hex digits (0-9, a-f) and dashes"
        ), unknown.text


def test_regression_curve_has_one_panel(embedded_stack):
    with embedded_stack.client() as client:
        job = submit(
            client,
            {
                "model": {"arch": "linear_regression"},
                "data": {"dataset": "synthetic-linear"},
                "optimizer": {"lr": 0.03},
                "epochs": 3,
                "batch_size": 10,
            },
        )
        embedded_stack.wait_for_job(client, job)
        image = Image.open(io.BytesIO(client.get(f"/v1/jobs/{job}/plot.png").content))
        assert image.width < 1.8 * image.height
        assert client.get(f"/v1/jobs/{job}/confusion").status_code == 422
        refused = client.get(f"/v1/jobs/{job}/evaluation")
        assert refused.status_code == 422 and "classification" in refused.json()["detail"]
        assert client.get(f"/v1/jobs/{job}/test-images/0.png").status_code == 422


def test_confusion_matrix_matches_the_jobs_own_test_accuracy(embedded_stack, two_jobs):
    with embedded_stack.client() as client:
        job = client.get(f"/v1/jobs/{two_jobs[0]}").json()
        data = client.get(f"/v1/jobs/{two_jobs[0]}/confusion").json()
        assert data["classes"][9] == "ankle boot" and data["epoch"] == job["best_checkpoint"]["epoch"]
        assert sum(map(sum, data["matrix"])) == 200
        assert data["accuracy"] == pytest.approx(job["best_checkpoint"]["metrics"]["test_acc"])
        image = Image.open(io.BytesIO(client.get(f"/v1/jobs/{two_jobs[0]}/confusion.png").content))
        assert image.format == "PNG" and abs(image.width - image.height) < 0.3 * image.width


def test_evaluation_report_equals_scikit_learn_on_what_predict_answers(embedded_stack, unsure_job, data_dir):
    """Every test image fetched from the service and sent to /v1/predict: scikit-learn's metrics on
    those answers are the report's; each mistake is what predict says about its image."""
    job_id = unsure_job
    with embedded_stack.client() as client:
        answer = client.get(f"/v1/jobs/{job_id}/evaluation")
        assert answer.status_code == 200, answer.text
        report = answer.json()
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert report["job_id"] == job_id
        assert report["model"] == {"reference": f"job:{job_id}", "epoch": job["best_checkpoint"]["epoch"]}
        classes = [c["label"] for c in report["classes"]]
        truth = read_idx(data_dir / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
        stored = read_idx(data_dir / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte.gz")
        assert report["num_test"] == len(truth) == 200 and classes[9] == "ankle boot"

        images = [client.get(f"/v1/jobs/{job_id}/test-images/{i}.png") for i in range(len(truth))]
        assert all(i.status_code == 200 and i.headers["content-type"] == "image/png" for i in images)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(images[7].content))), stored[7])  # pixels as stored
        probs = np.zeros((len(truth), len(classes)))
        for start in range(0, len(truth), 50):
            predicted = client.post(
                "/v1/predict",
                data={"model": f"job:{job_id}", "top_k": str(len(classes))},
                files=[("files", (f"{i}.png", images[i].content, "image/png")) for i in range(start, start + 50)],
            )
            assert predicted.status_code == 200, predicted.text
            for row, p in enumerate(predicted.json()["predictions"], start=start):
                probs[row, [t["index"] for t in p["top_k"]]] = [t["probability"] for t in p["top_k"]]
        predicted = probs.argmax(axis=1)
        every = list(range(len(classes)))

        precision, recall, f1, support = precision_recall_fscore_support(
            truth, predicted, labels=every, zero_division=0
        )
        assert [c["precision"] for c in report["classes"]] == pytest.approx(precision.tolist())
        assert [c["recall"] for c in report["classes"]] == pytest.approx(recall.tolist())
        assert [c["f1"] for c in report["classes"]] == pytest.approx(f1.tolist())
        assert [c["support"] for c in report["classes"]] == support.tolist()
        summary = classification_report(truth, predicted, labels=every, zero_division=0, output_dict=True)
        for ours, theirs in (
            (report["macro_avg"], summary["macro avg"]),
            (report["weighted_avg"], summary["weighted avg"]),
        ):
            assert [ours["precision"], ours["recall"], ours["f1"], ours["support"]] == pytest.approx(
                [theirs["precision"], theirs["recall"], theirs["f1-score"], theirs["support"]]
            )
        assert report["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
        assert report["accuracy"] == pytest.approx(job["best_checkpoint"]["metrics"]["test_acc"])
        assert set(report["top_k_accuracy"]) == {"1", "3", "5"}
        for k, value in report["top_k_accuracy"].items():
            assert value == pytest.approx(top_k_accuracy_score(truth, probs, k=int(k), labels=every))
        assert report["confusion_matrix"] == confusion_matrix(truth, predicted, labels=every).tolist()
        assert report["confusion_matrix"] == client.get(f"/v1/jobs/{job_id}/confusion").json()["matrix"]

        confidence = probs.max(axis=1)
        coverage = [t["coverage"] for t in report["thresholds"]]
        assert coverage[0] == 1.0 and coverage == sorted(coverage, reverse=True)
        for row in report["thresholds"]:
            covered = confidence >= row["threshold"]
            assert row["coverage"] == pytest.approx(covered.mean())
            assert row["accuracy"] == (pytest.approx((predicted == truth)[covered].mean()) if covered.any() else None)

        wrong = np.flatnonzero(predicted != truth)
        mistakes = report["mistakes"]
        assert 0 < len(mistakes) == min(24, len(wrong))
        assert [m["index"] for m in mistakes] == sorted(wrong, key=lambda i: (-confidence[i], i))[:24]
        for m in mistakes:
            image = client.get(m["image_url"])
            said = client.post(
                "/v1/predict",
                data={"model": f"job:{job_id}"},
                files=[("files", ("mistake.png", image.content, "image/png"))],
            ).json()["predictions"][0]
            assert (said["label"], m["true_label"]) == (m["predicted_label"], classes[truth[m["index"]]])
            assert said["probability"] == pytest.approx(m["probability"], abs=1e-5)
        assert len(client.get(f"/v1/jobs/{job_id}/evaluation", params={"limit": 2}).json()["mistakes"]) == 2

        for index in (len(truth), -1):
            assert client.get(f"/v1/jobs/{job_id}/test-images/{index}.png").status_code == 404
        assert client.get("/v1/jobs/00000000-0000-0000-0000-000000000000/evaluation").status_code == 404
        failed = submit(client, {**SOFTMAX_SPEC, "name": "no-checkpoint", "data": {"dataset": "mnist"}})
        assert embedded_stack.wait_for_job(client, failed)["status"] == "failed"
        not_yet = [client.get(f"/v1/jobs/{failed}/{what}") for what in ("confusion", "evaluation")]
        assert [a.status_code for a in not_yet] == [409, 409] and not_yet[0].json() == not_yet[1].json()
    printed = embedded_stack.cli("evaluate", job_id, "--json", "--url", embedded_stack.url)
    assert printed.returncode == 0 and json.loads(printed.stdout) == report, printed.stderr
    table = subprocess.run(
        [sys.executable, "-m", "service.cli.main", "evaluate", job_id, "--limit", "3"],
        env={**embedded_stack.env, "TRAINYARD_URL": embedded_stack.url, "COLUMNS": "200"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert table.returncode == 0 and "macro avg" in table.stdout and "0.95" in table.stdout, table.stderr
    assert "confusion matrix" in table.stdout
    assert f"{embedded_stack.url}/v1/jobs/{job_id}/test-images/{mistakes[0]['index']}.png" in table.stdout
    assert f"/test-images/{mistakes[3]['index']}.png" not in table.stdout


def test_prometheus_metrics(embedded_stack, two_jobs):
    with embedded_stack.client() as client:
        client.get(f"/v1/jobs/{two_jobs[0]}")
        client.post(
            "/v1/predict",
            data={"model": f"job:{two_jobs[0]}"},
            files=[("files", ("a.png", png_bytes(1, seed=1), "image/png"))],
        )
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

"""Uploaded datasets through the API: upload, train on them, predict with their own class names."""

from __future__ import annotations

import uuid

import pytest

from tests.support.backends import embedded_only
from tests.support.datagen import image_folder_zip, png_bytes, zip_bytes
from tests.support.specs import submit

pytestmark = pytest.mark.e2e

CLASSES = ["circle", "square", "star"]


def upload(client, data: bytes, **form):
    form.setdefault("name", f"shapes-{uuid.uuid4().hex[:8]}")  # names are unique; most tests need no particular one
    return client.post(
        "/v1/datasets",
        files={"file": ("shapes.zip", data, "application/zip")},
        data={k: str(v) for k, v in form.items()},
    )


@embedded_only
def test_upload_train_and_predict_with_the_datasets_class_names(stack, client):
    answer = upload(client, image_folder_zip(CLASSES, per_class=40, test_per_class=10), name="shapes")
    assert answer.status_code == 201, answer.text
    dataset = answer.json()
    assert dataset["classes"] == CLASSES and dataset["kind"] == "image_folder"
    assert (dataset["num_train"], dataset["num_test"], dataset["input_shape"]) == (120, 30, [1, 28, 28])
    assert client.get(f"/v1/datasets/{dataset['id']}").json() == dataset
    assert dataset["id"] in [d["id"] for d in client.get("/v1/datasets").json()["data"]]

    spec = {
        "model": {"arch": "mlp", "hidden": [64]},
        "data": {"dataset": f"uploaded:{dataset['id']}"},
        "optimizer": {"name": "adam", "lr": 0.01},
        "epochs": 8,
        "batch_size": 16,
    }
    job = stack.wait_for_job(client, submit(client, spec))
    assert job["status"] == "succeeded", job
    assert job["latest_metrics"]["test_acc"] > 0.9
    files = [("files", (f"{name}.png", png_bytes(i, seed=777 + i), "image/png")) for i, name in enumerate(CLASSES)]
    predicted = client.post("/v1/predict", data={"model": f"job:{job['id']}"}, files=files).json()
    assert [p["label"] for p in predicted["predictions"]] == CLASSES
    report = client.get(f"/v1/jobs/{job['id']}/evaluation?limit=100").json()  # and kept
    assert report["mistakes"] == [] or report["mistakes"][0]["image_url"].endswith(".png")

    in_use = submit(client, {**spec, "epochs": 1})
    client.delete(f"/v1/datasets/{dataset['id']}")  # may race with the job; either answer is fine
    stack.wait_for_job(client, in_use)
    gone = client.delete(f"/v1/datasets/{dataset['id']}")
    assert gone.status_code in (204, 404)
    assert client.get(f"/v1/datasets/{dataset['id']}").status_code == 404
    # The report computed before is kept, for every API process, with no images to show; one never
    # computed cannot be now, and says why.
    kept = client.get(f"/v1/jobs/{job['id']}/evaluation?limit=100")
    assert kept.status_code == 200, kept.text
    assert {**kept.json(), "mistakes": None} == {**report, "mistakes": None}
    assert [m["index"] for m in kept.json()["mistakes"]] == [m["index"] for m in report["mistakes"]]
    assert all(m["image_url"] is None for m in kept.json()["mistakes"])
    assert client.get(f"/v1/jobs/{job['id']}/confusion").json()["matrix"] == report["confusion_matrix"]
    evaluation = client.get(f"/v1/jobs/{in_use}/evaluation")
    assert evaluation.status_code == 404 and "was deleted" in evaluation.json()["detail"], evaluation.text
    refused = client.post("/v1/jobs", json=spec)
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "data", "dataset"]


def test_deleting_a_dataset_a_queued_job_needs_is_409(stack, client):
    dataset = upload(client, image_folder_zip(["a", "b"], per_class=5, test_per_class=2)).json()
    blocker = submit(
        client,
        {
            "model": {"arch": "lenet", "activation": "relu", "pool": "max"},
            "data": {"dataset": "fashion-mnist"},
            "epochs": 1,
            "batch_size": 4,
        },
    )
    waiting = submit(
        client, {"model": {"arch": "softmax_regression"}, "epochs": 1, "data": {"dataset": f"uploaded:{dataset['id']}"}}
    )
    answer = client.delete(f"/v1/datasets/{dataset['id']}")
    assert answer.status_code == 409 and waiting in answer.json()["detail"]
    client.post(f"/v1/jobs/{blocker}/cancel")
    assert stack.wait_for_job(client, waiting)["status"] == "succeeded"
    assert client.delete(f"/v1/datasets/{dataset['id']}").status_code == 204


@embedded_only
def test_csv_regression_dataset_trains(stack, client):
    rows = "x1,x2,target\n" + "".join(
        f"{i / 100},{(i % 7) / 7},{3 * i / 100 - 2 * (i % 7) / 7 + 1}\n" for i in range(200)
    )
    dataset = upload(client, zip_bytes({"table.csv": rows.encode()}), test_fraction=0.2).json()
    assert dataset["task"] == "regression" and dataset["input_shape"] == [2] and dataset["columns"] == ["x1", "x2"]
    page = client.get(f"/ui/datasets/{dataset['id']}")
    assert '<p id="columns">x1, x2</p>' in page.text, page.text
    spec = {
        "model": {"arch": "linear_regression"},
        "data": {"dataset": f"uploaded:{dataset['id']}", "normalize": "dataset"},
        "optimizer": {"lr": 0.1},
        "epochs": 60,
        "batch_size": 10,
    }
    job = stack.wait_for_job(client, submit(client, spec))
    assert job["status"] == "succeeded" and job["latest_metrics"]["test_loss"] < 0.01, job
    predicted = client.post("/v1/predict", json={"model": f"job:{job['id']}", "inputs": [[0.5, 0.25]]}).json()
    assert predicted["model"]["columns"] == ["x1", "x2"], predicted
    assert abs(predicted["predictions"][0]["value"] - 2.0) < 0.15, predicted  # 3 x1 - 2 x2 + 1, from raw columns
    page = client.get(f"/ui/jobs/{job['id']}").text
    assert 'id="predict-rows"' in page and f'id="predict-link" href="/ui/predict?model=job:{job["id"]}"' in page
    wrong = client.post("/v1/predict", json={"model": f"job:{job['id']}", "inputs": [[0.5]]})
    assert wrong.status_code == 422 and "has 1 value; this model takes 2, in this order: x1, x2" in wrong.text
    lenet = client.post("/v1/jobs", json={**spec, "model": {"arch": "lenet"}})
    assert lenet.status_code == 422 and lenet.json()["detail"][0]["loc"] == ["body", "model", "arch"]


@embedded_only
@pytest.mark.parametrize(
    "data, message",
    [
        (b"definitely not a zip", "not a zip"),
        (zip_bytes({"../../escape.png": b"x"}), "unsafe path"),
        (zip_bytes({"train/a/big.png": b"\0" * (40 * 1024 * 1024)}), "zip bomb"),
        (zip_bytes({"train/a/1.png": png_bytes(0, seed=1), "train/b/1.png": b"garbage"}), "train/b/1.png"),
    ],
)
def test_bad_uploads_are_422_with_a_message(client, data, message):
    answer = upload(client, data, min_per_class=1)
    assert answer.status_code == 422 and message in answer.json()["detail"]


def test_the_same_upload_again_is_the_same_dataset(client):
    archive = image_folder_zip(["x", "y"], per_class=5, test_per_class=2)
    first = upload(client, archive, name="twice")
    assert first.status_code == 201, first.text
    count = client.get("/v1/datasets").json()["count"]
    again = upload(client, archive, name="twice")
    assert again.status_code == 200 and again.json() == first.json()
    assert again.headers["location"] == f"/v1/datasets/{first.json()['id']}"
    assert client.get("/v1/datasets").json()["count"] == count
    # Another archive, or the same with other options, under that name would make uploaded:twice
    # mean two datasets: refused, naming the one that has it.
    for taken in (
        upload(client, archive, name="twice", color="rgb"),
        upload(client, image_folder_zip(["x", "z"], per_class=5, test_per_class=2), name="twice"),
    ):
        assert taken.status_code == 409 and first.json()["id"] in taken.json()["detail"], taken.text
        assert "another name" in taken.json()["detail"]
        assert f"`trainyard datasets delete {first.json()['id'][:8]}`" in taken.json()["detail"]
    other = upload(client, archive, name="once more")
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]


@embedded_only
def test_upload_parameters_are_validated(client):
    answer = upload(client, image_folder_zip(["a", "b"], per_class=2, test_per_class=1), test_fraction=1.5)
    assert answer.status_code == 422
    assert client.get("/v1/datasets/not-a-dataset").status_code == 404


def test_a_large_upload_is_decoded_after_the_answer(tmp_path, data_dir):
    """Above TRAINYARD_DATASET_BACKGROUND_BYTES the answer is 202 at once and the dataset is
    processing until it is decoded; then it is ready and trains, or failed with the reason."""
    from tests.support.servers import Stack, wait_until

    with Stack(
        home=tmp_path / "home", data_dir=data_dir, extra_env={"TRAINYARD_DATASET_BACKGROUND_BYTES": "1024"}
    ) as stack:
        with stack.client() as client:
            archive = image_folder_zip(CLASSES, per_class=30, test_per_class=5)
            answer = upload(client, archive, name="later")
            assert answer.status_code == 202, answer.text
            kept = answer.json()
            assert kept["status"] == "processing" and kept["input_shape"] is None
            assert answer.headers["location"] == f"/v1/datasets/{kept['id']}"
            again = upload(client, archive, name="later")  # while it is decoded, or just after
            assert again.status_code in (200, 202) and again.headers["location"] == answer.headers["location"]

            def status():
                return client.get(f"/v1/datasets/{kept['id']}").json()["status"]

            wait_until(lambda: status() != "processing", timeout=60, what="the upload to be decoded")
            ready = client.get(f"/v1/datasets/{kept['id']}").json()
            assert ready["status"] == "ready" and ready["classes"] == CLASSES and ready["num_train"] == 90
            spec = {
                "model": {"arch": "softmax_regression"},
                "data": {"dataset": f"uploaded:{kept['id']}"},
                "epochs": 2,
                "batch_size": 16,
            }
            assert stack.wait_for_job(client, submit(client, spec))["status"] == "succeeded"

            bad = upload(client, image_folder_zip(["a", "b"], per_class=40, test_per_class=1), min_per_class=50)
            assert bad.status_code == 202
            wait_until(
                lambda: client.get(bad.headers["location"]).json()["status"] != "processing",
                timeout=60,
                what="the bad upload to be decoded",
            )
            failed = client.get(bad.headers["location"]).json()
            assert failed["status"] == "failed" and "fewer than min_per_class=50" in failed["error"]
            refused = client.post("/v1/jobs", json={**spec, "data": {"dataset": f"uploaded:{failed['id']}"}})
            assert refused.status_code == 422 and "failed to decode" in refused.json()["detail"][0]["msg"]

"""Deleting jobs and versions, and retention, through the running service."""

from __future__ import annotations

import sqlite3

import pytest

from models.training.state import TRAINING_STATE
from tests.support.datagen import class_png
from tests.support.servers import Stack, wait_until
from tests.support.specs import SOFTMAX_SPEC, submit

pytestmark = pytest.mark.e2e

SHORT = {**SOFTMAX_SPEC, "epochs": 2}
SLOW = {**SOFTMAX_SPEC, "epochs": 200, "name": "slow"}


def _predict(client, model: str, tmp_path) -> int:
    png = class_png(tmp_path / "item.png", 3, seed=1).read_bytes()
    return client.post(
        "/v1/predict", data={"model": model}, files={"files": ("item.png", png, "image/png")}
    ).status_code


def test_delete_a_job_while_its_registered_version_stays(stack, client, tmp_path):
    job_id = submit(client, SHORT)
    job = stack.wait_for_job(client, job_id)
    assert job["status"] == "succeeded" and job["disk_bytes"] > 0
    job_dir = stack.home / "checkpoints" / job_id
    # disk_bytes is the checkpoints' recorded sizes: all the files of a job that succeeded, whose
    # resumable state goes once its success is recorded.
    wait_until(lambda: not (job_dir / TRAINING_STATE).exists(), timeout=10, what="the state file to go")
    assert sum(f.stat().st_size for f in job_dir.iterdir()) == job["disk_bytes"] > 0
    registered = client.post("/v1/models", json={"name": f"outlives-{stack.port}", "job_id": job_id})
    assert registered.status_code == 201, registered.text
    name = registered.json()["name"]
    assert client.put(f"/v1/models/{name}/aliases/production", json={"version": 1}).status_code == 200

    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/metrics").status_code == 404
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 404
    assert not job_dir.exists()
    assert _predict(client, f"job:{job_id}", tmp_path) == 404
    assert _predict(client, name, tmp_path) == 200  # the version has its own copy
    assert client.get(f"/v1/models/{name}").json()["versions"][0]["job_id"] == job_id
    page = client.get(f"/ui/models/{name}").text  # the dashboard links no page of a deleted job
    assert f"{job_id[:8]} (deleted)" in page and f"/ui/jobs/{job_id}" not in page

    refused = client.delete(f"/v1/models/{name}/versions/1")
    assert refused.status_code == 409 and "production" in refused.json()["detail"]
    assert client.put(f"/v1/models/{name}/aliases/production", json={"version": 1}).status_code == 200
    second = client.post(
        "/v1/models/import",
        data={
            "name": name,
            "model": '{"arch": "softmax_regression"}',
            "classes": '["a", "b"]',
            "input_shape": "[1, 28, 28]",
        },
        files={"file": ("w.safetensors", b"not safetensors", "application/octet-stream")},
    )
    assert second.status_code == 422  # nothing else was registered under the name


def test_a_running_job_cannot_be_deleted_until_it_ends(stack, client):
    job_id = submit(client, SLOW)
    stack.wait_for_job(client, job_id, states=("running",))
    refused = client.delete(f"/v1/jobs/{job_id}")
    assert refused.status_code == 409 and "it is running" in refused.json()["detail"]
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    stack.wait_for_job(client, job_id, states=("cancelled",))
    deleted = stack.cli("jobs", "delete", job_id, "--url", stack.url)
    assert deleted.returncode == 0, deleted.stderr
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404


@pytest.fixture(scope="module")
def retention_stack(tmp_path_factory, data_dir):
    with Stack(
        home=tmp_path_factory.mktemp("retention"),
        data_dir=data_dir,
        extra_env={
            "TRAINYARD_RETENTION_DAYS": str(2 / 86400),  # two seconds
            "TRAINYARD_BROKER_MESSAGE_RETENTION_SECONDS": "2",
            "TRAINYARD_HOUSEKEEPING_INTERVAL_SECONDS": "0.5",
        },
    ) as stack:
        yield stack


def test_retention_purges_checkpoints_and_consumed_messages(retention_stack):
    stack = retention_stack
    with stack.client() as client:
        kept = submit(client, SHORT)  # registered as soon as it ends: retention is only two seconds
        assert stack.wait_for_job(client, kept)["status"] == "succeeded"
        assert client.post("/v1/models", json={"name": "kept", "job_id": kept}).status_code == 201
        purged = submit(client, SHORT)
        assert stack.wait_for_job(client, purged)["status"] == "succeeded"

        def purged_checkpoints():
            job = client.get(f"/v1/jobs/{purged}").json()
            return job if job["disk_bytes"] == 0 and job["best_checkpoint"] is None else None

        job = wait_until(purged_checkpoints, timeout=30, what=f"the checkpoints of {purged} to be purged")
        assert job["status"] == "succeeded" and len(client.get(f"/v1/jobs/{purged}/metrics").json()["epochs"]) == 2
        assert client.get(f"/v1/jobs/{kept}").json()["disk_bytes"] > 0  # a version came from it

    def stored_messages() -> int:  # the transport itself never deletes a message it delivered
        with sqlite3.connect(stack.home / "broker.db") as db:
            return db.execute("SELECT count(*) FROM kombu_message").fetchone()[0]

    wait_until(lambda: stored_messages() == 0, timeout=30, what="the consumed broker messages to be purged")

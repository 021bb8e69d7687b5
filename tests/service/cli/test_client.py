"""The `trainyard` client commands against a running service, as a user would run them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import httpx
import pytest

from tests.datagen import image_folder_zip, png_bytes
from tests.servers import REPO
from tests.specs import SOFTMAX_SPEC

pytestmark = pytest.mark.e2e


def trainyard(stack, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")},
           "TRAINYARD_URL": stack.url, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "service.cli.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_submit_follow_to_success_then_inspect(embedded_stack, tmp_path):
    spec = tmp_path / "softmax.json"
    spec.write_text(json.dumps({**SOFTMAX_SPEC, "name": "cli-follow"}))
    run = trainyard(embedded_stack, "submit", str(spec), "--follow")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "epoch 3/3" in run.stdout and "succeeded" in run.stdout and "test acc" in run.stdout
    job_id = run.stdout.split()[1]

    listing = trainyard(embedded_stack, "jobs", "list", "--status", "succeeded")
    assert listing.returncode == 0 and job_id in listing.stdout
    table = trainyard(embedded_stack, "metrics", job_id)
    epochs = [int(m.group(1)) for m in re.finditer(r"^\W*(\d+)\W+\d+\.\d{4}", table.stdout, flags=re.M)]
    assert table.returncode == 0 and epochs == [1, 2, 3], table.stdout
    shown = trainyard(embedded_stack, "jobs", "show", job_id)
    assert json.loads(shown.stdout)["id"] == job_id

    assert trainyard(embedded_stack, "models", "register", "cli-model", job_id).returncode == 0
    assert trainyard(embedded_stack, "models", "alias", "cli-model", "production", "1").returncode == 0
    models = trainyard(embedded_stack, "models", "list")
    assert "cli-model" in models.stdout and "production=1" in models.stdout
    image = tmp_path / "boot.png"
    image.write_bytes(png_bytes(9, seed=5))
    predicted = trainyard(embedded_stack, "predict", "cli-model", str(image), "--top-k", "2")
    assert predicted.returncode == 0 and "ankle boot" in predicted.stdout


def test_follow_exits_non_zero_when_the_job_fails(embedded_stack, tmp_path):
    spec = tmp_path / "missing.json"
    spec.write_text(json.dumps({**SOFTMAX_SPEC, "data": {"dataset": "mnist"}}))
    run = trainyard(embedded_stack, "submit", str(spec), "--follow")
    assert run.returncode == 1 and "failed" in run.stderr and "invalid_data" in run.stderr


def test_errors_are_reported_plainly(embedded_stack, tmp_path):
    spec = tmp_path / "bad.json"
    spec.write_text(json.dumps({**SOFTMAX_SPEC, "optimizer": {"lr": -1}}))
    run = trainyard(embedded_stack, "submit", str(spec))
    assert run.returncode == 1 and "error 422" in run.stderr and "optimizer.lr" in run.stderr
    assert trainyard(embedded_stack, "jobs", "cancel", "00000000-0000-0000-0000-000000000000").returncode == 1


def test_datasets_upload_and_list(embedded_stack, tmp_path):
    archive = tmp_path / "pets.zip"
    archive.write_bytes(image_folder_zip(["cat", "dog"], per_class=4, test_per_class=2))
    run = trainyard(embedded_stack, "datasets", "upload", str(archive), "--name", "pets")
    assert run.returncode == 0 and run.stdout.startswith("uploaded:") and "['cat', 'dog']" in run.stdout
    assert "pets" in trainyard(embedded_stack, "datasets", "list").stdout


def test_event_stream_reports_status_and_every_epoch(embedded_stack):
    with httpx.Client(base_url=embedded_stack.url, timeout=60) as client:
        job_id = client.post("/v1/jobs", json={**SOFTMAX_SPEC, "epochs": 2}).json()["id"]
        events = []
        with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            kind = None
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    events.append((kind, json.loads(line.removeprefix("data: "))))
    kinds = [k for k, _ in events]
    assert kinds[-1] == "end" and events[-1][1]["status"] == "succeeded"
    assert [d["epoch"] for k, d in events if k == "epoch"] == [1, 2]
    assert [d["to_status"] for k, d in events if k == "status"] == ["queued", "running", "succeeded"]
    with httpx.Client(base_url=embedded_stack.url) as client:
        assert client.get("/v1/jobs/nope/events").status_code == 404

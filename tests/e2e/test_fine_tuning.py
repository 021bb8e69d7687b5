"""Fine-tuning through the service: missing weights fail clearly, weights put on disk are found,
listed by the worker and loaded, the backbone stays frozen, and predict serves the result."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from safetensors.torch import load_file, save

from tests.support.backends import embedded_only
from tests.support.datagen import png_bytes
from tests.support.servers import wait_until

pytestmark = pytest.mark.e2e

WEIGHTS_FILE = "resnet18-f37072fd.pth"
SPEC = {
    "model": {"arch": "pretrained", "backbone": "resnet18", "weights": "DEFAULT", "freeze": "backbone"},
    "data": {"dataset": "cifar10", "resize": 32, "val_fraction": 0.2},
    "optimizer": {"name": "adam", "lr": 0.01},
    "epochs": 2,
    "batch_size": 64,
}


@embedded_only
def test_missing_weights_then_weights_on_disk(stack, client):
    weights = stack.home / "weights" / WEIGHTS_FILE
    weights.unlink(missing_ok=True)
    submitted = client.post("/v1/jobs", json=SPEC)
    assert submitted.status_code == 202, submitted.text
    assert any(str(weights) in warning for warning in submitted.json()["warnings"])
    failed = stack.wait_for_job(client, submitted.json()["id"])
    assert failed["status"] == "failed" and failed["reason"] == "missing_weights", failed
    assert str(weights) in failed["error"] and "TRAINYARD_ALLOW_DOWNLOAD" in failed["error"]
    assert failed["warnings"] == submitted.json()["warnings"]  # kept with the job, not only in the 202
    shown = stack.cli("jobs", "show", failed["id"])
    assert shown.returncode == 0 and "warning:" in shown.stdout and str(weights) in shown.stdout.replace("\n", "")

    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, weights)
    wait_until(
        lambda: all(WEIGHTS_FILE in w["weights"] for w in client.get("/v1/workers").json()["workers"]),
        timeout=30,
        what="the worker to list the weights file",
    )

    resumed = client.post(f"/v1/jobs/{failed['id']}/resume")
    assert resumed.status_code == 202 and resumed.json()["warnings"] == [], resumed.text  # told again, as it is now
    job = stack.wait_for_job(client, failed["id"])
    assert job["status"] == "succeeded", job
    assert job["best_selected_on"] == "val_acc"
    fresh = client.post("/v1/jobs", json=SPEC)
    assert fresh.json()["warnings"] == []
    client.post(f"/v1/jobs/{fresh.json()['id']}/cancel")

    # Written by the job's second attempt, under a name of its own.
    [trained_file] = (stack.home / "checkpoints" / job["id"]).glob("epoch-0002*.safetensors")
    trained = load_file(trained_file)
    for key in ("conv1.weight", "bn1.running_mean", "layer4.1.bn2.running_var", "layer3.0.downsample.0.weight"):
        assert torch.equal(trained[f"backbone.{key}"], state[key]), key
    assert trained["head.weight"].shape == (10, 512)

    answer = client.post(
        "/v1/predict",
        data={"model": f"job:{job['id']}", "top_k": "3"},
        files=[("files", ("x.png", png_bytes(3, seed=1, size=32, mode="RGB"), "image/png"))],
    )
    assert answer.status_code == 200, answer.text
    prediction = answer.json()["predictions"][0]
    assert len(prediction["top_k"]) == 3 and prediction["top_k"][0]["label"] in job_classes(client, job)


@embedded_only
def test_an_imported_torchvision_network_is_a_starting_point(stack, client):
    """init_from a registered version holding a plain torchvision ResNet-18: its backbone is loaded."""
    torch.manual_seed(1)
    state = torchvision.models.resnet18(num_classes=10).state_dict()
    imported = client.post(
        "/v1/models/import",
        data={
            "name": "tv-resnet",
            "model": json.dumps({"arch": "resnet18"}),
            "input_shape": "[3, 32, 32]",
            "classes": json.dumps([str(c) for c in range(10)]),
        },
        files={"file": ("w.safetensors", save(state))},
    )
    assert imported.status_code == 201, imported.text
    spec = {
        **SPEC,
        "model": {**SPEC["model"], "weights": None},
        "epochs": 1,
        "init_from": {"model": f"tv-resnet:{imported.json()['version']}"},
    }
    job = stack.wait_for_job(client, client.post("/v1/jobs", json=spec).json()["id"])
    assert job["status"] == "succeeded", job
    trained = load_file(stack.home / "checkpoints" / job["id"] / "epoch-0001.safetensors")
    assert torch.equal(trained["backbone.layer2.0.conv1.weight"], state["layer2.0.conv1.weight"])
    missing = client.post("/v1/jobs", json={**spec, "init_from": {"model": "no-such-model"}})
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "init_from"]


def job_classes(client, job) -> list[str]:
    return client.get(f"/v1/jobs/{job['id']}/confusion").json()["classes"]


@embedded_only
def test_an_unknown_backbone_is_a_422_listing_close_names(client):
    answer = client.post("/v1/jobs", json={**SPEC, "model": {"arch": "pretrained", "backbone": "resnet19"}})
    assert answer.status_code == 422
    problem = answer.json()["detail"][0]
    assert problem["loc"] == ["body", "model", "backbone"]
    assert "resnet18" in problem["msg"] and "resnet34" in problem["msg"]

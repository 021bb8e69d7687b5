"""The checkpoint volume fills up mid-job: the job fails clearly, nothing saved before is hurt,
and it resumes once there is room."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from tests.support.datagen import class_png
from tests.support.servers import Stack, require, wait_until
from tests.support.specs import submit

pytestmark = pytest.mark.e2e

SIZE_MB = 16
TINY = {
    "name": "registered-before",
    "model": {"arch": "softmax_regression"},
    "data": {"dataset": "fashion-mnist", "limit_train": 256, "limit_test": 64},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "epochs": 1,
    "batch_size": 32,
}
# About a second an epoch: time to fill the volume between two checkpoints.
STEADY = {
    "name": "fills-the-disk",
    "model": {"arch": "lenet", "activation": "relu", "pool": "max"},
    "data": {"dataset": "fashion-mnist"},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "epochs": 4,
    "batch_size": 16,
    "seed": 5,
    "device": "cpu",
    "checkpoints": {"keep": "all"},  # epoch 1's checkpoint is what must still load
}


@pytest.fixture
def small_volume(tmp_path):
    """A 16 MB tmpfs (mounting needs root, as in CI)."""
    require(os.geteuid() == 0, "mounting a small tmpfs needs root")
    mount = tmp_path / "volume"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(volume) -> os.PathLike:
    """Write zeros until the filesystem has no room left; returns the file that took it."""
    filler = volume / "filler"
    with open(filler, "wb", buffering=0) as fh:  # unbuffered: closing it has nothing left to write
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def predict(client, model: str, tmp_path) -> int:
    png = class_png(tmp_path / "item.png", 2, seed=4).read_bytes()
    return client.post(
        "/v1/predict", data={"model": model}, files={"files": ("item.png", png, "image/png")}
    ).status_code


def test_a_full_checkpoint_volume_fails_the_job_and_resume_finishes_it(tmp_path, data_dir, small_volume):
    checkpoints = small_volume / "checkpoints"
    with Stack(
        home=tmp_path / "home", data_dir=data_dir, extra_env={"TRAINYARD_CHECKPOINT_DIR": str(checkpoints)}
    ) as stack:
        with stack.client() as client:
            earlier = submit(client, TINY)
            assert stack.wait_for_job(client, earlier)["status"] == "succeeded"
            assert client.post("/v1/models", json={"name": "earlier", "job_id": earlier}).status_code == 201

            job_id = submit(client, STEADY)
            wait_until(
                lambda: client.get(f"/v1/jobs/{job_id}").json()["epoch"] >= 1,
                timeout=120,
                interval=0.02,
                what="the first epoch",
            )
            filler = fill(small_volume)

            job = stack.wait_for_job(client, job_id, timeout=120)
            assert (job["status"], job["reason"]) == ("failed", "storage_error"), job
            assert "No space left on device" in job["error"]
            assert job["epoch"] < STEADY["epochs"]
            assert not list((checkpoints / job_id).glob("*.tmp")), "a failed write leaves no partial file"
            assert predict(client, f"job:{job_id}:1", tmp_path) == 200  # what was saved before still loads
            assert predict(client, "earlier", tmp_path) == 200
            assert predict(client, f"job:{earlier}", tmp_path) == 200

            filler.unlink()
            assert client.post(f"/v1/jobs/{job_id}/resume").status_code == 202
            job = stack.wait_for_job(client, job_id, timeout=180)
            assert job["status"] == "succeeded", job
            epochs = [row["epoch"] for row in client.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]]
            assert epochs == list(range(1, STEADY["epochs"] + 1))

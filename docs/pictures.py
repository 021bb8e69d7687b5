"""Make the pictures of the docs (docs/*.md) from a real run of the service.

No real Fashion-MNIST can be downloaded here, so the jobs train on a stand-in built to be as hard:
ten classes whose prototypes come in confusable pairs (as shirts and T-shirts do), every image a
blend of its class and its pair's with a random share, shifted and noisy. No model reaches 100%,
and the curves bend as real ones do. The script starts an API and a worker, trains the jobs and a
sweep through HTTP, saves the comparison plot, and screenshots the dashboard in headless Chromium.

Usage: .venv/bin/python -m docs.pictures  (writes docs/*.png)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from tests.support.datagen import NUM_CLASSES, write_idx

DOCS = Path(__file__).resolve().parent

PAIRS = [1, 0, 3, 2, 5, 4, 7, 6, 9, 8]


def prototypes(rng: np.random.Generator, size: int = 28) -> np.ndarray:
    """One smooth shape per class: a few Gaussian blobs."""
    yy, xx = np.mgrid[0:size, 0:size]
    shapes = np.zeros((NUM_CLASSES, size, size))
    for k in range(NUM_CLASSES):
        for _ in range(4):
            cy, cx = rng.uniform(6, size - 6, 2)
            sy, sx = rng.uniform(2, 6, 2)
            shapes[k] += np.exp(-((yy - cy) ** 2 / (2 * sy**2) + (xx - cx) ** 2 / (2 * sx**2)))
    # Each pair shares most of its shape: only part of what tells them apart survives the blending.
    for k in range(0, NUM_CLASSES, 2):
        common = (shapes[k] + shapes[k + 1]) / 2
        shapes[k], shapes[k + 1] = 0.6 * common + 0.4 * shapes[k], 0.6 * common + 0.4 * shapes[k + 1]
    return shapes / shapes.max(axis=(1, 2), keepdims=True)


def hard_images(labels: np.ndarray, shapes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    share = rng.uniform(0.5, 1.0, len(labels))[:, None, None]
    images = share * shapes[labels] + (1 - share) * shapes[[PAIRS[k] for k in labels]]
    images *= rng.uniform(0.6, 1.0, len(labels))[:, None, None] * 230
    shifted = np.stack([np.roll(image, tuple(rng.integers(-2, 3, 2)), axis=(0, 1)) for image in images])
    return np.clip(shifted + rng.normal(0, 35, shifted.shape), 0, 255).astype(np.uint8)


def make_hard_dataset(root: Path, n_train: int = 6000, n_test: int = 1000, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    shapes = prototypes(rng)
    raw = root / "FashionMNIST" / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", hard_images(labels, shapes, rng), gz=True)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, gz=True)
    return root


if __name__ == "__main__" and "--calibrate" in sys.argv:
    from models.spec.job import JobSpec
    from models.training.engine import fit

    with tempfile.TemporaryDirectory() as tmp:
        make_hard_dataset(Path(tmp))
        for model, lr in (
            ({"arch": "softmax_regression"}, 0.1),
            ({"arch": "mlp", "hidden": [256], "dropout": [0.2]}, 0.1),
            ({"arch": "lenet", "activation": "relu", "pool": "max"}, 0.05),
        ):
            spec = JobSpec.model_validate(
                {
                    "model": model,
                    "data": {"dataset": "fashion-mnist"},
                    "epochs": 12,
                    "batch_size": 128,
                    "optimizer": {"name": "sgd", "lr": lr, "momentum": 0.9},
                }
            )
            history = fit(spec, data_dir=tmp).run.history
            print(model["arch"], [(round(h.train_acc, 3), round(h.test_acc, 3)) for h in history[::3]], flush=True)
    sys.exit(0)


JOBS = {
    "softmax": {"model": {"arch": "softmax_regression"}, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}},
    "mlp-dropout": {
        "model": {"arch": "mlp", "hidden": [256], "activation": "relu", "dropout": [0.2]},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
    },
    "lenet": {
        "model": {"arch": "lenet", "activation": "relu", "pool": "max"},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    },
}
SWEEP = {
    "name": "weight-decay",
    "base": {
        "model": {"arch": "mlp", "hidden": [256], "activation": "relu"},
        "data": {"dataset": "fashion-mnist"},
        "epochs": 12,
        "batch_size": 128,
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
    },
    "grid": {"optimizer.weight_decay": [0, 0.001, 0.01]},
    "metric": "test_acc",
    "mode": "max",
}


def browser():
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1200,900",
        "--hide-scrollbars",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def main() -> int:
    import time

    from tests.support.servers import Stack, wait_until

    with tempfile.TemporaryDirectory(prefix="trainyard-pictures-") as tmp:
        root = Path(tmp)
        stack = Stack(home=root / "home", data_dir=make_hard_dataset(root / "data")).start()
        try:
            with stack.client() as client:
                ids = {}
                for name, body in JOBS.items():
                    spec = {"name": name, "data": {"dataset": "fashion-mnist"}, "epochs": 12, "batch_size": 128, **body}
                    ids[name] = client.post("/v1/jobs", json=spec).json()["id"]
                for job_id in ids.values():
                    job = stack.wait_for_job(client, job_id, timeout=900, interval=1)
                    print(job["name"], job["status"], job["latest_metrics"]["test_acc"], flush=True)
                sweep = client.post("/v1/sweeps", json=SWEEP).json()
                wait_until(
                    lambda: client.get(f"/v1/sweeps/{sweep['id']}").json()["status"] == "succeeded",
                    timeout=900,
                    interval=1,
                    what="the sweep",
                )
                plot = client.get("/v1/plots/compare.png", params={"jobs": ",".join(ids.values())})
                (DOCS / "learning-curves.png").write_bytes(plot.content)
            driver = browser()
            try:
                for page, name in (
                    ("/", "dashboard-jobs"),
                    (f"/ui/jobs/{ids['lenet']}", "dashboard-job"),
                    (f"/ui/sweeps/{sweep['id']}", "dashboard-sweep"),
                ):
                    driver.get(stack.url + page)
                    time.sleep(2)  # the plots load
                    driver.save_screenshot(str(DOCS / f"{name}.png"))
            finally:
                driver.quit()
        finally:
            stack.stop()
    print("wrote", ", ".join(p.name for p in sorted(DOCS.glob("*.png"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

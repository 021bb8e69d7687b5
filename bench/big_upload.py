"""An image set larger than a comfortable share of memory, uploaded and trained through the service:
how much the API's and the worker's anonymous memory (RssAnon) grow, and how long it takes.

N RGB PNGs of 64x64 (100,000 by default: 1.2 GB decoded) in `<class>/<i>.png` folders, zipped,
uploaded with httpx streaming the file; the upload is above TRAINYARD_DATASET_BACKGROUND_BYTES,
so it is kept, answered 202 and decoded off the request path (image by image into a file that is
then memory-mapped). Then one epoch of LeNet trains on it. Every process of the API and of the
worker is sampled every 0.2 s; the figures are the peak growth over each role's level before the
upload. Target: each grows less than 300 MB.

Usage: .venv/bin/python -m bench.big_upload [--images N] [--epochs N]
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.train import PRODUCTION_TIMINGS
from tests.support.servers import Stack

SIDE = 64
CLASSES = 10
TARGET_GROWTH_MB = 300
PRODUCTION_SETTINGS = {**PRODUCTION_TIMINGS, "TRAINYARD_MAX_DATASET_UPLOAD_BYTES": str(2 * 1024**3)}


def write_zip(path: Path, images: int) -> None:
    """Class c: a square of colour c on a soft gradient, at a random place (PNGs of 1-3 KB)."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(20, 60, SIDE, dtype=np.float32)
    background = np.stack([ramp[None, :].repeat(SIDE, 0)] * 3, axis=-1)
    colours = rng.integers(40, 255, size=(CLASSES, 3))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for i in range(images):
            label = i % CLASSES
            image = background.copy()
            top, left = rng.integers(0, SIDE // 2, size=2)
            image[top : top + SIDE // 2, left : left + SIDE // 2] = colours[label]
            buffer = io.BytesIO()
            Image.fromarray(image.astype(np.uint8)).save(buffer, format="PNG", compress_level=1)
            archive.writestr(f"c{label}/{i}.png", buffer.getvalue())


def tree(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    children = [int(p) for p in out.split()]
    return [pid] + [q for c in children for q in tree(c)]


def anon_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Sampler(threading.Thread):
    """Largest RssAnon of any process in each role's tree, sampled until stopped."""

    def __init__(self, roots: dict[str, int]):
        super().__init__(daemon=True)
        self.roots, self.peaks, self.stopped = roots, {name: 0.0 for name in roots}, threading.Event()

    def level(self) -> dict[str, float]:
        return {name: max(anon_mb(p) for p in tree(pid)) for name, pid in self.roots.items()}

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            for name, value in self.level().items():
                self.peaks[name] = max(self.peaks[name], value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trainyard-bench-big-") as tmp:
        archive = Path(tmp) / "big.zip"
        started = time.perf_counter()
        write_zip(archive, args.images)
        made = time.perf_counter() - started
        size_mb = archive.stat().st_size / 2**20
        stack = Stack(home=Path(tmp) / "home", data_dir=Path(tmp) / "data", extra_env=PRODUCTION_SETTINGS).start()
        try:
            sampler = Sampler({"api": stack.procs["api"].pid, "worker": stack.procs["worker"].pid})
            before = sampler.level()
            sampler.start()
            with httpx.Client(base_url=stack.url, timeout=3600) as client, open(archive, "rb") as fh:
                started = time.perf_counter()
                answer = client.post(
                    "/v1/datasets", files={"file": ("big.zip", fh, "application/zip")}, data={"name": "big"}
                )
                answered = time.perf_counter() - started
                assert answer.status_code in (201, 202), answer.text
                location = f"/v1/datasets/{answer.json()['id']}"
                while (dataset := client.get(location).json())["status"] == "processing":
                    time.sleep(0.5)
                decoded = time.perf_counter() - started
                assert dataset["status"] == "ready", dataset
                spec = {
                    "model": {"arch": "lenet", "activation": "relu", "pool": "max"},
                    "data": {"dataset": f"uploaded:{dataset['id']}"},
                    "optimizer": {"name": "adam", "lr": 0.001},
                    "epochs": args.epochs,
                    "batch_size": 256,
                }
                started = time.perf_counter()
                job = stack.wait_for_job(
                    client, client.post("/v1/jobs", json=spec).json()["id"], timeout=7200, interval=1.0
                )
                trained = time.perf_counter() - started
                assert job["status"] == "succeeded", job
            sampler.stopped.set()
            sampler.join()
        finally:
            stack.stop()
    decoded_mb = args.images * 3 * SIDE * SIDE / 2**20
    print(
        f"{args.images} RGB {SIDE}x{SIDE} PNGs: zip {size_mb:.0f} MiB (made in {made:.0f} s), "
        f"decoded {decoded_mb:.0f} MiB; test split {dataset['num_test']}, train {dataset['num_train']}"
    )
    print(
        f"upload answered in {answered:.1f} s ({answer.status_code}), ready after {decoded:.1f} s; "
        f"{args.epochs} epoch(s) of LeNet in {trained:.1f} s "
        f"(job's own {job['latest_metrics']['samples_per_second']:.0f} samples/s)"
    )
    missed = 0
    for role in ("api", "worker"):
        growth = sampler.peaks[role] - before[role]
        met = growth < TARGET_GROWTH_MB
        missed += not met
        print(
            f"{role}: RssAnon {before[role]:.0f} MiB before, peak {sampler.peaks[role]:.0f} MiB, growth "
            f"{growth:.0f} MiB (target < {TARGET_GROWTH_MB}) {'MET' if met else 'MISSED'}"
        )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

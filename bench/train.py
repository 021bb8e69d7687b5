"""Training throughput of a job run through the service, as ratios against loops run in the same process.

On 60,000 synthetic 28x28 images in Fashion-MNIST's IDX files, for `mlp` (784-256-10) and `lenet`:
- the service: a job submitted over HTTP to a real worker; samples/s from the job's own metrics
  and from wall time (submit to succeeded, so every per-epoch checkpoint, metrics upsert, lease
  renewal and cancel check counts);
- a bare PyTorch loop on the same model, data tensors and batch size;
- the course's recipe: torchvision.datasets.FashionMNIST(transform=ToTensor()) + DataLoader;
- queue latency (submit to running, idle worker) on the embedded broker and on Redis;
- a warm worker: a second 5-epoch MLP job's samples/s over its whole life against its epochs' own;
- the worker's peak memory over the dataset's own size.

Usage: .venv/bin/python -m bench.train [--epochs N] [--device cpu|cuda] [--amp off|bf16|fp16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch

from models.data.loading import load_dataset
from models.nets.archs import build_model
from models.spec.job import JobSpec
from models.training.engine import loss_function, optimizer_step
from tests.support.datagen import make_idx_dataset
from tests.support.servers import REDIS_URL, Stack, redis_available

BATCH = 256
TARGET_SERVICE_OVER_BARE = 0.95
TARGET_MLP_OVER_RECIPE = 3.0
TARGET_QUEUE_P50_S = 0.5
TARGET_WARM_WALL_OVER_OWN = 0.6
# The test stacks renew leases and reap every half second; measure with the production defaults.
PRODUCTION_TIMINGS = {
    "TRAINYARD_HEARTBEAT_SECONDS": "2",
    "TRAINYARD_LEASE_SECONDS": "30",
    "TRAINYARD_REAPER_INTERVAL_SECONDS": "5",
    "TRAINYARD_RESEND_AFTER_SECONDS": "30",
}
MODELS = {
    "mlp": {"arch": "mlp", "hidden": [256], "activation": "relu"},
    "lenet": {"arch": "lenet", "activation": "relu", "pool": "max"},
}


def spec(model: dict, epochs: int, device: str, amp: str) -> dict:
    return {
        "model": model,
        "data": {"dataset": "fashion-mnist"},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "epochs": epochs,
        "batch_size": BATCH,
        "seed": 0,
        "device": device,
        "amp": amp,
    }


def bare_loop(job: JobSpec, data_dir: Path) -> float:
    """Samples/s of the loop a user would write by hand: same tensors, model, batch size and AMP."""
    device = torch.device("cuda" if job.device.startswith("cuda") else "cpu")
    data = load_dataset(job.data, data_dir=data_dir)
    x, y = data.x_train.to(device), data.y_train.to(device)
    torch.manual_seed(0)
    model = build_model(job.model, data.input_shape, 10).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = loss_function("classification")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(job.amp)
    scaler = torch.amp.GradScaler("cuda") if job.amp == "fp16" else None
    seen, started = 0, time.perf_counter()
    for _ in range(job.epochs):
        model.train()
        order = torch.randperm(len(x), device=device)
        for start in range(0, len(x), BATCH):
            idx = order[start : start + BATCH]
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = loss_fn(model(x[idx].float().div_(255)), y[idx])
            optimizer_step(loss, optimizer, scaler)
            seen += len(idx)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - started)


def course_recipe(job: JobSpec, data_dir: Path) -> float:
    """Samples/s of the course's recipe: PIL + ToTensor per image per epoch, through a DataLoader."""
    import torchvision
    from torch.utils.data import DataLoader

    dataset = torchvision.datasets.FashionMNIST(
        root=str(data_dir), train=True, download=False, transform=torchvision.transforms.ToTensor()
    )
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=4)  # the course's 4 workers
    device = torch.device("cuda" if job.device.startswith("cuda") else "cpu")
    torch.manual_seed(0)
    model = build_model(job.model, (1, 28, 28), 10).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = loss_function("classification")
    seen, started = 0, time.perf_counter()
    for _ in range(job.epochs):
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            loss = loss_fn(model(xb), yb)
            optimizer_step(loss, optimizer, None)
            seen += len(xb)
    return seen / (time.perf_counter() - started)


def through_service(stack: Stack, body: dict) -> dict:
    with stack.client() as client:
        started = time.perf_counter()
        job_id = client.post("/v1/jobs", json=body).json()["id"]
        job = stack.wait_for_job(client, job_id, timeout=3600, interval=1.0)
        wall = time.perf_counter() - started
        assert job["status"] == "succeeded", job
        epochs = client.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]
    samples = 60_000 * len(epochs)
    # Bookkeeping between epochs (checkpoint, metrics upsert, training state) is the time from
    # one epoch's row to the next one's, less the next epoch's own training and evaluation.
    stamps = [datetime.fromisoformat(e["recorded_at"]) for e in epochs]
    gaps = [(b - a).total_seconds() - e["seconds"] for a, b, e in zip(stamps, stamps[1:], epochs[1:], strict=False)]
    return {
        "own": statistics.mean(e["samples_per_second"] for e in epochs),
        "wall": samples / wall,
        "bookkeeping": statistics.mean(gaps) if gaps else float("nan"),
        "epoch": statistics.mean(e["seconds"] for e in epochs),
    }


def warm_job(stack: Stack, device: str, amp: str) -> float:
    """A second 5-epoch MLP job on data the worker has already decoded: samples/s over the job's
    whole life as the service records it (created to finished) / its epochs' own samples/s."""
    body = spec(MODELS["mlp"], 5, device, amp)
    with stack.client() as client:
        for _ in range(2):  # the first one warms the worker up
            job = stack.wait_for_job(client, client.post("/v1/jobs", json=body).json()["id"], timeout=3600)
            assert job["status"] == "succeeded", job
        epochs = client.get(f"/v1/jobs/{job['id']}/metrics").json()["epochs"]
    life = (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["created_at"])).total_seconds()
    return (60_000 * len(epochs) / life) / statistics.mean(e["samples_per_second"] for e in epochs)


def queue_latency(stack: Stack, runs: int = 10) -> float:
    """Median seconds from submit to running, with the worker idle before each job."""
    tiny = {
        "model": {"arch": "softmax_regression"},
        "data": {"dataset": "fashion-mnist", "limit_train": 256, "limit_test": 64},
        "epochs": 1,
        "batch_size": 256,
    }
    delays = []
    with stack.client() as client:
        for _ in range(runs):
            job = stack.wait_for_job(client, client.post("/v1/jobs", json=tiny).json()["id"])
            created = datetime.fromisoformat(job["created_at"])
            running = next(t for t in job["transitions"] if t["to_status"] == "running")
            delays.append((datetime.fromisoformat(running["at"]) - created).total_seconds())
    return statistics.median(delays)


def worker_peak_rss_mb(stack: Stack) -> float:
    """Peak resident memory (VmHWM) of the worker process that ran the jobs."""
    peaks = []
    for pid in stack.worker_pool_pids():
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) / 1024)
    return max(peaks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
    parser.add_argument("--skip-recipe", action="store_true", help="skip the slow DataLoader + ToTensor recipe")
    args = parser.parse_args()
    failures = 0
    with tempfile.TemporaryDirectory(prefix="trainyard-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        make_idx_dataset(data_dir, "FashionMNIST", n_train=60_000, n_test=10_000, gz=False)  # torchvision reads these
        dataset_mb = (60_000 + 10_000) * 28 * 28 / 2**20
        stack = Stack(
            home=Path(tmp) / "embedded",
            data_dir=data_dir,
            extra_env=PRODUCTION_TIMINGS,
            serve_gpu_queue=args.device.startswith("cuda"),
        ).start()
        rows = []
        try:
            for name, model in MODELS.items():
                body = spec(model, args.epochs, args.device, args.amp)
                job = JobSpec.model_validate(body)
                service = through_service(stack, body)
                bare = bare_loop(job, data_dir)
                recipe = None if args.skip_recipe else course_recipe(job, data_dir)
                rows.append((name, service, bare, recipe))
            warm = warm_job(stack, args.device, args.amp)
            peak_mb = worker_peak_rss_mb(stack)
            latency_embedded = queue_latency(stack)
        finally:
            stack.stop()
        latency_redis = None
        if redis_available():
            redis_stack = Stack(
                home=Path(tmp) / "redis", data_dir=data_dir, broker_url=REDIS_URL, extra_env=PRODUCTION_TIMINGS
            ).start()
            try:
                latency_redis = queue_latency(redis_stack)
            finally:
                redis_stack.stop()

    print(
        f"device {args.device}, amp {args.amp}, {args.epochs} epochs of 60,000 images, batch {BATCH}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"{'model':<6} {'service (own) /s':>17} {'service (wall) /s':>18} {'bare /s':>9} {'recipe /s':>10} "
        f"{'own/bare':>9} {'wall/bare':>10} {'own/recipe':>11}"
    )
    for name, service, bare, recipe in rows:
        own, wall = service["own"] / bare, service["wall"] / bare
        over_recipe = service["own"] / recipe if recipe else float("nan")
        print(
            f"{name:<6} {service['own']:>17.0f} {service['wall']:>18.0f} {bare:>9.0f} "
            f"{recipe or float('nan'):>10.0f} {own:>9.2f} {wall:>10.2f} {over_recipe:>11.2f}"
        )
        failures += own < TARGET_SERVICE_OVER_BARE
        if name == "mlp" and recipe:
            failures += over_recipe < TARGET_MLP_OVER_RECIPE
    for name, service, _, _ in rows:
        print(
            f"{name}: bookkeeping between epochs {1000 * service['bookkeeping']:.1f} ms "
            f"({100 * service['bookkeeping'] / service['epoch']:.1f}% of an epoch)"
        )
    print(
        f"targets: service/bare >= {TARGET_SERVICE_OVER_BARE} (job's own samples/s); "
        f"mlp service/recipe >= {TARGET_MLP_OVER_RECIPE}"
    )
    print(
        f"queue latency p50 (submit to running, idle worker): embedded {latency_embedded:.3f} s, "
        f"redis {'n/a' if latency_redis is None else f'{latency_redis:.3f} s'} (target < {TARGET_QUEUE_P50_S} s)"
    )
    failures += latency_embedded >= TARGET_QUEUE_P50_S
    failures += latency_redis is not None and latency_redis >= TARGET_QUEUE_P50_S
    print(
        f"warm worker, second 5-epoch mlp job: samples/s over its life / its epochs' own {warm:.2f} "
        f"(target >= {TARGET_WARM_WALL_OVER_OWN})"
    )
    failures += warm < TARGET_WARM_WALL_OVER_OWN
    print(f"worker peak memory {peak_mb:.0f} MiB for a {dataset_mb:.0f} MiB dataset ({peak_mb / dataset_mb:.1f}x)")
    print("ALL TARGETS MET" if not failures else f"{failures} TARGET(S) MISSED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Colour training with augmentation: a job through the service against the usual torchvision recipe
and a bare loop, as ratios measured in the same run.

On N synthetic 32x32 RGB images (CIFAR-10's binary layout for the service, the same images as PNG
files for the recipe), LeNet (3 input channels), batch 256, random_crop (padding 4) +
horizontal_flip:
- the service: a job submitted over HTTP to a real worker; samples/s from its own metrics;
- the usual recipe: ImageFolder over the PNG files + transforms.v2 (RandomCrop, RandomHorizontalFlip,
  ToDtype) + DataLoader(num_workers=2, shuffle=True);
- a bare loop over the pre-decoded uint8 tensors with the same augmentation (models.data.augment) on
  the same device, x / 255 per batch: what the service's engine adds on top is what is measured;
- the same job and bare loop without augmentation: colour convolutional training's own overhead.

Usage: .venv/bin/python -m bench.augment [--images N] [--epochs N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.train import PRODUCTION_TIMINGS
from models.data.augment import Augmenter
from models.data.cifar import load_cifar10
from models.nets.archs import build_model
from models.spec.job import JobSpec
from models.training.engine import loss_function, optimizer_step
from tests.support.datagen import make_cifar10
from tests.support.servers import Stack

BATCH = 256
TARGET_OVER_RECIPE = 3.0
TARGET_OVER_BARE = 0.9
TARGET_PLAIN_OVER_BARE = 0.95
AUGMENT = {"random_crop": {"padding": 4}, "horizontal_flip": True}
MODEL = {"arch": "lenet", "activation": "relu", "pool": "max"}


def job_body(epochs: int, device: str, augment: bool = True) -> dict:
    return {
        "model": MODEL,
        "data": {"dataset": "cifar10", **({"augment": AUGMENT} if augment else {})},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "epochs": epochs,
        "batch_size": BATCH,
        "seed": 0,
        "device": device,
    }


def write_png_folders(data_dir: Path, root: Path) -> int:
    """The CIFAR stand-in's training images as ImageFolder's <class>/<i>.png tree."""
    from PIL import Image

    data = load_cifar10(data_dir)
    for i, (image, label) in enumerate(zip(data.x_train.numpy(), data.y_train.tolist(), strict=True)):
        folder = root / data.classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{i}.png")
    return len(data.x_train)


def train_steps(model, optimizer, batches, device) -> int:
    loss_fn = loss_function("classification")
    seen = 0
    model.train()
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = loss_fn(model(x), y)
        optimizer_step(loss, optimizer, None)
        seen += len(x)
    return seen


def fresh(device):
    torch.manual_seed(0)
    model = build_model(JobSpec.model_validate(job_body(1, "cpu")).model, (3, 32, 32), 10).to(device)
    return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def bare_loop(data_dir: Path, epochs: int, device: torch.device, augmented: bool = True) -> float:
    data = load_cifar10(data_dir)
    x, y = data.x_train.to(device), data.y_train.to(device)
    spec = JobSpec.model_validate(job_body(1, "cpu")).data.augment
    augment = Augmenter(spec, 0, (3, 32, 32)) if augmented else (lambda batch, epoch, index: batch)
    model, optimizer = fresh(device)
    seen, started = 0, time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(x), device=device)

        def batches(order=order, epoch=epoch):
            for b, start in enumerate(range(0, len(x), BATCH)):
                idx = order[start : start + BATCH]
                yield augment(x[idx], epoch, b).float().div_(255), y[idx]

        seen += train_steps(model, optimizer, batches(), device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - started)


def recipe(png_root: Path, epochs: int, device: torch.device) -> float:
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    transform = v2.Compose(
        [
            v2.PILToTensor(),
            v2.RandomCrop(32, padding=4),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )
    loader = DataLoader(
        ImageFolder(str(png_root), transform=transform),
        batch_size=BATCH,
        shuffle=True,
        num_workers=2,
        persistent_workers=True,
    )
    model, optimizer = fresh(device)
    seen, started = 0, time.perf_counter()
    for _ in range(epochs):
        seen += train_steps(model, optimizer, loader, device)
    return seen / (time.perf_counter() - started)


def through_service(stack: Stack, body: dict) -> float:
    with stack.client() as client:
        job_id = client.post("/v1/jobs", json=body).json()["id"]
        job = stack.wait_for_job(client, job_id, timeout=3600, interval=1.0)
        assert job["status"] == "succeeded", job
        epochs = client.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]
    return statistics.mean(e["samples_per_second"] for e in epochs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000, help="training images (a multiple of 5)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--report-only", action="store_true", help="print the targets without failing on them")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device.startswith("cuda") else "cpu")
    with tempfile.TemporaryDirectory(prefix="trainyard-bench-augment-") as tmp:
        data_dir, png_root = Path(tmp) / "data", Path(tmp) / "png"
        make_cifar10(data_dir, "bin", per_batch=args.images // 5, n_test=1000)
        write_png_folders(data_dir, png_root)
        stack = Stack(
            home=Path(tmp) / "home",
            data_dir=data_dir,
            extra_env=PRODUCTION_TIMINGS,
            serve_gpu_queue=device.type == "cuda",
        ).start()
        try:
            service = through_service(stack, job_body(args.epochs, args.device))
            plain = through_service(stack, job_body(args.epochs, args.device, augment=False))
        finally:
            stack.stop()
        bare = bare_loop(data_dir, args.epochs, device)
        plain_bare = bare_loop(data_dir, args.epochs, device, augmented=False)
        usual = recipe(png_root, args.epochs, device)
    over_recipe, over_bare, plain_over_bare = service / usual, service / bare, plain / plain_bare
    print(
        f"device {args.device}, {args.images} 32x32 RGB images, {args.epochs} epochs, LeNet, batch {BATCH}, "
        f"random_crop(4) + horizontal_flip, torch threads {torch.get_num_threads()}"
    )
    print(f"{'service /s':>11} {'recipe /s':>10} {'bare /s':>9} {'service/recipe':>15} {'service/bare':>13}")
    print(f"{service:>11.0f} {usual:>10.0f} {bare:>9.0f} {over_recipe:>15.2f} {over_bare:>13.2f}")
    print(f"without augmentation: service {plain:.0f}/s, bare {plain_bare:.0f}/s")
    missed = 0
    for label, value, target in (
        ("service/recipe", over_recipe, TARGET_OVER_RECIPE),
        ("service/bare", over_bare, TARGET_OVER_BARE),
        ("service/bare without augmentation", plain_over_bare, TARGET_PLAIN_OVER_BARE),
    ):
        met = value >= target
        missed += not met
        print(f"{label}: {value:.2f} (target >= {target}) {'MET' if met else 'MISSED'}")
    return 1 if missed and not args.report_only else 0


if __name__ == "__main__":
    sys.exit(main())

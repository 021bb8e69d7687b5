"""Fine-tuning a frozen backbone: epochs after the first cost only the head.

ResNet-18 (torchvision's architecture; random weights, which cost the same as ImageNet's) with
freeze=backbone and no augmentation trains on N synthetic 64x64 RGB images (data.resize 64). The
first epoch computes the backbone's features once; later epochs train the linear head on them.
Printed, as ratios measured in the same run:
- epoch 1 / mean of epochs 2..E (target >= 10x);
- the same job with augmentation (the backbone then runs every batch) per epoch / epochs 2..E of
  the cached job: what the feature cache saves each epoch.

Usage: .venv/bin/python -m bench.finetune [--images N] [--epochs E] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from models.data.idx import image_dataset
from models.spec.job import JobSpec
from models.training.engine import fit
from tests.support.datagen import colour_images

TARGET_LATER_OVER_FIRST = 10.0


def dataset(images: int):
    rng = np.random.default_rng(0)
    y_train = rng.integers(0, 10, images).astype(np.uint8)
    y_test = rng.integers(0, 10, max(1, images // 5)).astype(np.uint8)
    return image_dataset(
        {
            "train_images": colour_images(y_train, rng, size=64),
            "train_labels": y_train,
            "test_images": colour_images(y_test, rng, size=64),
            "test_labels": y_test,
        },
        name="bench",
        classes=tuple(str(c) for c in range(10)),
    )


def seconds_per_epoch(data, epochs: int, device: str, augment: bool) -> list[float]:
    spec = JobSpec.model_validate(
        {
            "model": {"arch": "pretrained", "backbone": "resnet18", "weights": None, "freeze": "backbone"},
            "data": {"dataset": "cifar10", "resize": 64, **({"augment": {"horizontal_flip": True}} if augment else {})},
            "optimizer": {"name": "adam", "lr": 0.001},
            "epochs": epochs,
            "batch_size": 128,
            "device": device,
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        return [m.seconds for m in fit(spec, dataset=data, data_dir=Path(tmp)).run.history]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    data = dataset(args.images)
    cached = seconds_per_epoch(data, args.epochs, args.device, augment=False)
    full = seconds_per_epoch(data, 2, args.device, augment=True)
    later = statistics.mean(cached[1:])
    ratio = cached[0] / later
    print(f"ResNet-18, frozen backbone, {args.images} 64x64 RGB images, {args.epochs} epochs on {args.device}")
    print(f"  epoch 1 (features computed once):   {cached[0]:8.3f} s")
    print(f"  epochs 2..{args.epochs} (head only), mean:   {later:8.3f} s")
    print(f"  with augmentation (full backbone): {statistics.mean(full):8.3f} s per epoch")
    verdict = "MET" if ratio >= TARGET_LATER_OVER_FIRST else "MISSED"
    print(f"epoch 1 / epochs 2..{args.epochs}: {ratio:.1f}x (target >= {TARGET_LATER_OVER_FIRST:.0f}x) {verdict}")
    print(f"augmented epoch / cached epoch: {statistics.mean(full) / later:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Problems no single field of a spec shows: a model that does not suit its dataset or does not fit
its inputs, and data options the dataset cannot take. They need to know the dataset (DatasetInfo)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from models.spec.holdout import held_out
from models.spec.job import (
    CLASSIFICATION_ONLY,
    IMAGE_ONLY,
    REGRESSION_ONLY,
    ImageDatasetSpec,
    JobSpec,
    NormalizeSpec,
    SyntheticLinearSpec,
    SyntheticPolynomialSpec,
    _ImageOptions,
)


@dataclass(frozen=True)
class DatasetInfo:
    """What the spec checks need to know of a dataset without loading it."""

    task: Literal["classification", "regression"]
    input_shape: tuple[int, ...]
    outputs: int
    images: bool
    train_examples: int | None = None  # where it is known without loading the set (an upload's)


@dataclass(frozen=True)
class SpecProblem:
    """A cross-field problem in an otherwise well-formed spec, located like a pydantic error."""

    loc: tuple[str | int, ...]
    msg: str


def builtin_dataset_info(data) -> DatasetInfo | None:
    """Shape and task of a built-in dataset; None for uploaded ones (they live in the database)."""
    if isinstance(data, ImageDatasetSpec):
        shape = (3, 32, 32) if data.dataset == "cifar10" else (1, 28, 28)
        return DatasetInfo("classification", shape, 10, images=True)
    if isinstance(data, SyntheticLinearSpec):
        return DatasetInfo("regression", (len(data.true_w),), 1, images=False)
    if isinstance(data, SyntheticPolynomialSpec):
        return DatasetInfo("regression", (1,), 1, images=False)
    return None


def spec_problems(spec: JobSpec, info: DatasetInfo) -> list[SpecProblem]:
    """Problems no single field shows: a model that does not suit its dataset, or does not fit it."""
    from models.nets.archs import shape_problems  # models.nets.archs imports torch; keep this module light

    arch = spec.model.arch
    problems = []
    if arch in REGRESSION_ONLY and info.task != "regression":
        problems.append(
            SpecProblem(
                ("model", "arch"),
                f"{arch} is a regression model but {spec.data.dataset} "
                "is a classification dataset; use "
                + (
                    "softmax_regression, mlp, lenet, resnet18, pretrained or sequential"
                    if info.images
                    else "softmax_regression, mlp or sequential"
                ),
            )
        )
    if arch in CLASSIFICATION_ONLY and info.task != "classification":
        problems.append(
            SpecProblem(
                ("model", "arch"),
                f"{arch} is a classification model but {spec.data.dataset} "
                "is a regression dataset; use linear_regression, polynomial, mlp or sequential",
            )
        )
    if arch in IMAGE_ONLY and not info.images:
        problems.append(
            SpecProblem(
                ("model", "arch"),
                f"{arch} needs images, but {spec.data.dataset} holds "
                f"{info.input_shape[0]} numeric features per example",
            )
        )
    if arch == "polynomial" and info.input_shape != (1,):
        problems.append(
            SpecProblem(
                ("model", "arch"),
                f"polynomial needs a one-dimensional input; {spec.data.dataset} has {info.input_shape[0]} features",
            )
        )
    if getattr(spec.data, "resize", None) is not None and not info.images:
        problems.append(SpecProblem(("data", "resize"), "resize applies to image datasets only"))
    problems += _image_option_problems(spec, info)
    stopping = spec.early_stopping
    if stopping is not None:
        if stopping.metric.startswith("val_") and spec.data.val_fraction == 0:
            problems.append(
                SpecProblem(
                    ("early_stopping", "metric"), f"{stopping.metric} needs a validation split: set data.val_fraction"
                )
            )
        if stopping.metric.endswith("_acc") and info.task != "classification":
            problems.append(
                SpecProblem(("early_stopping", "metric"), f"{stopping.metric} needs a classification dataset")
            )
    if spec.schedule.name == "cosine" and spec.schedule.min_lr > spec.optimizer.lr:
        problems.append(
            SpecProblem(
                ("schedule", "min_lr"),
                f"min_lr {spec.schedule.min_lr:g} is above optimizer.lr {spec.optimizer.lr:g}: the cosine schedule "
                "would raise the learning rate; give a min_lr below lr",
            )
        )
    problems += _split_problems(spec, info)
    unfreeze = getattr(spec.model, "unfreeze_at_epoch", None)
    if unfreeze is not None and unfreeze > spec.epochs:
        problems.append(
            SpecProblem(
                ("model", "unfreeze_at_epoch"), f"unfreeze_at_epoch {unfreeze} is after the last epoch ({spec.epochs})"
            )
        )
    if not problems:
        problems += [SpecProblem(("model", *loc), msg) for loc, msg in shape_problems(spec, info)]
    return problems


def _split_problems(spec: JobSpec, info: DatasetInfo) -> list[SpecProblem]:
    """A validation split, or folds of what it leaves, that leave nothing to train on (as
    models/data/splits.py would find out in the worker)."""
    count = info.train_examples
    if count is None:
        return []
    if (limit := getattr(spec.data, "limit_train", None)) is not None:
        count = min(count, limit)
    fraction = spec.data.val_fraction
    if fraction > 0:
        if held_out(count, fraction) >= count:
            return [
                SpecProblem(
                    ("data", "val_fraction"),
                    f"{fraction:g} holds out all {count} training examples of {spec.data.dataset}, leaving none "
                    "to train on; hold out less",
                )
            ]
        count -= held_out(count, fraction)
    folds = spec.cross_validation.folds if spec.cross_validation else None
    if folds is not None and count < folds:
        left = f" that val_fraction {fraction:g} leaves" if fraction > 0 else ""
        return [
            SpecProblem(
                ("cross_validation", "folds"),
                f"{folds} folds need at least {folds} training examples; {spec.data.dataset} has {count}{left}",
            )
        ]
    return []


def _image_option_problems(spec: JobSpec, info: DatasetInfo) -> list[SpecProblem]:
    """Normalisation and augmentation that do not fit the dataset's channels or size."""
    data, problems = spec.data, []
    if not isinstance(data, _ImageOptions):
        return problems
    if not info.images:
        problems = []
        if isinstance(data.normalize, NormalizeSpec):
            problems.append(
                SpecProblem(
                    ("data", "normalize"),
                    f"{data.dataset} holds {info.input_shape[0]} numeric features per example: give normalize "
                    "dataset to standardise each column by its mean and std on the training split",
                )
            )
        if data.augment is not None:
            problems.append(
                SpecProblem(
                    ("data", "augment"),
                    f"augment applies to image datasets only; {data.dataset} holds "
                    f"{info.input_shape[0]} numeric features per example",
                )
            )
        return problems
    channels, height, width = info.input_shape
    if isinstance(data.normalize, NormalizeSpec) and len(data.normalize.mean) != channels:
        problems.append(
            SpecProblem(
                ("data", "normalize", "mean"),
                f"{data.dataset} has {channels} channel(s); give one mean and one std per channel",
            )
        )
    crop = data.augment.random_crop if data.augment else None
    if crop is not None and crop.size is not None and crop.size > min(height, width) + 2 * crop.padding:
        problems.append(
            SpecProblem(
                ("data", "augment", "random_crop", "size"),
                f"size {crop.size} is larger than the padded {height + 2 * crop.padding}x"
                f"{width + 2 * crop.padding} images of {data.dataset}",
            )
        )
    return problems

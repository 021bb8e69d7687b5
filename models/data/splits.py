"""Seeded splits of a training set: a held-out fraction, K folds, and a validation split that keeps
row indices (Rows) into a memory-mapped set rather than copying it."""

from __future__ import annotations

import torch

from models.data.dataset import Dataset, DatasetError
from models.data.rows import Rows
from models.spec.holdout import held_out


def holdout_split(n: int, fraction: float, seed: int, *, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held-out) indices of a seeded random split holding out `fraction` of n examples
    (at least one); `what` names the setting in the error when nothing would be left to train on."""
    held = held_out(n, fraction)
    if held >= n:
        raise DatasetError(f"{what} {fraction} leaves no training examples out of {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[held:], order[:held]


def stratified_holdout_split(
    labels: list[int], fraction: float, seed: int, *, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held-out) indices holding out `fraction` of each class's examples (at least one of
    each class that has two or more, none of a class's last one), so that no class goes untested;
    seeded like holdout_split, which it falls back on when every class has a single example."""
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    kept, held = [], []
    for label in sorted(by_class):
        rows = torch.tensor(by_class[label])[torch.randperm(len(by_class[label]), generator=generator)]
        count = min(len(rows) - 1, max(1, int(round(len(rows) * fraction))))
        held.append(rows[:count])
        kept.append(rows[count:])
    kept_all, held_all = torch.cat(kept), torch.cat(held)
    if len(held_all) == 0:  # one example of each class: as many as the plain split would take
        return holdout_split(len(labels), fraction, seed, what=what)

    def mix(rows: torch.Tensor) -> torch.Tensor:  # classes interleaved, as stored
        return rows[torch.randperm(len(rows), generator=generator)]

    return mix(kept_all), mix(held_all)


def split_validation(dataset: Dataset, fraction: float, seed: int) -> Dataset:
    """Hold out a seeded random fraction of the training set for validation."""
    if fraction <= 0:
        return dataset
    return with_validation(dataset, *holdout_split(len(dataset.x_train), fraction, seed, what="val_fraction"))


def kfold_indices(n: int, folds: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(train, validation) index pairs of a seeded K-fold split of n examples."""
    if n < folds:
        raise DatasetError(f"{folds}-fold cross-validation needs at least {folds} training examples, not {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    chunks = order.chunk(folds)
    return [(torch.cat([c for j, c in enumerate(chunks) if j != i]), chunks[i]) for i in range(folds)]


def with_validation(dataset: Dataset, train_idx: torch.Tensor, val_idx: torch.Tensor) -> Dataset:
    """The dataset with its training set split into the given train and validation rows (row
    indices into a memory-mapped set, copies of an in-memory one)."""
    x = dataset.x_train
    if dataset.mapped or isinstance(x, Rows):
        return dataset.replace(
            x_train=Rows(x, train_idx),
            y_train=dataset.y_train[train_idx],
            x_val=Rows(x, val_idx),
            y_val=dataset.y_train[val_idx],
        )
    return dataset.replace(
        x_train=x[train_idx], y_train=dataset.y_train[train_idx], x_val=x[val_idx], y_val=dataset.y_train[val_idx]
    )

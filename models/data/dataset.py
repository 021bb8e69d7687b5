"""The Dataset record every loader builds, and the error a loader raises."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from models.data.contract import InputContract
from models.data.rows import Rows
from models.spec.problems import DatasetInfo


class DatasetError(Exception):
    """The data a job asked for is missing or unreadable; the message says how to fix it."""

    reason = "invalid_data"


@dataclass
class Dataset:
    """Train and test tensors plus the input contract a predictor needs to treat new inputs the same way.

    Image inputs stay uint8 ([N, C, H, W]) and become float per batch by the contract; tabular
    inputs are float32 ([N, D]). Classification targets are int64 class indices, regression
    targets float32.
    """

    name: str
    task: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    contract: InputContract
    checksum: str
    x_val: torch.Tensor | Rows | None = None
    y_val: torch.Tensor | None = None
    mapped: bool = False  # the inputs are memory-mapped from a file: splits keep row indices, not copies

    @property
    def classes(self) -> tuple[str, ...] | None:
        return tuple(self.contract.classes) if self.contract.classes else None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def outputs(self) -> int:
        return len(self.classes) if self.classes else 1

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo(
            task=self.task, input_shape=self.input_shape, outputs=self.outputs, images=self.contract.images
        )

    @property
    def loss_scale(self) -> float:
        """What a loss on the targets as the network learns them is multiplied by to be in the
        target's own units (the mean squared error of a standardised target: target_std²)."""
        return self.contract.target_std**2 if self.contract.target_scaled else 1.0

    def to_float(self, x: torch.Tensor) -> torch.Tensor:
        """Convert a batch of stored inputs to the float tensor the model sees."""
        return self.contract.to_float(x) if x.dtype == torch.uint8 or not self.contract.images else x

    def replace(self, **changes) -> Dataset:
        return dataclasses.replace(self, **changes)

"""The job spec: what to train, on what data, with which optimizer, for how long.

Every field is validated and unknown keys are rejected, so a typo in a spec is a clear error
instead of a silently ignored option.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


Init = Literal["default", "normal", "xavier"]


class _ArchBase(StrictModel):
    init: Init = "default"
    init_std: Annotated[float, Field(gt=0, le=10)] = 0.01


class LinearRegressionSpec(_ArchBase):
    arch: Literal["linear_regression"]


class SoftmaxRegressionSpec(_ArchBase):
    arch: Literal["softmax_regression"]


class MLPSpec(_ArchBase):
    arch: Literal["mlp"]
    hidden: Annotated[list[Annotated[int, Field(ge=1, le=65536)]], Field(min_length=1, max_length=32)] = [256]
    activation: Literal["relu", "sigmoid", "tanh"] = "relu"
    dropout: Annotated[list[Annotated[float, Field(ge=0, lt=1)]], Field(max_length=32)] = []

    @field_validator("dropout", mode="before")
    @classmethod
    def _scalar_dropout(cls, value: object) -> object:
        """Accept one probability for all hidden layers."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return [value]
        return value

    @model_validator(mode="after")
    def _dropout_per_hidden_layer(self) -> MLPSpec:
        if len(self.dropout) == 1 and len(self.hidden) > 1:
            self.dropout = self.dropout * len(self.hidden)
        if self.dropout and len(self.dropout) != len(self.hidden):
            raise ValueError(
                f"dropout has {len(self.dropout)} entries but hidden has {len(self.hidden)} layers; "
                "give one probability per hidden layer or a single one for all"
            )
        return self


class LeNetSpec(_ArchBase):
    arch: Literal["lenet"]
    activation: Literal["sigmoid", "relu"] = "sigmoid"
    pool: Literal["avg", "max"] = "avg"


ModelSpec = Annotated[
    Union[LinearRegressionSpec, SoftmaxRegressionSpec, MLPSpec, LeNetSpec],
    Field(discriminator="arch"),
]

REGRESSION_ARCHS = frozenset({"linear_regression"})


class ImageDatasetSpec(StrictModel):
    dataset: Literal["fashion-mnist", "mnist"]
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.0
    limit_train: Annotated[int | None, Field(ge=1)] = None
    limit_test: Annotated[int | None, Field(ge=1)] = None


class SyntheticLinearSpec(StrictModel):
    dataset: Literal["synthetic-linear"]
    num_examples: Annotated[int, Field(ge=2, le=10_000_000)] = 1000
    num_test: Annotated[int, Field(ge=1, le=10_000_000)] = 1000
    true_w: Annotated[list[float], Field(min_length=1, max_length=4096)] = [2.0, -3.4]
    true_b: float = 4.2
    noise: Annotated[float, Field(ge=0)] = 0.01
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.0


DataSpec = Annotated[Union[ImageDatasetSpec, SyntheticLinearSpec], Field(discriminator="dataset")]

REGRESSION_DATASETS = frozenset({"synthetic-linear"})


class OptimizerSpec(StrictModel):
    name: Literal["sgd"] = "sgd"
    lr: Annotated[float, Field(gt=0, le=100)] = 0.1
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    weight_decay: Annotated[float, Field(ge=0, le=10)] = 0.0


class InitFromSpec(StrictModel):
    """Start from the weights of another job's checkpoint instead of a fresh initialisation."""

    job_id: Annotated[str, Field(pattern=r"^[0-9a-fA-F-]{36}$")]
    checkpoint: Literal["best", "last"] | Annotated[int, Field(ge=1)] = "last"


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class JobSpec(StrictModel):
    name: Annotated[str | None, Field(max_length=200)] = None
    model: ModelSpec
    data: DataSpec
    optimizer: OptimizerSpec = OptimizerSpec()
    epochs: Annotated[int, Field(ge=1, le=10_000)] = 10
    batch_size: Annotated[int, Field(ge=1, le=65536)] = 256
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] = 0
    device: str = "auto"
    init_from: InitFromSpec | None = None

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError("device must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return value

    @property
    def task(self) -> Literal["classification", "regression"]:
        return "regression" if self.model.arch in REGRESSION_ARCHS else "classification"


@dataclass(frozen=True)
class SpecProblem:
    """A cross-field problem in an otherwise well-formed spec, located like a pydantic error."""

    loc: tuple[str, ...]
    msg: str


def spec_problems(spec: JobSpec) -> list[SpecProblem]:
    """Problems that no single field shows: a model that does not suit its dataset."""
    problems = []
    data_is_regression = spec.data.dataset in REGRESSION_DATASETS
    if spec.task == "regression" and not data_is_regression:
        problems.append(SpecProblem(
            ("model", "arch"),
            f"{spec.model.arch} is a regression model but {spec.data.dataset} is a classification "
            "dataset; use softmax_regression, mlp or lenet",
        ))
    if spec.task == "classification" and data_is_regression:
        problems.append(SpecProblem(
            ("model", "arch"),
            f"{spec.model.arch} is a classification model but {spec.data.dataset} is a regression "
            "dataset; use linear_regression",
        ))
    return problems

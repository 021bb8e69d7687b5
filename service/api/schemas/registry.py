"""Schemas of the model registry: registering a version, moving an alias, models and their versions."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.spec.explain import JOB_ID_PATTERN
from service.api.schemas.predict import Threshold
from service.core.references import MODEL_NAME_PATTERN
from service.core.tables import ModelVersion

MAX_INT = 2**31 - 1  # what every database's INTEGER holds


class ModelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Annotated[str, Field(pattern=MODEL_NAME_PATTERN, description="lower-case letters, digits, . _ -")]
    job_id: Annotated[str, Field(pattern=JOB_ID_PATTERN, description="the job's id or a unique prefix of it")]
    checkpoint: Literal["best", "last"] | Annotated[int, Field(ge=1, le=MAX_INT)] = "best"
    threshold: Threshold | None = None


class AliasUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    version: Annotated[int, Field(ge=1, le=MAX_INT)]


class ModelVersionUpdate(BaseModel):
    """What can change on a registered version: its default threshold (null clears it)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    threshold: Threshold | None = None


class ModelVersionPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    version: int
    job_id: str | None  # None: imported (selector "import")
    epoch: int | None  # None: imported
    selector: str
    task: str
    classes: list[str] | None
    input_shape: list[int]
    metrics: dict | None
    threshold: float | None  # predict's default: labels below it are withheld
    created_at: datetime


class ModelVersionRegistered(ModelVersionPublic):
    """A version as registered: with what its callers see change (task, input, classes)."""

    warnings: list[str] = []


class ModelPublic(BaseModel):
    name: str
    versions: list[ModelVersionPublic]
    aliases: dict[str, int]
    latest_version: int


class AliasMoved(ModelPublic):
    """A model after an alias was set: with what the alias's callers see change (task, input, classes)."""

    warnings: list[str] = []


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int


def model_public(name: str, versions: list[ModelVersion], aliases: dict[str, int]) -> ModelPublic:
    return ModelPublic(
        name=name,
        versions=[ModelVersionPublic.model_validate(v) for v in versions],
        aliases=aliases,
        latest_version=versions[-1].version,
    )


class ParameterPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    shape: list[int]
    count: int
    values: list | float | None = Field(
        description="the numbers, nested as the tensor is; null past max_values (and each NaN or infinity as null)"
    )
    mean: float | None
    std: float | None = Field(description="of the values themselves (no Bessel correction)")
    min: float | None
    max: float | None
    norm: float | None = Field(description="L2")


class EstimationErrorPublic(BaseModel):
    """On synthetic data, learned by its one linear layer: the generating weights, and error = true - learned."""

    model_config = ConfigDict(from_attributes=True)

    weight: str
    bias: str
    true_w: list[float | None] | None = Field(description="null past max_values")
    true_b: float | None
    w_error: list[float | None] | None = Field(description="null past max_values")
    b_error: float | None
    w_error_norm: float | None = Field(description="L2")
    w_error_max: float | None = Field(description="the largest by absolute value")
    unfitted: int = Field(description="terms of the data's polynomial past the model's degree, compared as 0")


class ModelParametersPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    reference: str
    model: str
    job_id: str | None
    epoch: int | None
    total: int
    parameters: list[ParameterPublic]
    estimation_error: EstimationErrorPublic | None

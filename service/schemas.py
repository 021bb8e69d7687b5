"""Response schemas of the API, one family per resource, separate from the ORM tables."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class EpochMetricPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    epoch: int
    train_loss: float | None
    train_acc: float | None
    test_loss: float | None
    test_acc: float | None
    val_loss: float | None
    val_acc: float | None
    seconds: float | None
    samples_per_second: float | None
    lr: float | None
    recorded_at: datetime | None = None


class MetricsPublic(BaseModel):
    job_id: str
    epochs: list[EpochMetricPublic]


class CheckpointPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    epoch: int
    size_bytes: int
    metrics: dict | None
    created_at: datetime


class TransitionPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    at: datetime
    from_status: str | None
    to_status: str
    reason: str | None
    attempt: int
    detail: dict | None


class JobPublic(BaseModel):
    id: str
    name: str | None
    status: str
    reason: str | None
    error: str | None
    spec: dict
    task: str
    attempt: int
    epoch: int
    epochs: int
    progress: float
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    environment: dict | None
    latest_metrics: EpochMetricPublic | None
    best_checkpoint: CheckpointPublic | None
    transitions: list[TransitionPublic]
    cross_validation: dict | None = None


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class ClassScore(BaseModel):
    label: str
    index: int
    probability: float


class ImagePrediction(BaseModel):
    filename: str
    label: str
    index: int
    probability: float
    top_k: list[ClassScore]


class ValuesPrediction(BaseModel):
    """One row's prediction: `value` for regression; label, index, probability for classification."""

    value: float | list[float] | None = None
    label: str | None = None
    index: int | None = None
    probability: float | None = None
    top_k: list[ClassScore] | None = None


class ResolvedModel(BaseModel):
    reference: str
    job_id: str
    epoch: int
    name: str | None = None
    version: int | None = None
    task: str
    classes: list[str] | None
    input_shape: list[int]


class PredictResponse(BaseModel):
    model: ResolvedModel
    predictions: list[ImagePrediction] | list[ValuesPrediction]

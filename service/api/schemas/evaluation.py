"""Schemas of a job's evaluation report: how its model does on the test set, class by class."""

from __future__ import annotations

from dataclasses import asdict

from pydantic import BaseModel, Field

from models.inference.evaluation import Evaluation
from service.core.references import ResolvedCheckpoint


class EvaluatedModel(BaseModel):
    reference: str  # job:<id>: the checkpoint predict uses for it
    epoch: int


class ClassScoresPublic(BaseModel):
    label: str
    precision: float
    recall: float
    f1: float
    support: int  # test images of this class


class AveragePublic(BaseModel):
    precision: float
    recall: float
    f1: float
    support: int


class MistakePublic(BaseModel):
    index: int = Field(description="position in the job's test set")
    true_label: str
    predicted_label: str
    probability: float = Field(description="of the predicted label")
    image_url: str | None = Field(
        description="the test image as PNG; null for a model of numeric rows, and once the job's uploaded "
        "dataset is deleted"
    )


class ThresholdPublic(BaseModel):
    threshold: float
    coverage: float = Field(description="share of test images whose top probability is >= threshold")
    accuracy: float | None = Field(description="accuracy among those; null when none is")


class EvaluationPublic(BaseModel):
    job_id: str
    model: EvaluatedModel
    num_test: int
    accuracy: float
    top_k_accuracy: dict[int, float] = Field(
        description="k -> share of test images whose true class is among "
        "the k most probable; k = 1, 3, 5 below the number of classes"
    )
    classes: list[ClassScoresPublic]
    macro_avg: AveragePublic = Field(description="unweighted mean over every class")
    weighted_avg: AveragePublic = Field(description="mean over every class weighted by its support")
    confusion_matrix: list[list[int]] = Field(description="rows: true class, columns: predicted class")
    mistakes: list[MistakePublic] = Field(description="the most confident wrong predictions first")
    thresholds: list[ThresholdPublic]


def image_url_of(job_id: str, index: int) -> str:
    return f"/v1/jobs/{job_id}/test-images/{index}.png"


def evaluation_public(
    job_id: str, target: ResolvedCheckpoint, report: Evaluation, *, limit: int, images: bool = True
) -> EvaluationPublic:
    """The report as the API answers it: its first `limit` mistakes, each with its image's URL
    where `images` (not for a model of numeric rows, whose test examples are no images, nor once
    the test set is gone)."""
    data = asdict(report)
    data["mistakes"] = [
        {**m, "image_url": image_url_of(job_id, m["index"]) if images else None} for m in data["mistakes"][:limit]
    ]
    return EvaluationPublic(job_id=job_id, model=EvaluatedModel(reference=target.reference, epoch=target.epoch), **data)

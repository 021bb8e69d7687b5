"""Schemas of predict: numeric inputs, labelled predictions, and the model that answered."""

from __future__ import annotations

import json
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from models.inference.predictor import Prediction, Predictor
from service.core.references import ResolvedCheckpoint

THRESHOLD_DOC = (
    "0 to 1: a classification whose top probability is below it is withheld (label and index null, "
    "below_threshold true); a request's threshold overrides the registered version's default"
)
Threshold = Annotated[float, Field(ge=0, le=1, strict=True, description=THRESHOLD_DOC)]


MAX_ROWS = 10_000  # numeric rows one request predicts
MAX_TOP_K = 1000  # classes one answer lists at most (a model's classes, where it has fewer)


class PredictValues(BaseModel):
    """Numeric inputs for a model trained on tabular data (regression or classification)."""

    model_config = ConfigDict(strict=True)

    model: Annotated[str, Field(min_length=1, max_length=200)]
    inputs: Annotated[
        list[list[Annotated[float, Field(allow_inf_nan=False)]]], Field(min_length=1, max_length=MAX_ROWS)
    ]
    top_k: Annotated[int, Field(ge=1, le=MAX_TOP_K)] = 1
    threshold: Threshold | None = None  # classification only

    @field_validator("inputs", mode="before")
    @classmethod
    def _rows(cls, value):
        """The two shapes people send instead of rows, each said once (not an error per value)."""
        if not isinstance(value, list) or not value:
            return value
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            one = json.dumps(value[:8])[:-1] + (", ...]" if len(value) > 8 else "]")
            apart = ", ".join(f"[{json.dumps(v)}]" for v in value[:3]) + (", ..." if len(value) > 3 else "")
            raise PydanticCustomError(
                "rows",
                "inputs is a list of rows, each a list of numbers: [{one}] for one row, or [{apart}] for a "
                "model of one column",
                {"one": one, "apart": apart},
            )
        if any(isinstance(v, dict) for v in value):
            raise PydanticCustomError(
                "rows",
                "each row is a list of numbers in the model's column order, not an object of named values "
                "(predict's answer names the columns in model.columns)",
            )
        return value


class ClassScore(BaseModel):
    label: str
    index: int
    probability: float


class ImagePrediction(BaseModel):
    """label and index are null (below_threshold true) when probability, the top one, is below the threshold."""

    filename: str
    label: str | None
    index: int | None
    probability: float
    below_threshold: bool = False
    top_k: list[ClassScore]


class ValuesPrediction(BaseModel):
    """One row's prediction: `value` for regression; label, index, probability for classification."""

    value: float | list[float] | None = None
    label: str | None = None
    index: int | None = None
    probability: float | None = None
    below_threshold: bool | None = None  # classification: label and index withheld
    top_k: list[ClassScore] | None = None


class ResolvedModel(BaseModel):
    reference: str
    job_id: str | None  # None: weights imported from elsewhere
    epoch: int | None  # None: weights imported from elsewhere
    name: str | None = None
    version: int | None = None
    task: str
    classes: list[str] | None
    input_shape: list[int]
    columns: list[str] | None = None  # a model of a CSV: its inputs' columns, in the order a row gives them


class PredictResponse(BaseModel):
    model: ResolvedModel
    threshold: float | None = None  # the one applied: the request's, else the version's default
    predictions: list[ImagePrediction] | list[ValuesPrediction]


def resolved_model(target: ResolvedCheckpoint, predictor: Predictor) -> ResolvedModel:
    return ResolvedModel(
        reference=target.reference,
        job_id=target.job_id,
        epoch=target.epoch,
        name=target.name,
        version=target.version,
        task=predictor.task,
        classes=predictor.classes,
        input_shape=predictor.meta["input_shape"],
        columns=predictor.contract.columns,
    )


def image_answer(
    target: ResolvedCheckpoint,
    predictor: Predictor,
    filenames: list[str],
    results: list[Prediction],
    threshold: float | None = None,
) -> PredictResponse:
    """The answer for labelled images; `threshold` is the request's (the version's default otherwise)."""
    return PredictResponse(
        model=resolved_model(target, predictor),
        threshold=target.threshold_for(threshold),
        predictions=[
            ImagePrediction(
                filename=name,
                label=r.label,
                index=r.index,
                probability=r.probability,
                below_threshold=r.below_threshold,
                top_k=r.top_k,
            )
            for name, r in zip(filenames, results, strict=False)
        ],
    )


def values_answer(
    target: ResolvedCheckpoint, predictor: Predictor, outputs, top_k: int, threshold: float | None = None
) -> PredictResponse:
    """The answer for numeric rows; `threshold` is the request's (the version's default otherwise)."""
    if predictor.task == "regression":
        predictions = [ValuesPrediction(value=row[0] if len(row) == 1 else row) for row in outputs.tolist()]
        threshold = None
    else:
        threshold = target.threshold_for(threshold)
        predictions = [
            ValuesPrediction(
                label=r.label,
                index=r.index,
                probability=r.probability,
                below_threshold=r.below_threshold,
                top_k=r.top_k,
            )
            for r in predictor.label(outputs, top_k, threshold)
        ]
    return PredictResponse(model=resolved_model(target, predictor), threshold=threshold, predictions=predictions)

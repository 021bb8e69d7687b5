"""Schemas of uploaded datasets."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, field_validator


class DatasetPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    status: str  # processing (a large upload being decoded), ready or failed
    error: str | None = None
    kind: str | None
    task: str | None
    classes: list[str] | None
    input_shape: list[int] | None
    columns: list[str] | None = None  # a CSV's feature columns: the order a numeric row to predict takes
    color: str | None = None
    warnings: list[str] = []
    num_train: int | None
    num_test: int | None
    checksum: str | None
    size_bytes: int | None
    created_at: datetime

    @field_validator("warnings", mode="before")
    @classmethod
    def _none_is_empty(cls, value):
        return value or []


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    count: int

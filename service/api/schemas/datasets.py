"""Schemas of uploaded datasets."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, field_validator


class DatasetPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    kind: str
    task: str
    classes: list[str] | None
    input_shape: list[int]
    color: str | None = None
    warnings: list[str] = []
    num_train: int
    num_test: int
    checksum: str
    size_bytes: int
    created_at: datetime

    @field_validator("warnings", mode="before")
    @classmethod
    def _none_is_empty(cls, value):
        return value or []


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    count: int

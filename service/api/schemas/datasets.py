"""Schemas of uploaded datasets."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class DatasetPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    kind: str
    task: str
    classes: list[str] | None
    input_shape: list[int]
    num_train: int
    num_test: int
    checksum: str
    size_bytes: int
    created_at: datetime


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    count: int

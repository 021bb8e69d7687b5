"""Schemas of a job's pictures that are also served as data."""

from __future__ import annotations

from pydantic import BaseModel


class ConfusionPublic(BaseModel):
    job_id: str
    epoch: int
    classes: list[str]
    matrix: list[list[int]]  # matrix[true][predicted]
    accuracy: float

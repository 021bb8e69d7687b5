"""Schemas of the worker registry."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class DevicePublic(BaseModel):
    name: str
    kind: str  # cpu | cuda
    memory_bytes: int | None


class WorkerPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    host: str
    pid: int
    queues: list[str]
    devices: list[DevicePublic]
    torch: str
    cuda: str | None
    current_job: str | None
    started_at: datetime
    last_seen: datetime


class WorkersPublic(BaseModel):
    workers: list[WorkerPublic]
    count: int

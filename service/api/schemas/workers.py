"""Schemas of the worker registry."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict


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
    # Pretrained weights files it has on disk (TRAINYARD_WEIGHTS_DIR, $TORCH_HOME/hub/checkpoints).
    weights: Annotated[list[str], BeforeValidator(lambda value: value or [])] = []
    # Built-in datasets whose files it has (TRAINYARD_DATA_DIR), or all where it may download them.
    datasets: Annotated[list[str], BeforeValidator(lambda value: value or [])] = []
    # The CPU processes it gives one distributed job (a CUDA job gets one per GPU it has).
    processes: int | None = None
    # The URL of the store it reads and writes (a path is on its own machine); null from older workers.
    store: str | None = None
    same_store: bool | None = None  # whether that is the store of the API process that answered
    started_at: datetime
    last_seen: datetime


class WorkersPublic(BaseModel):
    workers: list[WorkerPublic]
    count: int
    store: str  # the URL of the store of the API process that answered
    store_problem: str | None = None  # why that store is not the service's (as /readyz says), if it is not

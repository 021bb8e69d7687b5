"""Device names ('auto', 'cpu', 'cuda', 'cuda:N') to torch devices, checked against this machine."""

from __future__ import annotations

import torch


class DeviceUnavailable(Exception):
    """The device asked for does not exist in this process."""


def resolve_device(name: str) -> torch.device:
    """Turn a device name into a torch device; 'auto' picks CUDA when present."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(f"device {name!r} was requested but this process has no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailable(
                f"device {name!r} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return device


def describe_devices() -> dict:
    """This process's compute devices and library versions, for the worker registry.

    Touches CUDA where there is a GPU: call it in a process of its own there (as
    service/core/worker_registry.py's probe_devices does), never in a worker's main process, whose
    pool processes are forked from it.
    """
    found = [{"name": "cpu", "kind": "cpu", "memory_bytes": None}]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            found.append(
                {"name": f"cuda:{index} {properties.name}", "kind": "cuda", "memory_bytes": properties.total_memory}
            )
    return {"devices": found, "torch": torch.__version__, "cuda": torch.version.cuda}

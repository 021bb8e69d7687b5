"""Decoded datasets on disk: one safetensors file, written as a stream and read lazily.

A decoded image set can be larger than memory. Writing streams each tensor into the file a chunk
at a time; reading maps each tensor's bytes (copy-on-write, so the file never changes) instead of
loading them, so a process holds only the pages a batch touches, which the kernel can drop again.
The files are ordinary safetensors files: `safetensors.safe_open` reads them too.
"""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import SAFETENSORS_DTYPES, write_safetensors

# The element types read_arrays maps, by their safetensors names.
_NUMPY = {
    SAFETENSORS_DTYPES[t]: n
    for t, n in (
        (torch.uint8, np.uint8),
        (torch.int64, np.int64),
        (torch.float32, np.float32),
        (torch.float64, np.float64),
    )
}


class StoredFileError(Exception):
    """A stored file is missing, truncated or not in the expected layout."""


def write_arrays(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> int:
    """Write tensors (in memory or memory-mapped) and string metadata as a safetensors file that
    read_arrays reads back, a chunk at a time, atomically; returns the file size."""
    for name, tensor in tensors.items():
        if SAFETENSORS_DTYPES.get(tensor.dtype) not in _NUMPY:
            raise StoredFileError(f"{name}: cannot store {tensor.dtype}")
    return write_safetensors(path, tensors, metadata)


def read_header(path: Path) -> tuple[dict, int]:
    """A safetensors file's header and where its data starts."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise StoredFileError(f"{path.name} is too short to be a safetensors file")
            (length,) = struct.unpack("<Q", raw)
            if length > 100 * 1024 * 1024:
                raise StoredFileError(f"{path.name} has an implausible header of {length} bytes")
            header = json.loads(fh.read(length))
    except FileNotFoundError:
        raise StoredFileError(f"{path.name} does not exist") from None
    except (OSError, ValueError) as exc:
        raise StoredFileError(f"{path.name} is not a readable safetensors file: {exc}") from None
    return header, 8 + length


def read_arrays(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of a safetensors file, memory-mapped copy-on-write, and its metadata."""
    header, start = read_header(path)
    size = path.stat().st_size
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = _NUMPY[entry["dtype"]], tuple(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise StoredFileError(f"{path.name}: tensor {name} has an unreadable entry") from None
        if start + end > size or end - begin != int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize:
            raise StoredFileError(f"{path.name}: tensor {name} does not fit the file (truncated?)")
        if begin == end:
            tensors[name] = torch.from_numpy(np.empty(shape, dtype=dtype))
            continue
        # Shared and read-only: pages come from the file's cache and are never the process's own
        # (a copy-on-write mapping would count its whole size against a job's memory budget).
        array = np.memmap(path, dtype=dtype, mode="r", offset=start + begin, shape=shape)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            tensors[name] = torch.from_numpy(array)
    return tensors, header.get("__metadata__") or {}

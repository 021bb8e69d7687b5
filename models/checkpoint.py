"""The checkpoint format: one safetensors file holding the weights, with JSON metadata in its header.

The metadata (spec, classes, input shape, input contract, epoch, metrics) makes a checkpoint
self-describing: a predictor rebuilds the network and its input pipeline from the file alone.
Nothing here unpickles: safetensors files hold plain tensors and strings only.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors.torch import load_file

FORMAT = "trainyard-checkpoint/1"
META_KEY = "trainyard"


class CheckpointError(Exception):
    """A checkpoint file is missing, unreadable or not one of ours."""


def checkpoint_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}.safetensors"


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A file to write that appears at `path` whole or not at all: a temporary file beside it,
    fsynced and renamed into place; removed if writing fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.uint16: "U16",
    torch.uint32: "U32",
    torch.uint64: "U64",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.complex64: "C64",
}
_CHUNK_BYTES = 16 * 1024 * 1024


def _layout(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Tensor names in file order: widest elements first, so every tensor starts aligned."""
    return sorted(tensors, key=lambda name: (-tensors[name].element_size(), name))


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> int:
    """Write tensors (on any device, in memory or memory-mapped) and string metadata as a
    safetensors file, atomically (temp file, fsync, rename); returns the file size.

    The file is written as a stream, a chunk at a time, never built in memory: what a job holds
    in weights and optimizer state it can store without holding it twice (safetensors' own `save`
    builds the whole file as bytes, about twice its size at its peak)."""
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name in _layout(tensors):
        tensor = tensors[name]
        if name == "__metadata__":
            raise ValueError("__metadata__ is the header's own key, not a tensor's name")
        if tensor.dtype not in SAFETENSORS_DTYPES:
            raise TypeError(f"{name}: safetensors cannot hold {tensor.dtype}")
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with atomic_file(path) as fh:
        fh.write(struct.pack("<Q", len(encoded)) + encoded)
        for name in _layout(tensors):
            tensor = tensors[name].detach().to("cpu")  # one tensor at a time off a GPU
            tensor = tensor.resolve_conj().resolve_neg()  # a lazy view's values, not its storage's
            raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
            for start in range(0, raw.size, _CHUNK_BYTES):
                fh.write(raw[start : start + _CHUNK_BYTES])
    return 8 + len(encoded) + offset


def write_checkpoint(path: Path, state_dict: dict[str, torch.Tensor], meta: dict) -> int:
    """Write weights + metadata atomically (temp file, fsync, rename); returns the file size."""
    return write_safetensors(path, state_dict, {META_KEY: json.dumps({"format": FORMAT, **meta})})


# safetensors' own bound on a header: a length beyond it is a corrupt or hostile file.
MAX_HEADER_BYTES = 100_000_000


def _header(raw: bytes) -> dict:
    """A safetensors header's JSON (UTF-8, as the format says); ValueError if it is not such a header."""
    header = json.loads(raw.decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    if not isinstance(header.get("__metadata__") or {}, dict):
        raise ValueError("__metadata__ is not an object")
    return header


def _data_bytes(header: dict) -> int:
    """How many bytes of tensor data the header's entries cover (the end of the last one)."""
    ends = [0]
    for name, entry in header.items():
        if name != "__metadata__":
            start, end = entry["data_offsets"]
            if not 0 <= start <= end:
                raise ValueError(f"tensor {name!r} has data offsets {start}..{end}")
            ends.append(end)
    return max(ends)


def _trainyard_meta(metadata: dict) -> dict | None:
    meta = json.loads(metadata[META_KEY]) if META_KEY in metadata else None
    return meta if isinstance(meta, dict) else None


def meta_in(data: bytes) -> dict | None:
    """trainyard's metadata in the header of safetensors bytes (a checkpoint or an export of one);
    None when the header holds none, or is not a safetensors header."""
    try:
        size = int.from_bytes(data[:8], "little")
        header = _header(data[8 : 8 + size]) if 0 < size <= len(data) - 8 else {}
        meta = _trainyard_meta(header.get("__metadata__") or {})
    except Exception:  # anything a hostile header can make json.loads raise, deep nesting included
        return None
    return meta if meta is not None and meta.get("format") == FORMAT else None


def read_meta(path: Path) -> dict:
    """Read only the metadata header of a checkpoint: its first bytes, not a mapping of the whole
    file (which would count toward a job's memory budget); a file whose length is not what its
    header says (cut short, or with bytes after) is refused, as safetensors refuses it."""
    try:
        with path.open("rb") as file:
            size = int.from_bytes(file.read(8), "little")
            if not 0 < size <= MAX_HEADER_BYTES:
                raise ValueError(f"its header length ({size}) is not a safetensors header's")
            raw = file.read(size)
            length = os.fstat(file.fileno()).st_size
        if len(raw) < size:
            raise ValueError("the file ends inside its header")
        header = _header(raw)
        described = 8 + size + _data_bytes(header)
        if described != length:
            raise ValueError(f"the file holds {length} bytes where its header describes {described}")
        meta = _trainyard_meta(header.get("__metadata__") or {})
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint {path.name} does not exist") from exc
    except Exception as exc:  # a malformed header can make json.loads raise almost anything
        raise CheckpointError(f"checkpoint {path.name} is not a readable safetensors file: {exc}") from exc
    if meta is None:
        raise CheckpointError(f"checkpoint {path.name} has no trainyard metadata")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path.name} has unknown format {meta.get('format')!r}")
    return meta


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Load weights (on the CPU) and metadata."""
    meta = read_meta(path)
    try:
        return load_file(str(path), device="cpu"), meta
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path.name} could not be loaded: {exc}") from exc

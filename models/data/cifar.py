"""CIFAR-10 from the layouts users already have under the data folder: torchvision's
`cifar-10-batches-py/` (pickled batches) or the binary `cifar-10-batches-bin/`.

The python layout is a pickle, and unpickling runs whatever the file asks for; the reader here
admits only the dicts, lists, bytes and numpy arrays those files hold and refuses anything else
before it runs.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from models.data.dataset import Dataset, DatasetError
from models.data.idx import idx_dataset, missing_builtin, try_download

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
PIXELS = 3 * 32 * 32
LAYOUTS = {
    "cifar-10-batches-py": {"train": TRAIN_BATCHES, "test": ("test_batch",), "meta": "batches.meta"},
    "cifar-10-batches-bin": {
        "train": tuple(f"{b}.bin" for b in TRAIN_BATCHES),
        "test": ("test_batch.bin",),
        "meta": "batches.meta.txt",
    },
}
MAX_BATCH_FILE_BYTES = 64 * 1024 * 1024  # a real batch is about 31 MB
# The only dtypes a CIFAR batch holds; never an object dtype, whose state numpy would trust.
_DTYPES = {"u1": np.uint8, "|u1": np.uint8, "i8": np.int64, "<i8": np.int64, "i4": np.int32, "<i4": np.int32}


class UnsafeData(DatasetError):
    """A data file asks to run code while it is read; nothing of it was run."""

    reason = "unsafe_data"


class _Dtype:
    """Stands in for numpy.dtype while unpickling: only the plain integer dtypes, state ignored."""

    def __init__(self, code, *_):
        if not isinstance(code, str) or code not in _DTYPES:
            raise UnsafeData(f"dtype {code!r} is not one a CIFAR-10 batch holds")
        self.dtype = np.dtype(_DTYPES[code])

    def __setstate__(self, state) -> None:
        pass  # numpy's own state (byte order, flags) is never handed to numpy


class _Array:
    """Stands in for a numpy array while unpickling; becomes one only from checked bytes."""

    def __init__(self, *_):
        self.array = None

    def __setstate__(self, state) -> None:
        try:
            _, shape, dtype, fortran, raw = state
        except (TypeError, ValueError):
            raise UnsafeData("an array's state is not (version, shape, dtype, order, bytes)") from None
        if (
            not isinstance(dtype, _Dtype)
            or not isinstance(raw, bytes)
            or not isinstance(shape, tuple)
            or not all(isinstance(d, int) and 0 <= d for d in shape)
        ):
            raise UnsafeData("an array holds something other than plain integers")
        if len(raw) != int(np.prod(shape, dtype=np.int64)) * dtype.dtype.itemsize:
            raise UnsafeData(f"an array of shape {shape} does not match its {len(raw)} bytes")
        self.array = np.frombuffer(raw, dtype=dtype.dtype).reshape(shape, order="F" if fortran else "C").copy()


def _from_buffer(buffer, dtype, shape, order="C") -> _Array:
    """numpy's protocol-5 pickling of an array, with the same checks as _Array."""
    array = _Array()
    array.__setstate__((1, shape, dtype, order == "F", bytes(buffer) if isinstance(buffer, bytearray) else buffer))
    return array


def _latin1(text, encoding="latin1") -> bytes:
    """_codecs.encode as Python 3 pickles bytes, and nothing else (other codecs can expand)."""
    if not isinstance(text, str) or encoding != "latin1":
        raise UnsafeData("a bytes object is encoded other than as latin1")
    return text.encode("latin1")


def _empty_bytes(*args) -> bytes:
    """bytes() as Python 3 pickles b"" at protocol 2, and nothing else."""
    if args:
        raise UnsafeData("bytes are built from something other than nothing")
    return b""


# What a CIFAR pickle may construct, each replaced by a stand-in that checks what it is given.
_ADMITTED = {
    ("numpy.core.multiarray", "_reconstruct"): _Array,
    ("numpy._core.multiarray", "_reconstruct"): _Array,
    ("numpy", "ndarray"): _Array,
    ("numpy", "dtype"): _Dtype,
    ("_codecs", "encode"): _latin1,
    ("numpy.core.numeric", "_frombuffer"): _from_buffer,
    ("numpy._core.numeric", "_frombuffer"): _from_buffer,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


class _PlainDataUnpickler(pickle.Unpickler):
    def __init__(self, fh, path: Path):
        super().__init__(fh, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in _ADMITTED:
            raise UnsafeData(
                f"{self.path} asks to run {module}.{name} while it is read; only plain data "
                "(dicts, lists, bytes, numpy arrays) is admitted, so the file was refused and "
                "nothing in it ran. Replace it with the original CIFAR-10 file"
            )
        return _ADMITTED[(module, name)]


def _plain(value):
    """The unpickled value with every array stand-in replaced by its array."""
    if isinstance(value, _Array):
        if value.array is None:
            raise UnsafeData("an array was never given its data")
        return value.array
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, (_Dtype,)):
        raise UnsafeData("a dtype stands where data belongs")
    return value


def read_plain_pickle(path: Path):
    """Unpickle a file that may hold only plain data (UnsafeData for anything else); numpy
    arrays are rebuilt from their checked bytes, never by numpy's own unpickling."""
    size = path.stat().st_size
    if size > MAX_BATCH_FILE_BYTES:
        raise DatasetError(f"{path} is {size} bytes; a CIFAR-10 batch is about 31 MB")
    try:
        return _plain(_PlainDataUnpickler(io.BytesIO(path.read_bytes()), path).load())
    except UnsafeData as exc:
        if str(exc).startswith(str(path)):
            raise
        raise UnsafeData(f"{path}: {exc}; the file was refused and nothing in it ran") from None
    except Exception as exc:  # truncated or not a pickle
        raise DatasetError(f"{path} is not a readable CIFAR-10 batch: {exc}") from None


def _key(batch: dict, name: str):
    for key in (name.encode(), name):
        if key in batch:
            return batch[key]
    raise DatasetError(f"a CIFAR-10 batch has no {name!r} entry")


def _python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = read_plain_pickle(path)
    if not isinstance(batch, dict):
        raise DatasetError(f"{path} is not a CIFAR-10 batch (a dict of data and labels)")
    data, labels = _key(batch, "data"), _key(batch, "labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        raise DatasetError(f"{path}: data must be uint8 [N, {PIXELS}]")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(data),):
        raise DatasetError(f"{path} holds {len(data)} images but {labels.size} labels")
    if labels.min(initial=0) < 0:
        raise DatasetError(f"{path} holds negative labels")
    return data.reshape(-1, 3, 32, 32), labels


def _binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % (PIXELS + 1):
        raise DatasetError(f"{path} holds {raw.size} bytes, not a whole number of {PIXELS + 1}-byte records")
    records = raw.reshape(-1, PIXELS + 1)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


def _classes(folder: Path, layout: dict) -> tuple[str, ...]:
    meta = folder / layout["meta"]
    if not meta.is_file():
        return CLASSES
    if meta.suffix == ".txt":
        names = [line.strip() for line in meta.read_text(errors="replace").splitlines() if line.strip()]
    else:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in _key(read_plain_pickle(meta), "label_names")]
    return tuple(names) if len(names) == len(CLASSES) else CLASSES


def _download(data_dir: Path) -> None:
    import torchvision.datasets

    torchvision.datasets.CIFAR10(root=str(data_dir), train=True, download=True)


def complete_layouts(data_dir: Path) -> list[str]:
    """The CIFAR-10 layouts (folders) whose every batch file is under data_dir."""
    return [
        folder
        for folder, layout in LAYOUTS.items()
        if all((data_dir / folder / name).is_file() for name in layout["train"] + layout["test"])
    ]


def load_cifar10(data_dir: Path, allow_download: bool = False) -> Dataset:
    """CIFAR-10 from the first complete layout under data_dir (downloading it when allowed)."""
    found = complete_layouts(data_dir)
    failed = None
    if not found and allow_download:
        failed = try_download(_download, data_dir)
        found = complete_layouts(data_dir)
    if not found:
        raise missing_builtin(
            "cifar10",
            "put torchvision's cifar-10-batches-py/ (data_batch_1..5, test_batch) or "
            f"the binary cifar-10-batches-bin/ (data_batch_1.bin..5, test_batch.bin) in "
            f"{data_dir}",
            failed,
        )
    folder = data_dir / found[0]
    layout = LAYOUTS[found[0]]
    read = _python_batch if found[0].endswith("-py") else _binary_batch
    arrays = {}
    for split in ("train", "test"):
        parts = [read(folder / name) for name in layout[split]]
        arrays[f"{split}_images"] = np.concatenate([images for images, _ in parts])
        arrays[f"{split}_labels"] = np.concatenate([labels for _, labels in parts])
    return idx_dataset(arrays, name="cifar10", classes=_classes(folder, layout))

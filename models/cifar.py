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

from models.data import Dataset, DatasetError, idx_dataset

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
PIXELS = 3 * 32 * 32
LAYOUTS = {
    "cifar-10-batches-py": {"train": TRAIN_BATCHES, "test": ("test_batch",), "meta": "batches.meta"},
    "cifar-10-batches-bin": {"train": tuple(f"{b}.bin" for b in TRAIN_BATCHES), "test": ("test_batch.bin",),
                             "meta": "batches.meta.txt"},
}
# What a CIFAR pickle may construct: numpy arrays (and their dtypes) and bytes written by Python 3.
_ADMITTED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class UnsafeData(DatasetError):
    """A data file asks to run code while it is read; nothing of it was run."""

    reason = "unsafe_data"


class _PlainDataUnpickler(pickle.Unpickler):
    def __init__(self, fh, path: Path):
        super().__init__(fh, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in _ADMITTED:
            raise UnsafeData(f"{self.path} asks to run {module}.{name} while it is read; only plain data "
                             "(dicts, lists, bytes, numpy arrays) is admitted, so the file was refused and "
                             "nothing in it ran. Replace it with the original CIFAR-10 file")
        return super().find_class(module, name)


def read_plain_pickle(path: Path):
    """Unpickle a file that may hold only plain data (UnsafeData for anything else)."""
    try:
        return _PlainDataUnpickler(io.BytesIO(path.read_bytes()), path).load()
    except UnsafeData:
        raise
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


def load_cifar10(data_dir: Path, allow_download: bool = False) -> Dataset:
    """CIFAR-10 from the first complete layout under data_dir (downloading it when allowed)."""
    def complete(folder: str) -> bool:
        layout = LAYOUTS[folder]
        return all((data_dir / folder / name).is_file() for name in layout["train"] + layout["test"])

    found = [folder for folder in LAYOUTS if complete(folder)]
    if not found and allow_download:
        _download(data_dir)
        found = [folder for folder in LAYOUTS if complete(folder)]
    if not found:
        raise DatasetError(
            f"dataset cifar10 not found: put torchvision's cifar-10-batches-py/ (data_batch_1..5, test_batch) "
            f"or the binary cifar-10-batches-bin/ (data_batch_1.bin..5, test_batch.bin) in {data_dir}, "
            "or set TRAINYARD_ALLOW_DOWNLOAD=true to download it")
    folder = data_dir / found[0]
    layout = LAYOUTS[found[0]]
    read = _python_batch if found[0].endswith("-py") else _binary_batch
    arrays = {}
    for split in ("train", "test"):
        parts = [read(folder / name) for name in layout[split]]
        arrays[f"{split}_images"] = np.concatenate([images for images, _ in parts])
        arrays[f"{split}_labels"] = np.concatenate([labels for _, labels in parts])
    return idx_dataset(arrays, name="cifar10", classes=_classes(folder, layout))

"""The IDX format (MNIST and Fashion-MNIST's files), the built-in IDX sets read from a data folder,
and image sets built from arrays keyed like its four files."""

from __future__ import annotations

import gzip
import hashlib
import io
from pathlib import Path

import numpy as np
import torch

from models.data.contract import InputContract
from models.data.dataset import Dataset, DatasetError

FASHION_MNIST_CLASSES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
MNIST_CLASSES = tuple(str(d) for d in range(10))

# IDX datasets: name -> (torchvision folder under the data dir, class names, torchvision class name)
IMAGE_DATASETS = {
    "fashion-mnist": ("FashionMNIST", FASHION_MNIST_CLASSES, "FashionMNIST"),
    "mnist": ("MNIST", MNIST_CLASSES, "MNIST"),
}
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (gzipped or not) into an array, checking its header against its size."""
    return parse_idx(path.read_bytes(), str(path))


def parse_idx(raw: bytes, path: str, max_bytes: int | None = None) -> np.ndarray:
    """Parse IDX bytes (gzipped or not); `path` names the file in errors."""
    if raw[:2] == b"\x1f\x8b":
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as fh:
                raw = fh.read(max_bytes + 1) if max_bytes else fh.read()
        except (OSError, EOFError) as exc:
            raise DatasetError(f"{path} is not a readable gzip file: {exc}") from exc
        if max_bytes and len(raw) > max_bytes:
            raise DatasetError(f"{path} decompresses to more than {max_bytes} bytes")
    dtype, dims, header = idx_header(raw, path, len(raw))
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def idx_header(head: bytes, path: str, size: int) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, dimensions, header length) of an IDX file of `size` bytes that starts with `head`
    (at least its header), checked against the size."""
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path} is not an IDX file (bad magic number)")
    dtype = np.dtype(_IDX_DTYPES[head[2]])
    ndim = head[3]
    header = 4 + 4 * ndim
    if len(head) < header:
        raise DatasetError(f"{path} is shorter than its header")
    dims = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if size != expected:
        raise DatasetError(f"{path} holds {size} bytes but its header {dims} needs {expected}")
    return dtype, dims, header


def _find_idx(raw_dir: Path, stem: str) -> Path | None:
    for candidate in (raw_dir / stem, raw_dir / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def try_download(download, *args) -> str | None:
    """Run a torchvision download; None when it worked, else why it did not, in one line."""
    try:
        download(*args)
    except Exception as exc:  # no network, a proxy, a mirror down, a bad checksum: all say "put the files there"
        return f"{type(exc).__name__}: {exc}".strip().splitlines()[0].rstrip(": ")[:300]
    return None


def missing_builtin(name: str, put: str, download_failed: str | None) -> DatasetError:
    """The error of a built-in dataset that is not on disk: where to put its files, and how a
    download went when one was tried."""
    if download_failed is None:
        return DatasetError(f"dataset {name} not found: {put}, or set TRAINYARD_ALLOW_DOWNLOAD=true to download it")
    return DatasetError(f"dataset {name} not found and its download failed ({download_failed}): {put}")


def _download(name: str, data_dir: Path) -> None:
    import torchvision.datasets

    cls = getattr(torchvision.datasets, IMAGE_DATASETS[name][2])
    cls(root=str(data_dir), train=True, download=True)


def idx_files(name: str, data_dir: Path) -> dict[str, Path | None]:
    """A built-in IDX dataset's four files under data_dir (None where one is missing)."""
    raw_dir = data_dir / IMAGE_DATASETS[name][0] / "raw"
    return {key: _find_idx(raw_dir, stem) for key, stem in IDX_FILES.items()}


def load_idx_dataset(name: str, data_dir: Path, allow_download: bool) -> Dataset:
    folder, classes, _ = IMAGE_DATASETS[name]
    raw_dir = data_dir / folder / "raw"
    paths = idx_files(name, data_dir)
    failed = None
    if any(p is None for p in paths.values()) and allow_download:
        failed = try_download(_download, name, data_dir)
        paths = idx_files(name, data_dir)
    missing = [IDX_FILES[key] for key, p in paths.items() if p is None]
    if missing:
        raise missing_builtin(
            name,
            f"put the four IDX files ({', '.join(IDX_FILES.values())}, gzipped or not) "
            f"in {raw_dir} (missing: {', '.join(missing)})",
            failed,
        )
    return idx_dataset({key: read_idx(p) for key, p in paths.items()}, name=name, classes=classes)


def idx_dataset(arrays: dict[str, np.ndarray], *, name: str, classes: tuple[str, ...] | None = None) -> Dataset:
    """Check the four image arrays (keys of IDX_FILES; uint8 [N, H, W] or [N, C, H, W]) and build a
    Dataset from them.

    Without `classes`, classes are named "0", "1", ... up to the largest label.
    """
    arrays = {key: a[:, None] if key.endswith("_images") and a.ndim == 3 else a for key, a in arrays.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 4 or images.shape[1] not in (1, 3) or images.dtype != np.uint8:
            raise DatasetError(
                f"{split} images must be uint8 [N, H, W] or [N, 1|3, H, W], not {images.dtype} {list(images.shape)}"
            )
        if labels.ndim != 1 or len(labels) != len(images):
            raise DatasetError(f"{split} split has {len(images)} images but {len(labels)} labels")
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise DatasetError("train and test images differ in size or channels")
    top = max(int(arrays[f"{split}_labels"].max(initial=0)) for split in ("train", "test"))
    if classes is None:
        classes = tuple(str(c) for c in range(top + 1))
    if top >= len(classes):
        raise DatasetError(f"labels go up to {top}; {name} has {len(classes)} classes")
    writable = {key: a if a.flags.writeable else np.array(a) for key, a in arrays.items()}  # parsed files are read-only
    return image_dataset(writable, name=name, classes=classes)


def array_digest(arrays: dict[str, np.ndarray], chunk_bytes: int = 16 * 1024 * 1024) -> str:
    """SHA-256 of the arrays' bytes in key order, read a chunk at a time (they may be memory-mapped)."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        array = arrays[key]
        rows = max(1, chunk_bytes // max(1, array[:1].nbytes)) if array.ndim else 1
        for start in range(0, max(len(array), 1) if array.ndim else 1, rows):
            digest.update(np.ascontiguousarray(array[start : start + rows] if array.ndim else array).tobytes())
    return digest.hexdigest()


def image_dataset(arrays: dict[str, np.ndarray], *, name: str, classes: tuple[str, ...]) -> Dataset:
    """A classification Dataset of checked uint8 images [N, C, H, W] and labels (keys of
    IDX_FILES), sharing the arrays' memory (in RAM or memory-mapped) rather than copying them."""
    channels, height, width = arrays["train_images"].shape[1:]
    return Dataset(
        name=name,
        task="classification",
        x_train=torch.from_numpy(arrays["train_images"]),
        y_train=torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        x_test=torch.from_numpy(arrays["test_images"]),
        y_test=torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        contract=InputContract.image(channels, height, width, classes),
        checksum=array_digest(arrays),
    )

"""Datasets as uint8 (images) or float (tables) tensors, decoded once per process and converted
to float per batch by their input contract."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.cache import LRU
from models.contract import InputContract
from models.spec import (
    DatasetInfo,
    DataSpec,
    ImageDatasetSpec,
    NormalizeSpec,
    SyntheticLinearSpec,
    SyntheticPolynomialSpec,
    UploadedDatasetSpec,
    UPLOADED_ID,
)

FASHION_MNIST_CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
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
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class DatasetError(Exception):
    """The data a job asked for is missing or unreadable; the message says how to fix it."""

    reason = "invalid_data"


class Rows:
    """Some rows of a tensor, gathered only when a batch asks for them: a validation split or a
    fold of a memory-mapped set without copying its training rows into memory. Indexing with a
    slice or an index tensor gives a tensor of those rows."""

    def __init__(self, base: torch.Tensor, index: torch.Tensor):
        if isinstance(base, Rows):  # rows of rows: one index into the same base
            base, index = base.base, base.index[index.to(base.index.device)]
        self.base, self.index = base, index.to(base.device)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key) -> torch.Tensor:
        return self.base[self.index[key]]

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.index), *self.base.shape[1:]))

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    def numel(self) -> int:
        return len(self.index) * int(np.prod(self.base.shape[1:]))

    def element_size(self) -> int:
        return self.base.element_size()

    def to(self, device, non_blocking: bool = False) -> Rows:
        return Rows(self.base.to(device, non_blocking=non_blocking), self.index)

    def pin_memory(self) -> Rows:
        return Rows(self.base.pin_memory(), self.index)


@dataclass
class Dataset:
    """Train and test tensors plus the input contract a predictor needs to treat new inputs the same way.

    Image inputs stay uint8 ([N, C, H, W]) and become float per batch by the contract; tabular
    inputs are float32 ([N, D]). Classification targets are int64 class indices, regression
    targets float32.
    """

    name: str
    task: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    contract: InputContract
    checksum: str
    x_val: torch.Tensor | Rows | None = None
    y_val: torch.Tensor | None = None
    mapped: bool = False  # the inputs are memory-mapped from a file: splits keep row indices, not copies

    @property
    def classes(self) -> tuple[str, ...] | None:
        return tuple(self.contract.classes) if self.contract.classes else None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def outputs(self) -> int:
        return len(self.classes) if self.classes else 1

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo(task=self.task, input_shape=self.input_shape, outputs=self.outputs,
                           images=self.contract.images)

    def to_float(self, x: torch.Tensor) -> torch.Tensor:
        """Convert a batch of stored inputs to the float tensor the model sees."""
        return self.contract.to_float(x) if x.dtype == torch.uint8 else x

    def replace(self, **changes) -> Dataset:
        return dataclasses.replace(self, **changes)


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
    dims = tuple(int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
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


def _load_idx_dataset(name: str, data_dir: Path, allow_download: bool) -> Dataset:
    folder, classes, _ = IMAGE_DATASETS[name]
    raw_dir = data_dir / folder / "raw"
    paths = {key: _find_idx(raw_dir, stem) for key, stem in IDX_FILES.items()}
    failed = None
    if any(p is None for p in paths.values()) and allow_download:
        failed = try_download(_download, name, data_dir)
        paths = {key: _find_idx(raw_dir, stem) for key, stem in IDX_FILES.items()}
    missing = [IDX_FILES[key] for key, p in paths.items() if p is None]
    if missing:
        raise missing_builtin(name, f"put the four IDX files ({', '.join(IDX_FILES.values())}, gzipped or not) "
                                    f"in {raw_dir} (missing: {', '.join(missing)})", failed)
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
            raise DatasetError(f"{split} images must be uint8 [N, H, W] or [N, 1|3, H, W], "
                               f"not {images.dtype} {list(images.shape)}")
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
            digest.update(np.ascontiguousarray(array[start:start + rows] if array.ndim else array).tobytes())
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


def synthetic_linear(spec: SyntheticLinearSpec, seed: int) -> Dataset:
    """y = Xw + b + noise with X ~ N(0, 1), as in the linear-regression chapter."""
    generator = torch.Generator().manual_seed(seed)
    w = torch.tensor(spec.true_w, dtype=torch.float32)
    total = spec.num_examples + spec.num_test
    x = torch.randn(total, len(w), generator=generator)
    y = x @ w + spec.true_b + torch.randn(total, generator=generator) * spec.noise
    y = y.unsqueeze(1)
    digest = hashlib.sha256(spec.model_dump_json().encode() + str(seed).encode()).hexdigest()
    n = spec.num_examples
    return Dataset(
        name=spec.dataset, task="regression",
        x_train=x[:n], y_train=y[:n], x_test=x[n:], y_test=y[n:],
        checksum=digest, contract=InputContract.tabular(len(w)),
    )


def synthetic_polynomial(spec: SyntheticPolynomialSpec, seed: int) -> Dataset:
    """y = sum_i c_i x^i / i! + noise with x ~ N(0, 1): the polynomial-fitting chapter's data."""
    generator = torch.Generator().manual_seed(seed)
    total = spec.n_train + spec.n_test
    x = torch.randn(total, 1, generator=generator, dtype=torch.float64)
    powers = torch.arange(len(spec.coefficients), dtype=torch.float64)
    features = x.pow(powers) / torch.exp(torch.lgamma(powers + 1))
    y = features @ torch.tensor(spec.coefficients, dtype=torch.float64)
    y = (y + torch.randn(total, generator=generator, dtype=torch.float64) * spec.noise).unsqueeze(1)
    x, y = x.float(), y.float()
    digest = hashlib.sha256(spec.model_dump_json().encode() + str(seed).encode()).hexdigest()
    n = spec.n_train
    return Dataset(
        name=spec.dataset, task="regression",
        x_train=x[:n], y_train=y[:n], x_test=x[n:], y_test=y[n:],
        checksum=digest, contract=InputContract.tabular(1),
    )


_STORED_TENSORS = ("x_train", "y_train", "x_test", "y_test")


def stored_dataset_path(datasets_dir: Path, dataset_id: str) -> Path:
    """Where an uploaded dataset's decoded tensors live."""
    return datasets_dir / f"{dataset_id}.safetensors"


def save_stored_dataset(path: Path, dataset: Dataset, extra: dict | None = None) -> int:
    """Write a decoded dataset as one safetensors file (tensors plus JSON metadata), atomically,
    streaming its tensors (which may be memory-mapped themselves) a chunk at a time."""
    from models.checkpoint import FORMAT, META_KEY
    from models.stored import write_arrays

    meta = {"format": FORMAT, "name": dataset.name, "task": dataset.task,
            "classes": list(dataset.classes) if dataset.classes else None,
            "checksum": dataset.checksum, "input": dataset.contract.to_json(), **(extra or {})}
    return write_arrays(path, {k: getattr(dataset, k) for k in _STORED_TENSORS}, {META_KEY: json.dumps(meta)})


def load_stored_dataset(path: Path) -> Dataset:
    """A dataset written by save_stored_dataset, its tensors memory-mapped: a set larger than
    memory trains batch by batch, holding only the pages its batches touch."""
    from models.checkpoint import FORMAT, META_KEY
    from models.stored import StoredFileError, read_arrays

    try:
        tensors, header = read_arrays(path)
        meta = json.loads(header[META_KEY])
        if meta.get("format") != FORMAT or not set(_STORED_TENSORS) <= tensors.keys():
            raise StoredFileError(f"{path.name} is not a stored dataset")
    except (StoredFileError, KeyError, ValueError) as exc:
        raise DatasetError(f"stored dataset {path.stem} cannot be read: {exc}") from None
    return Dataset(name=meta["name"], task=meta["task"], checksum=meta["checksum"], mapped=True,
                   contract=InputContract.from_meta(meta), **{k: tensors[k] for k in _STORED_TENSORS})


# Decoded datasets by their files' paths, times and sizes: a changed file on disk changes the key.
_decoded: LRU[Dataset] = LRU(4)


def _stamp(paths) -> tuple:
    return tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(paths) if p.is_file())


def _source_folders(name: str, data_dir: Path) -> list[Path]:
    """The folders whose files a built-in dataset is read from."""
    if name == "cifar10":
        from models.cifar import LAYOUTS

        return [data_dir / folder for folder in LAYOUTS]
    return [data_dir / IMAGE_DATASETS[name][0] / "raw"]


def _load_builtin(name: str, data_dir: Path, allow_download: bool) -> Dataset:
    if name == "cifar10":
        from models.cifar import load_cifar10

        return load_cifar10(data_dir, allow_download)
    return _load_idx_dataset(name, data_dir, allow_download)


def _cached_builtin_dataset(name: str, data_dir: Path, allow_download: bool, cache_dir: Path | None) -> Dataset:
    stamp = tuple(entry for folder in _source_folders(name, data_dir) if folder.is_dir()
                  for entry in _stamp(folder.glob("*")))

    def load() -> Dataset:
        # Decoding gzipped IDX files or CIFAR batches takes seconds for the full datasets; a
        # decoded copy on disk (named after the files' paths, sizes and times) loads in a fraction.
        if cache_dir is None or not stamp:
            return _load_builtin(name, data_dir, allow_download)
        key = hashlib.sha256(repr(stamp).encode()).hexdigest()[:16]
        path = Path(cache_dir) / f"{name}-{key}.safetensors"
        if path.is_file():
            try:
                return load_stored_dataset(path)
            except DatasetError:
                path.unlink(missing_ok=True)  # a damaged cache file is rebuilt
        dataset = _load_builtin(name, data_dir, allow_download)
        try:
            save_stored_dataset(path, dataset)
        except OSError:
            pass  # the cache is an optimisation; a read-only disk must not fail the job
        return dataset

    return _decoded.get_or_load((name, str(data_dir.resolve()), stamp), load)


def _cached_stored_dataset(path: Path) -> Dataset:
    if not path.is_file():
        raise DatasetError(f"uploaded dataset {path.stem} does not exist (deleted?)")
    return _decoded.get_or_load(("stored", _stamp([path])), lambda: load_stored_dataset(path))


def _subset(x: torch.Tensor, y: torch.Tensor, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    return (x, y) if limit is None else (x[:limit], y[:limit])


def holdout_split(n: int, fraction: float, seed: int, *, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held-out) indices of a seeded random split holding out `fraction` of n examples
    (at least one); `what` names the setting in the error when nothing would be left to train on."""
    held = max(1, int(round(n * fraction)))
    if held >= n:
        raise DatasetError(f"{what} {fraction} leaves no training examples out of {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[held:], order[:held]


def _split_validation(dataset: Dataset, fraction: float, seed: int) -> Dataset:
    """Hold out a seeded random fraction of the training set for validation."""
    if fraction <= 0:
        return dataset
    return with_validation(dataset, *holdout_split(len(dataset.x_train), fraction, seed, what="val_fraction"))


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of pixel / 255 over uint8 images [N, C, H, W],
    summed in float64 a chunk at a time (a whole set in float would be four times its size)."""
    if len(images) == 0:
        raise DatasetError("normalize: dataset needs training images to measure")
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk].to("cpu", torch.float64).div_(255)
        total += part.sum(dim=(0, 2, 3))
        squares += part.square().sum(dim=(0, 2, 3))
    count = images.numel() / images.shape[1]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-6)
    return mean.tolist(), std.tolist()


def _normalised(dataset: Dataset, normalize) -> Dataset:
    """The dataset whose contract carries the spec's normalisation (none leaves pixel / 255)."""
    if normalize in (None, "none") or not dataset.contract.images:
        return dataset
    if isinstance(normalize, NormalizeSpec):
        if len(normalize.mean) != dataset.contract.channels:
            raise DatasetError(f"normalize gives {len(normalize.mean)} means for {dataset.contract.channels} channel(s)")
        mean, std = normalize.mean, normalize.std
    else:
        mean, std = channel_stats(dataset.x_train)
    return dataset.replace(contract=dataset.contract.with_normalisation(mean, std))


def load_dataset(spec: DataSpec, *, data_dir: Path, datasets_dir: Path | None = None,
                 cache_dir: Path | None = None, allow_download: bool = False, seed: int = 0) -> Dataset:
    """Load the dataset a data spec names, with its validation split if it asks for one.

    `data_dir` holds the standard datasets; `datasets_dir` the uploaded ones, by id; `cache_dir`
    keeps decoded copies of the standard ones.
    """
    if isinstance(spec, SyntheticLinearSpec):
        dataset = synthetic_linear(spec, seed)
    elif isinstance(spec, SyntheticPolynomialSpec):
        dataset = synthetic_polynomial(spec, seed)
    elif isinstance(spec, (ImageDatasetSpec, UploadedDatasetSpec)):
        if isinstance(spec, UploadedDatasetSpec):
            if datasets_dir is None:
                raise DatasetError("uploaded datasets are not available here")
            if not UPLOADED_ID.match(spec.dataset_id):  # a name or prefix: only submission looks those up
                raise DatasetError(f"{spec.dataset} does not name a dataset by its id; submit the job through "
                                   "the API, which looks names and id prefixes up")
            full = _cached_stored_dataset(stored_dataset_path(Path(datasets_dir), spec.dataset_id))
        else:
            full = _cached_builtin_dataset(spec.dataset, Path(data_dir), allow_download, cache_dir)
        x_train, y_train = _subset(full.x_train, full.y_train, spec.limit_train)
        x_test, y_test = _subset(full.x_test, full.y_test, spec.limit_test)
        dataset = full.replace(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
        return _normalised(_split_validation(dataset, spec.val_fraction, seed), spec.normalize)
    else:
        raise DatasetError(f"unknown dataset {spec.dataset!r}")
    return _split_validation(dataset, spec.val_fraction, seed)


def kfold_indices(n: int, folds: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(train, validation) index pairs of a seeded K-fold split of n examples."""
    if n < folds:
        raise DatasetError(f"{folds}-fold cross-validation needs at least {folds} training examples, not {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    chunks = order.chunk(folds)
    return [(torch.cat([c for j, c in enumerate(chunks) if j != i]), chunks[i]) for i in range(folds)]


def with_validation(dataset: Dataset, train_idx: torch.Tensor, val_idx: torch.Tensor) -> Dataset:
    """The dataset with its training set split into the given train and validation rows (row
    indices into a memory-mapped set, copies of an in-memory one)."""
    x = dataset.x_train
    if dataset.mapped or isinstance(x, Rows):
        return dataset.replace(x_train=Rows(x, train_idx), y_train=dataset.y_train[train_idx],
                               x_val=Rows(x, val_idx), y_val=dataset.y_train[val_idx])
    return dataset.replace(x_train=x[train_idx], y_train=dataset.y_train[train_idx],
                           x_val=x[val_idx], y_val=dataset.y_train[val_idx])

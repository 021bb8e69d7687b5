"""The loader: the dataset a data spec names (built-in, uploaded or synthetic), decoded once per
process and kept on disk as uint8 (images) or float (tables) tensors, converted to float per batch
by their input contract; its validation split and normalisation as the spec asks."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch

from models.cache import LRU
from models.data.cifar import LAYOUTS, complete_layouts, load_cifar10
from models.data.contract import InputContract
from models.data.dataset import Dataset, DatasetError
from models.data.idx import IMAGE_DATASETS, idx_files, load_idx_dataset
from models.data.splits import split_validation
from models.data.synthetic import synthetic_linear, synthetic_polynomial
from models.spec.job import (
    UPLOADED_ID,
    DataSpec,
    ImageDatasetSpec,
    NormalizeSpec,
    SyntheticLinearSpec,
    SyntheticPolynomialSpec,
    UploadedDatasetSpec,
)

_STORED_TENSORS = ("x_train", "y_train", "x_test", "y_test")


def save_stored_dataset(path: Path, dataset: Dataset, extra: dict | None = None) -> int:
    """Write a decoded dataset as one safetensors file (tensors plus JSON metadata), atomically,
    streaming its tensors (which may be memory-mapped themselves) a chunk at a time."""
    from models.checkpoint import FORMAT, META_KEY
    from models.data.stored import write_arrays

    meta = {
        "format": FORMAT,
        "name": dataset.name,
        "task": dataset.task,
        "classes": list(dataset.classes) if dataset.classes else None,
        "checksum": dataset.checksum,
        "input": dataset.contract.to_json(),
        **(extra or {}),
    }
    return write_arrays(path, {k: getattr(dataset, k) for k in _STORED_TENSORS}, {META_KEY: json.dumps(meta)})


def load_stored_dataset(path: Path) -> Dataset:
    """A dataset written by save_stored_dataset, its tensors memory-mapped: a set larger than
    memory trains batch by batch, holding only the pages its batches touch."""
    from models.checkpoint import FORMAT, META_KEY
    from models.data.stored import StoredFileError, read_arrays

    try:
        tensors, header = read_arrays(path)
        meta = json.loads(header[META_KEY])
        if meta.get("format") != FORMAT or not set(_STORED_TENSORS) <= tensors.keys():
            raise StoredFileError(f"{path.name} is not a stored dataset")
    except (StoredFileError, KeyError, ValueError) as exc:
        raise DatasetError(f"stored dataset {path.stem} cannot be read: {exc}") from None
    return Dataset(
        name=meta["name"],
        task=meta["task"],
        checksum=meta["checksum"],
        mapped=True,
        contract=InputContract.from_meta(meta),
        **{k: tensors[k] for k in _STORED_TENSORS},
    )


# Decoded datasets by their files' paths, times and sizes: a changed file on disk changes the key.
_decoded: LRU[Dataset] = LRU(4)


def _stamp(paths) -> tuple:
    return tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(paths) if p.is_file())


def _source_folders(name: str, data_dir: Path) -> list[Path]:
    """The folders whose files a built-in dataset is read from."""
    if name == "cifar10":
        return [data_dir / folder for folder in LAYOUTS]
    return [data_dir / IMAGE_DATASETS[name][0] / "raw"]


def builtin_on_disk(name: str, data_dir: Path) -> bool:
    """Whether a built-in image dataset's files are all under data_dir."""
    if name == "cifar10":
        return bool(complete_layouts(data_dir))
    return all(path is not None for path in idx_files(name, data_dir).values())


BUILTIN_IMAGE_DATASETS = (*IMAGE_DATASETS, "cifar10")


def builtins_on_disk(data_dir: Path) -> list[str]:
    """The built-in image datasets whose files are all under data_dir."""
    return [name for name in BUILTIN_IMAGE_DATASETS if builtin_on_disk(name, data_dir)]


def _load_builtin(name: str, data_dir: Path, allow_download: bool) -> Dataset:
    if name == "cifar10":
        return load_cifar10(data_dir, allow_download)
    return load_idx_dataset(name, data_dir, allow_download)


def _kept(key: tuple, load, remember: bool) -> Dataset:
    """The decoded dataset under `key`, loaded if this process has none; kept for next time if `remember`."""
    if remember:
        return _decoded.get_or_load(key, load)
    found = _decoded.get(key)
    return found if found is not None else load()


def _cached_builtin_dataset(
    name: str, data_dir: Path, allow_download: bool, cache_dir: Path | None, remember: bool
) -> Dataset:
    stamp = tuple(
        entry for folder in _source_folders(name, data_dir) if folder.is_dir() for entry in _stamp(folder.glob("*"))
    )

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

    return _kept((name, str(data_dir.resolve()), stamp), load, remember)


def _cached_stored_dataset(path: Path, remember: bool) -> Dataset:
    if not path.is_file():
        raise DatasetError(f"the file of an uploaded dataset, {path}, does not exist")
    return _kept(("stored", _stamp([path])), lambda: load_stored_dataset(path), remember)


def _subset(x: torch.Tensor, y: torch.Tensor, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    return (x, y) if limit is None else (x[:limit], y[:limit])


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of pixel / 255 over uint8 images [N, C, H, W],
    summed in float64 a chunk at a time (a whole set in float would be four times its size)."""
    if len(images) == 0:
        raise DatasetError("normalize: dataset needs training images to measure")
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk].to("cpu", torch.float64).div_(255)
        total += part.sum(dim=(0, 2, 3))
        squares += part.square().sum(dim=(0, 2, 3))
    count = images.numel() / images.shape[1]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-6)
    return mean.tolist(), std.tolist()


def feature_stats(x, chunk: int = 65536) -> tuple[list[float], list[float]]:
    """Per-column mean and standard deviation of float rows [N, D] (a tensor or Rows), summed in
    float64 a chunk at a time; a constant column's std is 1 (it is centred, not scaled)."""
    if len(x) == 0:
        raise DatasetError("normalize: dataset needs training rows to measure")
    total = squares = None
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk].to("cpu", torch.float64)
        total = part.sum(dim=0) if total is None else total + part.sum(dim=0)
        squares = part.square().sum(dim=0) if squares is None else squares + part.square().sum(dim=0)
    mean = total / len(x)
    std = (squares / len(x) - mean.square()).clamp_min(0).sqrt()
    return mean.tolist(), torch.where(std > 1e-12, std, 1.0).tolist()


def _normalised(dataset: Dataset, normalize) -> Dataset:
    """The dataset whose contract carries the spec's normalisation (none leaves pixel / 255, and
    a tabular set's columns as they are; dataset standardises those per column)."""
    if normalize in (None, "none"):
        return dataset
    if not dataset.contract.images:
        if normalize != "dataset":
            raise DatasetError("normalize for numeric features is dataset (each column's mean and std)")
        contract = dataset.contract.with_normalisation(*feature_stats(dataset.x_train))
        if dataset.task == "regression":  # its target too: a price in the thousands trains as one near 0
            (mean,), (std,) = feature_stats(dataset.y_train.reshape(len(dataset.y_train), 1))
            contract = contract.with_target_scale(mean, std)
        return dataset.replace(contract=contract)
    if isinstance(normalize, NormalizeSpec):
        if len(normalize.mean) != dataset.contract.channels:
            raise DatasetError(
                f"normalize gives {len(normalize.mean)} means for {dataset.contract.channels} channel(s)"
            )
        mean, std = normalize.mean, normalize.std
    else:
        mean, std = channel_stats(dataset.x_train)
    return dataset.replace(contract=dataset.contract.with_normalisation(mean, std))


def load_dataset(
    spec: DataSpec,
    *,
    data_dir: Path,
    stored_dataset: Callable[[str], Path] | None = None,
    cache_dir: Path | None = None,
    allow_download: bool = False,
    seed: int = 0,
    remember: bool = True,
) -> Dataset:
    """Load the dataset a data spec names, with its validation split if it asks for one.

    `data_dir` holds the standard datasets; `stored_dataset(id)` is the local file of an uploaded
    one (written by save_stored_dataset; DatasetError if it cannot be had); `cache_dir`
    keeps decoded copies of the standard ones. A decoded image set is kept in this process for the
    next call unless `remember` is false (a caller that reads it once, such as an evaluation).
    """
    if isinstance(spec, SyntheticLinearSpec):
        dataset = synthetic_linear(spec, seed)
    elif isinstance(spec, SyntheticPolynomialSpec):
        dataset = synthetic_polynomial(spec, seed)
    elif isinstance(spec, (ImageDatasetSpec, UploadedDatasetSpec)):
        if isinstance(spec, UploadedDatasetSpec):
            if stored_dataset is None:
                raise DatasetError("uploaded datasets are not available here")
            if not UPLOADED_ID.match(spec.dataset_id):  # a name or prefix: only submission looks those up
                raise DatasetError(
                    f"{spec.dataset} does not name a dataset by its id; submit the job through "
                    "the API, which looks names and id prefixes up"
                )
            full = _cached_stored_dataset(stored_dataset(spec.dataset_id), remember)
        else:
            full = _cached_builtin_dataset(spec.dataset, Path(data_dir), allow_download, cache_dir, remember)
        x_train, y_train = _subset(full.x_train, full.y_train, spec.limit_train)
        x_test, y_test = _subset(full.x_test, full.y_test, spec.limit_test)
        dataset = full.replace(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
        return _normalised(split_validation(dataset, spec.val_fraction, seed), spec.normalize)
    else:
        raise DatasetError(f"unknown dataset {spec.dataset!r}")
    return split_validation(dataset, spec.val_fraction, seed)

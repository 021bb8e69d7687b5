"""Small, learnable stand-ins for the real datasets, written in their real on-disk formats."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image

NUM_CLASSES = 10


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> Path:
    """Write a uint8 array as an IDX file, as the MNIST distributions do."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload, compresslevel=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


def class_images(labels: np.ndarray, rng: np.random.Generator, size: int = 28) -> np.ndarray:
    """One bright 6x6 square per class at a class-specific place, on a noisy dark background."""
    images = rng.integers(0, 60, size=(len(labels), size, size), dtype=np.int64)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 5)
        top, left = 4 + row * 12 + int(rng.integers(-1, 2)), 1 + col * 5 + int(rng.integers(0, 2))
        images[i, top:top + 6, left:left + 5] += 180
    return np.clip(images, 0, 255).astype(np.uint8)


def make_idx_dataset(root: Path, folder: str = "FashionMNIST", *, n_train: int = 600, n_test: int = 200,
                     seed: int = 0, gz: bool = True) -> Path:
    """Write the four IDX files under root/folder/raw and return that raw folder."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % NUM_CLASSES).astype(np.uint8)
        rng.shuffle(labels)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", class_images(labels, rng), gz=gz)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, gz=gz)
    return raw


def class_png(path: Path, label: int, *, seed: int = 1, size: int = 28, mode: str = "L") -> Path:
    """A PNG (or other format by suffix) of one image of the given class."""
    image = class_images(np.array([label]), np.random.default_rng(seed), size=size)[0]
    Image.fromarray(image, mode="L").convert(mode).save(path)
    return path


def zip_bytes(files: dict[str, bytes]) -> bytes:
    """A zip archive holding the given paths and contents."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def png_bytes(label: int, *, seed: int, size: int = 28, mode: str = "L") -> bytes:
    import io

    image = Image.fromarray(class_images(np.array([label]), np.random.default_rng(seed), size=size)[0], mode="L")
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def image_folder_zip(classes: list[str], *, per_class: int = 30, test_per_class: int = 8, top: str = "") -> bytes:
    """train/<class>/*.png and test/<class>/*.png, class i drawn like dataset label i."""
    files = {}
    for index, name in enumerate(classes):
        for i in range(per_class):
            files[f"{top}train/{name}/{i}.png"] = png_bytes(index, seed=1000 * index + i)
        for i in range(test_per_class):
            files[f"{top}test/{name}/{i}.png"] = png_bytes(index, seed=50_000 + 1000 * index + i)
    return zip_bytes(files)

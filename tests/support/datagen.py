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
        images[i, top : top + 6, left : left + 5] += 180
    return np.clip(images, 0, 255).astype(np.uint8)


def make_idx_dataset(
    root: Path, folder: str = "FashionMNIST", *, n_train: int = 600, n_test: int = 200, seed: int = 0, gz: bool = True
) -> Path:
    """Write the four IDX files under root/folder/raw and return that raw folder."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % NUM_CLASSES).astype(np.uint8)
        rng.shuffle(labels)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", class_images(labels, rng), gz=gz)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, gz=gz)
    return raw


def idx_files(folder: Path) -> dict[str, bytes]:
    """The four IDX files of 40 training and 10 test images of 4 classes, gzipped, as archive members."""
    rng = np.random.default_rng(0)
    files = {}
    for prefix, n in (("train", 40), ("t10k", 10)):
        labels = (np.arange(n) % 4).astype(np.uint8)
        for kind, array in (("images-idx3-ubyte", class_images(labels, rng)), ("labels-idx1-ubyte", labels)):
            path = write_idx(folder / f"{prefix}-{kind}", array, gz=True)
            files[f"raw/{prefix}-{kind}.gz"] = path.read_bytes()
    return files


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


def colour_images(labels: np.ndarray, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """uint8 [N, 3, size, size]: class c is a shape in one of 10 colours of equal luminance
    (grey alone cannot tell the classes apart), at a random place on a noisy dark background."""
    hues = np.linspace(0, 2 * np.pi, NUM_CLASSES, endpoint=False)
    luma = np.array([0.299, 0.587, 0.114])
    u = np.cross(luma, [0.0, 0.0, 1.0])
    v = np.cross(luma, u)
    u, v = u / np.linalg.norm(u), v / np.linalg.norm(v)
    images = rng.integers(0, 30, size=(len(labels), 3, size, size), dtype=np.int64)
    for i, label in enumerate(labels):
        # Colours around a circle in the plane orthogonal to the luma axis: equal brightness.
        angle = hues[int(label) % NUM_CLASSES]
        colour = 128 + 90 * (np.cos(angle) * u + np.sin(angle) * v)
        top, left = rng.integers(0, size // 2, size=2)
        images[i, :, top : top + size // 2, left : left + size // 2] = colour.round().astype(np.int64)[:, None, None]
    return np.clip(images, 0, 255).astype(np.uint8)


def make_cifar10(root: Path, layout: str = "py", *, per_batch: int = 40, n_test: int = 60, seed: int = 0) -> Path:
    """CIFAR-10 stand-ins in torchvision's cifar-10-batches-py/ (pickled dicts of numpy arrays,
    as the real files) or the binary cifar-10-batches-bin/ layout; returns the folder."""
    import pickle

    rng = np.random.default_rng(seed)
    folder = root / f"cifar-10-batches-{layout}"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        labels = (np.arange(n) % NUM_CLASSES).astype(np.uint8)
        rng.shuffle(labels)
        images = colour_images(labels, rng)
        if layout == "py":
            batch = {
                b"batch_label": name.encode(),
                b"labels": labels.tolist(),
                b"data": images.reshape(n, -1),
                b"filenames": [f"{i}.png".encode() for i in range(n)],
            }
            (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        else:
            (folder / f"{name}.bin").write_bytes(
                np.concatenate([labels[:, None], images.reshape(n, -1)], axis=1).tobytes()
            )
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    if layout == "py":
        (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in classes]}, protocol=2))
    else:
        (folder / "batches.meta.txt").write_text("\n".join(classes) + "\n")
    return folder

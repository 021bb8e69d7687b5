"""Uploaded datasets: a zip archive of an image-folder tree, the four IDX files, or a CSV, decoded
into a Dataset after checking that the archive is safe and complete.

Nothing is extracted to disk: members are read into memory with size caps, so a zip bomb or a
member named `../../etc/passwd` can do no harm beyond being refused. What archiving tools and
notebooks add (`__MACOSX/`, `.ipynb_checkpoints/`, dotfiles, `Thumbs.db`) is skipped.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import shutil
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Literal

import numpy as np
import torch

from models.data.contract import InputContract
from models.data.dataset import Dataset, DatasetError
from models.data.idx import IDX_FILES, idx_dataset, idx_header, image_dataset, parse_idx
from models.data.image import ImageError, is_grey, open_image, pixels_of
from models.data.splits import holdout_split, stratified_holdout_split

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
SKIPPED_FOLDERS = frozenset({"__MACOSX", ".ipynb_checkpoints"})
SKIPPED_FILES = frozenset({"thumbs.db", "desktop.ini"})
ColorMode = Literal["auto", "rgb", "grayscale"]
IMBALANCE_WARNING = 10  # warn when the largest class has more than this many times the images of the smallest
DEFAULT_TEST_FRACTION = 0.2  # held out for testing from an archive without a test split
ELONGATED = 2  # warn when image_size squashes images whose long side is more than this many times the short


class ArchiveError(DatasetError):
    """The upload is not a usable dataset archive; the message says what to fix."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 100_000
    max_total_bytes: int = 2 * 1024**3
    max_member_bytes: int = 256 * 1024**2
    max_ratio: int = 200
    max_image_pixels: int = 4096 * 4096
    max_decoded_bytes: int = 8 * 1024**3  # what the images of one upload may decode to


@dataclass
class DecodedUpload:
    kind: str  # image_folder | idx | csv
    dataset: Dataset
    color: str | None = None  # rgb | grayscale for images
    warnings: list[str] = field(default_factory=list)
    cleanup: Callable[[], None] = lambda: None  # removes decoding files once the dataset is written out


def _skipped(parts: tuple[str, ...]) -> bool:
    return any(part in SKIPPED_FOLDERS or part.startswith(".") for part in parts) or parts[-1].lower() in SKIPPED_FILES


def _safe_members(archive: zipfile.ZipFile, limits: ArchiveLimits) -> tuple[dict[str, zipfile.ZipInfo], set[str]]:
    """Member files by normalised path, refusing unsafe names and bomb-like sizes; and the folders
    the archive names (a folder entry with nothing in it is one of them)."""
    members: dict[str, zipfile.ZipInfo] = {}
    folders: set[str] = set()
    infos = archive.infolist()
    if len(infos) > limits.max_members:
        raise ArchiveError(f"the archive has {len(infos)} entries; the limit is {limits.max_members}")
    total = 0
    for info in infos:
        name = info.filename
        if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
            raise ArchiveError(f"unsafe path in archive: {name!r}")
        parts = PurePosixPath(name).parts
        if ".." in parts:
            raise ArchiveError(f"unsafe path in archive: {name!r}")
        if _skipped(parts):
            continue
        if info.is_dir():
            folders.add("/".join(parts))
            continue
        if info.flag_bits & 0x1:
            raise ArchiveError(f"{name}: encrypted members are not supported")
        if info.file_size > limits.max_member_bytes:
            raise ArchiveError(f"{name} is {info.file_size} bytes uncompressed; the limit is {limits.max_member_bytes}")
        if info.compress_size and info.file_size / info.compress_size > limits.max_ratio:
            raise ArchiveError(f"{name} expands {info.file_size // info.compress_size}x; refusing a likely zip bomb")
        total += info.file_size
        if total > limits.max_total_bytes:
            raise ArchiveError(f"the archive expands to more than {limits.max_total_bytes} bytes")
        members["/".join(parts)] = info
    if not members:
        raise ArchiveError("the archive holds no files")
    folders |= {
        "/".join(PurePosixPath(path).parts[:depth]) for path in members for depth in range(1, path.count("/") + 1)
    }
    # A single top-level folder (zipping "mydata/") is not part of the layout, unless it holds the
    # images themselves: then it is the one class of a dataset that has only one.
    tops = {path.split("/", 1)[0] for path in members}
    if len(tops) == 1 and not tops & {"train", "test"} and all("/" in path for path in members):
        inner = [path.split("/", 1)[1] for path in members]
        if not all("/" not in path and PurePosixPath(path).suffix.lower() in IMAGE_SUFFIXES for path in inner):
            members = {path.split("/", 1)[1]: info for path, info in members.items()}
            folders = {folder.split("/", 1)[1] for folder in folders if "/" in folder}
    return members, folders


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limits: ArchiveLimits) -> bytes:
    """A member's bytes, never more than its declared size (headers can lie)."""
    with archive.open(info) as fh:
        data = fh.read(min(info.file_size, limits.max_member_bytes) + 1)
    if len(data) > info.file_size:
        raise ArchiveError(f"{info.filename} is larger than its header says")
    return data


def decode_archive(
    data: bytes | BinaryIO,
    *,
    name: str,
    test_fraction: float | None = None,
    image_size: int | None = None,
    seed: int = 0,
    color: ColorMode = "auto",
    min_per_class: int = 5,
    limits: ArchiveLimits = ArchiveLimits(),
    workdir: Path | None = None,
    csv_target: CsvTarget | None = None,
    classes: tuple[str, ...] | None = None,
) -> DecodedUpload:
    """Check and decode an uploaded zip (bytes, or a seekable file, read member by member) into a
    Dataset (image folders, IDX files or CSV).

    Image folders keep RGB when `color` is auto and any image has colour (or when it is rgb),
    and become grey (ITU-R 601-2 luma) when none has or it is grayscale. With `workdir`, decoded
    images go to memory-mapped files there, image by image (the caller writes the dataset out,
    then calls `cleanup` on the result). A CSV's target is the column `csv_target` names, else
    the one called label (classification) or target (regression). `classes` names IDX files' labels
    0, 1, ... (image folders and a CSV's labels name their own). `test_fraction` (default 0.2) splits
    an archive that has no test split of its own, and is refused for one that has."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data)
    except zipfile.BadZipFile:
        raise _not_a_zip(data) from None
    arrays = _Arrays(workdir)
    try:
        decoded = _decode_members(
            archive, name, test_fraction, image_size, seed, color, min_per_class, limits, arrays, csv_target, classes
        )
    except BaseException:
        arrays.remove()
        raise
    decoded.cleanup = arrays.remove
    return decoded


KIND_NAMES = {
    "csv": "a CSV of numeric columns",
    "idx": "IDX files of 28x28 grey images",
    "image_folder": "a folder of images",
}


@dataclass(frozen=True)
class CsvTarget:
    """The column a CSV's examples are labelled by, named at upload: its classes (`label_column`)
    or the value a regression learns (`target_column`)."""

    column: str
    task: Literal["classification", "regression"]

    @property
    def field(self) -> str:
        return "label_column" if self.task == "classification" else "target_column"


def _uses_every_option(
    kind: str,
    *,
    image_size: int | None,
    color: ColorMode,
    csv_target: CsvTarget | None,
    classes: tuple | None,
    test_fraction: float | None,
) -> None:
    """ArchiveError for an option the archive's kind has no use for: it would be silently ignored."""
    if kind == "idx" and test_fraction is not None:
        _split_of_its_own("IDX files, whose t10k files are the test split")
    if classes is not None and kind != "idx":
        raise ArchiveError(
            f"classes names IDX files' labels 0, 1, ...; this archive holds {KIND_NAMES[kind]}, which name their "
            "own classes: leave it out"
        )
    if csv_target is not None and kind != "csv":
        raise ArchiveError(
            f"{csv_target.field} names a CSV's column; this archive holds {KIND_NAMES[kind]}: leave it out"
        )
    if kind == "image_folder":
        return
    for option, given in (("image_size", image_size is not None), ("color", color != "auto")):
        if given:
            raise ArchiveError(
                f"{option} applies to a folder of images; this archive holds {KIND_NAMES[kind]}: leave it out"
            )


def _split_of_its_own(what: str) -> None:
    raise ArchiveError(f"test_fraction splits an archive without a test split; this one holds {what}: leave it out")


def _test_fraction(given: float | None, split_given: bool, what: str) -> float:
    """The share held out for testing: the one given, or the default; refused where the archive has
    its own test split (`split_given`), which it would not change."""
    if given is not None and split_given:
        _split_of_its_own(what)
    return DEFAULT_TEST_FRACTION if given is None else given


def check_archive(data: BinaryIO, limits: ArchiveLimits = ArchiveLimits()) -> int:
    """The checks that need only the zip's directory (unsafe names, bomb-like sizes, encryption),
    without reading a member; returns what the members add up to uncompressed."""
    try:
        with zipfile.ZipFile(data) as archive:
            return sum(info.file_size for info in _safe_members(archive, limits)[0].values())
    except zipfile.BadZipFile:
        raise _not_a_zip(data) from None
    finally:
        data.seek(0)


# What a file is that is not a zip, by its first bytes (a tar has "ustar" at offset 257).
OTHER_ARCHIVES = (
    (b"\x1f\x8b", "a gzip file (.gz or .tar.gz)"),
    (b"BZh", "a bzip2 file (.bz2 or .tar.bz2)"),
    (b"\xfd7zXZ\x00", "an xz file (.xz or .tar.xz)"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"(\xb5/\xfd", "a zstd file (.zst)"),
)
MAKE_A_ZIP = (
    "trainyard takes zip archives: make one with `zip -r data.zip train test` (or "
    "`python -m zipfile -c data.zip train test`) and upload that"
)


CSV_SNIFF_BYTES = 4096  # of an upload that is not a zip, read to tell what it is


def _not_a_zip(data: bytes | BinaryIO) -> ArchiveError:
    """What a file that zipfile cannot open is: a zip cut short (it starts like one), another kind
    of archive (say which, and how to make a zip), or no archive."""
    if isinstance(data, (bytes, bytearray)):
        head = bytes(data[:CSV_SNIFF_BYTES])
    else:
        data.seek(0)
        head = data.read(CSV_SNIFF_BYTES)
    if not head:
        return ArchiveError(f"the upload is empty (0 bytes); {MAKE_A_ZIP}")
    if head[:4] == b"PK\x03\x04":
        return ArchiveError(
            "the zip archive is truncated or damaged (its directory at the end is missing): upload the whole file again"
        )
    if head[257:262] == b"ustar":
        return ArchiveError(f"the upload is a tar archive, not a zip; {MAKE_A_ZIP}")
    for magic, what in OTHER_ARCHIVES:
        if head.startswith(magic):
            return ArchiveError(f"the upload is {what}, not a zip archive; {MAKE_A_ZIP}")
    if _looks_like_csv(head):
        return ArchiveError(
            "the upload looks like a CSV file, not a zip archive: zip it (`zip data.zip data.csv`, or "
            "`zip data.zip train.csv test.csv`) and upload that"
        )
    return ArchiveError(f"the upload is not a zip archive; {MAKE_A_ZIP}")


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _looks_like_csv(head: bytes) -> bool:
    """Printable text whose first two lines have as many commas, at least one: a CSV file sent as
    it is (a header and a row), not a line of prose. A head that is not the whole file may end in
    a line cut short, or hold no whole line: a wide table's header (MNIST as CSV has 785
    columns) is told by its commas."""
    text = head.decode("utf-8", errors="ignore")  # the head may end inside a character
    if not text or not all(c.isprintable() or c in "\r\n\t" for c in text):
        return False
    lines = text.splitlines()
    whole = len(head) < CSV_SNIFF_BYTES
    if not whole and not text.endswith("\n"):
        cut = lines.pop()
        if not lines:
            return cut.count(",") >= 2
    if len(lines) >= 2:
        return lines[0].count(",") == lines[1].count(",") >= 1
    return not whole and lines[0].count(",") >= 2


def _decode_members(
    archive, name, test_fraction, image_size, seed, color, min_per_class, limits, arrays: _Arrays, csv_target, classes
) -> DecodedUpload:
    with archive:
        members, folders = _safe_members(archive, limits)
        try:
            basenames = {PurePosixPath(p).name.removesuffix(".gz"): p for p in members}
            csvs = sorted(p for p in members if p.lower().endswith(".csv"))
            idx_found = set(IDX_FILES.values()) & basenames.keys()
            if idx_found and len(idx_found) < len(IDX_FILES) and not csvs:
                missing = ", ".join(sorted(set(IDX_FILES.values()) - idx_found))
                raise ArchiveError(f"IDX files come four together: this archive lacks {missing} (gzipped or not)")
            kind = "idx" if len(idx_found) == len(IDX_FILES) else "csv" if csvs else "image_folder"
            _uses_every_option(
                kind,
                image_size=image_size,
                color=color,
                csv_target=csv_target,
                classes=classes,
                test_fraction=test_fraction,
            )
            if kind == "idx":
                dataset = _idx(archive, members, basenames, name, limits, arrays, classes)
                return DecodedUpload("idx", dataset, color="grayscale")
            if kind == "csv":
                return DecodedUpload("csv", _csv(archive, members, csvs, name, test_fraction, seed, limits, csv_target))
            return _image_folders(
                archive, members, folders, name, test_fraction, image_size, seed, color, min_per_class, limits, arrays
            )
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
            raise ArchiveError(f"the archive is damaged: {exc}") from None


def _idx(archive, members, basenames, name, limits, arrays: _Arrays, classes: tuple[str, ...] | None) -> Dataset:
    if arrays.folder is None:
        parsed = {
            key: parse_idx(
                _read(archive, members[basenames[stem]], limits), basenames[stem], max_bytes=limits.max_member_bytes
            )
            for key, stem in IDX_FILES.items()
        }
    else:
        parsed = {
            key: arrays.idx_member(archive, members[basenames[stem]], basenames[stem], limits)
            for key, stem in IDX_FILES.items()
        }
    top = max(int(parsed[key].max(initial=0)) for key in ("train_labels", "test_labels"))
    if classes is not None and len(classes) != top + 1:
        raise ArchiveError(
            f"classes gives {len(classes)} names, but the labels go from 0 to {top}: give {top + 1}, label 0 first"
        )
    return idx_dataset(parsed, name=name, classes=classes)


def _decode_image(
    data: bytes, path: str, channels: int, image_size: int | None, limits: ArchiveLimits
) -> tuple[np.ndarray, bool, tuple[int, int]]:
    """(uint8 pixels [channels, H, W], whether the image has colour, its own width and height)."""
    try:
        with open_image(data, path, max_pixels=limits.max_image_pixels) as image:
            array = pixels_of(image, channels, (image_size, image_size) if image_size else None)
            if channels == 3:
                return array, not ((array[0] == array[1]).all() and (array[1] == array[2]).all()), image.size
            return array, not is_grey(image), image.size
    except ImageError as exc:
        raise ArchiveError(str(exc) if str(exc).startswith(path) else f"{path}: {exc}") from None


def _class_trees(images: list[str]) -> tuple[dict[str, dict[str, list[str]]], bool]:
    """Image paths by split and class: `train/<class>/*` (+ `test/<class>/*`), or `<class>/*`;
    and whether the archive has the split layout."""
    split_layout = all(p.split("/", 1)[0] in ("train", "test") for p in images)
    trees: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    for path in sorted(images):
        parts = path.split("/")
        if split_layout and len(parts) == 3:
            split, label = parts[0], parts[1]
        elif not split_layout and len(parts) == 2:
            split, label = "train", parts[0]
        else:
            raise ArchiveError(f"{path}: expected train/<class>/<image>, test/<class>/<image> or <class>/<image>")
        trees[split].setdefault(label, []).append(path)
    return trees, split_layout


def _check_classes(trees, folders: set[str], min_per_class: int) -> tuple[str, ...]:
    """The classes, sorted; refuses too few, case-only differences, empty and too small classes."""
    classes = tuple(sorted(trees["train"]))
    empty = sorted(folders - set(classes) - set(trees["test"]))
    if empty:
        raise ArchiveError(f"class folders {empty} hold no images: add images to them or leave them out")
    if len(classes) < 2:
        raise ArchiveError(
            f"a classification dataset needs at least 2 classes (a folder of images for each); found {list(classes)}"
        )
    by_case: dict[str, list[str]] = {}
    for label in sorted(set(classes) | set(trees["test"])):
        by_case.setdefault(label.casefold(), []).append(label)
    clashes = [names for names in by_case.values() if len(names) > 1]
    if clashes:
        raise ArchiveError(f"class folders differ only by case: {clashes}; rename or merge them")
    unknown = sorted(set(trees["test"]) - set(classes))
    if unknown:
        raise ArchiveError(f"test classes {unknown} have no training images")
    small = {label: len(trees["train"][label]) for label in classes if len(trees["train"][label]) < min_per_class}
    if small:
        listed = ", ".join(f"{label} ({n})" for label, n in small.items())
        raise ArchiveError(
            f"classes with fewer than min_per_class={min_per_class} training images: {listed}; "
            "add images or lower min_per_class"
        )
    return classes


def _class_folders(folders: set[str], split_layout: bool) -> set[str]:
    """Every class-level folder the archive names, holding images or not."""
    if split_layout:
        return {f.split("/")[1] for f in folders if f.count("/") == 1 and f.split("/", 1)[0] == "train"}
    return {f for f in folders if "/" not in f}


class _Arrays:
    """Allocates the decoded arrays: in memory, or as files under `folder` (memory-mapped), so that
    a set larger than memory is written image by image and never held whole."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.files: list[Path] = []

    def empty(self, shape: tuple[int, ...]) -> np.ndarray:
        if self.folder is None or 0 in shape:
            return np.empty(shape, dtype=np.uint8)
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.folder, prefix=".decoding-", suffix=".u8")
        os.close(fd)
        self.files.append(Path(name))
        return np.memmap(name, dtype=np.uint8, mode="w+", shape=shape)

    def reserve(self, nbytes: int, limits: ArchiveLimits) -> None:
        """Refuse images that would decode to more than the limit, or than the disk can hold
        (the decoded copy and the stored file)."""
        if nbytes > limits.max_decoded_bytes:
            raise ArchiveError(
                f"the images decode to {nbytes} bytes; the limit is {limits.max_decoded_bytes}: "
                "set image_size to store them smaller"
            )
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(self.folder).free
            if free < 2 * nbytes:
                raise ArchiveError(
                    f"not enough disk space to decode this upload: it needs about {2 * nbytes} "
                    f"bytes and {free} are free"
                )

    def idx_member(self, archive, info, path: str, limits: ArchiveLimits) -> np.ndarray:
        """An IDX member (gzipped or not) copied out to a file a chunk at a time and mapped."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.folder, prefix=".decoding-", suffix=".idx")
        self.files.append(Path(name))
        with archive.open(info) as member, os.fdopen(fd, "wb") as out:
            gzipped = member.peek(2)[:2] == b"\x1f\x8b" if hasattr(member, "peek") else False
            source = gzip.GzipFile(fileobj=member) if gzipped else member
            try:
                written = 0
                while chunk := source.read(1024 * 1024):
                    written += len(chunk)
                    if written > limits.max_member_bytes:
                        raise ArchiveError(f"{path} decompresses to more than {limits.max_member_bytes} bytes")
                    out.write(chunk)
            except (OSError, EOFError) as exc:
                raise ArchiveError(f"{path} is not a readable gzip file: {exc}") from None
        with open(name, "rb") as fh:
            dtype, dims, header = idx_header(fh.read(4 + 4 * 255), path, written)
        if 0 in dims:
            return np.empty(dims, dtype=dtype)
        return np.memmap(name, dtype=dtype, mode="c", offset=header, shape=dims)

    def first_channel(self, array: np.ndarray, rows: int = 4096) -> np.ndarray:
        """array[:, :1] in a new array, copied a chunk of rows at a time."""
        out = self.empty((array.shape[0], 1, *array.shape[2:]))
        for start in range(0, len(array), rows):
            out[start : start + rows] = array[start : start + rows, :1]
        return out

    def remove(self) -> None:
        """Delete the files (memory maps of them stay readable until they are closed)."""
        for path in self.files:
            path.unlink(missing_ok=True)


def _rows(trees, classes, test_fraction, seed) -> dict[str, list[tuple[str, int]]]:
    """(image path, class index) per split, in the order the split's rows are stored."""
    index = {label: i for i, label in enumerate(classes)}
    rows = {
        split: [(p, index[label]) for label, ps in sorted(trees[split].items()) for p in ps]
        for split in ("train", "test")
    }
    test_fraction = _test_fraction(test_fraction, bool(rows["test"]), "train/ and test/ folders")
    if not rows["test"]:
        try:
            kept, held = stratified_holdout_split(
                [label for _, label in rows["train"]], test_fraction, seed, what="test_fraction"
            )
        except DatasetError as exc:
            raise ArchiveError(str(exc)) from None
        rows = {"train": [rows["train"][i] for i in kept.tolist()], "test": [rows["train"][i] for i in held.tolist()]}
    return rows


def _image_folders(
    archive, members, folders, name, test_fraction, image_size, seed, color, min_per_class, limits, arrays: _Arrays
) -> DecodedUpload:
    """`train/<class>/*` (+ `test/<class>/*`), or `<class>/*` split by test_fraction."""
    images = {p: info for p, info in members.items() if PurePosixPath(p).suffix.lower() in IMAGE_SUFFIXES}
    if not images:
        raise ArchiveError(
            "no images, IDX files or CSV found; expected train/<class>/*.png (and test/<class>/...), "
            "<class>/*.png, the four IDX files, or a CSV with a label or target column"
        )
    trees, split_layout = _class_trees(list(images))
    classes = _check_classes(trees, _class_folders(folders, split_layout), min_per_class)
    rows = _rows(trees, classes, test_fraction, seed)
    # Auto decides on colour once every image is seen, so images are decoded as RGB and reduced
    # to one channel if none had colour (R = G = B reduces to exactly Pillow's luma).
    channels = 1 if color == "grayscale" else 3
    first_path = rows["train"][0][0]
    first, coloured, first_size = _decode_image(
        _read(archive, images[first_path], limits), first_path, channels, image_size, limits
    )
    squashed = [(first_path, first_size)] if image_size and _elongated(first_size) else []
    size = first.shape
    arrays.reserve((len(rows["train"]) + len(rows["test"])) * int(np.prod(size)), limits)
    pixels = {split: arrays.empty((len(rows[split]), *size)) for split in ("train", "test")}
    for split in ("train", "test"):
        for row, (path, _) in enumerate(rows[split]):
            if path == first_path:
                pixels[split][row] = first
                continue
            array, has_colour, own_size = _decode_image(
                _read(archive, images[path], limits), path, channels, image_size, limits
            )
            if image_size and _elongated(own_size):
                squashed.append((path, own_size))
            if array.shape != size:
                raise ArchiveError(
                    f"{path} is {array.shape[2]}x{array.shape[1]} but {first_path} is "
                    f"{size[2]}x{size[1]}; set image_size to resize them all"
                )
            coloured += has_colour
            pixels[split][row] = array
    if color == "auto" and coloured == 0:
        pixels = {split: arrays.first_channel(array) for split, array in pixels.items()}
    dataset = image_dataset(
        {
            "train_images": pixels["train"],
            "test_images": pixels["test"],
            **{f"{split}_labels": np.array([c for _, c in rows[split]], dtype=np.int64) for split in ("train", "test")},
        },
        name=name,
        classes=classes,
    )
    warnings = _warnings(dataset)
    ignored = sorted(set(members) - set(images))
    if ignored:
        shown = ", ".join(ignored[:3]) + (", ..." if len(ignored) > 3 else "")
        warnings.append(f"{len(ignored)} file(s) that are not images were left out: {shown}")
    if squashed:
        (path, (width, height)), more = min(squashed), len(squashed) - 1
        warnings.append(
            f"{path} ({width}x{height}){f' and {more} more image(s)' if more else ''} more than twice as long as "
            f"wide were squashed to {image_size}x{image_size}; crop or pad them first if their shape matters"
        )
    if color == "grayscale" and coloured:
        warnings.append(f"{coloured} image(s) have colour; they were converted to grey because color=grayscale")
    return DecodedUpload("image_folder", dataset, color=dataset.contract.color, warnings=warnings)


def _elongated(size: tuple[int, int]) -> bool:
    return max(size) > ELONGATED * min(size)


def _warnings(dataset: Dataset) -> list[str]:
    """What a user should know about an image dataset that is usable as it is."""
    warnings = []
    counts = Counter(dataset.y_train.tolist())
    most, least = max(counts.values()), min(counts.values())
    if most > IMBALANCE_WARNING * least:
        big = max(counts, key=counts.get)
        small = min(counts, key=counts.get)
        warnings.append(
            f"class imbalance: {dataset.classes[big]} has {most} training images but "
            f"{dataset.classes[small]} only {least} ({most / least:.0f}x)"
        )
    train = {hashlib.sha256(row.numpy().tobytes()).digest() for row in dataset.x_train}
    shared = sum(hashlib.sha256(row.numpy().tobytes()).digest() in train for row in dataset.x_test)
    if shared:
        warnings.append(
            f"{shared} test image(s) are identical to training images: test accuracy will "
            "overstate how well the model does on new images"
        )
    return warnings


def _split(x, y, test_fraction, seed):
    try:
        train, test = holdout_split(len(x), test_fraction, seed, what="test_fraction")
    except DatasetError as exc:
        raise ArchiveError(str(exc)) from None
    return x[train], y[train], x[test], y[test]


def _csv_rows(text: str, path: str) -> tuple[list[str], list[list[str]]]:
    rows = [row for row in csv.reader(io.StringIO(text)) if row and any(cell.strip() for cell in row)]
    if len(rows) < 2:
        raise ArchiveError(f"{path}: needs a header row and at least one data row")
    return [h.strip() for h in rows[0]], rows[1:]


def _target_column(header: list[str]) -> tuple[str, str]:
    """The column called label (classification) or target (regression), and its task."""
    targets = [h for h in header if h.lower() in ("label", "target")]
    if len(targets) != 1:
        separated = next((sep for sep in ";\t|" if len(header) == 1 and sep in header[0]), None)
        raise ArchiveError(
            f"the CSV needs exactly one 'label' (classification) or 'target' (regression) column, or "
            f"label_column or target_column naming one; its columns are {header}"
            + (f" (its values are separated by {separated!r}: save it with commas)" if separated else "")
        )
    return targets[0], "classification" if targets[0].lower() == "label" else "regression"


def _csv(archive, members, csvs, name, test_fraction, seed, limits, csv_target: CsvTarget | None) -> Dataset:
    """Numeric feature columns plus `label` (classification) or `target` (regression), or the
    column `csv_target` names."""
    by_name = {PurePosixPath(p).name.lower(): p for p in csvs}
    if len(csvs) == 1:
        sources = {"all": csvs[0]}
    elif {"train.csv", "test.csv"} <= by_name.keys():
        sources = {"train": by_name["train.csv"], "test": by_name["test.csv"]}
    else:
        raise ArchiveError(f"expected one CSV, or train.csv and test.csv; found {csvs}")
    test_fraction = _test_fraction(test_fraction, "all" not in sources, "train.csv and test.csv")
    tables = {}
    for split, path in sources.items():
        try:
            text = _read(archive, members[path], limits).decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ArchiveError(f"{path}: not UTF-8 text") from None
        tables[split] = (path, *_csv_rows(text, path))
    header = next(iter(tables.values()))[1]
    if csv_target is not None:
        if csv_target.column not in header:
            raise ArchiveError(
                f"{csv_target.field} {csv_target.column!r} is not a column of the CSV; its columns are {header}"
            )
        target, task = csv_target.column, csv_target.task
    else:
        target, task = _target_column(header)
    features = [h for h in header if h != target]
    if not features:
        raise ArchiveError("the CSV has no feature columns")
    parsed = {}
    for split, (path, cols, rows) in tables.items():
        if cols != header:
            raise ArchiveError(f"{path}: columns {cols} differ from {header}")
        t = cols.index(target)
        xs, ys = [], []
        for line, row in enumerate(rows, start=2):
            if len(row) != len(cols):
                raise ArchiveError(f"{path} line {line}: {len(row)} fields, expected {len(cols)}")
            try:
                xs.append([float(v) for i, v in enumerate(row) if i != t])
            except ValueError:
                column, value = next((cols[i], v) for i, v in enumerate(row) if i != t and not _is_number(v))
                if not value.strip():
                    raise ArchiveError(
                        f"{path} line {line}: column {column!r} has no value (a missing value): fill it in, "
                        "or leave the row out"
                    ) from None
                raise ArchiveError(
                    f"{path} line {line}: feature values must be numbers; column {column!r} holds {value!r}"
                ) from None
            ys.append(row[t].strip())
        parsed[split] = (np.asarray(xs, dtype=np.float32), ys)
    if not all(np.isfinite(x).all() for x, _ in parsed.values()):
        raise ArchiveError("the CSV holds NaN or infinite feature values")
    classes = None
    if task == "classification":
        values = sorted({v for _, ys in parsed.values() for v in ys}, key=_label_order)
        if len(values) < 2:
            raise ArchiveError("a classification CSV needs at least 2 distinct labels")
        classes = tuple(values)
        index = {v: i for i, v in enumerate(classes)}

        def encode(ys):
            return torch.tensor([index[v] for v in ys], dtype=torch.int64)
    else:

        def encode(ys):
            try:
                return torch.tensor([float(v) for v in ys], dtype=torch.float32).unsqueeze(1)
            except ValueError:
                raise ArchiveError("target values must be numbers") from None

    tensors = {split: (torch.from_numpy(x), encode(ys)) for split, (x, ys) in parsed.items()}
    if "all" in tensors:
        x_train, y_train, x_test, y_test = _split(*tensors["all"], test_fraction, seed)
    else:
        (x_train, y_train), (x_test, y_test) = tensors["train"], tensors["test"]
    digest = hashlib.sha256()
    for tensor in (x_train, y_train, x_test, y_test):
        digest.update(tensor.numpy().tobytes())
    return Dataset(
        name=name,
        task=task,
        checksum=digest.hexdigest(),
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        contract=InputContract.tabular(len(features), classes, features),
    )


def _label_order(value: str):
    """Numeric labels sort as numbers (2 before 10); others alphabetically after them."""
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)

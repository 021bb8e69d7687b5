import io
import zipfile

import numpy as np
import pytest
import torch

from models.data import IDX_FILES, load_stored_dataset, save_stored_dataset
from models.uploads import ArchiveError, ArchiveLimits, decode_archive
from tests.datagen import class_images, image_folder_zip, png_bytes, write_idx, zip_bytes


def test_image_folder_with_train_and_test_trees():
    upload = decode_archive(image_folder_zip(["cat", "dog", "emu"], per_class=5, test_per_class=2, top="pets/"),
                            name="pets")
    data = upload.dataset
    assert upload.kind == "image_folder" and data.classes == ("cat", "dog", "emu")
    assert data.x_train.shape == (15, 1, 28, 28) and data.x_train.dtype == torch.uint8
    assert data.y_train.tolist() == [0] * 5 + [1] * 5 + [2] * 5 and len(data.x_test) == 6
    assert data.preprocess == {"kind": "image", "channels": 1, "height": 28, "width": 28, "scale": 1 / 255}


def test_single_tree_is_split_by_test_fraction_and_images_resized_on_request():
    files = {f"{label}/{i}.png": png_bytes(j, seed=i, size=40 + j, mode="RGB")
             for j, label in enumerate(["a", "b"]) for i in range(10)}
    with pytest.raises(ArchiveError, match="set image_size"):
        decode_archive(zip_bytes(files), name="x")
    data = decode_archive(zip_bytes(files), name="x", test_fraction=0.25, image_size=32).dataset
    assert len(data.x_train) == 15 and len(data.x_test) == 5 and data.input_shape == (1, 32, 32)


def test_idx_archive():
    rng = np.random.default_rng(0)
    files = {}
    for prefix, n in (("train", 40), ("t10k", 10)):
        labels = (np.arange(n) % 4).astype(np.uint8)
        for kind, array in (("images-idx3-ubyte", class_images(labels, rng)), ("labels-idx1-ubyte", labels)):
            path = write_idx(__import__("pathlib").Path("/tmp") / f"ty-{prefix}-{kind}", array, gz=True)
            files[f"raw/{prefix}-{kind}.gz"] = path.read_bytes()
    upload = decode_archive(zip_bytes(files), name="digits")
    assert upload.kind == "idx" and upload.dataset.classes == ("0", "1", "2", "3")
    assert len(upload.dataset.x_train) == 40 and len(upload.dataset.x_test) == 10
    assert set(IDX_FILES.values()) == {p.removesuffix(".gz").split("/")[-1] for p in files}


def test_csv_classification_and_regression():
    rows = "f1,f2,label\n" + "".join(f"{i},{i % 3},{'yes' if i % 2 else 'no'}\n" for i in range(20))
    data = decode_archive(zip_bytes({"data.csv": rows.encode()}), name="t", test_fraction=0.25).dataset
    assert data.task == "classification" and data.classes == ("no", "yes")
    assert data.x_train.shape == (15, 2) and data.x_train.dtype == torch.float32
    train = "x,target\n" + "".join(f"{i},{2 * i + 1}\n" for i in range(10))
    test = "x,target\n" + "".join(f"{i},{2 * i + 1}\n" for i in range(10, 14))
    data = decode_archive(zip_bytes({"train.csv": train.encode(), "test.csv": test.encode()}), name="r").dataset
    assert data.task == "regression" and data.classes is None and data.y_test[:, 0].tolist() == [21, 23, 25, 27]
    numeric = "a,label\n" + "".join(f"{i},{i % 12}\n" for i in range(24))
    assert decode_archive(zip_bytes({"n.csv": numeric.encode()}), name="n").dataset.classes[:3] == ("0", "1", "2")
    assert decode_archive(zip_bytes({"n.csv": numeric.encode()}), name="n").dataset.classes[-1] == "11"


@pytest.mark.parametrize("files, message", [
    ({"../evil.png": b"x"}, "unsafe path"),
    ({"/etc/passwd": b"x"}, "unsafe path"),
    ({"train\\cat\\1.png": b"x"}, "unsafe path"),
    ({"readme.txt": b"hello"}, "no images, IDX files or CSV"),
    ({"train/cat/1.png": png_bytes(0, seed=1)}, "at least 2 classes"),
    ({"train/cat/1.png": png_bytes(0, seed=1), "train/dog/1.png": b"not a png"}, "train/dog/1.png: not a recognised image"),
    ({"train/cat/1.png": png_bytes(0, seed=1), "train/dog/1.png": png_bytes(1, seed=1),
      "test/emu/1.png": png_bytes(1, seed=2)}, "test classes \\['emu'\\] have no training images"),
    ({"d.csv": b"a,b\n1,2\n"}, "exactly one 'label'"),
    ({"d.csv": b"a,label\nx,1\ny,2\n"}, "line 2: feature values must be numbers"),
    ({"d.csv": b"a,label\n1,2,3\n"}, "line 2: 3 fields, expected 2"),
])
def test_bad_archives_are_refused_with_the_reason(files, message):
    with pytest.raises(ArchiveError, match=message):
        decode_archive(zip_bytes(files), name="bad")


def test_not_a_zip_and_zip_bombs_are_refused():
    with pytest.raises(ArchiveError, match="not a zip"):
        decode_archive(b"PK\x03\x04 but not really", name="x")
    bomb = zip_bytes({"train/a/big.png": b"\0" * (50 * 1024 * 1024)})
    assert len(bomb) < 100_000
    with pytest.raises(ArchiveError, match="zip bomb"):
        decode_archive(bomb, name="x")
    with pytest.raises(ArchiveError, match="limit"):
        decode_archive(zip_bytes({f"a/{i}.png": b"x" for i in range(20)}), name="x", limits=ArchiveLimits(max_members=10))
    with pytest.raises(ArchiveError, match="expands to more than"):
        decode_archive(zip_bytes({f"a/{i}.png": bytes(range(256)) * 40 for i in range(5)}), name="x",
                       limits=ArchiveLimits(max_total_bytes=30_000))


def test_a_member_bigger_than_its_header_is_refused():
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("a/1.png", b"A" * 100)
    data = bytearray(raw.getvalue())
    # Shrink the declared size in the central directory to 10 bytes.
    central = data.rfind(b"PK\x01\x02")
    data[central + 24:central + 28] = (10).to_bytes(4, "little")
    with pytest.raises(ArchiveError):
        decode_archive(bytes(data), name="liar")


def test_stored_dataset_round_trip(tmp_path):
    data = decode_archive(image_folder_zip(["x", "y"], per_class=3, test_per_class=1), name="xy").dataset
    save_stored_dataset(tmp_path / "d.safetensors", data, {"kind": "image_folder"})
    again = load_stored_dataset(tmp_path / "d.safetensors")
    assert again.classes == data.classes and again.checksum == data.checksum and again.preprocess == data.preprocess
    assert torch.equal(again.x_train, data.x_train) and torch.equal(again.y_test, data.y_test)

import io
import zipfile

import numpy as np
import pytest
import torch

from models.data.contract import InputContract
from models.data.idx import IDX_FILES
from models.data.loading import load_stored_dataset, save_stored_dataset
from models.data.uploads import ArchiveError, ArchiveLimits, CsvTarget, check_archive, decode_archive
from tests.support.datagen import idx_files, image_folder_zip, png_bytes, zip_bytes


def test_image_folder_with_train_and_test_trees():
    upload = decode_archive(
        image_folder_zip(["cat", "dog", "emu"], per_class=5, test_per_class=2, top="pets/"), name="pets"
    )
    data = upload.dataset
    assert upload.kind == "image_folder" and data.classes == ("cat", "dog", "emu")
    assert data.x_train.shape == (15, 1, 28, 28) and data.x_train.dtype == torch.uint8
    assert data.y_train.tolist() == [0] * 5 + [1] * 5 + [2] * 5 and len(data.x_test) == 6
    assert data.contract == InputContract.image(1, 28, 28, ["cat", "dog", "emu"]) and upload.color == "grayscale"


def test_single_tree_is_split_by_test_fraction_and_images_resized_on_request():
    files = {
        f"{label}/{i}.png": png_bytes(j, seed=i, size=40 + j, mode="RGB")
        for j, label in enumerate(["a", "b"])
        for i in range(10)
    }
    with pytest.raises(ArchiveError, match="set image_size"):
        decode_archive(zip_bytes(files), name="x")
    data = decode_archive(zip_bytes(files), name="x", test_fraction=0.25, image_size=32).dataset
    # 0.25 of each class (2.5 rounds to 2), never a class left out of the test set
    assert len(data.x_train) == 16 and len(data.x_test) == 4 and data.input_shape == (1, 32, 32)
    assert data.y_test.bincount().tolist() == [2, 2] and data.y_train.bincount().tolist() == [8, 8]


@pytest.mark.parametrize("seed", range(4))
def test_the_test_split_holds_every_class(seed):
    """Seven images of each of four classes and a 0.2 test split: one random split over all 28
    images left a class with no test image at some seeds; each class now gives its share."""
    files = {f"{label}/{i}.png": png_bytes(j, seed=i) for j, label in enumerate("abcd") for i in range(7)}
    data = decode_archive(zip_bytes(files), name="x", test_fraction=0.2, seed=seed).dataset
    assert data.y_test.bincount(minlength=4).tolist() == [1, 1, 1, 1]
    assert data.y_train.bincount(minlength=4).tolist() == [6, 6, 6, 6]


def test_idx_archive(tmp_path):
    files = idx_files(tmp_path)
    upload = decode_archive(zip_bytes(files), name="digits")
    assert upload.kind == "idx" and upload.dataset.classes == ("0", "1", "2", "3")
    assert len(upload.dataset.x_train) == 40 and len(upload.dataset.x_test) == 10
    assert set(IDX_FILES.values()) == {p.removesuffix(".gz").split("/")[-1] for p in files}
    # Decoding into files (as the service does) reads each member out a chunk at a time, alike.
    workdir = tmp_path / "work"
    streamed = decode_archive(zip_bytes(files), name="digits", workdir=workdir)
    assert torch.equal(streamed.dataset.x_train, upload.dataset.x_train)
    assert streamed.dataset.checksum == upload.dataset.checksum
    streamed.cleanup()
    assert not list(workdir.iterdir())
    with pytest.raises(ArchiveError, match="decompresses to more than 30000 bytes"):  # a gzip bomb inside
        decode_archive(zip_bytes(files), name="digits", workdir=workdir, limits=ArchiveLimits(max_member_bytes=30_000))
    assert not list(workdir.iterdir())


@pytest.mark.parametrize("classes", [None, ("a", "b", "c", "d")])
def test_an_idx_archive_short_of_a_file_says_which(tmp_path, classes):
    files = {path: data for path, data in idx_files(tmp_path).items() if "t10k-labels" not in path}
    with pytest.raises(ArchiveError, match="IDX files come four together: this archive lacks t10k-labels-idx1-ubyte"):
        decode_archive(zip_bytes(files), name="x", classes=classes)


def test_idx_labels_take_the_class_names_given_label_0_first(tmp_path):
    archive = zip_bytes(idx_files(tmp_path))
    named = decode_archive(archive, name="shapes", classes=("circle", "square", "star", "ring"))
    assert named.dataset.classes == ("circle", "square", "star", "ring")
    for names in (("circle", "square"), ("circle", "square", "star", "ring", "cross")):  # too few, too many
        with pytest.raises(ArchiveError, match=f"classes gives {len(names)} names, but the labels go from 0 to 3"):
            decode_archive(archive, name="shapes", classes=names)
    folders = zip_bytes({f"{label}/{i}.png": png_bytes(j, seed=i) for j, label in enumerate("ab") for i in range(5)})
    with pytest.raises(ArchiveError, match="holds a folder of images, which name their own"):
        decode_archive(folders, name="x", classes=("a", "b"))


def test_test_fraction_is_refused_for_an_archive_with_its_own_test_split(tmp_path):
    """It would change nothing there; given for an archive without one, it is the share held out."""
    rows = "".join(f"{i},{i % 2}\n" for i in range(20))
    own_split = {
        "IDX files, whose t10k files": zip_bytes(idx_files(tmp_path)),
        "train/ and test/ folders": image_folder_zip(["a", "b"], per_class=5, test_per_class=2),
        "train.csv and test.csv": zip_bytes({"train.csv": f"f,label\n{rows}".encode(), "test.csv": b"f,label\n1,0\n"}),
    }
    for what, archive in own_split.items():
        assert decode_archive(archive, name="x").dataset.x_test.shape[0] > 0
        with pytest.raises(ArchiveError, match=f"^test_fraction splits .* this one holds {what}.*: leave it out$"):
            decode_archive(archive, name="x", test_fraction=0.3)
    one_csv = zip_bytes({"all.csv": f"f,label\n{rows}".encode()})
    assert len(decode_archive(one_csv, name="x").dataset.x_test) == 4  # the default, 0.2
    assert len(decode_archive(one_csv, name="x", test_fraction=0.5).dataset.x_test) == 10


@pytest.mark.parametrize("option", [{"image_size": 64}, {"color": "rgb"}])
def test_an_image_option_given_for_a_csv_is_refused_not_ignored(option):
    rows = "f1,target\n" + "".join(f"{i},{2 * i}\n" for i in range(20))
    (name,) = option
    with pytest.raises(ArchiveError, match=f"{name} applies to a folder of images; this archive holds a CSV"):
        decode_archive(zip_bytes({"data.csv": rows.encode()}), name="t", **option)


def test_a_csv_target_may_be_any_column_named_at_upload():
    rows = "age,species,weight\n" + "".join(f"{i},{'ab'[i % 2]},{i * 3}\n" for i in range(20))
    archive = zip_bytes({"zoo.csv": rows.encode()})
    data = decode_archive(archive, name="z", csv_target=CsvTarget("species", "classification")).dataset
    assert data.task == "classification" and data.classes == ("a", "b") and data.contract.columns == ["age", "weight"]
    numbers = "age,label,weight\n" + "".join(f"{i},{i % 2},{i * 3}\n" for i in range(20))  # label: a feature here
    data = decode_archive(
        zip_bytes({"zoo.csv": numbers.encode()}), name="z", csv_target=CsvTarget("weight", "regression")
    )
    assert data.dataset.task == "regression" and data.dataset.contract.columns == ["age", "label"]
    assert data.dataset.y_train.max() > 3
    with pytest.raises(ArchiveError, match="label_column 'Species' is not a column of the CSV; its columns are"):
        decode_archive(archive, name="z", csv_target=CsvTarget("Species", "classification"))
    with pytest.raises(ArchiveError, match="target_column names a CSV's column; this archive holds a folder of images"):
        images = image_folder_zip(["a", "b"], per_class=5, test_per_class=2)
        decode_archive(images, name="i", csv_target=CsvTarget("x", "regression"))


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


@pytest.mark.parametrize(
    "files, message",
    [
        ({"../evil.png": b"x"}, "unsafe path"),
        ({"/etc/passwd": b"x"}, "unsafe path"),
        ({"train\\cat\\1.png": b"x"}, "unsafe path"),
        ({"readme.txt": b"hello"}, "no images, IDX files or CSV"),
        ({"train/cat/1.png": png_bytes(0, seed=1)}, "at least 2 classes"),
        (
            {"train/cat/1.png": png_bytes(0, seed=1), "train/dog/1.png": b"not a png"},
            "train/dog/1.png: not a recognised image",
        ),
        (
            {
                "train/cat/1.png": png_bytes(0, seed=1),
                "train/dog/1.png": png_bytes(1, seed=1),
                "test/emu/1.png": png_bytes(1, seed=2),
            },
            "test classes \\['emu'\\] have no training images",
        ),
        ({"d.csv": b"a,b\n1,2\n"}, "exactly one 'label'"),
        ({"d.csv": b"a,label\nx,1\ny,2\n"}, "line 2: feature values must be numbers; column 'a' holds 'x'"),
        ({"d.csv": b"a,b,label\n1,,1\n2,3,2\n"}, "line 2: column 'b' has no value \\(a missing value\\)"),
        ({"d.csv": b"a;label\n1;1\n2;2\n"}, "separated by ';': save it with commas"),
        ({"d.csv": b"a,label\n1,2,3\n"}, "line 2: 3 fields, expected 2"),
    ],
)
def test_bad_archives_are_refused_with_the_reason(files, message):
    with pytest.raises(ArchiveError, match=message):
        decode_archive(zip_bytes(files), name="bad", min_per_class=1)


def test_not_a_zip_and_zip_bombs_are_refused():
    for text in (b"a text file", b"a line of text, with a comma\n", b"a note, with a comma\nand another line\n"):
        with pytest.raises(ArchiveError, match="^the upload is not a zip archive; trainyard takes zip archives: make"):
            decode_archive(text, name="x")
    with pytest.raises(ArchiveError, match="^the upload is empty \\(0 bytes\\); trainyard takes zip archives"):
        decode_archive(b"", name="x")
    with pytest.raises(ArchiveError, match="looks like a CSV file, not a zip archive: zip it"):
        decode_archive(b"x1,x2,label\n0.5,1.5,cat\n", name="rows")
    for columns in (40, 785):  # a header and a row past 262 bytes; MNIST as CSV, its header past the 4 KiB read
        table = ",".join(f"pixel{i}" for i in range(columns)) + "\n" + ",".join(["0"] * columns) + "\n"
        with pytest.raises(ArchiveError, match="looks like a CSV file"):
            decode_archive((table * 3).encode(), name="wide")
    with pytest.raises(ArchiveError, match="^the upload is not a zip archive"):  # prose longer than the read
        decode_archive(("A line of text, with a comma.\nAnother line.\n" * 200).encode(), name="x")
    whole = zip_bytes({f"{label}/{i}.png": png_bytes(i, seed=i) for label in "ab" for i in range(5)})
    for cut in (whole[: len(whole) // 2], io.BytesIO(whole[: len(whole) // 2])):  # bytes, or a file as uploaded
        with pytest.raises(ArchiveError, match="truncated or damaged .*upload the whole file again"):
            decode_archive(cut, name="x")
        with pytest.raises(ArchiveError, match="truncated or damaged"):
            check_archive(io.BytesIO(whole[:100]))
    bomb = zip_bytes({"train/a/big.png": b"\0" * (50 * 1024 * 1024)})
    assert len(bomb) < 100_000
    with pytest.raises(ArchiveError, match="zip bomb"):
        decode_archive(bomb, name="x")
    with pytest.raises(ArchiveError, match="limit"):
        decode_archive(
            zip_bytes({f"a/{i}.png": b"x" for i in range(20)}), name="x", limits=ArchiveLimits(max_members=10)
        )
    with pytest.raises(ArchiveError, match="expands to more than"):
        decode_archive(
            zip_bytes({f"a/{i}.png": bytes(range(256)) * 40 for i in range(5)}),
            name="x",
            limits=ArchiveLimits(max_total_bytes=30_000),
        )


def test_a_member_bigger_than_its_header_is_refused():
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("a/1.png", b"A" * 100)
    data = bytearray(raw.getvalue())
    # Shrink the declared size in the central directory to 10 bytes.
    central = data.rfind(b"PK\x01\x02")
    data[central + 24 : central + 28] = (10).to_bytes(4, "little")
    with pytest.raises(ArchiveError):
        decode_archive(bytes(data), name="liar")


def test_stored_dataset_round_trip(tmp_path):
    data = decode_archive(
        image_folder_zip(["x", "y"], per_class=3, test_per_class=1), name="xy", min_per_class=3
    ).dataset
    save_stored_dataset(tmp_path / "d.safetensors", data, {"kind": "image_folder"})
    again = load_stored_dataset(tmp_path / "d.safetensors")
    assert again.classes == data.classes and again.checksum == data.checksum and again.contract == data.contract
    assert torch.equal(again.x_train, data.x_train) and torch.equal(again.y_test, data.y_test)


def solid_png(rgb, *, size: int = 8, noise_seed: int | None = None) -> bytes:
    """A PNG of one colour, with a little seeded noise (the same in every channel) when asked."""
    array = np.broadcast_to(np.array(rgb, dtype=np.int64), (size, size, 3)).copy()
    if noise_seed is not None:
        array += np.random.default_rng(noise_seed).integers(0, 4, size=(size, size, 1))
    return png_array(np.clip(array, 0, 255).astype(np.uint8))


def png_array(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


COLOURS = {"red": (200, 30, 30), "green": (30, 120, 30), "blue": (30, 30, 200)}


def colour_zip(per_class: int = 6) -> bytes:
    return zip_bytes(
        {
            f"{name}/{i}.png": solid_png(rgb, noise_seed=100 * j + i)
            for j, (name, rgb) in enumerate(COLOURS.items())
            for i in range(per_class)
        }
    )


def test_colour_is_kept_and_grey_stays_one_channel():
    auto = decode_archive(colour_zip(), name="c", test_fraction=0.25)
    assert auto.color == "rgb" and auto.dataset.input_shape == (3, 8, 8)
    red = auto.dataset.x_train[auto.dataset.y_train == auto.dataset.classes.index("red")][0]
    assert red[:, 0, 0].tolist()[0] > 190 and red[1:, 0, 0].max() < 40
    grey = decode_archive(image_folder_zip(["a", "b"], per_class=5, test_per_class=2), name="g")
    assert grey.color == "grayscale" and grey.dataset.input_shape == (1, 28, 28)
    # Grey images saved as RGB are grey too, and reduce to exactly the luma of their grey form.
    as_rgb = {f"{c}/{i}.png": png_bytes(j, seed=i, mode="RGB") for j, c in enumerate("ab") for i in range(5)}
    as_l = {f"{c}/{i}.png": png_bytes(j, seed=i) for j, c in enumerate("ab") for i in range(5)}
    one, other = (decode_archive(zip_bytes(files), name="x").dataset for files in (as_rgb, as_l))
    assert one.input_shape == (1, 28, 28) and torch.equal(one.x_train, other.x_train)
    forced = decode_archive(colour_zip(), name="c", color="grayscale")
    assert forced.color == "grayscale" and forced.dataset.input_shape == (1, 8, 8)
    assert any("have colour" in w for w in forced.warnings)
    assert decode_archive(zip_bytes(as_l), name="x", color="rgb").dataset.input_shape == (3, 28, 28)


def test_what_archivers_and_notebooks_add_is_skipped():
    files = {f"{c}/{i}.png": png_bytes(j, seed=i) for j, c in enumerate("ab") for i in range(5)}
    files.update(
        {
            "__MACOSX/a/._0.png": b"junk",
            "a/.ipynb_checkpoints/0-checkpoint.png": b"junk",
            ".ipynb_checkpoints/x.png": b"junk",
            "a/.DS_Store": b"junk",
            "b/Thumbs.db": b"junk",
            ".hidden.png": b"junk",
        }
    )
    data = decode_archive(zip_bytes(files), name="x").dataset
    assert data.classes == ("a", "b") and len(data.x_train) + len(data.x_test) == 10


def test_other_archives_are_named_with_how_to_make_a_zip():
    import gzip
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("a/1.png")
        image = png_bytes(0, seed=1)
        info.size = len(image)
        tar.addfile(info, io.BytesIO(image))
    for data, what in (
        (buffer.getvalue(), "a tar archive, not a zip"),
        (gzip.compress(buffer.getvalue()), r"a gzip file \(.gz or .tar.gz\), not a zip"),
    ):
        with pytest.raises(ArchiveError, match=f"^the upload is {what}.*zip -r data.zip train test"):
            decode_archive(data, name="x")
        with pytest.raises(ArchiveError, match=what):
            check_archive(io.BytesIO(data))


def test_one_class_is_refused_as_one_class_not_as_a_bad_layout():
    one = {f"cats/{i}.png": png_bytes(0, seed=i) for i in range(6)}
    with pytest.raises(ArchiveError, match=r"at least 2 classes \(a folder of images for each\); found \['cats'\]"):
        decode_archive(zip_bytes(one), name="x")
    wrapped = {f"mydata/{label}/{i}.png": png_bytes(j, seed=i) for j, label in enumerate("ab") for i in range(5)}
    assert decode_archive(zip_bytes(wrapped), name="x").dataset.classes == ("a", "b")  # a wrapping folder goes


@pytest.mark.parametrize(
    "files, message",
    [
        (
            {
                **{f"a/{i}.png": png_bytes(0, seed=i) for i in range(5)},
                **{f"b/{i}.png": png_bytes(1, seed=i) for i in range(5)},
                "c/": b"",
            },
            r"class folders \['c'\] hold no images: add images to them or leave them out",
        ),
        (
            {
                **{f"train/a/{i}.png": png_bytes(0, seed=i) for i in range(5)},
                **{f"train/b/{i}.png": png_bytes(1, seed=i) for i in range(5)},
                "train/c/": b"",
            },
            r"class folders \['c'\] hold no images",
        ),
        (
            {
                **{f"mydata/a/{i}.png": png_bytes(0, seed=i) for i in range(5)},
                **{f"mydata/b/{i}.png": png_bytes(1, seed=i) for i in range(5)},
                "mydata/c/": b"",
            },
            r"class folders \['c'\] hold no images",
        ),
        (
            {
                **{f"Cat/{i}.png": png_bytes(0, seed=i) for i in range(5)},
                **{f"cat/{i}.png": png_bytes(0, seed=i) for i in range(5)},
                **{f"dog/{i}.png": png_bytes(1, seed=i) for i in range(5)},
            },
            r"differ only by case: \[\['Cat', 'cat'\]\]",
        ),
        (
            {
                **{f"a/{i}.png": png_bytes(0, seed=i) for i in range(5)},
                **{f"b/{i}.png": png_bytes(1, seed=i) for i in range(5)},
                "c/notes.txt": b"x",
            },
            r"class folders \['c'\] hold no images",
        ),
        (
            {
                **{f"a/{i}.png": png_bytes(0, seed=i) for i in range(5)},
                **{f"b/{i}.png": png_bytes(1, seed=i) for i in range(2)},
            },
            r"fewer than min_per_class=5 training images: b \(2\)",
        ),
    ],
)
def test_unusable_classes_are_refused_listing_them(files, message):
    with pytest.raises(ArchiveError, match=message):
        decode_archive(zip_bytes(files), name="bad")


def test_imbalance_and_test_images_seen_in_training_are_warned_about():
    files = {f"train/a/{i}.png": png_bytes(0, seed=i) for i in range(55)}
    files.update({f"train/b/{i}.png": png_bytes(1, seed=i) for i in range(5)})
    files.update({"test/a/0.png": png_bytes(0, seed=3), "test/b/0.png": png_bytes(1, seed=999)})
    warnings = decode_archive(zip_bytes(files), name="w").warnings
    assert any("class imbalance: a has 55 training images but b only 5 (11x)" in w for w in warnings)
    assert any(w.startswith("1 test image(s) are identical to training images") for w in warnings)
    assert decode_archive(image_folder_zip(["a", "b"], per_class=5, test_per_class=2), name="ok").warnings == []


def test_images_that_would_decode_past_the_limit_are_refused_before_decoding(tmp_path):
    archive = image_folder_zip(["a", "b"], per_class=5, test_per_class=2)  # 14 images of 28x28: 10,976 bytes
    with pytest.raises(ArchiveError, match="decode to 32928 bytes; the limit is 10000: set image_size"):
        decode_archive(archive, name="x", limits=ArchiveLimits(max_decoded_bytes=10_000), workdir=tmp_path)
    assert not list(tmp_path.iterdir())  # nothing was allocated
    upload = decode_archive(archive, name="x", workdir=tmp_path)  # decoded into files there, then
    assert list(tmp_path.glob(".decoding-*")) and upload.dataset.input_shape == (1, 28, 28)
    upload.cleanup()
    assert not list(tmp_path.glob(".decoding-*"))


def test_files_left_out_and_images_squashed_by_image_size_are_warned_about():
    from PIL import Image

    def png(width: int, height: int) -> bytes:
        out = io.BytesIO()
        Image.new("L", (width, height), 128).save(out, format="PNG")
        return out.getvalue()

    files = {f"{label}/{i}.png": png_bytes(n, seed=i) for n, label in enumerate("ab") for i in range(6)}
    files.update({"a/tall.png": png(17, 53), "b/wide.png": png(90, 30), "b/near.png": png(40, 28)})
    files.update({"notes.txt": b"where these came from", "a/labels.md": b"#"})
    warnings = decode_archive(zip_bytes(files), name="w", image_size=16).warnings
    assert "2 file(s) that are not images were left out: a/labels.md, notes.txt" in warnings
    assert (
        "a/tall.png (17x53) and 1 more image(s) more than twice as long as wide were squashed to 16x16; "
        "crop or pad them first if their shape matters"
    ) in warnings, warnings
    del files["a/tall.png"], files["b/wide.png"], files["notes.txt"], files["a/labels.md"]
    assert decode_archive(zip_bytes(files), name="ok", image_size=16).warnings == []

"""`trainyard sample-data`: a small shapes dataset that the upload takes, the same bytes for the same seed."""

from __future__ import annotations

import io
import zipfile

from typer.testing import CliRunner

from service.cli.main import app
from service.cli.sample_data import SHAPES, shapes_zip
from tests.support.api import make_api


def test_the_command_writes_the_zip_and_one_new_image_per_class(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "sample-data",
            str(tmp_path / "shapes.zip"),
            "--examples",
            str(tmp_path / "shapes"),
            "--per-class",
            "7",
            "--test-per-class",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "shapes.zip: 40 images of circle, square, triangle, cross (7 train and 3 test each" in result.output
    names = zipfile.ZipFile(tmp_path / "shapes.zip").namelist()
    assert len(names) == 40 and "train/circle/006.png" in names and "test/cross/002.png" in names
    assert {name.split("/")[1] for name in names} == set(SHAPES)
    zipped = {zipfile.ZipFile(tmp_path / "shapes.zip").read(name) for name in names}
    examples = sorted(p.name for p in (tmp_path / "shapes").iterdir())
    assert examples == sorted(f"{shape}.png" for shape in SHAPES)
    assert not {(tmp_path / "shapes" / name).read_bytes() for name in examples} & zipped  # new images, not the zip's


def test_the_same_seed_writes_the_same_bytes():
    small = {"per_class": 5, "test_per_class": 2}
    assert shapes_zip(seed=3, **small) == shapes_zip(seed=3, **small)
    assert shapes_zip(seed=3, **small) != shapes_zip(seed=4, **small)


def test_the_upload_takes_it(service_env):
    api = make_api()
    archive = shapes_zip()
    created = api.post(
        "/v1/datasets", data={"name": "shapes"}, files={"file": ("shapes.zip", archive, "application/zip")}
    )
    assert created.status_code == 201, created.text
    dataset = created.json()
    assert dataset["kind"] == "image_folder" and dataset["task"] == "classification"
    assert sorted(dataset["classes"]) == sorted(SHAPES) and dataset["input_shape"] == [1, 28, 28]
    assert (dataset["num_train"], dataset["num_test"], dataset["warnings"]) == (400, 100, [])
    again = api.post(
        "/v1/datasets",
        data={"name": "shapes"},
        files={"file": ("shapes.zip", io.BytesIO(shapes_zip()), "application/zip")},
    )
    assert again.status_code == 200 and again.json()["id"] == dataset["id"]  # same seed, same dataset


def test_a_zip_it_cannot_write_is_one_line_not_a_traceback(tmp_path):
    from service.cli.client import USAGE, Failure

    result = CliRunner().invoke(app, ["sample-data", str(tmp_path / "no" / "such" / "shapes.zip")])
    assert isinstance(result.exception, Failure) and result.exception.code == USAGE
    assert str(result.exception) == f"cannot write {tmp_path / 'no' / 'such' / 'shapes.zip'}: No such file or directory"


def test_an_archive_not_named_zip_is_refused_saying_what_it_writes(tmp_path):
    from service.cli.client import USAGE, Failure

    result = CliRunner().invoke(app, ["sample-data", str(tmp_path / "shapes.tar.gz")])
    assert isinstance(result.exception, Failure) and result.exception.code == USAGE
    assert str(result.exception) == "sample-data writes a zip: name it shapes.zip"
    assert not (tmp_path / "shapes.tar.gz").exists()

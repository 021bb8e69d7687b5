"""Colour end to end in the training core: CIFAR-10 in both layouts, hostile pickles refused,
colour that grey cannot see, normalisation, and augmentation that is seeded and resumable."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from models.data.augment import Augmenter
from models.data.cifar import UnsafeData, load_cifar10
from models.data.dataset import DatasetError
from models.data.loading import channel_stats, load_dataset
from models.data.uploads import decode_archive
from models.inference.predictor import Predictor
from models.spec.job import AugmentSpec, ImageDatasetSpec, JobSpec
from models.spec.problems import spec_problems
from models.training.engine import fit
from tests.models.common import Recorder, StopAt, trace
from tests.support.datagen import colour_images, make_cifar10, zip_bytes


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    make_cifar10(root, "py", per_batch=60, n_test=100)
    return root


def job(**overrides) -> JobSpec:
    base = {
        "model": {"arch": "lenet", "activation": "relu", "pool": "max"},
        "data": {"dataset": "cifar10"},
        "optimizer": {"name": "adam", "lr": 0.003},
        "epochs": 2,
        "batch_size": 32,
        "device": "cpu",
    }
    return JobSpec.model_validate({**base, **overrides})


@pytest.mark.parametrize("layout", ["py", "bin"])
def test_cifar10_reads_both_layouts_alike(tmp_path, layout):
    make_cifar10(tmp_path, layout, per_batch=20, n_test=30, seed=7)
    data = load_cifar10(tmp_path)
    assert data.x_train.shape == (100, 3, 32, 32) and data.x_train.dtype == torch.uint8
    assert data.x_test.shape == (30, 3, 32, 32) and data.classes[0] == "airplane" and len(data.classes) == 10
    assert data.contract.channels == 3 and data.contract.color == "rgb"
    other = tmp_path / "other"
    make_cifar10(other, "bin" if layout == "py" else "py", per_batch=20, n_test=30, seed=7)
    again = load_cifar10(other)
    assert torch.equal(data.x_train, again.x_train) and torch.equal(data.y_test, again.y_test)


def test_cifar10_missing_says_where_to_put_it(tmp_path):
    with pytest.raises(DatasetError, match="cifar-10-batches-py/ .* or the binary cifar-10-batches-bin/"):
        load_dataset(ImageDatasetSpec(dataset="cifar10"), data_dir=tmp_path)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_cifar_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    folder = make_cifar10(tmp_path, "py", per_batch=5, n_test=5)
    marker = tmp_path / "ran"
    batch = {b"data": np.zeros((5, 3072), np.uint8), b"labels": [0] * 5, b"hook": _RunsCode(marker)}
    (folder / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(UnsafeData, match=r"data_batch_3 asks to run (posix|os)\.system .* nothing in it ran"):
        load_cifar10(tmp_path)
    assert not marker.exists() and UnsafeData.reason == "unsafe_data"


class _Reduces:
    """Pickles as whatever __reduce__ returns, to write hostile files."""

    def __init__(self, reduced):
        self.reduced = reduced

    def __reduce__(self):
        return self.reduced


def _hostile_batches():
    """Files that stay inside the admitted names but abuse them: numpy's own state for an
    object dtype (pointers read from the file), a shape far larger than its bytes (a huge
    uninitialised allocation), and a codec that doubles its input at every level."""
    import codecs

    reconstruct = np.core.multiarray._reconstruct if hasattr(np, "core") else np._core.multiarray._reconstruct
    objects = _Reduces((reconstruct, (np.ndarray, (0,), b"b"), (1, (4,), np.dtype("O"), False, b"\0" * 32)))
    huge = _Reduces((reconstruct, (np.ndarray, (0,), b"b"), (1, (10**7, 3072), np.dtype("u1"), False, b"")))
    text = "x"
    for _ in range(3):
        text = _Reduces((codecs.encode, (text, "hex")))
    return {
        "object dtype": {b"data": np.zeros((2, 3072), np.uint8), b"labels": objects},
        "huge shape": {b"data": huge, b"labels": [0]},
        "hex codec": {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": text},
    }


@pytest.mark.parametrize("kind", ["object dtype", "huge shape", "hex codec"])
def test_a_cifar_pickle_that_abuses_what_is_admitted_is_refused(tmp_path, kind):
    folder = make_cifar10(tmp_path, "py", per_batch=5, n_test=5)
    (folder / "data_batch_2").write_bytes(pickle.dumps(_hostile_batches()[kind], protocol=2))
    with pytest.raises(
        UnsafeData, match="data_batch_2: (dtype 'O8'|an array of shape|a bytes object).* nothing in it ran"
    ):
        load_cifar10(tmp_path)


def test_cifar_arrays_pickled_with_protocol_5_are_read(tmp_path):
    folder = make_cifar10(tmp_path, "py", per_batch=5, n_test=5)
    images = np.arange(5 * 3072, dtype=np.uint8).reshape(5, 3072)
    (folder / "data_batch_4").write_bytes(pickle.dumps({b"data": images, b"labels": [1] * 5}, protocol=5))
    data = load_cifar10(tmp_path)
    assert np.array_equal(data.x_train[15:20].numpy().reshape(5, -1), images)


def test_cifar10_spec_limits_resize_and_channels(cifar_dir):
    spec = job(data={"dataset": "cifar10", "limit_train": 50, "limit_test": 20, "resize": 16})
    data = load_dataset(spec.data, data_dir=cifar_dir)
    assert (len(data.x_train), len(data.x_test)) == (50, 20)
    assert spec_problems(spec, data.info) == []
    bad = job(data={"dataset": "cifar10", "normalize": {"mean": [0.5], "std": [0.2]}})
    assert [p.loc for p in spec_problems(bad, data.info)] == [("data", "normalize", "mean")]


@pytest.mark.slow
def test_colour_classes_of_equal_brightness_need_colour(tmp_path):
    """Grey can only guess; with colour kept, LeNet tells them apart."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 60)
    images = colour_images(labels * 3, rng)  # three colours of equal luminance, far apart on the circle
    files = {}
    for i, (label, image) in enumerate(zip(labels, images, strict=True)):
        buffer = io.BytesIO()
        Image.fromarray(image.transpose(1, 2, 0)).save(buffer, format="PNG")
        files[f"{'abc'[label]}/{i}.png"] = buffer.getvalue()
    archive = zip_bytes(files)
    spec = JobSpec.model_validate(
        {
            "model": {"arch": "lenet", "activation": "relu", "pool": "max"},
            "data": {"dataset": "mnist"},
            "optimizer": {"name": "adam", "lr": 0.003},
            "epochs": 12,
            "batch_size": 16,
            "device": "cpu",
        }
    )
    results = {}
    for color in ("auto", "grayscale"):
        dataset = decode_archive(archive, name="c", color=color, test_fraction=0.3).dataset
        recorder = Recorder()
        fit(spec, recorder, data_dir=tmp_path, dataset=dataset)
        results[color] = recorder.epochs[-1].test_acc
    assert results["auto"] >= 0.95, results
    assert results["grayscale"] <= 0.6, results


def test_dataset_normalisation_is_measured_on_the_training_split(cifar_dir):
    data = load_dataset(
        job(data={"dataset": "cifar10", "normalize": "dataset", "val_fraction": 0.2}).data, data_dir=cifar_dir
    )
    mean, std = channel_stats(data.x_train)
    assert data.contract.mean == pytest.approx(mean) and data.contract.std == pytest.approx(std)
    inputs = data.to_float(data.x_train)
    assert inputs.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (inputs.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3
    explicit = load_dataset(
        job(data={"dataset": "cifar10", "normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}}).data, data_dir=cifar_dir
    )
    assert explicit.to_float(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)).flatten().tolist() == [2.0] * 3


def test_predict_sees_an_image_as_the_jobs_own_evaluation_did(cifar_dir, tmp_path):
    """The contract in the checkpoint decodes and normalises a PNG of a test image exactly as
    the job's evaluation prepared it from the dataset."""
    from models.checkpoint import write_checkpoint

    spec = job(data={"dataset": "cifar10", "normalize": "dataset"}, epochs=1)
    result = fit(spec, Recorder(), data_dir=cifar_dir)
    run = result.run
    path = tmp_path / "c.safetensors"
    write_checkpoint(path, run.model.state_dict(), {**run.model_meta(), "epoch": 1})
    predictor = Predictor.from_checkpoint(path)
    images = run.dataset.x_test[:8]
    with torch.inference_mode():
        run.model.eval()
        want = torch.softmax(run.model(run.dataset.to_float(images)), dim=1)
    pngs = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image.numpy().transpose(1, 2, 0)).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    got = predictor.probabilities(
        torch.from_numpy(np.stack([predictor.decode_pixels(p, "x.png", max_pixels=10**6) for p in pngs]))
    )
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


AUGMENT = {"random_crop": {"padding": 4}, "horizontal_flip": True, "color_jitter": {"brightness": 0.3, "hue": 0.05}}


def test_augmentation_changes_training_batches_only_and_is_seeded():
    spec = AugmentSpec.model_validate(AUGMENT)
    x = torch.from_numpy(colour_images(np.arange(16), np.random.default_rng(1)))
    a = Augmenter(spec, seed=3, image_shape=(3, 32, 32))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    one = a(x, epoch=1, batch=0)
    assert torch.equal(torch.get_rng_state(), before)  # the global generator is left alone
    assert one.shape == x.shape and one.dtype == torch.uint8 and not torch.equal(one, x)
    assert torch.equal(one, Augmenter(spec, seed=3, image_shape=(3, 32, 32))(x, epoch=1, batch=0))
    assert not torch.equal(one, a(x, epoch=1, batch=1)) and not torch.equal(one, a(x, epoch=2, batch=0))
    # Each image draws its own crop and flip: not every image of the batch moves alike.
    shifted = [not torch.equal(one[i], x[i]) for i in range(16)]
    assert any(shifted)
    for extra in (
        {"random_resized_crop": {"scale": [0.5, 1.0]}},
        {"trivial_augment": True},
        {"random_crop": {"padding": 2, "size": 24}},
    ):
        out = Augmenter(AugmentSpec.model_validate(extra), 0, (3, 32, 32))(x, epoch=1, batch=0)
        assert out.shape == x.shape and out.dtype == torch.uint8


@pytest.mark.slow
def test_augmented_training_is_reproducible_and_resumes_exactly(cifar_dir):
    spec = job(data={"dataset": "cifar10", "augment": AUGMENT}, epochs=2)
    full = trace(spec, cifar_dir)
    assert trace(spec, cifar_dir) == full
    assert trace(job(epochs=2), cifar_dir) != full
    # 10 batches and an evaluation's one an epoch: the 13th poll is part-way through epoch 2
    stopped = fit(spec, StopAt(13), data_dir=cifar_dir)
    position = stopped.stopped_at
    assert position.epoch == 2 and position.progress.batches == 1
    resume = stopped.run.state(position)
    torch.manual_seed(999)
    rest = Recorder()
    fit(spec, rest, data_dir=cifar_dir, resume=resume)
    train_loss, _, test_acc = full[-1]
    assert rest.epochs[-1].train_loss == pytest.approx(train_loss, rel=1e-6)
    assert rest.epochs[-1].test_acc == test_acc


def test_a_bad_augmentation_parameter_names_its_path():
    from pydantic import ValidationError

    from models.spec.explain import input_loc

    document = {"model": {"arch": "lenet"}, "data": {"dataset": "cifar10", "augment": {"random_crop": {"padding": -1}}}}
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(document)
    assert [input_loc(document, e["loc"]) for e in caught.value.errors()] == [
        ("data", "augment", "random_crop", "padding")
    ]
    with pytest.raises(ValidationError, match="choose one of random_crop and random_resized_crop"):
        job(data={"dataset": "cifar10", "augment": {"random_crop": {}, "random_resized_crop": {}}})

import gzip

import numpy as np
import pytest
import torch

from models.data.dataset import DatasetError
from models.data.idx import read_idx
from models.data.loading import load_dataset
from models.spec.job import ImageDatasetSpec, SyntheticLinearSpec
from tests.support.datagen import make_idx_dataset, write_idx


def test_read_idx_plain_and_gzipped(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    plain = write_idx(tmp_path / "a-idx3-ubyte", array, gz=False)
    gz = write_idx(tmp_path / "b-idx3-ubyte", array, gz=True)
    np.testing.assert_array_equal(read_idx(plain), array)
    np.testing.assert_array_equal(read_idx(gz), array)


def test_read_idx_rejects_bad_magic_and_wrong_length(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04" + b"\0" * 10)
    with pytest.raises(DatasetError, match="magic"):
        read_idx(bad)
    good = write_idx(tmp_path / "short", np.zeros((4, 2, 2), np.uint8), gz=False)
    good.write_bytes(good.read_bytes()[:-3])
    with pytest.raises(DatasetError, match="header"):
        read_idx(good)
    broken_gz = tmp_path / "broken.gz"
    broken_gz.write_bytes(gzip.compress(b"x" * 100)[:20])
    with pytest.raises(DatasetError, match="gzip"):
        read_idx(broken_gz)


def test_mnist_from_plain_idx_files(tmp_path):
    make_idx_dataset(tmp_path, "MNIST", n_train=50, n_test=20, gz=False)
    data = load_dataset(ImageDatasetSpec(dataset="mnist"), data_dir=tmp_path)
    assert data.x_train.shape == (50, 1, 28, 28) and data.x_train.dtype == torch.uint8
    assert data.y_test.shape == (20,) and data.y_test.dtype == torch.int64
    assert data.classes == tuple("0123456789") and data.input_shape == (1, 28, 28)
    batch = data.to_float(data.x_train[:4])
    assert batch.dtype == torch.float32 and 0.0 <= float(batch.min()) and float(batch.max()) <= 1.0


def test_missing_dataset_says_where_the_files_go(tmp_path):
    with pytest.raises(DatasetError) as info:
        load_dataset(ImageDatasetSpec(dataset="fashion-mnist"), data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message
    assert "t10k-labels-idx1-ubyte" in message and "TRAINYARD_ALLOW_DOWNLOAD" in message


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST/raw"), ("cifar10", "")])
def test_a_failed_download_is_invalid_data_saying_where_the_files_go(tmp_path, no_network, name, folder):
    with pytest.raises(DatasetError) as info:
        load_dataset(ImageDatasetSpec(dataset=name), data_dir=tmp_path, allow_download=True)
    message = str(info.value)
    assert no_network  # it did try, since it was allowed to
    assert info.value.reason == "invalid_data" and "download failed" in message
    assert f"in {tmp_path / folder}" in message and "TRAINYARD_ALLOW_DOWNLOAD" not in message


def test_labels_out_of_range_are_rejected(tmp_path):
    raw = make_idx_dataset(tmp_path, "MNIST", n_train=20, n_test=10, gz=False)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.full(10, 12, np.uint8), gz=False)
    with pytest.raises(DatasetError, match="labels go up to 12; mnist has 10 classes"):
        load_dataset(ImageDatasetSpec(dataset="mnist"), data_dir=tmp_path)


def test_dataset_is_decoded_once_and_reloaded_when_files_change(tmp_path):
    make_idx_dataset(tmp_path, "MNIST", n_train=30, n_test=10, gz=False)
    first = load_dataset(ImageDatasetSpec(dataset="mnist"), data_dir=tmp_path)
    again = load_dataset(ImageDatasetSpec(dataset="mnist"), data_dir=tmp_path)
    assert again.x_train.data_ptr() == first.x_train.data_ptr()
    make_idx_dataset(tmp_path, "MNIST", n_train=40, n_test=10, gz=False, seed=3)
    changed = load_dataset(ImageDatasetSpec(dataset="mnist"), data_dir=tmp_path)
    assert len(changed.x_train) == 40


def test_limits_and_validation_split(tmp_path):
    make_idx_dataset(tmp_path, "MNIST", n_train=100, n_test=40, gz=False)
    data = load_dataset(
        ImageDatasetSpec(dataset="mnist", limit_train=80, limit_test=10, val_fraction=0.25), data_dir=tmp_path, seed=1
    )
    assert len(data.x_train) == 60 and len(data.x_val) == 20 and len(data.x_test) == 10
    same = load_dataset(
        ImageDatasetSpec(dataset="mnist", limit_train=80, limit_test=10, val_fraction=0.25), data_dir=tmp_path, seed=1
    )
    assert torch.equal(data.y_val, same.y_val)


def test_synthetic_linear_follows_the_true_weights():
    spec = SyntheticLinearSpec(
        dataset="synthetic-linear", num_examples=500, num_test=100, true_w=[2.0, -3.4], true_b=4.2, noise=0.0
    )
    data = load_dataset(spec, data_dir=".", seed=0)
    assert data.task == "regression" and data.classes is None
    assert data.x_train.shape == (500, 2) and data.y_train.shape == (500, 1) and len(data.x_test) == 100
    expected = data.x_train @ torch.tensor([2.0, -3.4]) + 4.2
    torch.testing.assert_close(data.y_train.squeeze(1), expected)
    again = load_dataset(spec, data_dir=".", seed=0)
    assert torch.equal(again.x_train, data.x_train)
    other = load_dataset(spec, data_dir=".", seed=1)
    assert not torch.equal(other.x_train, data.x_train)


@pytest.mark.parametrize("dataset", ["synthetic-linear", "synthetic-polynomial"])
def test_synthetic_noise_is_the_residual_spread(dataset):
    import math

    from models.spec.job import SyntheticPolynomialSpec

    def residual_std(noise):
        if dataset == "synthetic-linear":
            spec = SyntheticLinearSpec(dataset=dataset, num_examples=4000, true_w=[1.5], true_b=0.5, noise=noise)
            data = load_dataset(spec, data_dir=".", seed=0)
            clean = data.x_train * 1.5 + 0.5
        else:
            spec = SyntheticPolynomialSpec(dataset=dataset, n_train=4000, coefficients=[1.0, 2.0, 3.0], noise=noise)
            data = load_dataset(spec, data_dir=".", seed=0)
            x = data.x_train
            clean = 1.0 + 2.0 * x + 3.0 * x**2 / math.factorial(2)
        return float((data.y_train - clean).std())

    assert residual_std(0.0) < 1e-5
    assert abs(residual_std(0.3) - 0.3) < 0.02

import pytest
from pydantic import ValidationError

from models.spec import JobSpec, spec_problems

BASE = {"model": {"arch": "mlp"}, "data": {"dataset": "fashion-mnist"}}


def spec(**overrides) -> JobSpec:
    return JobSpec.model_validate({**BASE, **overrides})


def test_canonical_spec_from_the_design_parses():
    parsed = JobSpec.model_validate({
        "name": "lenet-fashion",
        "model": {"arch": "lenet", "activation": "sigmoid", "init": "xavier"},
        "data": {"dataset": "fashion-mnist", "val_fraction": 0.0},
        "optimizer": {"name": "sgd", "lr": 0.9, "momentum": 0.0, "weight_decay": 0.0},
        "epochs": 10, "batch_size": 256, "seed": 0, "device": "auto",
    })
    assert parsed.model.arch == "lenet" and parsed.model.pool == "avg"
    assert parsed.task == "classification"


def test_defaults_fill_in():
    parsed = spec()
    assert parsed.model.hidden == [256] and parsed.model.activation == "relu"
    assert parsed.optimizer.lr == 0.1 and parsed.epochs == 10 and parsed.device == "auto"


def test_scalar_dropout_applies_to_every_hidden_layer():
    assert spec(model={"arch": "mlp", "hidden": [64, 32], "dropout": 0.5}).model.dropout == [0.5, 0.5]
    assert spec(model={"arch": "mlp", "hidden": [64, 32], "dropout": [0.2]}).model.dropout == [0.2, 0.2]


@pytest.mark.parametrize("overrides", [
    {"model": {"arch": "mlp", "dropout": 1.5}},
    {"model": {"arch": "mlp", "hidden": []}},
    {"model": {"arch": "mlp", "hidden": [0]}},
    {"model": {"arch": "mlp", "hidden": [10], "dropout": [0.1, 0.1]}},
    {"model": {"arch": "lenet", "pool": "median"}},
    {"model": {"arch": "softmax_regression", "init": "he"}},
    {"model": {"arch": "softmax_regression", "hidden": [3]}},
    {"optimizer": {"lr": 0}},
    {"optimizer": {"name": "adam"}},
    {"optimizer": {"momentum": 1.0}},
    {"batch_size": 0},
    {"seed": -1},
    {"device": "cuda:x"},
    {"name": "x" * 201},
    {"data": {"dataset": "synthetic-linear", "true_w": []}},
    {"data": {"dataset": "fashion-mnist", "num_examples": 5}},
])
def test_nonsense_is_rejected(overrides):
    with pytest.raises(ValidationError):
        spec(**overrides)


def test_devices_accepted():
    for device in ("auto", "cpu", "cuda", "cuda:1"):
        assert spec(device=device).device == device


def test_model_and_dataset_must_agree():
    assert spec_problems(spec()) == []
    problems = spec_problems(spec(model={"arch": "linear_regression"}))
    assert problems[0].loc == ("model", "arch") and "regression" in problems[0].msg
    problems = spec_problems(spec(data={"dataset": "synthetic-linear"}))
    assert problems[0].loc == ("model", "arch")
    ok = JobSpec.model_validate({"model": {"arch": "linear_regression"}, "data": {"dataset": "synthetic-linear"}})
    assert ok.task == "regression" and spec_problems(ok) == []


def test_spec_round_trips_through_json():
    original = spec(model={"arch": "mlp", "hidden": [32], "dropout": 0.1}, seed=7)
    assert JobSpec.model_validate(original.model_dump(mode="json")) == original

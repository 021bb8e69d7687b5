import json

import pytest
from pydantic import ValidationError

from models.spec.job import JobSpec
from models.spec.problems import DatasetInfo, builtin_dataset_info, spec_problems

BASE = {"model": {"arch": "mlp"}, "data": {"dataset": "fashion-mnist"}}
IMAGES = DatasetInfo("classification", (1, 28, 28), 10, images=True)


def spec(**overrides) -> JobSpec:
    return JobSpec.model_validate({**BASE, **overrides})


def problems(**overrides) -> list[tuple]:
    parsed = spec(**overrides)
    return [(p.loc, p.msg) for p in spec_problems(parsed, builtin_dataset_info(parsed.data) or IMAGES)]


def test_canonical_spec_from_the_design_parses():
    parsed = JobSpec.model_validate(
        {
            "name": "lenet-fashion",
            "model": {"arch": "lenet", "activation": "sigmoid", "init": "xavier"},
            "data": {"dataset": "fashion-mnist", "val_fraction": 0.0},
            "optimizer": {"name": "sgd", "lr": 0.9, "momentum": 0.0, "weight_decay": 0.0},
            "epochs": 10,
            "batch_size": 256,
            "seed": 0,
            "device": "auto",
        }
    )
    assert parsed.model.arch == "lenet" and parsed.model.pool == "avg"
    assert spec_problems(parsed, IMAGES) == []


def test_defaults_fill_in():
    parsed = spec()
    assert parsed.model.hidden == [256] and parsed.model.activation == "relu"
    assert parsed.optimizer.lr == 0.1 and parsed.epochs == 10 and parsed.device == "auto"
    assert parsed.schedule.name == "none" and parsed.early_stopping is None and not parsed.optimizer.decay_bias


def test_scalar_dropout_applies_to_every_hidden_layer():
    assert spec(model={"arch": "mlp", "hidden": [64, 32], "dropout": 0.5}).model.dropout == [0.5, 0.5]
    assert spec(model={"arch": "mlp", "hidden": [64, 32], "dropout": [0.2]}).model.dropout == [0.2, 0.2]


@pytest.mark.parametrize(
    "overrides, loc",
    [
        ({"model": {"arch": "mlp", "dropout": 1.5}}, ("model", "mlp", "dropout", 0)),
        ({"model": {"arch": "mlp", "hidden": []}}, ("model", "mlp", "hidden")),
        ({"model": {"arch": "mlp", "hidden": [0]}}, ("model", "mlp", "hidden", 0)),
        ({"model": {"arch": "mlp", "hidden": [10], "dropout": [0.1, 0.1]}}, ("model", "mlp")),
        ({"model": {"arch": "mlp", "activation": "swish"}}, ("model", "mlp", "activation")),
        ({"model": {"arch": "lenet", "pool": "median"}}, ("model", "lenet", "pool")),
        ({"model": {"arch": "softmax_regression", "init": "he"}}, ("model", "softmax_regression", "init")),
        ({"model": {"arch": "softmax_regression", "hidden": [3]}}, ("model", "softmax_regression", "hidden")),
        ({"model": {"arch": "polynomial", "degree": 0}}, ("model", "polynomial", "degree")),
        ({"model": {"arch": "sequential", "layers": []}}, ("model", "sequential", "layers")),
        ({"model": {"arch": "sequential", "layers": [{"type": "conv3d"}]}}, ("model", "sequential", "layers", 0)),
        (
            {"model": {"arch": "sequential", "layers": [{"type": "linear"}]}},
            ("model", "sequential", "layers", 0, "linear", "out_features"),
        ),
        ({"optimizer": {"lr": 0}}, ("optimizer", "lr")),
        ({"optimizer": {"lr": -0.1}}, ("optimizer", "lr")),
        ({"optimizer": {"name": "rmsprop"}}, ("optimizer", "name")),
        ({"optimizer": {"momentum": 1.0}}, ("optimizer", "momentum")),
        ({"optimizer": {"name": "adam", "momentum": 0.9}}, ("optimizer",)),
        ({"optimizer": {"nesterov": True}}, ("optimizer",)),
        ({"optimizer": {"l1": -1}}, ("optimizer", "l1")),
        ({"schedule": {"name": "exponential"}}, ("schedule", "name")),
        ({"schedule": {"name": "step", "gamma": 2}}, ("schedule", "gamma")),
        ({"early_stopping": {"metric": "f1"}}, ("early_stopping", "metric")),
        ({"early_stopping": {"patience": 0}}, ("early_stopping", "patience")),
        ({"max_runtime_seconds": 0}, ("max_runtime_seconds",)),
        ({"cross_validation": {"folds": 1}}, ("cross_validation", "folds")),
        ({"batch_size": 0}, ("batch_size",)),
        ({"seed": -1}, ("seed",)),
        ({"device": "cuda:x"}, ("device",)),
        ({"name": "x" * 201}, ("name",)),
        ({"data": {"dataset": "synthetic-linear", "true_w": []}}, ("data", "synthetic-linear", "true_w")),
        ({"data": {"dataset": "fashion-mnist", "num_examples": 5}}, ("data", "fashion-mnist", "num_examples")),
        ({"data": {"dataset": "fashion-mnist", "resize": 4}}, ("data", "fashion-mnist", "resize")),
        (
            {"data": {"dataset": "synthetic-polynomial", "coefficients": []}},
            ("data", "synthetic-polynomial", "coefficients"),
        ),
        ({"data": {"dataset": "uploaded:../../etc"}}, ("data", "uploaded", "dataset")),
        ({"data": {"dataset": "imagenet"}}, ("data",)),
    ],
)
def test_nonsense_is_rejected_naming_the_field(overrides, loc):
    with pytest.raises(ValidationError) as info:
        spec(**overrides)
    assert loc in [tuple(e["loc"]) for e in info.value.errors()], info.value.errors()


def test_devices_accepted():
    for device in ("auto", "cpu", "cuda", "cuda:1"):
        assert spec(device=device).device == device


def test_model_and_dataset_must_agree():
    assert problems() == []
    [(loc, said)] = problems(model={"arch": "linear_regression"})
    assert loc == ("model", "arch") and said.endswith(
        "use softmax_regression, mlp, lenet, resnet18, pretrained or sequential"
    )
    rows = spec(model={"arch": "linear_regression"}, data={"dataset": "uploaded:0a1b2c3d-0000-4000-8000-000000000000"})
    [tabular_problem] = spec_problems(rows, DatasetInfo("classification", (4,), 3, images=False))
    assert tabular_problem.msg.endswith("use softmax_regression, mlp or sequential")  # no image-only network
    assert problems(model={"arch": "lenet"}, data={"dataset": "synthetic-linear"})[0][0] == ("model", "arch")
    assert problems(model={"arch": "polynomial"}, data={"dataset": "synthetic-linear", "true_w": [1, 2]})[0][0] == (
        "model",
        "arch",
    )
    assert problems(model={"arch": "polynomial", "degree": 20}, data={"dataset": "synthetic-polynomial"}) == []
    assert problems(model={"arch": "mlp"}, data={"dataset": "synthetic-linear"}) == []  # MLP regression is fine
    tabular = DatasetInfo("classification", (4,), 3, images=False)
    resized = spec(data={"dataset": "uploaded:0a1b2c3d-0000-4000-8000-000000000000", "resize": 32})
    assert [p.loc for p in spec_problems(resized, tabular)] == [("data", "resize")]


def test_option_combinations_that_cannot_work():
    rising = problems(optimizer={"lr": 0.1}, schedule={"name": "cosine", "min_lr": 1.0})
    assert [loc for loc, _ in rising] == [("schedule", "min_lr")] and "would raise the learning rate" in rising[0][1]
    assert problems(optimizer={"lr": 0.1}, schedule={"name": "cosine", "min_lr": 0.01}) == []
    assert problems(early_stopping={"metric": "val_loss"})[0][0] == ("early_stopping", "metric")
    assert problems(early_stopping={"metric": "val_loss"}, data={"dataset": "fashion-mnist", "val_fraction": 0.1}) == []
    regression = {"model": {"arch": "linear_regression"}, "data": {"dataset": "synthetic-linear"}}
    assert problems(**regression, early_stopping={"metric": "test_acc"})[0][0] == ("early_stopping", "metric")


def test_sequential_stacks_are_shape_checked_layer_by_layer():
    lenet_like = [
        {"type": "conv2d", "out_channels": 6, "kernel_size": 5, "padding": 2},
        {"type": "sigmoid"},
        {"type": "avgpool2d", "kernel_size": 2, "stride": 2},
        {"type": "flatten"},
        {"type": "linear", "out_features": 10},
    ]
    assert problems(model={"arch": "sequential", "layers": lenet_like}) == []
    too_big = [{"type": "maxpool2d", "kernel_size": 2}] * 5 + [{"type": "conv2d", "out_channels": 4, "kernel_size": 3}]
    ((loc, msg),) = problems(
        model={"arch": "sequential", "layers": too_big + [{"type": "flatten"}, {"type": "linear", "out_features": 10}]}
    )
    assert loc == ("model", "layers", 4) and "layer 4 (maxpool2d) gets input (1, 1, 1)" in msg
    ((loc, msg),) = problems(
        model={"arch": "sequential", "layers": lenet_like[:-1] + [{"type": "linear", "out_features": 7}]}
    )
    assert loc == ("model", "layers", 4) and "outputs (7) per example" in msg and "needs (10)" in msg
    ((loc, msg),) = problems(model={"arch": "sequential", "layers": [{"type": "linear", "out_features": 10}]})
    assert loc == ("model", "layers", 0) and "put a flatten before it" in msg
    ((loc, msg),) = problems(
        model={
            "arch": "sequential",
            "layers": [{"type": "flatten"}, {"type": "conv2d", "out_channels": 3, "kernel_size": 3}],
        }
    )
    assert loc == ("model", "layers", 1) and "(784)" in msg


def test_spec_round_trips_through_json():
    original = spec(
        model={"arch": "mlp", "hidden": [32], "dropout": 0.1},
        seed=7,
        schedule={"name": "cosine"},
        data={"dataset": "uploaded:0a1b2c3d-0000-4000-8000-000000000000", "resize": 32},
    )
    assert JobSpec.model_validate(original.model_dump(mode="json")) == original
    assert original.resize == 32 and original.data.dataset_id.startswith("0a1b2c3d")


def test_input_loc_is_the_path_as_sent():
    from models.spec.explain import input_loc

    sent = {"model": {"arch": "mlp", "dropout": [1.5]}, "data": {"dataset": "mnist"}}
    assert input_loc(sent, ("model", "mlp", "dropout", 0)) == ("model", "dropout", 0)
    assert input_loc(sent, ("model", "mlp")) == ("model",)  # a check of the whole model
    assert input_loc(sent, ("epochs",), missing=True) == ("epochs",)
    assert input_loc(sent, ("model", "mlp", "hidden"), missing=True) == ("model", "hidden")


def test_augmentation_and_explicit_normalisation_are_for_images_only():
    from models.spec.problems import DatasetInfo, spec_problems

    table = DatasetInfo("classification", (4,), 2, images=False)
    uploaded = "uploaded:12345678-1234-1234-1234-123456789abc"
    spec = JobSpec.model_validate(
        {
            "model": {"arch": "mlp"},
            "data": {"dataset": uploaded, "normalize": "dataset", "augment": {"horizontal_flip": True}},
        }
    )
    assert [p.loc for p in spec_problems(spec, table)] == [("data", "augment")]  # columns may be standardised
    explicit = JobSpec.model_validate(
        {"model": {"arch": "mlp"}, "data": {"dataset": uploaded, "normalize": {"mean": [0.5], "std": [0.2]}}}
    )
    [problem] = spec_problems(explicit, table)
    assert problem.loc == ("data", "normalize") and "give normalize dataset" in problem.msg
    plain = JobSpec.model_validate({"model": {"arch": "mlp"}, "data": {"dataset": uploaded}})
    assert spec_problems(plain, table) == []


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_a_number_json_cannot_hold_is_refused_where_it_is(text):
    """Python's JSON decoder takes NaN and Infinity; an answer that echoed them could not be encoded."""
    data = '{"dataset": "synthetic-linear", "true_b": %s}' % text
    sent = json.loads('{"model": {"arch": "linear_regression"}, "data": %s}' % data)
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(sent)
    assert [e["loc"] for e in info.value.errors()] == [("data", "synthetic-linear", "true_b")]

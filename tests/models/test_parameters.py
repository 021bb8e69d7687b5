"""A model's learned parameters as people read them, and the error against synthetic data's weights."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from models.inference.parameters import estimation_error, parameter_views
from models.nets.archs import build_model
from models.spec.job import JobSpec
from models.training.engine import fit


def linear(weights: list[float], bias: float) -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(len(weights), 1))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([weights]))
        model[1].bias.fill_(bias)
    return model


def test_each_tensor_is_given_whole_while_small_else_by_its_statistics():
    views = parameter_views(linear([3.0, -4.0], 0.5), max_values=1)
    assert [(v.name, v.shape, v.count) for v in views] == [("1.weight", [1, 2], 2), ("1.bias", [1], 1)]
    weight, bias = views
    assert weight.values is None and bias.values == [0.5]
    assert (weight.mean, weight.std, weight.min, weight.max, weight.norm) == (-0.5, 3.5, -4.0, 3.0, 5.0)
    assert bias.std == 0.0  # one number: no Bessel correction to divide by zero
    assert parameter_views(linear([3.0, -4.0], 0.5))[0].values == [[3.0, -4.0]]


def test_a_diverged_weight_is_null_not_an_invalid_json_number():
    views = parameter_views(linear([math.nan, math.inf], 1.0))
    assert views[0].values == [[None, None]] and views[0].mean is None and views[0].norm is None
    assert views[1].values == [1.0] and views[1].mean == 1.0


def spec(**data) -> JobSpec:
    return JobSpec.model_validate(
        {
            "model": {"arch": "linear_regression"},
            "data": {"dataset": "synthetic-linear", "true_w": [2, -3.4], "true_b": 4.2, **data},
        }
    )


def test_the_error_is_true_minus_learned_for_each_weight_and_the_bias():
    error = estimation_error(spec(), linear([1.5, -3.0], 4.0))
    assert (error.weight, error.bias, error.true_w, error.true_b) == ("1.weight", "1.bias", [2.0, -3.4], 4.2)
    assert error.w_error == pytest.approx([0.5, -0.4]) and error.b_error == pytest.approx(0.2)


def test_a_trained_linear_regression_is_close_to_the_weights_that_made_its_data():
    trained = spec(num_examples=1000, noise=0.01).model_copy(update={"epochs": 3, "batch_size": 10})
    model = fit(trained, data_dir=".").run.model
    error = estimation_error(trained, model)
    assert max(abs(e) for e in error.w_error) < 0.01 and abs(error.b_error) < 0.01
    untrained = build_model(trained.model, (2,), 1)
    assert max(abs(e) for e in estimation_error(trained, untrained).w_error) > 0.5


@pytest.mark.parametrize(
    "degree, true_w, unfitted",
    [
        (4, [1.2, -3.4, 0.0, 0.0], 0),  # over-fitting's: weights of 0 to learn past the data's degree
        (1, [1.2, -3.4], 1),  # under-fitting's: no weight for x^2 / 2!, compared as 0
    ],
)
def test_a_polynomial_is_compared_with_every_coefficient_of_the_data_or_the_model(degree, true_w, unfitted):
    job = JobSpec.model_validate(
        {
            "model": {"arch": "polynomial", "degree": degree},
            "data": {"dataset": "synthetic-polynomial", "coefficients": [5.0, 1.2, -3.4]},
        }
    )
    model = build_model(job.model, (1,), 1)
    with torch.no_grad():
        model[1].weight.fill_(1.0)
        model[1].bias.zero_()
    error = estimation_error(job, model)
    assert error.true_w == true_w and error.true_b == 5.0 and error.unfitted == unfitted
    learned = [1.0] * degree + [0.0] * unfitted
    assert error.w_error == pytest.approx([t - w for t, w in zip(true_w, learned, strict=True)])
    assert error.w_error_max == pytest.approx(max(abs(t - w) for t, w in zip(true_w, learned, strict=True)))


def test_a_long_weight_vector_is_told_by_the_size_of_its_error_past_the_values_asked_for():
    job = spec(true_w=[0.01] * 200)
    error = estimation_error(job, linear([0.0] * 200, 4.2), max_values=100)
    assert error.true_w is None and error.w_error is None and error.true_b == 4.2
    assert error.w_error_norm == pytest.approx(0.01 * 200**0.5) and error.w_error_max == pytest.approx(0.01)


@pytest.mark.parametrize(
    "model, data",
    [
        ({"arch": "mlp", "hidden": [4]}, {"dataset": "synthetic-linear"}),  # two linear layers: no one w
        ({"arch": "linear_regression"}, {"dataset": "fashion-mnist"}),  # nothing generated it
    ],
)
def test_nothing_is_compared_where_no_one_layer_learns_the_generating_weights(model, data):
    job = JobSpec.model_validate({"model": model, "data": data})
    shape = (2,) if data["dataset"].startswith("synthetic") else (1, 28, 28)
    assert estimation_error(job, build_model(job.model, shape, 1)) is None

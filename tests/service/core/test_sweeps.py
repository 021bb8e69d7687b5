"""Sweep requests in-process: how trials are generated and where a bad one is reported."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from models.spec import JobSpec
from service.core.sweeps import SweepSpec, _problems, label, trial_spec

BASE = {"model": {"arch": "mlp"}, "data": {"dataset": "fashion-mnist"}, "optimizer": {"lr": 0.1}}


def test_a_grid_is_every_combination_in_order():
    sweep = SweepSpec(name="g", base=BASE, grid={"optimizer.lr": [0.1, 0.5], "model.dropout": [[0.0], [0.5]]})
    assert sweep.trials() == [{"optimizer.lr": 0.1, "model.dropout": [0.0]}, {"optimizer.lr": 0.1, "model.dropout": [0.5]},
                              {"optimizer.lr": 0.5, "model.dropout": [0.0]}, {"optimizer.lr": 0.5, "model.dropout": [0.5]}]


def test_random_draws_follow_the_seed_and_stay_in_range():
    def draws(seed):
        return SweepSpec(name="r", base=BASE, random={"count": 20, "seed": seed, "distributions": {
            "optimizer.lr": {"log_uniform": [1e-4, 1]}, "epochs": {"integer": [1, 3]},
            "model.activation": {"choice": ["relu", "tanh"]}, "optimizer.momentum": {"uniform": [0, 0.9]}}}).trials()

    assert draws(1) == draws(1) != draws(2)
    for trial in draws(1):
        assert 1e-4 <= trial["optimizer.lr"] <= 1 and trial["epochs"] in (1, 2, 3)
        assert trial["model.activation"] in ("relu", "tanh") and 0 <= trial["optimizer.momentum"] <= 0.9


def test_a_trial_spec_sets_nested_values_without_touching_the_base():
    spec = trial_spec(BASE, "s", {"optimizer.weight_decay": 3, "model.init": "xavier", "early_stopping.patience": 2})
    assert spec["optimizer"] == {"lr": 0.1, "weight_decay": 3} and spec["model"]["init"] == "xavier"
    assert spec["early_stopping"] == {"patience": 2} and "weight_decay" not in BASE["optimizer"]
    assert spec["name"] == "s [weight_decay=3, init=xavier, patience=2]"
    assert label({"optimizer.lr": 0.123456}) == "lr=0.1235"


@pytest.mark.parametrize("request_body, message", [
    ({"name": "x", "base": BASE}, "either grid or random"),
    ({"name": "x", "base": BASE, "grid": {"optimizer.lr": [0.1]}, "random": {"count": 1, "distributions": {
        "epochs": {"integer": [1, 2]}}}}, "either grid or random"),
    ({"name": "x", "base": BASE, "grid": {p: list(range(10)) for p in ("epochs", "seed", "batch_size")}}, "more than 256"),
    ({"name": "x", "base": BASE, "random": {"count": 2, "distributions": {"epochs": {"integer": [3, 1]}}}}, "above high"),
    ({"name": "x", "base": BASE, "random": {"count": 2, "distributions": {"epochs": {}}}}, "exactly one"),
    ({"name": "x", "base": BASE, "grid": {"Optimizer LR": [1]}}, "pattern"),
])
def test_malformed_requests_are_refused(request_body, message):
    with pytest.raises(ValidationError, match=message):
        SweepSpec.model_validate(request_body)


@pytest.mark.parametrize("grid, where, value", [
    ({"optimizer.lr": [-1]}, ("body", "grid", "optimizer.lr"), "value -1:"),
    ({"model.activation": ["swish"]}, ("body", "grid", "model.activation"), "value 'swish':"),  # inside a tagged union
    ({"model.dropout": [[2.0]]}, ("body", "grid", "model.dropout"), "value [2.0]:"),
    ({"model.bogus": [1]}, ("body", "grid", "model.bogus"), "value 1: Extra inputs"),
])
def test_a_bad_value_is_reported_at_its_varied_path(grid, where, value):
    sweep = SweepSpec(name="x", base=BASE, grid=grid)
    params = sweep.trials()[0]
    spec = trial_spec(sweep.base, sweep.name, params)
    with pytest.raises(ValidationError) as bad:
        JobSpec.model_validate(spec)
    ((loc, msg), *_) = _problems(sweep, spec, params, bad.value)
    assert loc == where and msg.startswith(value)


def test_a_bad_base_value_is_reported_in_base_without_union_tags():
    sweep = SweepSpec(name="x", base={**BASE, "model": {"arch": "mlp", "hidden": "wide"}}, grid={"epochs": [1]})
    params = sweep.trials()[0]
    spec = trial_spec(sweep.base, sweep.name, params)
    with pytest.raises(ValidationError) as bad:
        JobSpec.model_validate(spec)
    assert _problems(sweep, spec, params, bad.value)[0][0] == ("body", "base", "model", "hidden")

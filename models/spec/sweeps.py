"""Sweeps, the pure half: the request (one base job spec, some values varied: a grid, random draws,
or TPE's choices), its trials' values, each trial's job spec, and a trial's label.

No SQL, no HTTP and no Optuna: core/sweeps.py checks, stores, launches and ranks the trials, and
core/studies.py keeps the Optuna study of a sweep that samples by TPE or prunes."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import random
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from models.spec.job import StrictModel

MAX_TRIALS = 256
RANKABLE = ("test_acc", "test_loss", "val_acc", "val_loss", "train_acc", "train_loss")
Path = Annotated[str, Field(pattern=r"^[a-z_]+(\.[a-z0-9_]+){0,5}$", max_length=100)]


class Distribution(StrictModel):
    """Exactly one of: uniform [low, high], log_uniform [low, high] (both > 0), integer [low,
    high] (inclusive), choice [values]."""

    uniform: Annotated[tuple[float, float] | None, Field(strict=False)] = None
    log_uniform: Annotated[
        tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] | None, Field(strict=False)
    ] = None
    integer: Annotated[tuple[int, int] | None, Field(strict=False)] = None
    choice: Annotated[list[Any], Field(min_length=1, max_length=100)] | None = None

    @model_validator(mode="after")
    def _one(self) -> Distribution:
        given = [name for name in ("uniform", "log_uniform", "integer", "choice") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of uniform, log_uniform, integer, choice")
        bounds = self.uniform or self.log_uniform or self.integer
        if bounds is not None and bounds[0] > bounds[1]:
            raise ValueError(f"{given[0]}: low {bounds[0]} is above high {bounds[1]}")
        return self

    def draw(self, rng: random.Random):
        if self.uniform is not None:
            return rng.uniform(*self.uniform)
        if self.log_uniform is not None:
            return math.exp(rng.uniform(math.log(self.log_uniform[0]), math.log(self.log_uniform[1])))
        if self.integer is not None:
            return rng.randint(*self.integer)
        return rng.choice(self.choice)

    def extremes(self) -> list:
        """The values a trial's spec is checked at before a sampler draws: both bounds, or every choice."""
        bounds = self.uniform or self.log_uniform or self.integer
        return list(bounds) if bounds is not None else list(self.choice)


class RandomSearch(StrictModel):
    distributions: Annotated[dict[Path, Distribution], Field(min_length=1, max_length=20)]
    count: Annotated[int, Field(ge=1, le=MAX_TRIALS)]
    seed: int = 0


class TpeSearch(RandomSearch):
    """Optuna's TPE sampler over the same distributions: after `startup_trials` random draws, each
    trial is drawn where the better trials so far were."""

    startup_trials: Annotated[int, Field(ge=0, le=MAX_TRIALS)] = 10


class PrunerSpec(StrictModel):
    """Stops trials that are doing badly after an epoch, by the sweep's metric at that epoch.

    asha: asynchronous successive halving; at epochs min_epochs * reduction_factor^k, a trial goes
    on only if it is in the best 1/reduction_factor of the trials that reached that epoch.
    hyperband: several successive-halving brackets, from aggressive to none.
    median: after min_epochs, a trial stops if its best value so far is worse than the median of
    the other trials' at the same epoch (once `startup_trials` trials have ended)."""

    name: Literal["asha", "hyperband", "median"]
    min_epochs: Annotated[int, Field(ge=1, le=10_000)] = 1
    reduction_factor: Annotated[int, Field(ge=2, le=100)] = 3
    startup_trials: Annotated[int, Field(ge=0, le=MAX_TRIALS)] | None = None

    @model_validator(mode="after")
    def _startup_for_median(self) -> PrunerSpec:
        if self.startup_trials is not None and self.name != "median":
            raise ValueError("startup_trials applies to the median pruner only")
        return self


class SweepSpec(StrictModel):
    """A sweep request: `base` is a job spec; `grid` maps dotted spec paths to the values to try
    (every combination), `random` draws `count` trials from distributions, or `tpe` draws them one
    by one where the best trials so far were. Any of them may have a `pruner`. `name` is optional."""

    name: Annotated[str, Field(min_length=1, max_length=200)] = "sweep"  # else its base spec's name (_named)
    base: dict
    grid: (
        Annotated[
            dict[Path, Annotated[list[Any], Field(min_length=1, max_length=64)]], Field(min_length=1, max_length=10)
        ]
        | None
    ) = None
    random: RandomSearch | None = None
    tpe: TpeSearch | None = None
    pruner: PrunerSpec | None = None
    # What ranks the jobs (each job's best epoch); default: validation accuracy (loss for regression)
    # when the trials hold out a validation split, else the test set's.
    metric: Literal[RANKABLE] | None = None
    mode: Literal["min", "max"] | None = None
    max_parallel: Annotated[int, Field(ge=1, le=MAX_TRIALS)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _named(cls, data):
        """A sweep left unnamed takes its base spec's name, else "sweep" (its trials are named after it)."""
        if isinstance(data, dict) and "name" not in data:
            base = data.get("base")
            named = isinstance(base, dict) and isinstance(base.get("name"), str) and base["name"].strip()
            if named:
                data = {**data, "name": base["name"][:200]}
        return data

    @model_validator(mode="after")
    def _one_search(self) -> SweepSpec:
        if sum(search is not None for search in (self.grid, self.random, self.tpe)) != 1:
            raise ValueError("give one of grid, random or tpe")
        if self.grid is not None and math.prod(len(v) for v in self.grid.values()) > MAX_TRIALS:
            raise ValueError(f"the grid has more than {MAX_TRIALS} combinations")
        return self

    @property
    def varied(self) -> str:
        return "grid" if self.grid is not None else "random" if self.random is not None else "tpe"

    @property
    def size(self) -> int:
        return self.tpe.count if self.tpe is not None else len(self.trials())

    def datasets(self, pending: list[dict], undrawn: int = 0) -> set[str]:
        """The datasets that trials of the values `pending` train on, and those `undrawn` trials,
        which TPE has yet to draw, may."""

        def dataset_of(spec) -> str | None:
            data = spec.get("data") if isinstance(spec, dict) else None
            return data.get("dataset") if isinstance(data, dict) else None

        found = [dataset_of(trial_spec(self.base, self.name, params)) for params in pending]
        if undrawn and self.tpe is not None:
            varied = self.tpe.distributions
            if "data.dataset" in varied:
                found += varied["data.dataset"].choice or []
            elif "data" in varied:
                found += [dataset_of({"data": value}) for value in varied["data"].choice or []]
            else:
                found.append(dataset_of(self.base))
        return {reference for reference in found if isinstance(reference, str)}

    @property
    def adaptive(self) -> bool:
        """Whether an Optuna study takes part: it samples (tpe) or it prunes."""
        return self.tpe is not None or self.pruner is not None

    def trials(self) -> list[dict]:
        """Each trial's values, {dotted path: value}, in a stable order (TPE's: none, drawn as
        trials end)."""
        if self.tpe is not None:
            return []
        if self.grid is not None:
            paths = list(self.grid)
            return [dict(zip(paths, values, strict=False)) for values in itertools.product(*self.grid.values())]
        rng = random.Random(self.random.seed)
        return [
            {path: dist.draw(rng) for path, dist in self.random.distributions.items()} for _ in range(self.random.count)
        ]

    def checked_trials(self) -> list[dict]:
        """The values each trial's spec is checked at: every trial's, or, for TPE, each varied
        path at each of its extremes (the other paths at their first)."""
        if self.tpe is None:
            return self.trials()
        extremes = {path: dist.extremes() for path, dist in self.tpe.distributions.items()}
        first = {path: values[0] for path, values in extremes.items()}
        checked = [first]
        for path, values in extremes.items():
            checked += [{**first, path: value} for value in values[1:]]
        return checked

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


def _set(spec: dict, path: str, value) -> None:
    node = spec
    for key in path.split(".")[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ValueError(f"{key} is not an object in the base spec")
        node = child
    node[path.rsplit(".", 1)[-1]] = value


def trial_spec(base: dict, name: str, params: dict) -> dict:
    """The base spec with a trial's values set, named after them."""
    spec = copy.deepcopy(base)
    for path, value in params.items():
        _set(spec, path, value)
    spec["name"] = f"{name} [{label(params)}]"[:200]
    return spec


def _leaves(spec: dict, prefix: str = "") -> dict[str, Any]:
    """A spec's values by dotted path (`optimizer.lr`); a list is one value."""
    leaves = {}
    for key, value in spec.items():
        if isinstance(value, dict) and value:
            leaves.update(_leaves(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


def differences(specs: list[dict]) -> list[dict[str, Any]]:
    """Per spec, its values at the paths where `specs` do not all agree, the name left out: what tells
    compared jobs apart, as a sweep's trials are told apart by their values (None where a spec has no
    such field)."""
    leaves = [_leaves(spec) for spec in specs]
    paths = sorted({path for spec in leaves for path in spec if path != "name"})
    differing = [path for path in paths if len({json.dumps(spec.get(path), sort_keys=True) for spec in leaves}) > 1]
    return [{path: spec.get(path) for path in differing} for spec in leaves]


def label(params: dict) -> str:
    """A trial's values in a few characters: `weight_decay=3, lr=0.1`."""
    return ", ".join(f"{path.rsplit('.', 1)[-1]}={short_value(value)}" for path, value in params.items())


def short_value(value) -> str:
    """A trial's value as the CLI and the dashboard show it: a float to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value) if not isinstance(value, str) else value

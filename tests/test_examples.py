"""Every example spec is valid, listed in the docs, and the synthetic ones reproduce the course."""

from __future__ import annotations

import json

import pytest
import torch

from models.spec.job import JobSpec
from models.spec.problems import DatasetInfo, builtin_dataset_info, spec_problems
from models.training.engine import fit
from service.cli.sample_data import SHAPES
from tests.support.servers import REPO

EXAMPLES = sorted((REPO / "examples").glob("*.json"))


def docs_text() -> str:
    """The README and the pages of docs/, where the examples are listed."""
    return "\n".join(page.read_text() for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])


def dataset_info(spec: JobSpec) -> DatasetInfo:
    """What the spec's dataset is: a built-in one, or the sample dataset (`trainyard sample-data`)
    that the quickstart uploads as `shapes`."""
    if spec.data.dataset == "uploaded:shapes":
        return DatasetInfo("classification", (1, 28, 28), len(SHAPES), images=True)
    info = builtin_dataset_info(spec.data)
    assert info is not None, f"{spec.data.dataset}: an example trains on a built-in dataset or the sample one"
    return info


def example(name: str) -> JobSpec:
    return JobSpec.model_validate(json.loads((REPO / "examples" / f"{name}.json").read_text()))


def final(name: str):
    result = fit(example(name), data_dir=".")
    return result.run.history[-1], result.run.model


def test_there_is_an_example_per_experiment():
    names = {path.stem for path in EXAMPLES}
    assert {
        "linear-regression",
        "softmax-regression",
        "mlp",
        "mlp-dropout",
        "weight-decay",
        "polynomial-fit",
        "polynomial-underfit",
        "polynomial-overfit",
        "lenet",
        "lenet-sequential",
        "resnet18",
        "mlp-kfold",
    } <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_is_valid_and_listed_in_the_docs(path):
    spec = JobSpec.model_validate(json.loads(path.read_text()))
    assert spec_problems(spec, dataset_info(spec)) == []
    assert f"examples/{path.name}" in docs_text()


def test_linear_regression_recovers_the_true_weights():
    _, model = final("linear-regression")
    linear = model[1]
    for got, want in zip(linear.weight.detach().squeeze().tolist(), [-6, 3.2, 10.5], strict=True):
        assert abs(got - want) < 0.05
    assert abs(float(linear.bias.detach()) - 1.7) < 0.05


@pytest.mark.slow
def test_polynomial_examples_fit_underfit_and_overfit():
    fitted, model = final("polynomial-fit")
    assert fitted.train_loss < 0.02 and fitted.test_loss < 0.02
    torch.testing.assert_close(model[1].weight.detach().squeeze(), torch.tensor([1.2, -3.4, 5.6]), atol=0.1, rtol=0)
    assert abs(float(model[1].bias.detach()) - 5.0) < 0.1
    under, _ = final("polynomial-underfit")
    assert under.train_loss > 100 * fitted.train_loss and under.test_loss > 100 * fitted.test_loss
    over, _ = final("polynomial-overfit")
    assert over.test_loss > 5 * over.train_loss


@pytest.mark.slow
def test_weight_decay_example_beats_no_decay():
    decayed, _ = final("weight-decay")
    plain_spec = example("weight-decay").model_copy(deep=True)
    plain_spec.optimizer.weight_decay = 0.0
    plain = fit(plain_spec, data_dir=".").run.history[-1]
    assert plain.train_loss < decayed.train_loss  # without decay it memorises the 20 examples...
    assert decayed.test_loss < plain.test_loss / 10  # ...and generalises far worse


SWEEPS = sorted((REPO / "examples" / "sweeps").glob("*.json"))


def test_there_is_a_sweep_per_comparison_the_course_makes():
    assert {"weight-decay", "polynomial-degree", "dropout", "activation", "initialisation"} <= {p.stem for p in SWEEPS}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_example_is_valid_and_listed_in_the_docs(path):
    from models.spec.sweeps import SweepSpec, trial_spec

    sweep = SweepSpec.model_validate(json.loads(path.read_text()))
    trials = sweep.checked_trials()  # a TPE sweep's: each distribution's extremes
    assert len(trials) >= 2
    for params in trials:
        spec = JobSpec.model_validate(trial_spec(sweep.base, sweep.name, params))
        assert spec_problems(spec, builtin_dataset_info(spec.data)) == []
    assert f"trainyard sweep examples/sweeps/{path.name}" in docs_text()


@pytest.mark.slow
def test_the_polynomial_degree_sweep_underfits_fits_and_overfits():
    """Its degree 20 trained on 100 examples ended with train and test loss alike: the docs promised
    over-fitting, which 10 examples show (as examples/polynomial-overfit.json does)."""
    from models.spec.sweeps import SweepSpec, trial_spec

    sweep = SweepSpec.model_validate(json.loads((REPO / "examples" / "sweeps" / "polynomial-degree.json").read_text()))
    ended = {
        params["model.degree"]: fit(
            JobSpec.model_validate(trial_spec(sweep.base, sweep.name, params)), data_dir="."
        ).run.history[-1]
        for params in sweep.trials()
    }
    assert ended[1].test_loss > 10 * ended[3].test_loss  # under-fitting
    assert ended[20].test_loss > 5 * ended[20].train_loss and ended[20].test_loss > 5 * ended[3].test_loss  # over


def test_an_installed_package_carries_the_examples(tmp_path):
    """The dashboard's submit form reads the examples as package data, so a wheel must hold them
    (built from a copy of the sources: the build writes beside them)."""
    import shutil
    import subprocess
    import sys
    import zipfile

    from service.api.routers.dashboard import _examples

    source = tmp_path / "source"
    for name in ("service", "workers", "models", "migrations"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
        timeout=120,
    )
    [wheel] = (tmp_path / "dist").glob("trainyard-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    examples = REPO / "examples"
    assert {f"service/examples/{path.relative_to(examples)}" for path in EXAMPLES + SWEEPS} - shipped == set()
    assert _examples() == sorted(path.stem for path in EXAMPLES) + sorted(f"sweeps/{path.stem}" for path in SWEEPS)

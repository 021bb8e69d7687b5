"""Adaptive sweeps through the running service: a pruner stops the losing trials of a grid after
their first epoch, TPE draws each trial as the one before ends (the same draws for the same seed),
and a sweep goes on where it was after its API and worker are killed."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import optuna
import pytest

from service.core import studies
from service.core.settings import Settings
from tests.e2e.test_sweep_runs import BASE, wait_for_sweep
from tests.support.backends import embedded_only
from tests.support.servers import Stack, wait_until

pytestmark = pytest.mark.e2e

ASHA = {"name": "asha", "min_epochs": 1, "reduction_factor": 3}


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


def study(stack, sweep_id: str) -> optuna.Study:
    settings = Settings(home=stack.home, database_url=stack.database_url)
    try:
        return optuna.load_study(study_name=studies.study_name(sweep_id), storage=studies.storage(settings))
    finally:
        studies.close()


@embedded_only
def test_the_pruner_stops_losing_trials_after_their_first_epoch(stack, client):
    body = {
        "name": "pruned-lr",
        "base": {**BASE, "epochs": 3},
        "grid": {"optimizer.lr": [0.5, 0.0001, 0.00001]},
        "metric": "test_acc",
        "pruner": ASHA,
        "max_parallel": 1,
    }
    created = client.post("/v1/sweeps", json=body)
    assert created.status_code == 202, created.text
    assert (created.json()["search"], created.json()["pruner"]) == ("grid", "asha")
    done = wait_for_sweep(stack, client, created.json()["id"])
    assert done["status"] == "succeeded" and done["counts"] == {"succeeded": 1, "pruned": 2}, done
    by_lr = {j["params"]["optimizer.lr"]: j for j in done["jobs"]}
    assert (by_lr[0.5]["status"], by_lr[0.5]["epochs"]) == ("succeeded", 3)
    assert done["best"]["job_id"] == by_lr[0.5]["job_id"] and done["epochs_spent"] == 5
    for lr in (0.0001, 0.00001):
        assert (by_lr[lr]["status"], by_lr[lr]["epochs"]) == ("pruned", 1)  # worse than the first at epoch 1
        job = client.get(f"/v1/jobs/{by_lr[lr]['job_id']}").json()
        assert (job["status"], job["reason"], job["epoch"]) == ("pruned", "pruned_by_asha", 1)
        assert job["best_checkpoint"]["epoch"] == 1  # its checkpoint is kept like any job's
    states = sorted(t.state.name for t in study(stack, done["id"]).trials)
    assert states == ["COMPLETE", "PRUNED", "PRUNED"]
    for picture in ("history.png", "importances.png", "compare.png"):
        answer = client.get(f"/v1/sweeps/{done['id']}/{picture}")
        assert answer.status_code == 200 and answer.content.startswith(b"\x89PNG"), picture
    shown = stack.cli("sweeps", "show", done["id"][:8])
    assert shown.returncode == 0 and shown.stdout.count("pruned") >= 2, shown.stdout + shown.stderr


def test_tpe_draws_each_trial_as_the_last_ends_and_again_for_the_same_seed(stack, client):
    body = {
        "name": "tpe-lr",
        "base": {**BASE, "epochs": 1},
        "max_parallel": 1,
        "tpe": {
            "count": 3,
            "seed": 11,
            "startup_trials": 1,
            "distributions": {"optimizer.lr": {"log_uniform": [1e-3, 1]}},
        },
    }
    first = client.post("/v1/sweeps", json=body).json()
    assert (first["search"], first["launched"], first["counts"]["pending"]) == ("tpe", 1, 2), first
    assert [j["params"] for j in first["jobs"] if j["status"] == "pending"] == [{}, {}]  # not drawn yet
    second = client.post("/v1/sweeps", json=body).json()
    draws = []
    for sweep in (first, second):
        done = wait_for_sweep(stack, client, sweep["id"])
        assert done["status"] == "succeeded" and done["launched"] == 3
        draws.append(sorted((j["trial"], j["params"]["optimizer.lr"]) for j in done["jobs"]))
        assert [t.state.name for t in study(stack, sweep["id"]).trials] == ["COMPLETE"] * 3
    assert draws[0] == draws[1] and len({lr for _, lr in draws[0]}) == 3
    importances = client.get(f"/v1/sweeps/{first['id']}/importances").json()
    assert (importances["trials"], importances["importances"]) == (3, {})  # from 5 (test_studies.py)


def test_an_adaptive_sweep_goes_on_after_its_api_and_worker_are_killed(tmp_path, data_dir):
    slow = {**BASE, "epochs": 2, "data": {"dataset": "fashion-mnist", "limit_train": 2000}, "batch_size": 16}
    body = {
        "name": "through-restarts",
        "base": slow,
        "max_parallel": 1,
        "pruner": ASHA,
        "tpe": {"count": 3, "seed": 2, "distributions": {"optimizer.lr": {"log_uniform": [1e-3, 0.5]}}},
    }
    stack = Stack(home=tmp_path / "home", data_dir=data_dir)
    with stack:
        with stack.client() as client:
            sweep = client.post("/v1/sweeps", json=body).json()
            first = sweep["jobs"][0]["job_id"] or next(j["job_id"] for j in sweep["jobs"] if j["job_id"])
            wait_until(
                lambda: client.get(f"/v1/jobs/{first}").json()["epoch"] >= 1, timeout=120, what="the first epoch"
            )
        servers = stack.api_server_pids()
        assert servers, "the API supervisor has no server process"
        for name in ("worker", "api"):  # both at once, mid-trial
            os.killpg(stack.procs[name].pid, signal.SIGKILL)
            stack.procs[name].wait()
        wait_until(  # the API processes of a supervisor killed outright stop too
            lambda: not any(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in servers),
            timeout=20,
            what=f"API processes {servers} to stop",
        )
        stack.start()
        with stack.client() as client:
            done = wait_for_sweep(stack, client, sweep["id"], timeout=300)
    assert done["status"] == "succeeded" and done["launched"] == 3, done
    trials = study(stack, sweep["id"]).trials
    assert len(trials) == 3 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)  # none asked twice
    assert sorted(j["trial"] for j in done["jobs"]) == [0, 1, 2]

"""Sweeps through the running service: a grid ranked, random draws reproduced, bad values refused
before anything is created, and a sweep cancelled with its jobs."""

from __future__ import annotations

import itertools

import pytest

from tests.support.backends import embedded_only
from tests.support.datagen import make_idx_dataset
from tests.support.servers import Stack, wait_until
from tests.support.specs import SOFTMAX_SPEC

pytestmark = pytest.mark.e2e

BASE = {**SOFTMAX_SPEC, "epochs": 2, "data": {"dataset": "fashion-mnist", "limit_train": 1000, "limit_test": 200}}
SLOW_BASE = {
    "model": {"arch": "lenet", "activation": "relu", "pool": "max"},
    "data": {"dataset": "fashion-mnist"},
    "optimizer": {"name": "sgd", "lr": 0.05},
    "epochs": 3,
    "batch_size": 4,
    "device": "cpu",
}


def wait_for_sweep(stack, client, sweep_id, states=("succeeded", "failed", "cancelled"), timeout=240) -> dict:
    def done():
        sweep = client.get(f"/v1/sweeps/{sweep_id}").json()
        return sweep if sweep["status"] in states else None

    return wait_until(done, timeout=timeout, interval=0.25, what=f"sweep {sweep_id} to end\n{stack.logs()}")


def test_a_grid_runs_every_combination_and_ranks_them(stack, client):
    grid = {"optimizer.lr": [0.01, 0.5], "optimizer.weight_decay": [0, 0.05]}
    body = {"name": "lr-by-decay", "base": BASE, "grid": grid, "metric": "test_acc", "mode": "max", "max_parallel": 2}
    created = client.post("/v1/sweeps", json=body, headers={"Idempotency-Key": f"grid-{stack.port}"})
    assert created.status_code == 202, created.text
    sweep = created.json()
    assert created.headers["location"] == f"/v1/sweeps/{sweep['id']}"
    # max_parallel held two back (launched by this request or the reaper's pass, the answer counts both)
    assert (sweep["trials"], sweep["launched"], sweep["status"]) == (4, 2, "running")
    assert sweep["counts"]["pending"] == 2
    again = client.post("/v1/sweeps", json=body, headers={"Idempotency-Key": f"grid-{stack.port}"})
    assert again.json()["id"] == sweep["id"] and again.headers["idempotent-replayed"] == "true"

    done = wait_for_sweep(stack, client, sweep["id"])
    assert done["status"] == "succeeded" and done["launched"] == 4 and done["counts"] == {"succeeded": 4}
    combos = sorted((j["params"]["optimizer.lr"], j["params"]["optimizer.weight_decay"]) for j in done["jobs"])
    assert combos == sorted(itertools.product(*grid.values()))
    for entry in done["jobs"]:
        job = client.get(f"/v1/jobs/{entry['job_id']}").json()
        assert job["sweep_id"] == sweep["id"] and job["spec"]["optimizer"]["lr"] == entry["params"]["optimizer.lr"]
        assert entry["metric"] == job["best_metrics"]["test_acc"]  # of the epoch job:<id> serves
    metrics = [j["metric"] for j in done["jobs"]]
    assert metrics == sorted(metrics, reverse=True) and done["best"] == done["jobs"][0]
    picture = client.get(f"/v1/sweeps/{sweep['id']}/compare.png")
    assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")
    assert sweep["id"] in [s["id"] for s in client.get("/v1/sweeps").json()["data"]]

    gone = done["jobs"][-1]["job_id"]
    assert client.delete(f"/v1/jobs/{gone}").status_code == 204
    after = client.get(f"/v1/sweeps/{sweep['id']}").json()
    assert after["counts"] == {"succeeded": 3, "deleted": 1} and after["launched"] == 4  # not launched again


@embedded_only
def test_a_random_sweep_with_a_seed_draws_the_same_trials(stack, client):
    body = {
        "name": "random",
        "base": BASE,
        "max_parallel": 1,
        "random": {
            "count": 3,
            "seed": 7,
            "distributions": {"optimizer.lr": {"log_uniform": [0.001, 1]}, "batch_size": {"choice": [16, 32, 64]}},
        },
    }
    first, second = (client.post("/v1/sweeps", json=body).json() for _ in range(2))
    other = client.post("/v1/sweeps", json={**body, "random": {**body["random"], "seed": 8}}).json()
    for sweep in (first, second, other):
        client.post(f"/v1/sweeps/{sweep['id']}/cancel")

    def draws(sweep):
        return sorted((j["trial"], j["params"]["optimizer.lr"], j["params"]["batch_size"]) for j in sweep["jobs"])

    assert draws(first) == draws(second) != draws(other)
    assert all(0.001 <= lr <= 1 and size in (16, 32, 64) for _, lr, size in draws(first))


@embedded_only
def test_an_invalid_value_is_a_422_naming_it_and_creates_nothing(stack, client):
    jobs_before = client.get("/v1/jobs").json()["count"]
    sweeps_before = client.get("/v1/sweeps").json()["count"]
    refused = client.post("/v1/sweeps", json={"name": "bad", "base": BASE, "grid": {"optimizer.lr": [0.1, -1]}})
    assert refused.status_code == 422, refused.text
    (problem,) = refused.json()["detail"]
    assert problem["loc"] == ["body", "grid", "optimizer.lr"] and "-1" in problem["msg"]
    unknown = client.post(
        "/v1/sweeps", json={"name": "bad", "base": {**BASE, "data": {"dataset": "nope"}}, "grid": {"epochs": [1, 2]}}
    )
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"][:2] == ["body", "base"]
    neither = client.post("/v1/sweeps", json={"name": "bad", "base": BASE})
    assert neither.status_code == 422 and "one of grid, random or tpe" in neither.text
    assert client.get("/v1/jobs").json()["count"] == jobs_before
    assert client.get("/v1/sweeps").json()["count"] == sweeps_before


def test_cancelling_a_sweep_cancels_its_jobs_and_launches_no_more(stack, client):
    body = {"name": "to-cancel", "base": SLOW_BASE, "grid": {"seed": [1, 2, 3]}, "max_parallel": 1}
    sweep = client.post("/v1/sweeps", json=body).json()
    running = (
        sweep["jobs"][0]["job_id"]
        if sweep["jobs"][0]["job_id"]
        else next(j["job_id"] for j in sweep["jobs"] if j["job_id"])
    )
    stack.wait_for_job(client, running, states=("running",))
    cancelled = client.post(f"/v1/sweeps/{sweep['id']}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    assert stack.wait_for_job(client, running, states=("cancelled",))["reason"] == "user_cancelled"
    after = client.get(f"/v1/sweeps/{sweep['id']}").json()
    assert after["launched"] == 1 and after["counts"] == {"cancelled": 3}  # 1 job, 2 trials never launched
    again = client.post(f"/v1/sweeps/{sweep['id']}/cancel")
    assert again.status_code == 202 and again.json()["cancelled_at"] == after["cancelled_at"]
    assert client.post("/v1/sweeps/00000000-0000-0000-0000-000000000000/cancel").status_code == 404


def test_a_sweep_on_a_dataset_its_worker_lacks_stops_once_three_trials_failed_alike(stack, client):
    """MNIST is in no data folder: the answer warns, the worker fails three trials with one
    invalid_data error, and the sweep launches none of the others."""
    base = {**BASE, "data": {"dataset": "mnist"}}
    body = {"name": "no-data", "base": base, "grid": {"seed": [1, 2, 3, 4, 5, 6]}, "max_parallel": 1}
    created = client.post("/v1/sweeps", json=body)
    assert created.status_code == 202 and "mnist" in created.json()["warnings"][0], created.text
    done = wait_for_sweep(stack, client, created.json()["id"])
    assert done["status"] == "failed" and done["launched"] == 3, done
    assert done["counts"] == {"failed": 3, "cancelled": 3}
    assert done["stopped"].startswith("trials 0, 1 and 2 failed alike (invalid_data: "), done["stopped"]
    assert {entry["reason"] for entry in done["jobs"] if entry["job_id"]} == {"invalid_data"}
    page = client.get(f"/ui/sweeps/{done['id']}").text
    assert 'id="stopped"' in page and 'id="compare"' not in page  # no epoch trained: no empty pictures
    trial = client.get(f"/ui/jobs/{done['jobs'][0]['job_id']}").text
    assert f'<a id="sweep" href="/ui/sweeps/{done["id"]}">' in trial  # a trial's page leads to its sweep
    (error,) = {entry["error"] for entry in done["jobs"] if entry["job_id"]}  # each failed trial says why
    assert "mnist" in error.lower() and done["stopped"].startswith(
        f"trials 0, 1 and 2 failed alike (invalid_data: {error})"
    )


def test_a_stopped_sweep_resumes_once_its_cause_is_fixed(tmp_path):
    """On a stack of its own, whose data folder can gain MNIST without other tests seeing it: the
    sweep stops for want of MNIST's files; they are put in place; `sweeps resume --follow` runs its
    failed and cancelled trials again, and every trial succeeds."""
    data = tmp_path / "data"
    data.mkdir()
    with Stack(home=tmp_path / "home", data_dir=data) as stack, stack.client() as client:
        base = {**BASE, "data": {"dataset": "mnist"}}
        body = {"name": "resumed", "base": base, "grid": {"seed": [1, 2, 3, 4]}, "max_parallel": 1}
        stopped = wait_for_sweep(stack, client, client.post("/v1/sweeps", json=body).json()["id"])
        assert stopped["stopped"] and stopped["counts"] == {"failed": 3, "cancelled": 1}, stopped
        make_idx_dataset(data, "MNIST", n_train=200, n_test=50, gz=False)
        resumed = stack.cli("sweeps", "resume", stopped["id"][:8], "--follow", timeout=240)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        after = client.get(f"/v1/sweeps/{stopped['id']}").json()
        assert after["status"] == "succeeded" and after["counts"] == {"succeeded": 4} and after["stopped"] is None
        ran_again = {entry["job_id"] for entry in stopped["jobs"] if entry["job_id"]}  # the failed trials' jobs
        assert len(ran_again) == 3 and ran_again < {entry["job_id"] for entry in after["jobs"]}
        assert client.post(f"/v1/sweeps/{stopped['id']}/resume").status_code == 409  # nothing left to run

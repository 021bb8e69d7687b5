"""No spec can take the machine down: refused at submit by its cost, and bounded while it trains."""

from __future__ import annotations

import os
import signal

import pytest

from tests.support.backends import embedded_only
from tests.support.servers import Stack, wait_until

pytestmark = pytest.mark.e2e

HUGE = {"model": {"arch": "mlp", "hidden": [65536, 65536]}, "data": {"dataset": "fashion-mnist"}, "epochs": 1}


@embedded_only
def test_a_spec_of_four_billion_weights_is_refused_with_its_estimate(client):
    jobs_before = client.get("/v1/jobs").json()["count"]
    answer = client.post("/v1/jobs", json=HUGE)
    assert answer.status_code == 422, answer.text
    problems = answer.json()["detail"]
    assert all(problem["loc"] == ["body", "model"] for problem in problems)
    assert "4,347,133,962 parameters" in problems[0]["msg"] and "TRAINYARD_MAX_PARAMETERS" in problems[0]["msg"]
    assert client.get("/v1/jobs").json()["count"] == jobs_before  # nothing was queued


@pytest.fixture(scope="module")
def small_budget(tmp_path_factory, data_dir):
    """API and worker whose jobs may each allocate 96 MiB, writing their warnings and errors only."""
    with Stack(
        home=tmp_path_factory.mktemp("budget"),
        data_dir=data_dir,
        extra_env={
            "TRAINYARD_MAX_JOB_MEMORY": str(96 * 1024**2),
            # The kernel's OOM killer cannot be called safely on a shared machine:
            # the test kills the process itself once it holds a third of its budget.
            "TRAINYARD_OOM_KILL_FRACTION": "0.3",
            "TRAINYARD_LOG_LEVEL": "warning",
        },
    ) as stack:
        yield stack


def test_a_job_past_its_memory_budget_fails_alone_and_the_worker_carries_on(small_budget):
    # 5 million rows of 10 features: 200 MB of data, which its tiny model's estimate does not see.
    greedy = {
        "model": {"arch": "linear_regression"},
        "epochs": 1,
        "data": {"dataset": "synthetic-linear", "num_examples": 5_000_000, "true_w": [1.0] * 10},
    }
    with small_budget.client() as client:
        pool = small_budget.worker_pool_pids()
        job = small_budget.wait_for_job(client, client.post("/v1/jobs", json=greedy).json()["id"])
        assert job["status"] == "failed" and job["reason"] == "out_of_memory", job
        assert "96.0 MiB" in job["error"] and "TRAINYARD_MAX_JOB_MEMORY" in job["error"]
        assert job["attempt"] == 1
        lines = [line["message"] for line in client.get(f"/v1/jobs/{job['id']}/logs").json()["lines"]]
        assert any("attempt 1 of job" in line for line in lines)  # the job's own log keeps its INFO lines
        console = small_budget.log("worker")  # which TRAINYARD_LOG_LEVEL=warning keeps out of the worker's output
        assert "attempt 1 of job" not in console and "registered: queues" not in console, console[-2000:]
        small = {**greedy, "data": {"dataset": "synthetic-linear", "num_examples": 1000}}
        after = small_budget.wait_for_job(client, client.post("/v1/jobs", json=small).json()["id"])
        assert after["status"] == "succeeded", after
        assert small_budget.worker_pool_pids() == pool  # the same training process, not a replacement


def test_a_process_killed_while_it_holds_its_memory_is_out_of_memory_and_not_retried(small_budget):
    """As the kernel's OOM killer would: SIGKILL while the job holds a large share of its budget."""
    holding = {
        "model": {"arch": "linear_regression"},
        "epochs": 50,
        "batch_size": 1,  # a slow job
        "data": {"dataset": "synthetic-linear", "num_examples": 1_000_000, "true_w": [1.0] * 10},
    }
    with small_budget.client() as client:
        job_id = client.post("/v1/jobs", json=holding).json()["id"]
        running = wait_until(
            lambda: (
                (job := client.get(f"/v1/jobs/{job_id}").json())["memory_peak"] and job["memory_peak"] >= 0.3 and job
            ),
            timeout=60,
            what="the job to hold its memory",
        )
        claimed = [t for t in running["transitions"] if t["to_status"] == "running"][-1]
        pid = claimed["detail"]["pid"]
        os.kill(pid, signal.SIGKILL)
        job = small_budget.wait_for_job(client, job_id, timeout=60)
        assert job["status"] == "failed" and job["reason"] == "out_of_memory", job
        assert job["attempt"] == 1 and "not retried" in job["error"]

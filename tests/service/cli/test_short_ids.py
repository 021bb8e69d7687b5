"""The CLI's tables show ids it can take back: 8 characters however narrow the terminal, and the
API takes any unique prefix of 6 or more (tests/service/api/test_ids_and_hints.py)."""

from __future__ import annotations

import io

import httpx
import pytest
from rich.console import Console
from typer.testing import CliRunner

from service.cli import client as cli_client
from service.cli import main as cli_main

JOB = "985ef1ab-0c3d-4e5f-8a9b-0123456789ab"
DATASET = "75190f2c-1111-4222-8333-444455556666"
ANSWERS = {
    "/v1/jobs": {
        "count": 1,
        "data": [
            {
                "id": JOB,
                "name": "a job with a rather long name",
                "status": "succeeded",
                "reason": "early_stopped",
                "epoch": 10,
                "epochs": 10,
                "latest_metrics": {"epoch": 10, "test_acc": 0.8123, "test_loss": 0.5123},
                "best_metrics": {"epoch": 8, "test_acc": 0.8123, "test_loss": 0.5123},
                "created_at": "2026-12-02T13:00:00.123456",
            }
        ],
    },
    "/v1/datasets": {
        "count": 1,
        "data": [
            {
                "id": DATASET,
                "name": "flowers",
                "status": "ready",
                "error": None,
                "kind": "image_folder",
                "input_shape": [3, 64, 64],
                "num_train": 240,
                "num_test": 60,
                "classes": ["daisy", "rose", "tulip"],
            }
        ],
    },
    "/v1/workers": {
        "workers": [
            {
                "id": "celery@a-rather-long-host-name",
                "host": "a-rather-long-host-name",
                "pid": 4242,
                "queues": ["trainyard", "trainyard-gpu"],
                "devices": [{"name": "NVIDIA H200"}],
                "current_job": JOB,
                "last_seen": "2026-12-02T13:00:00",
            }
        ]
    },
}


def answering(monkeypatch, answer, status: int = 200) -> None:
    """The CLI's client talks to a service whose every answer is `answer(path)`."""
    transport = httpx.MockTransport(lambda request: httpx.Response(status, json=answer(request.url.path)))
    monkeypatch.setattr(cli_client, "client", lambda url, token: httpx.Client(base_url=url, transport=transport))


def a_sweep(status: str, trial: dict) -> dict:
    return {
        "id": DATASET,
        "name": "lr",
        "status": status,
        "search": "grid",
        "pruner": None,
        "launched": 1,
        "trials": 2,
        "epochs_spent": 1,
        "mode": "max",
        "metric": "test_acc",
        "jobs": [trial],
    }


@pytest.fixture
def narrow(monkeypatch) -> io.StringIO:
    """A 50-column terminal, and a service answering the list routes."""
    out = io.StringIO()
    monkeypatch.setattr(cli_client, "console", Console(file=out, width=50, color_system=None))
    answering(monkeypatch, ANSWERS.__getitem__)
    return out


@pytest.mark.parametrize(
    "command, shown", [(["jobs", "list"], JOB[:8]), (["datasets", "list"], DATASET[:8]), (["workers"], JOB[:8])]
)
def test_lists_show_whole_eight_character_ids_at_any_width(narrow, command, shown):
    result = CliRunner().invoke(cli_main.app, command)
    assert result.exit_code == 0, result.output
    assert shown in narrow.getvalue(), narrow.getvalue()


def test_the_sweep_table_shows_whole_eight_character_ids():
    out = io.StringIO()
    trial = {
        "trial": 0,
        "job_id": JOB,
        "status": "running",
        "params": {"optimizer.lr": 0.1},
        "epochs": 1,
        "metric": 0.8,
    }
    sweep = a_sweep("running", trial)
    Console(file=out, width=40, color_system=None).print(cli_client.sweep_table(sweep))
    assert JOB[:8] in out.getvalue(), out.getvalue()


def test_names_and_messages_with_brackets_are_shown_as_given(monkeypatch):
    """A sweep's trials are named "name [lr=..., batch_size=...]": the CLI's console reads no
    markup in them (it dropped the brackets and what they held), nor in a warning or an error."""
    out = io.StringIO()
    monkeypatch.setattr(cli_client.console, "file", out)
    monkeypatch.setattr(cli_client.console, "_width", 200)  # the table's name column whole, whatever the terminal
    named = "lr-tpe [lr=0.0001535, batch_size=32]"
    job = {
        **ANSWERS["/v1/jobs"]["data"][0],
        "name": named,
        "status": "failed",
        "reason": "invalid_data",
        "attempt": 1,
        "best_metrics": None,
        "warnings": ["dataset [b]fashion-mnist[/b] is not here"],
        "error": "no such file [red]x[/red]",
    }
    answers = {"/v1/jobs": {"count": 1, "data": [job]}, f"/v1/jobs/{JOB}": job}
    answering(monkeypatch, answers.__getitem__)
    for command in (["jobs", "list"], ["jobs", "show", JOB]):
        result = CliRunner().invoke(cli_main.app, command)
        assert result.exit_code == 0, result.output
    shown = out.getvalue()
    assert shown.count("[lr=0.0001535, batch_size=32]") == 2, shown
    assert "warning: dataset [b]fashion-mnist[/b] is not here" in shown and "error: no such file [red]x[/red]" in shown


def test_a_trial_cancelled_before_it_was_launched_has_no_reason_shown():
    trial = {
        "trial": 0,
        "job_id": None,
        "status": "cancelled",
        "reason": None,
        "params": {},
        "epochs": 0,
        "metric": None,
    }
    sweep = a_sweep("cancelled", trial)
    out = io.StringIO()
    Console(file=out, width=80, color_system=None).print(cli_client.sweep_table(sweep))
    assert "cancelled" in out.getvalue() and "None" not in out.getvalue(), out.getvalue()


def test_a_service_that_fails_to_answer_exits_5_with_its_message(monkeypatch):
    said = "the checkpoint of epoch 5 of job 985ef1ab is missing from s3://files/prod"
    answering(monkeypatch, lambda path: {"detail": said}, status=500)
    result = CliRunner().invoke(cli_main.app, ["jobs", "show", JOB])
    failure = result.exception  # main() prints it on stderr and exits with its code
    assert isinstance(failure, cli_client.Failure) and str(failure) == f"500 {said}"
    assert failure.code == cli_client.SERVICE_FAILED == 5


def test_a_distributed_job_shows_its_processes_and_hosts(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(cli_client.console, "file", out)
    ranks = [{"rank": 0, "host": "trainer-1", "device": "cpu"}, {"rank": 1, "host": "trainer-2", "device": "cpu"}]
    job = {
        **ANSWERS["/v1/jobs"]["data"][0],
        "attempt": 1,
        "best_metrics": None,
        "error": None,
        "environment": {"distributed": {"world_size": 2, "backend": "gloo", "threads_per_process": 1, "ranks": ranks}},
    }
    answering(monkeypatch, lambda path: job)
    assert CliRunner().invoke(cli_main.app, ["jobs", "show", JOB]).exit_code == 0
    assert "distributed: 2 processes (gloo, 1 thread(s) each) on trainer-1, trainer-2" in out.getvalue()
    # Two workers of one host (loopback) are still two machines to the job.
    ranks[1]["host"] = "trainer-1"
    job["spec"] = {**job.get("spec", {}), "distributed": {"nproc_per_node": 1, "nnodes": 2}}
    assert CliRunner().invoke(cli_main.app, ["jobs", "show", JOB]).exit_code == 0
    assert "distributed: 2 processes (gloo, 1 thread(s) each) on 2 machines (trainer-1)" in out.getvalue()


def test_the_workers_table_says_how_many_processes_each_gives_a_job():
    answer = {"workers": [{**ANSWERS["/v1/workers"]["workers"][0], "processes": 4}]}
    answer["workers"].append({**answer["workers"][0], "id": "old@host", "processes": None})
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(cli_client.workers_table(answer)[0])
    rows = [line.split("│") for line in out.getvalue().splitlines() if "@" in line]
    header = next(line.split("┃") for line in out.getvalue().splitlines() if "processes" in line)
    column = [cell.strip() for cell in header].index("processes")
    assert [row[column].strip() for row in rows] == ["4", "-"], out.getvalue()


def test_the_workers_table_names_the_apis_store_and_any_worker_on_another():
    worker = ANSWERS["/v1/workers"]["workers"][0]
    answer = {
        "store": "s3://files/prod",
        "workers": [
            {**worker, "store": "s3://files/prod/", "same_store": True},  # as the API compares them
            {**worker, "id": "stray@laptop", "store": "file:///x", "same_store": False},
        ],
    }
    assert cli_client.workers_table(answer)[1:] == [
        "2 live worker(s)",
        "store: s3://files/prod",
        "worker stray@laptop uses file:///x",
    ]
    answer["store_problem"] = "this API's store (s3://files/prod) is one the service moved away from ..."
    assert cli_client.workers_table(answer)[3] == f"warning: {answer['store_problem']}"


def test_a_job_may_be_named_as_a_reference_names_it(monkeypatch):
    """`trainyard evaluate job:ID` (its help speaks of job:JOB) asks for the job, not for "job:ID"."""
    asked = []

    def answer(path):
        asked.append(path)
        return ANSWERS[f"/v1/jobs/{JOB}"] if path == f"/v1/jobs/{JOB}" else {"lines": [], "next": 0}

    answering(monkeypatch, answer)
    for command in (["jobs", "show", f"job:{JOB}"], ["logs", f"job:{JOB}"]):
        CliRunner().invoke(cli_main.app, command)
    assert asked == [f"/v1/jobs/{JOB}", f"/v1/jobs/{JOB}/logs"], asked
    for given in (f"job:{JOB}:last", "job:"):  # an epoch's reference, or nothing, is no job
        refused = CliRunner().invoke(cli_main.app, ["evaluate", given], env={"COLUMNS": "200"})
        assert refused.exit_code == cli_client.USAGE and "without an epoch" in refused.output, refused.output
    assert len(asked) == 2


def test_a_queued_jobs_reason_is_said_as_past_and_a_waiting_reason_comes_first(monkeypatch):
    """`queued (storage_unavailable)` read as if it still waited for the store, long after."""
    out = io.StringIO()
    monkeypatch.setattr(cli_client.console, "file", out)
    monkeypatch.setattr(cli_client.console, "_width", 200)
    base = {**ANSWERS["/v1/jobs"]["data"][0], "attempt": 1, "warnings": [], "error": None, "best_metrics": None}
    given_back = {**base, "status": "queued", "reason": "storage_unavailable", "waiting_reason": None}
    silent = {**base, "status": "running", "reason": None, "waiting_reason": "worker_silent"}
    answering(monkeypatch, {f"/v1/jobs/{JOB}": given_back, "/v1/jobs": {"count": 1, "data": [silent]}}.__getitem__)
    assert CliRunner().invoke(cli_main.app, ["jobs", "show", JOB]).exit_code == 0
    assert CliRunner().invoke(cli_main.app, ["jobs", "list"]).exit_code == 0
    shown = out.getvalue()
    assert ": queued (back in the queue after storage_unavailable)\n" in shown, shown
    assert "waiting: worker_silent" in shown, shown


def test_a_running_job_says_which_worker_and_process_train_it():
    """An operator looking for the process to watch (or kill) read it only from --json."""
    job = {
        "id": JOB,
        "name": "long",
        "status": "running",
        "reason": None,
        "error": None,
        "epoch": 3,
        "epochs": 10,
        "attempt": 2,
        "created_at": "2026-12-02T13:00:00",
        "transitions": [
            {"to_status": "running", "detail": {"worker": "old@host", "pid": 11}},
            {"to_status": "queued", "detail": {}},
            {"to_status": "running", "detail": {"worker": "trainyard-7@host", "pid": 4242, "instance": "x"}},
        ],
    }
    assert "running on trainyard-7@host (pid 4242)" in cli_client.job_lines(job)
    assert not [line for line in cli_client.job_lines({**job, "status": "succeeded"}) if "running on" in str(line)]

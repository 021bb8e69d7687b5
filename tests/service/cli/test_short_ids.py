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


@pytest.fixture
def narrow(monkeypatch) -> io.StringIO:
    """A 50-column terminal, and a service answering the list routes."""
    out = io.StringIO()
    monkeypatch.setattr(cli_client, "console", Console(file=out, width=50, color_system=None))
    answer = httpx.MockTransport(lambda request: httpx.Response(200, json=ANSWERS[request.url.path]))
    monkeypatch.setattr(cli_client, "client", lambda url, token: httpx.Client(base_url=url, transport=answer))
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
    sweep = {
        "id": DATASET,
        "name": "lr",
        "status": "running",
        "search": "grid",
        "pruner": None,
        "launched": 1,
        "trials": 2,
        "epochs_spent": 1,
        "mode": "max",
        "metric": "test_acc",
        "jobs": [{"job_id": JOB, "status": "running", "params": {"optimizer.lr": 0.1}, "epochs": 1, "metric": 0.8}],
    }
    Console(file=out, width=40, color_system=None).print(cli_client.sweep_table(sweep))
    assert JOB[:8] in out.getvalue(), out.getvalue()

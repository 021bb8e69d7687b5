"""Every shutdown of a worker, whatever asked for it, leaves the file its running jobs look for
(tests/e2e/test_reliability.py and tests/e2e/test_distributed_jobs.py stop real workers)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import celery
from celery.worker.worker import WorkController

from service.core.broker import app
from workers.stopping import AnnounceShutdown, _restartable, stop_file, worker_stopping


def test_the_worker_starts_the_step_after_its_pool():
    """A worker closes every step before it stops any, and the pool's stop waits for the running
    tasks: the step must be one of the worker's, started once the pool is there."""
    blueprint = WorkController.Blueprint(steps=app.steps["worker"])
    order = [step.name for step in blueprint._finalize_steps(blueprint.claim_steps())]
    assert order.index("workers.stopping.AnnounceShutdown") > order.index("celery.worker.components.Pool"), order


def test_closing_the_step_leaves_the_stop_file_that_the_pool_processes_look_for(service_env, monkeypatch):
    assert not stop_file(os.getpid()).exists()
    AnnounceShutdown(parent=None).close(parent=None)
    assert stop_file(os.getpid()).exists()
    monkeypatch.setattr(os, "getppid", os.getpid)  # as a pool process of this "worker" sees it
    assert worker_stopping()


def test_a_restart_runs_the_command_the_worker_was_started_with(monkeypatch):
    """Celery's SIGHUP restart executes sys.executable with sys.argv: for `python -X dev -m celery`
    that must say `-X dev -m celery`, not celery/__main__.py (celery#4249), and keep -X."""
    main = str(Path(celery.__file__).with_name("__main__.py"))
    arguments = ["-A", "workers.celery_app", "worker", "--pool", "prefork"]
    monkeypatch.setattr(sys, "orig_argv", ["/usr/bin/python3", "-X", "dev", "-W", "error", "-m", "celery", *arguments])
    monkeypatch.setattr(sys, "argv", [main, *arguments])
    _restartable()
    assert sys.argv == ["-X", "dev", "-W", "error", "-m", "celery", *arguments]

    monkeypatch.setattr(sys, "orig_argv", ["/usr/bin/python3", main, *arguments])  # run as a script
    monkeypatch.setattr(sys, "argv", [main, *arguments])
    _restartable()
    assert sys.argv == ["-m", "celery", *arguments]

    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/celery", *arguments])  # celery's own script restarts well
    _restartable()
    assert sys.argv == ["/usr/local/bin/celery", *arguments]

"""Every shutdown of a worker, whatever asked for it, leaves the file its running jobs look for
(tests/e2e/test_reliability.py and tests/e2e/test_distributed_jobs.py stop real workers)."""

from __future__ import annotations

import os

from celery.worker.worker import WorkController

from service.core.broker import app
from workers.stopping import AnnounceShutdown, stop_file, worker_stopping


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

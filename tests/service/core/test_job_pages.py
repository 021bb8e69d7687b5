"""Pages of jobs: a fixed number of SQL statements and no file-system calls, however long the page."""

from __future__ import annotations

import os
import pathlib

import pytest
from sqlalchemy import event

from models.spec.job import JobSpec
from service.api.schemas.jobs import jobs_public
from service.core import job_pages, jobs
from service.core.settings import Settings
from service.core.storage import StoredFile

SPEC = JobSpec.model_validate({"model": {"arch": "mlp"}, "data": {"dataset": "fashion-mnist"}, "epochs": 3})
LEASE = {"lease_seconds": 30, "max_attempts": 3}


def _make_jobs(Session, count: int) -> None:
    """`count` jobs: every other one running with two recorded epochs, the rest queued."""
    with Session() as session:
        for n in range(count):
            job_id = jobs.create_job(session, spec=SPEC, task="classification").id
            if n % 2:
                jobs.claim_job(session, job_id=job_id, worker="w", **LEASE)
                for epoch in (1, 2):
                    jobs.record_epoch(
                        session,
                        job_id=job_id,
                        attempt=1,
                        metrics={"epoch": epoch, "train_loss": 1 / epoch, "test_acc": 0.5},
                        checkpoint=StoredFile("checkpoints/" + f"{job_id}/epoch-000{epoch}.safetensors", 100 * epoch),
                    )
        session.commit()


@pytest.fixture
def file_calls(monkeypatch) -> list[str]:
    """Every os.stat, os.scandir, os.listdir and Path.rglob / Path.iterdir made while it is active."""
    calls = []

    def counted(owner, name):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            calls.append(name)
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    for owner, name in (
        (os, "stat"),
        (os, "scandir"),
        (os, "listdir"),
        (pathlib.Path, "rglob"),
        (pathlib.Path, "iterdir"),
    ):
        counted(owner, name)
    return calls


def _cost(Session, engine, settings: Settings, limit: int, file_calls: list[str]) -> tuple[int, int, list]:
    statements = []

    def count(*_):
        statements.append(1)

    event.listen(engine, "before_cursor_execute", count)
    file_calls.clear()
    try:
        with Session() as session:
            views, total = job_pages.page(session, status=None, limit=limit, offset=0, settings=settings)
            public = jobs_public(views)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(public) == limit and total == 100
    return len(statements), len(file_calls), public


def test_a_page_of_100_jobs_costs_what_a_page_of_10_does(Session, engine, tmp_path, file_calls):
    settings = Settings(home=tmp_path)
    _make_jobs(Session, 100)
    small_sql, small_files, _ = _cost(Session, engine, settings, 10, file_calls)
    large_sql, large_files, public = _cost(Session, engine, settings, 100, file_calls)
    assert large_sql == small_sql <= 8
    assert large_files == small_files == 0
    running = [job for job in public if job.status == "running"]
    queued = [job for job in public if job.status == "queued"]
    assert len(running) == len(queued) == 50
    assert all(job.disk_bytes == 300 and job.latest_metrics.epoch == 2 for job in running)
    assert all(job.disk_bytes == 0 and job.waiting_reason == "no_worker" for job in queued)
    assert queued[0].waiting_detail == (  # a worker started on another queue does not count
        f"no live worker serves its queue; start one with `trainyard worker` (its queue is {settings.queue!r}: a "
        "worker serves its TRAINYARD_QUEUE, or the queues its --queues or TRAINYARD_WORKER_QUEUES name)"
    )

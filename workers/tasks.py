"""Thin Celery tasks: each hands its arguments to a plain function."""

import logging

from celery.exceptions import Reject
from celery.signals import worker_process_init

from service.core.broker import JOIN_JOB, TRAIN_JOB, app


class _GivenBackPlainly(logging.Filter):
    """Celery logs a Reject, a message these tasks give back to the queue on purpose (the worker
    is stopping; its store is not the service's), with a traceback; its one line says why."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], Reject):
            record.exc_info = None
        return True


logging.getLogger("celery.app.trace").addFilter(_GivenBackPlainly())


@worker_process_init.connect
def _prepare_process(**_kwargs) -> None:
    """Share the cores among the worker's processes, and import the training stack before the
    first job arrives. (CUDA is never touched here: devices are chosen inside each job.)"""
    import torch

    import workers.runner  # noqa: F401
    from service.core.db import forget_inherited_connections
    from service.core.settings import get_settings

    # The main process renews the worker's registry entry through the same engine: a pool process
    # forked (or re-forked after a crash) from it must not share those connections.
    forget_inherited_connections()
    torch.set_num_threads(get_settings().training_threads)


@app.task(name=TRAIN_JOB, bind=True)
def train_job(self, job_id: str) -> None:
    from workers.runner import run_job
    from workers.stopping import worker_stopping

    if worker_stopping():  # its consumer has yet to stop: the message goes back for the next worker
        raise Reject("this worker is shutting down", requeue=True)
    refuse_if_store_gone()
    run_job(job_id, node=self.request.hostname)


@app.task(name=JOIN_JOB, bind=True)
def join_job(self, job_id: str, attempt: int, endpoint: str, resumed_by_user: bool = False) -> None:
    from workers.launcher import join_ranks

    refuse_if_store_gone()
    join_ranks(job_id, attempt, endpoint, resumed_by_user, node=self.request.hostname)


def refuse_if_store_gone() -> None:
    """The message goes back to the queue and this worker stops when the service has moved to
    another store since the worker started (workers/store_check.py)."""
    from workers.store_check import stop_refused_worker, store_gone_since

    if problem := store_gone_since():
        stop_refused_worker(problem)
        raise Reject(problem, requeue=True)

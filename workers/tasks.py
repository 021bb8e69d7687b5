"""Thin Celery tasks: each hands its arguments to a plain function."""

from celery.signals import worker_process_init

from service.core.broker import TRAIN_JOB, app


@worker_process_init.connect
def _prepare_process(**_kwargs) -> None:
    """Share the cores among the worker's processes, and import the training stack before the
    first job arrives. (CUDA is never touched here: devices are chosen inside each job.)"""
    import torch

    import workers.runner  # noqa: F401
    from service.core.settings import get_settings

    torch.set_num_threads(get_settings().training_threads)


@app.task(name=TRAIN_JOB)
def train_job(job_id: str) -> None:
    from workers.runner import run_job

    run_job(job_id)

"""Thin Celery tasks: each hands its arguments to a plain function."""

from celery.signals import worker_process_init

from workers.celery_app import TRAIN_JOB, app


@worker_process_init.connect
def _warm_up(**_kwargs) -> None:
    """Import the training stack in each worker process before its first job arrives."""
    import workers.runner  # noqa: F401


@app.task(name=TRAIN_JOB)
def train_job(job_id: str) -> None:
    from workers.runner import run_job

    run_job(job_id)

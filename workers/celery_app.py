"""The Celery application a worker runs (`celery -A workers.celery_app worker`): core's app,
with the training tasks and the worker's registry entry attached to it."""

from service.core.broker import app
from workers import job_log, presence, stopping, store_check, tasks  # noqa: F401  (they connect to the app and its signals)

__all__ = ["app"]

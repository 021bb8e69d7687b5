"""The Celery application a worker runs (`celery -A workers.celery_app worker`): core's app,
with the training tasks registered on it."""

from service.core.broker import app
from workers import tasks  # noqa: F401  (registers the tasks)

__all__ = ["app"]

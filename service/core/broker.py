"""The broker client: the Celery app both sides share, publishing a job, and reading queues.

The API and the reaper publish through it; workers register their tasks on the same app
(workers/tasks.py). A message carries only a job id: the SQL row is the source of truth.
"""

from __future__ import annotations

import logging

from celery import Celery

from service.core import embedded_broker
from service.core.settings import Settings, get_settings

log = logging.getLogger(__name__)
embedded_broker.install()

# Redis re-delivers an unacknowledged message after this long; it must exceed the longest job
# so that a healthy long job is never handed to a second worker.
REDIS_VISIBILITY_TIMEOUT_S = 7 * 24 * 3600

TRAIN_JOB = "trainyard.train_job"
JOIN_JOB = "trainyard.join_job"  # another machine's share of a job on several machines
WORKER_PROCESS_START_TIMEOUT_S = 120.0


def broker_transport_options(settings: Settings) -> dict:
    if settings.embedded_broker and settings.broker_url.startswith("sqla+sqlite"):
        return {"connect_args": {"timeout": 30}}
    if settings.broker_url.startswith(("redis://", "rediss://")):
        return {"visibility_timeout": REDIS_VISIBILITY_TIMEOUT_S}
    return {}


def make_celery(settings: Settings) -> Celery:
    app = Celery("trainyard", broker=settings.broker_url)
    app.conf.update(
        task_default_queue=settings.queue,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        # A training job is acknowledged only when it ends, one at a time per worker process,
        # so a worker that dies mid-job leaves the message to be delivered again.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A pool process imports the training stack (torch) before it reports that it is up; on a
        # loaded machine that takes longer than Celery's 4 s, and a worker that kills each
        # replacement of a crashed pool process for being late never serves another job.
        worker_proc_alive_timeout=WORKER_PROCESS_START_TIMEOUT_S,
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_concurrency=settings.worker_concurrency,
    )
    return app


app = make_celery(get_settings())


def send_train_job(job_id: str, queue: str | None = None) -> None:
    """Publish a job id to a training queue (default: the CPU one); raises if the broker cannot take it."""
    app.send_task(TRAIN_JOB, args=[job_id], queue=queue or get_settings().queue)


def send_join_job(job_id: str, attempt: int, endpoint: str, resumed_by_user: bool, queue: str) -> None:
    """Ask another worker to train its machine's share of a job on several machines, meeting the
    others at the rendezvous `endpoint` (host:port)."""
    app.send_task(JOIN_JOB, args=[job_id, attempt, endpoint, resumed_by_user], queue=queue)


def publish_or_defer(job_id: str, queue: str) -> bool:
    """Publish a job that is already committed in SQL; if the broker is down, leave it to the reaper.

    Returns whether the message went out. Either way the job is safe: the reaper re-sends
    queued jobs whose message is missing.
    """
    try:
        send_train_job(job_id, queue)
        return True
    except Exception as exc:
        log.warning("could not publish job %s now (%s); the reaper will send it", job_id, exc)
        return False


def ping_broker(timeout: float = 2.0) -> None:
    """Raise if the broker cannot be reached."""
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=timeout)


def queue_depth(queue: str | None = None) -> int:
    """Messages waiting in a training queue (0 if the broker has no such queue yet)."""
    from amqp.exceptions import NotFound
    from kombu.exceptions import ChannelError

    with app.connection_for_write() as connection:
        channel = connection.default_channel
        try:
            return channel.queue_declare(queue=queue or get_settings().queue, passive=True).message_count
        except (ChannelError, NotFound):
            return 0
        finally:
            # kombu's SQL transport counts in a session that it never ends, so its database
            # connection would stay checked out until the garbage collector found the channel.
            session = getattr(channel, "_session", None)
            if session is not None:
                session.close()

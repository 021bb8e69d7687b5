"""A worker's entry in the registry: announced when Celery is ready, renewed from a thread of the
worker's main process, removed at a clean shutdown (a killed worker's entry simply goes stale)."""

from __future__ import annotations

import logging
import os
import socket
import uuid

from celery.signals import worker_ready, worker_shutdown

from models.data.loading import BUILTIN_IMAGE_DATASETS, builtins_on_disk
from models.nets.pretrained import available_weights
from service.core import jobs, reaper, worker_registry
from service.core.background import Periodic, stop_with_supervisor
from service.core.db import UNAVAILABLE, brief, session_scope, unmigrated
from service.core.settings import get_settings
from service.core.storage import get_storage

log = logging.getLogger(__name__)
# This worker's start, which its pool processes inherit and name on the jobs they claim: a job whose
# process died is taken back only by the worker that forked it (another of the same name, in another
# container, sees other processes).
INSTANCE = uuid.uuid4().hex


class Presence(Periodic):
    """Keeps this worker's registry entry fresh, every worker_heartbeat_seconds from start() to stop()."""

    def __init__(self, worker_id: str, queues: list[str]):
        super().__init__("worker-presence", get_settings().worker_heartbeat_seconds, at_start=True)
        self.worker_id = worker_id
        self.queues = queues
        self.description: dict | None = None
        self._registered = False
        self._last_problem: str | None = None  # what the last beat that failed said

    def stop(self, timeout: float | None = 10) -> None:
        super().stop(timeout)
        try:
            with session_scope() as session:
                worker_registry.unregister(session, worker_id=self.worker_id)
        except Exception:  # the entry goes stale by itself
            log.warning("could not remove worker %s from the registry", self.worker_id, exc_info=True)

    def _register(self) -> None:
        with session_scope() as session:
            worker_registry.register(
                session,
                worker_id=self.worker_id,
                host=socket.gethostname(),
                pid=os.getpid(),
                queues=self.queues,
                description=self.description,
                weights=_weights(),
                datasets=_datasets(),
                processes=get_settings().job_processes,
                store=get_storage().url,
            )

    def tick(self) -> None:
        if self.description is None:  # probed on this thread: it can take a while
            self.description = worker_registry.probe_devices()
        try:
            with session_scope() as session:
                renewed = self._registered and worker_registry.heartbeat(
                    session, worker_id=self.worker_id, weights=_weights(), datasets=_datasets()
                )
            if not renewed:
                self._register()
                self._registered = True
                log.info(
                    "worker %s registered: queues %s, devices %s",
                    self.worker_id,
                    self.queues,
                    [d["name"] for d in self.description["devices"]],
                )
        except Exception as error:  # the database may be away for a moment; the next beat tries again
            said = brief(error)
            if said != self._last_problem:  # said once, not every beat (a database never migrated)
                schema = unmigrated(error)
                hint = "; is the database migrated (`trainyard migrate`)?" if schema else ""
                unexpected = not isinstance(error, UNAVAILABLE) and not schema
                message = "worker %s could not renew its registry entry: %s%s"
                log.warning(message, self.worker_id, said, hint, exc_info=unexpected)
            self._last_problem = said
        else:
            self._last_problem = None
            try:
                self._take_back_dead_jobs()
            except Exception as error:  # the reaper takes them back a lease later
                log.warning("worker %s could not check its jobs' processes: %s", self.worker_id, brief(error))

    def _take_back_dead_jobs(self) -> None:
        """A job whose training process died (the kernel's OOM killer) goes back to the queue, or
        fails for memory, now: its lease would run on for up to TRAINYARD_LEASE_SECONDS."""
        settings = get_settings()
        with session_scope() as session:
            requeued = jobs.take_back_dead(
                session,
                worker=self.worker_id,
                instance=INSTANCE,
                process_alive=_process_alive,
                max_attempts=settings.max_attempts,
                oom_fraction=settings.oom_kill_fraction,
            )
            queue_of = reaper.queues_of(jobs.get_jobs(session, job_ids=requeued), settings)
        if requeued:
            log.warning("job(s) %s: their training process died; back to the queue", ", ".join(requeued))
            reaper.send(requeued, queue_of)


def _process_alive(pid: int) -> bool:
    """Whether a process of this machine lives."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: the pid was taken again
        return True
    return True


def _weights() -> list[str]:
    """The pretrained weights files this worker would find (files put there later show up at the next beat)."""
    return available_weights(get_settings().weights_dir)


def _datasets() -> list[str]:
    """The built-in datasets whose files this worker has (TRAINYARD_DATA_DIR), or all of them
    where it may download what it lacks."""
    settings = get_settings()
    if settings.allow_download:
        return list(BUILTIN_IMAGE_DATASETS)
    return builtins_on_disk(settings.data_dir)


_presence: Presence | None = None


@worker_ready.connect
def _announce(sender, **_kwargs) -> None:
    global _presence
    queues = list(sender.app.amqp.queues.consume_from)
    _presence = Presence(sender.hostname, queues)
    _presence.start()
    stop_with_supervisor()  # `trainyard run` killed outright: its worker goes too, handing its job back


@worker_shutdown.connect
def _withdraw(**_kwargs) -> None:
    if _presence is not None:
        _presence.stop()


def busy_with(node: str | None, job_id: str | None) -> None:
    """Show in the worker registry which job this worker runs (a failure here is not the job's)."""
    if node is None:
        return
    try:
        with session_scope() as session:
            worker_registry.set_current_job(session, worker_id=node, job_id=job_id)
    except Exception:
        log.warning("could not record worker %s's current job", node, exc_info=True)

"""The reaper: re-queues jobs whose worker died, re-sends jobs whose broker message was lost, and
now and then purges what retention says is old."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from service.core import datasets, embedded_broker, jobs, retention, sweeps, worker_registry
from service.core.background import Periodic
from service.core.broker import queue_depth, send_train_job
from service.core.db import MIGRATE_HINT, UNAVAILABLE, brief, session_scope, unmigrated
from service.core.leader import Leadership
from service.core.settings import Settings
from service.core.storage import get_storage
from service.core.storage.check import leave_mark
from service.core.tables import JobStatus, utcnow

log = logging.getLogger(__name__)


def reap_expired_leases(settings: Settings) -> list[str]:
    """Re-queue (or end) every job whose lease expired; returns the ids that need a new message."""
    cutoff = utcnow() - timedelta(seconds=settings.lease_seconds)
    requeued = []
    with session_scope(write=False) as session:
        candidates = jobs.expired_leases(session, cutoff=cutoff)
    for job_id in candidates:
        with session_scope() as session:
            if (
                jobs.reap_one(
                    session,
                    job_id=job_id,
                    cutoff=cutoff,
                    max_attempts=settings.max_attempts,
                    oom_fraction=settings.oom_kill_fraction,
                )
                == JobStatus.QUEUED
            ):
                requeued.append(job_id)
    return requeued


# A job sent this recently may not have its message in the queue yet (submission commits the job,
# then publishes): it is left out of the count of jobs that should have one.
SETTLE_SECONDS = 5.0


def lost_messages(stale: list[str], *, settled: int, depth: int) -> list[str]:
    """The jobs of one queue to send again: its `settled` queued jobs (sent more than
    SETTLE_SECONDS ago) should have as many messages, and the queue holds `depth`. When it holds
    fewer, some were lost; a message cannot be matched to its job, so every `stale` one (sent
    more than resend_after_seconds ago) is sent again. A duplicate is harmless, because only one
    delivery can claim a queued job; a settled job not yet stale is likely still held, and if it
    is not, it is stale at a later pass."""
    return stale if settled > depth else []


def sweep(settings: Settings, *, reap: bool = True) -> list[str]:
    """One pass of the reaper; returns the ids it sent to the broker. Without `reap`, expired
    leases are left alone (their workers could not renew them while the database was away)."""
    requeued = reap_expired_leases(settings) if reap else []
    now = utcnow()
    stale_before = now - timedelta(seconds=settings.resend_after_seconds)
    settled_before = now - timedelta(seconds=min(SETTLE_SECONDS, settings.resend_after_seconds))
    with session_scope(write=False) as session:
        sent_at = dict(jobs.queued_dispatches(session, sent_before=settled_before))
        if not any(sent < stale_before for sent in sent_at.values()):
            sent_at = {}  # none stale, none to send again: their specs need not be read
        loaded = jobs.get_jobs(session, job_ids=list(sent_at.keys() | set(requeued)))
        queue_of = queues_of(loaded, settings)
        # A job that no live worker can give its processes is left until one can: sent now, every
        # worker in turn would only refuse it again (and say so in its log). Refused, it holds no
        # message, so it is not counted either.
        reasons = worker_registry.waiting_reasons(session, jobs=loaded, settings=settings)
    held = [
        job_id
        for job_id in sent_at
        if job_id not in requeued and not worker_registry.short_of_capacity(reasons.get(job_id))
    ]
    to_send = list(requeued)
    for queue in settings.queues:
        try:
            depth = queue_depth(queue)
        except Exception as exc:
            log.warning("reaper cannot read the broker's queue %s (%s); will retry", queue, exc)
            continue
        settled = [job_id for job_id in held if queue_of.get(job_id) == queue]
        stale = [job_id for job_id in settled if sent_at[job_id] < stale_before]
        to_send += lost_messages(stale, settled=len(settled), depth=depth)
    sent = send(to_send, queue_of)
    if sent:
        log.info("reaper sent %d job(s) to the broker again: %s", len(sent), ", ".join(sent))
    advance_sweeps(settings)
    return sent


def queues_of(loaded: list, settings: Settings) -> dict[str, str]:
    """Each job's queue: the GPU queue for a cuda job, else the CPU one."""
    return {job.id: settings.queue_for(worker_registry.device_of(job.spec)) for job in loaded}


def send(job_ids: list[str], queue_of: dict[str, str]) -> list[str]:
    """Publish queued jobs to their queues and record when; the ids sent (one the broker does not
    take is left to the reaper's next pass)."""
    sent = []
    for job_id in job_ids:
        try:
            send_train_job(job_id, queue_of.get(job_id))
        except Exception as exc:
            log.warning("could not send job %s to the broker (%s); the reaper will", job_id, exc)
            continue
        sent.append(job_id)
    with session_scope() as session:
        jobs.mark_dispatched(session, job_ids=sent)
    return sent


def advance_sweeps(settings: Settings) -> None:
    """Launch sweeps' next trials where slots are free (workers do it as jobs end; this catches
    what they missed)."""
    with session_scope(write=False) as session:
        pending = sweeps.unfinished(session)
    for sweep_id in pending:
        try:
            with session_scope() as session:
                sweeps.advance(session, sweep_id=sweep_id, settings=settings)
        except Exception as exc:  # one bad sweep must not stop the others
            log.warning("could not advance sweep %s: %s", sweep_id, exc)


def housekeeping(settings: Settings) -> None:
    """Leave the service's mark in its store; purge expired jobs' checkpoints and the embedded
    broker's consumed messages; fail uploads whose decoding was abandoned."""
    try:
        leave_mark(get_storage(settings).store)
    except Exception as error:  # the next housekeeping tries again; the rest goes on meanwhile
        log.warning("could not leave the service's mark in its store: %s", error)
    retention.purge_expired(settings)
    with session_scope() as session:
        abandoned = datasets.fail_abandoned_uploads(
            session, older_than_seconds=settings.dataset_decode_timeout_seconds, settings=settings
        )
    if abandoned:
        log.warning("dataset upload(s) %s never finished decoding; marked failed", ", ".join(abandoned))
    if settings.embedded_broker:
        purged = embedded_broker.purge_consumed(settings.broker_url, settings.broker_message_retention_seconds)
        if purged:
            log.info("removed %d consumed message(s) from the embedded broker", purged)


class Reaper(Periodic):
    """Runs sweep() every reaper_interval_seconds in a background thread, in the one process
    (of all that share the database) that holds the reaper's role."""

    def __init__(self, settings: Settings):
        super().__init__("reaper", settings.reaper_interval_seconds)
        self.settings = settings
        self.leadership = Leadership("reaper")
        self._next_housekeeping = 0.0
        # While the database is away no worker can renew its lease, so once it is back every
        # worker gets a full lease period to renew before its job is taken from it.
        self._leases_trusted_from = 0.0
        self._said_unmigrated = False  # that the database is not migrated, since it last was

    def stop(self, timeout: float | None = 10) -> None:
        super().stop(timeout)
        self.leadership.release()

    def tick(self) -> None:
        try:
            if not self.leadership.held():
                return
            sweep(self.settings, reap=time.monotonic() >= self._leases_trusted_from)
            if time.monotonic() >= self._next_housekeeping:
                housekeeping(self.settings)
                self._next_housekeeping = time.monotonic() + self.settings.housekeeping_interval_seconds
        except Exception as error:  # the reaper must outlive anything one sweep meets
            if unmigrated(error):  # SQLite says it as it says an outage: told apart first
                if not self._said_unmigrated:  # said once, not every few seconds until someone migrates
                    log.warning("reaper: %s (%s); it waits until then", MIGRATE_HINT, brief(error))
            elif isinstance(error, UNAVAILABLE):
                self._leases_trusted_from = time.monotonic() + self.settings.lease_seconds
                log.warning("reaper: the database is unavailable (%s); will retry", brief(error))
            else:
                log.exception("reaper sweep failed")
            self._said_unmigrated = unmigrated(error)
        else:
            self._said_unmigrated = False

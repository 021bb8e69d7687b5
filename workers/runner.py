"""Run one training job: claim it in SQL, fit, record each epoch, finish it.

A job may be run by several attempts (a worker died, a user resumed it). Each attempt starts
from the training state the previous one saved, so no epoch is lost or counted twice.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import threading
import time
from typing import NamedTuple

import torch
import torchvision
from sqlalchemy import select

from models.checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from models.data.dataset import DatasetError
from models.nets.pretrained import MissingWeights, UnsafeWeights
from models.spec.job import UPLOADED_ID, JobSpec, UploadedDatasetSpec
from models.training.engine import (
    FOLD_METRICS,
    Callbacks,
    EpochMetrics,
    Limits,
    TrainingError,
    TrainingRun,
    fit,
    summarise_folds,
)
from models.training.state import (
    TRAINING_STATE,
    Position,
    TrainingState,
    load_training_state,
    save_training_state,
)
from models.units import human_bytes
from service.core import datasets, jobs, sweeps, worker_registry
from service.core.background import Periodic
from service.core.db import UNAVAILABLE, brief, retry_while_unavailable, session_scope
from service.core.references import ModelNotFound, ModelNotReady, init_from_reference, resolve
from service.core.retention import checkpoint_key, resumable_state_key, resumable_state_path
from service.core.settings import get_settings
from service.core.storage import StorageError, StorageUnavailable, StoredFile, get_storage
from service.core.tables import Job, JobStatus, Worker
from workers.job_log import JobLogCapture
from workers.launcher import GroupLost, ranks_waiting, train_on_ranks
from workers.memory import MemoryWatch, is_out_of_memory, memory_budget
from workers.presence import INSTANCE, busy_with
from workers.stopping import worker_stopping

log = logging.getLogger(__name__)


def worker_name(node: str | None) -> str:
    """The worker as its job's record names it: as the worker registry does, where a worker runs
    it (its transition to running also names the pool process that trains it, by pid)."""
    return node or f"{socket.gethostname()}:{os.getpid()}"


def in_transaction(what: str, work, *, patient: bool = True):
    """work(session) in a transaction of its own, committed: a write the job needs. `patient`:
    retried while the database is unavailable, so an outage pauses the job there instead of
    failing it (up to TRAINYARD_DATABASE_RETRY_SECONDS); otherwise one try."""

    def attempt():
        with session_scope() as session:
            return work(session)

    give_up_after = get_settings().database_retry_seconds if patient else 0
    return retry_while_unavailable(attempt, what=what, give_up_after=give_up_after)


class JobControl(Periodic):
    """Renews this attempt's lease from a background thread and notices cancel requests and the
    worker's shutdown (workers/stopping.py); with each renewal, stores the job's log lines so far,
    so that `trainyard logs -f` shows them during a long first epoch.

    should_stop() is cheap: the engine calls it between batches, and it only reads three flags.
    """

    def __init__(
        self,
        job_id: str,
        attempt: int,
        interval: float,
        longest_wait: float,
        memory: MemoryWatch | None = None,
        urgent_share: float = 0.9,
        job_log: JobLogCapture | None = None,
    ):
        super().__init__(f"lease-{job_id}", interval)
        self.job_log = job_log
        self.job_id = job_id
        self.attempt = attempt
        self.longest_wait = max(interval, longest_wait)  # between renewals that fail
        # Sampled between beats; each beat records the peak since the last one recorded, and a share
        # of `urgent_share` or more is recorded at once (a process killed for memory says no more).
        self.memory = memory
        self.urgent_share = urgent_share
        self.cancel_requested = threading.Event()
        self.lost = threading.Event()
        self.worker_stopping = threading.Event()
        self.stalled: str | None = None  # what the last beat that got through said the job waits for
        self._delay, self._misses = interval, 0

    def should_stop(self) -> bool:
        return self.cancel_requested.is_set() or self.lost.is_set() or self.worker_stopping.is_set()

    def wait(self, seconds: float) -> bool:
        """Wait, sampling memory meanwhile (cut short when memory runs high); True once the job is done."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.stopped.wait(min(left, MEMORY_SAMPLE_SECONDS)):
                return True
            if self.memory is not None and self.memory.sample() >= self.urgent_share:
                break
        return self.stopped.is_set()

    def tick(self) -> float | None:
        if not self.worker_stopping.is_set() and worker_stopping():
            log.info("the worker is shutting down: job %s stops after its current batch", self.job_id)
            self.worker_stopping.set()
        try:
            memory = self.memory
            stalled = waiting_for_store()
            with session_scope() as session:
                status = jobs.heartbeat(
                    session,
                    job_id=self.job_id,
                    attempt=self.attempt,
                    memory_peak=memory.peak() if memory else None,
                    stalled=stalled,
                    said_before=self.stalled,  # cleared only if still its word, not a joined machine's
                )
            self.stalled = stalled
            if memory is not None:
                memory.clear()
        except Exception as error:  # a missed beat is not fatal; a later one may get through
            self._misses, self._delay = self._misses + 1, min(self._delay * 2, self.longest_wait)
            log.warning(
                "lease renewal for job %s failed (%d in a row; next try in %.1f s): %s",
                self.job_id,
                self._misses,
                self._delay,
                brief(error),
                exc_info=not isinstance(error, UNAVAILABLE),
            )
            return self._delay
        if self._misses:
            log.info("lease renewal for job %s got through after %d misses", self.job_id, self._misses)
        self._delay, self._misses = self.interval, 0
        if self.job_log is not None:
            self.job_log.store()
        if status is None:
            log.warning("job %s attempt %s lost its lease; stopping", self.job_id, self.attempt)
            self.lost.set()
        elif status == JobStatus.CANCELLING:
            self.cancel_requested.set()
        return None


MEMORY_SAMPLE_SECONDS = 0.25


def waiting_for_store(own_only: bool = False) -> str | None:
    """What this process, or unless `own_only` a distributed job's ranks it runs, waits for the
    store for, in the job's terms, while it does (None where that cannot be told: a lease renewal
    never fails for it)."""
    try:
        storage = get_storage()
        waiting = storage.waiting()
    except Exception:
        return None
    if waiting is None:
        return None if own_only else ranks_waiting()
    return (
        f"the store {storage.url} is unavailable ({waiting.error}): the worker has retried it since "
        f"{waiting.since:%H:%M:%S} UTC to {waiting.what}, and gives the job back to the queue at "
        f"{waiting.until:%H:%M:%S} UTC if it is still away"
    )


def save_resumable_state(
    run: TrainingRun, job_id: str, attempt: int, position: Position, *, patient: bool = True
) -> StoredFile | None:
    """Store the training state an attempt resumes from, then name it in SQL (the state named
    before stays whole until then, and goes after); None once it is named. Not `patient`, a
    database that is away leaves the state named before, and the state stored now is returned
    unnamed: it stays in the store (its naming may have committed unanswered) until the caller
    deletes it, once a later state is named."""
    meta = {"job_id": job_id, "spec": run.spec.model_dump(mode="json")}
    storage = get_storage()
    stored = storage.write(
        resumable_state_key(job_id),
        lambda path: save_training_state(path, run.state(position), meta),
        retrying=f"store job {job_id}'s training state",
    )
    try:
        before = in_transaction(
            f"record job {job_id}'s training state",
            lambda session: jobs.set_resume_state(session, job_id=job_id, attempt=attempt, state=stored),
            patient=patient,
        )
    except UNAVAILABLE:
        if patient:
            raise
        return stored
    # A retried write may have found its own first try committed: the state it names is this one.
    # (A state stored but never named, by an attempt that died or lost its lease, goes when the job
    # succeeds.)
    if before is not None and before.key != stored.key:
        storage.discard(before)
    return None


def load_resumable_state(job_id: str) -> TrainingState | None:
    """The training state an earlier attempt of the job left, if it left one."""
    with session_scope(write=False) as session:
        job = session.get(Job, job_id)
        stored = jobs.resume_state(job) if job is not None else None
    if stored is None:
        legacy = resumable_state_path(get_settings(), job_id)  # a home's file from before states were recorded
        return load_training_state(legacy)[0] if legacy.exists() else None
    storage = get_storage()
    what = f"job {job_id}'s training state"

    def read() -> TrainingState:
        with storage.opened(stored, what=what) as path:
            return load_training_state(path)[0]

    return storage.patiently(f"fetch {what}", read)


def forget_resumable_state(state: StoredFile | None, job_id: str) -> None:
    """A succeeded job resumes no more: the state its end forgot goes, and any an attempt stored
    but was killed before naming it in SQL."""
    storage = get_storage()
    try:
        listed = storage.store.list(f"checkpoints/{job_id}/")
        states = [key for key, _ in listed if key.rsplit("/", 1)[-1].startswith(TRAINING_STATE_STEM)]
    except StorageError:
        states = []
    others = [key for key in states if state is None or key != state.key]
    if others:
        storage.delete(*others)
    if state is not None:
        storage.discard(state)  # with this machine's copy
    resumable_state_path(get_settings(), job_id).unlink(missing_ok=True)


TRAINING_STATE_STEM = TRAINING_STATE.removesuffix(".safetensors")


class RecordingCallbacks(Callbacks):
    """After every epoch: checkpoint file, then metrics in SQL, then the resumable state."""

    def __init__(
        self, job_id: str, control: JobControl, job_log: JobLogCapture, trial: sweeps.TrialReporter | None = None
    ):
        self.job_id = job_id
        self.control = control
        self.job_log = job_log
        self.settings = get_settings()
        self.unrecorded: list[tuple[dict, StoredFile]] = []  # (metrics, checkpoint), oldest first
        self.unnamed_states: list[StoredFile] = []  # training states stored whose naming the database missed
        self.trial = trial  # the sweep's study this job's epochs are reported to, if it prunes
        self.pruned_at: dict | None = None
        self.environment: dict = {}  # recorded beside what on_start finds (a distributed job's ranks)
        self.resumed_at: tuple[int, int] | None = None  # (epoch, batch) a resumed attempt starts mid-epoch from

    def should_stop(self) -> bool:
        return self.control.should_stop()

    def on_start(self, run: TrainingRun) -> None:
        environment = {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "device": str(run.device),
            "dataset_checksum": run.dataset.checksum,
            "spec_hash": run.spec.digest(),
            "num_train": len(run.dataset.x_train),
            "num_test": len(run.dataset.x_test),
            **self.environment,
        }
        in_transaction(
            f"record job {self.job_id}'s environment",
            lambda session: jobs.set_environment(session, job_id=self.job_id, environment=environment),
        )
        log.info(
            "training %s on %s: %d training and %d test samples, %d epochs",
            run.spec.model.arch,
            run.device,
            environment["num_train"],
            environment["num_test"],
            run.spec.epochs,
        )

    def on_fold_end(self, run: TrainingRun, fold: dict) -> None:
        log.info(
            "fold %d/%d: %s",
            fold["fold"],
            run.spec.cross_validation.folds,
            ", ".join(f"{key.replace('_', ' ')} {fold[key]:.4f}" for key in FOLD_METRICS if fold.get(key) is not None),
        )
        results = {
            "folds": run.folds,
            "summary": summarise_folds(run.folds),
            "complete": len(run.folds) == run.spec.cross_validation.folds,
        }
        in_transaction(
            f"record job {self.job_id}'s folds",
            lambda session: jobs.set_cross_validation(
                session, job_id=self.job_id, attempt=self.control.attempt, results=results
            ),
        )
        save_resumable_state(run, self.job_id, self.control.attempt, Position(epoch=1))

    def on_epoch_end(self, run: TrainingRun, metrics: EpochMetrics) -> None:
        meta = {
            "job_id": self.job_id,
            "epoch": metrics.epoch,
            **run.model_meta(),
            "metrics": metrics.as_dict(),
            "dataset_checksum": run.dataset.checksum,
            "torch": torch.__version__,
        }
        state_dict = run.model.state_dict()
        stored = get_storage().write(
            checkpoint_key(self.job_id, metrics.epoch, self.control.attempt),
            lambda path: write_checkpoint(path, state_dict, meta),
            retrying=f"store the checkpoint of epoch {metrics.epoch}",
        )
        self.unrecorded.append((metrics.as_dict(), stored))
        if not self.record(wait=False):
            if not self.control.lost.is_set():
                log.warning(
                    "the database is unavailable: epoch %d is kept to record later, and training goes on", metrics.epoch
                )
            return
        # Saved only once the epoch is in SQL: a crash in between repeats the epoch (its row is
        # upserted, not doubled) rather than skipping it. While epochs wait to be recorded, or the
        # database goes away between the two writes, the state stays at the last one named, so a
        # crash then retrains them; training goes on either way.
        try:
            unnamed = save_resumable_state(
                run, self.job_id, self.control.attempt, Position(epoch=metrics.epoch + 1), patient=False
            )
        except jobs.LeaseLost:
            self.control.lost.set()
            return
        if unnamed is not None:
            self.unnamed_states.append(unnamed)
            log.warning(
                "the database went away after epoch %d was recorded: the job resumes from the state named "
                "before it, and training goes on",
                metrics.epoch,
            )
        elif self.unnamed_states:  # a later state is named: those that could not be are no one's
            get_storage().discard(*self.unnamed_states)
            self.unnamed_states.clear()
        self.drop_checkpoints()
        speed = metrics.samples_per_second
        timed = "" if speed is None else f", {speed:.0f} samples/s"
        if self.resumed_at is not None and self.resumed_at[0] == metrics.epoch and speed is not None:
            timed += f" over the batches after {self.resumed_at[1]}, where this attempt resumed"
        log.info(
            "epoch %d/%d: %s (%.1f s%s)", metrics.epoch, run.spec.epochs, _summary(metrics), metrics.seconds, timed
        )
        self.job_log.store()

    def end_after_epoch(self, run: TrainingRun, metrics: EpochMetrics) -> str | None:
        """A sweep's pruner may stop the job after an epoch recorded in SQL (one that waits to be
        recorded is not reported: a crash would train it again)."""
        if self.trial is None or self.unrecorded or self.control.should_stop():
            return None
        try:
            prune = self.trial.should_prune(metrics.epoch, metrics.as_dict())
        except Exception as exc:  # the study's storage is away: train on rather than stop
            log.warning("could not report epoch %d to the sweep's study: %s", metrics.epoch, brief(exc))
            return None
        if not prune:
            return None
        value = getattr(metrics, self.trial.metric)
        log.info(
            "the sweep's %s pruner stopped the job after epoch %d (%s %.4f)",
            self.trial.pruner,
            metrics.epoch,
            self.trial.metric,
            value,
        )
        self.pruned_at = {"epoch": metrics.epoch, self.trial.metric: value}
        return "pruned"

    def record(self, *, wait: bool) -> bool:
        """Record the epochs not yet in SQL, in order, in one transaction; True once they are.

        Without `wait` one try is made (training goes on if the database is away); with it, the
        write is retried with backoff (TRAINYARD_DATABASE_RETRY_SECONDS)."""
        if not self.unrecorded:
            return True

        replaced: list[StoredFile] = []

        def record_all(session) -> None:
            replaced.clear()
            for metrics, checkpoint in self.unrecorded:
                earlier = jobs.record_epoch(
                    session, job_id=self.job_id, attempt=self.control.attempt, metrics=metrics, checkpoint=checkpoint
                )
                if earlier is not None:
                    replaced.append(earlier)

        epochs = ", ".join(str(m["epoch"]) for m, _ in self.unrecorded)
        try:
            in_transaction(f"record epoch(s) {epochs} of job {self.job_id}", record_all, patient=wait)
        except UNAVAILABLE:
            if wait:
                raise
            return False
        except jobs.LeaseLost:
            self.control.lost.set()
            return False
        if len(self.unrecorded) > 1:
            log.info("the database is back: recorded epochs %s", epochs)
        recorded = {checkpoint.sha256 for _, checkpoint in self.unrecorded}
        self.unrecorded.clear()
        if replaced:  # an earlier attempt's files of the epochs trained again (the same bytes stay cached)
            storage = get_storage()
            storage.delete(*(stored.key for stored in replaced if stored.sha256 in recorded))
            storage.discard(*(stored for stored in replaced if stored.sha256 not in recorded))
        return True

    def drop_checkpoints(self) -> None:
        """Delete the checkpoints the job's policy (spec `checkpoints.keep`) no longer keeps."""
        try:
            dropped = in_transaction(
                f"drop job {self.job_id}'s old checkpoints",
                lambda session: jobs.drop_checkpoints(session, job_id=self.job_id),
                patient=False,
            )
        except UNAVAILABLE:
            return  # the next epoch drops them
        if dropped:
            get_storage().discard(*dropped)


def _summary(metrics: EpochMetrics) -> str:
    parts = [
        f"{name.replace('_', ' ')} {value:.4f}"
        for name in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
        if (value := getattr(metrics, name)) is not None
    ]
    return ", ".join(parts)


# How fit ended -> (status, reason, error) of the job.
STOP_OUTCOMES = {
    None: (JobStatus.SUCCEEDED, None, None),
    "early_stopped": (JobStatus.SUCCEEDED, "early_stopped", None),
    "stopped": (JobStatus.CANCELLED, jobs.USER_CANCELLED, None),
    "pruned": (JobStatus.PRUNED, "pruned", None),
    "max_runtime_exceeded": (
        JobStatus.FAILED,
        "max_runtime_exceeded",
        "max_runtime_seconds reached; resume the job to train further",
    ),
}


class JobFault(NamedTuple):
    """What a failed job's record says: its reason, a message in the job's terms, and whether its
    log should add the traceback: only where the message cannot say all there is (an internal
    error, a system error that names no file), for whoever reports it."""

    reason: str
    message: str
    traceback_helps: bool = False


def failure_of(exc: BaseException) -> JobFault:
    """The job's fault `exc` is: its data, weights, spec, memory or a file it names say all in a
    message; anything else keeps its traceback."""
    if isinstance(exc, (DatasetError, MissingWeights, UnsafeWeights, StorageError)):
        return JobFault(exc.reason, str(exc))
    if isinstance(exc, CheckpointError):
        return JobFault("checkpoint_error", str(exc))
    if is_out_of_memory(exc):
        budget = get_settings().max_job_memory
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return JobFault(
            "out_of_memory",
            f"the job needed more memory than its budget of {human_bytes(budget)} "
            f"(TRAINYARD_MAX_JOB_MEMORY) allows: {detail}; lower batch_size or the model's "
            "size, or raise the budget",
        )
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return JobFault(
            "storage_error",
            f"No space left on device: cannot save to {get_settings().checkpoint_dir}; "
            "the checkpoints saved before are intact: free space, then resume the job",
        )
    if isinstance(exc, OSError) and exc.filename:
        return JobFault("storage_error", f"cannot write {exc.filename}: {exc.strerror}")
    if isinstance(exc, OSError):
        return JobFault("storage_error", f"storage failed: {exc}", traceback_helps=True)
    if isinstance(exc, torch.OutOfMemoryError):
        return JobFault("out_of_memory", str(exc).splitlines()[0])
    if isinstance(exc, TrainingError):
        return JobFault(exc.reason, str(exc))
    return JobFault(INTERNAL_ERROR, f"{type(exc).__name__}: {exc}", traceback_helps=True)


INTERNAL_ERROR = "internal_error"


def fetch_initial_weights(spec: JobSpec) -> dict[str, torch.Tensor] | None:
    if spec.init_from is None:
        return None
    settings = get_settings()
    try:
        with session_scope(write=False) as session:
            target = resolve(session, reference=init_from_reference(spec.init_from), settings=settings)
    except (ModelNotFound, ModelNotReady) as exc:
        raise TrainingError(f"init_from: {exc}") from None
    storage = get_storage(settings)

    def read() -> dict[str, torch.Tensor]:
        with storage.opened(target.file, what=target.what) as path:
            return read_checkpoint(path)[0]

    return storage.patiently(f"fetch {target.what}", read)


def run_job(job_id: str, node: str | None = None) -> str | None:
    """Train a queued job to a final state; returns that state, or None if it was not ours.

    `node` is the worker's name in the registry, which shows the job while it runs."""
    if (beyond := _beyond_this_worker(job_id, node)) is not None:
        # Left queued: the reaper sends it again (TRAINYARD_RESEND_AFTER_SECONDS), perhaps to a
        # worker that can give it what it asks, and its waiting reason says why it waits.
        log.warning("job %s is not for this worker: %s", job_id, beyond)
        return None
    busy_with(node, job_id)
    try:
        status = _run_job(job_id, worker_name(node))
    finally:
        busy_with(node, None)
    if status is not None:
        _advance_sweep(job_id)
    return status


def _beyond_this_worker(job_id: str, node: str | None) -> str | None:
    """Why this worker cannot give a job the GPU, or a distributed job the processes (or GPUs), it
    asks; else None."""
    if node is None:
        return None
    settings = get_settings()
    with session_scope(write=False) as session:
        spec = session.scalar(select(Job.spec).where(Job.id == job_id))
        worker = session.get(Worker, node)
        needs, nodes = worker_registry.processes_of(spec), worker_registry.nodes_of(spec)
        device = worker_registry.device_of(spec)
        if worker is not None and device.startswith("cuda") and not worker_registry.gpus(worker):
            return f"it asks for device {device!r}, and this worker has no GPU (it should not serve the GPU queue)"
        if (needs <= 1 and nodes <= 1) or worker is None:
            return None
        has = worker_registry.capacity(worker, device)
        if has < needs:
            return f"it asks for {needs} processes on device {device!r}, and this worker gives a job {has}"
        if nodes > 1:
            return worker_registry.waiting_reason_for(
                device, worker_registry.live(session, settings=settings), settings, needs, nodes
            )
    return None


def _advance_sweep(job_id: str) -> None:
    """A sweep's job ended: launch its next trial now rather than at the reaper's next pass."""
    try:
        with session_scope() as session:
            sweep_id = session.scalar(select(Job.sweep_id).where(Job.id == job_id))
            if sweep_id is not None:
                sweeps.advance(session, sweep_id=sweep_id, settings=get_settings())
    except Exception as exc:  # the reaper will do it
        log.warning("could not launch the next trial of job %s's sweep: %s", job_id, exc)


def _run_job(job_id: str, worker: str) -> str | None:
    settings = get_settings()
    claim = in_transaction(
        f"claim job {job_id}",
        lambda session: jobs.claim_job(
            session,
            job_id=job_id,
            worker=worker,
            pid=os.getpid(),
            instance=INSTANCE,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
            oom_fraction=settings.oom_kill_fraction,
        ),
    )
    if claim is None:
        log.info("job %s is not queued (already taken, finished or gone); dropping this delivery", job_id)
        return None
    with JobLogCapture(job_id, claim.attempt, settings.job_log_lines) as job_log:
        log.info("attempt %d of job %s on %s", claim.attempt, job_id, worker)
        return _train(job_id, claim, job_log)


def _train(job_id: str, claim: jobs.Claim, job_log: JobLogCapture) -> str | None:
    settings = get_settings()
    spec = JobSpec.model_validate(claim.spec)
    status, reason, error, end_detail = JobStatus.SUCCEEDED, None, None, None
    unreachable = None  # the store, for longer than the worker waits for it
    # Failed renewals back off to a quarter lease: once the database is back, the lease is renewed
    # well within the full lease the reaper grants after an outage.
    with JobControl(
        job_id,
        claim.attempt,
        settings.heartbeat_seconds,
        settings.lease_seconds / 4,
        urgent_share=settings.oom_kill_fraction,
        job_log=job_log,
    ) as control:
        try:
            trial = in_transaction(
                f"read job {job_id}'s sweep",
                lambda session: sweeps.reporter(session, job_id=job_id, settings=settings),
            )
            if trial is not None and (stopped := _pruned_before(trial)) is not None:
                log.info("the sweep's pruner stopped this job after epoch %d, before an earlier attempt ended", stopped)
                raise Pruned(f"pruned_by_{trial.pruner}", {"epoch": stopped})
            if spec.distributed is not None:
                status, reason, error, end_detail = _ending_of(train_on_ranks(job_id, claim, spec, control, job_log))
            else:
                status, reason, error, end_detail = _train_here(job_id, claim, spec, control, job_log, trial)
        except Pruned as exc:
            status, reason, end_detail = JobStatus.PRUNED, exc.reason, exc.detail
        except (StorageUnavailable, GroupLost) as exc:
            unreachable = exc
        except jobs.LeaseLost:
            control.lost.set()
        except Exception as exc:
            reason, error, traceback_helps = failure_of(exc)
            status = JobStatus.FAILED
            log.error("job %s failed (%s): %s", job_id, reason, error, exc_info=traceback_helps)
    if control.lost.is_set():
        log.warning("job %s attempt %s gave the job up to a later attempt", job_id, claim.attempt)
        return None
    if unreachable is not None:
        return _give_back(job_id, claim.attempt, unreachable.reason, str(unreachable), job_log)
    # Stopped, but not for a cancel: this worker shuts down, or on several machines another one
    # that trained a share of the job does (a rank stops when any does).
    shut_down = control.worker_stopping.is_set() or (spec.distributed is not None and spec.distributed.nnodes > 1)
    if status == JobStatus.CANCELLED and shut_down and not control.cancel_requested.is_set():
        return _give_back(
            job_id,
            claim.attempt,
            jobs.WORKER_STOPPED,
            "a worker that trained it shut down; the job resumes where it stopped",
            job_log,
            counted=False,
        )
    log.info("job %s %s", job_id, status + (f" ({reason})" if reason else ""))
    job_log.store()  # before the job's end is recorded: whoever sees it ended finds its whole log
    finished_state: list[StoredFile | None] = []

    def finish(session) -> bool:
        ended = jobs.finish_job(
            session, job_id=job_id, attempt=claim.attempt, status=status, reason=reason, error=error, detail=end_detail
        )
        if ended and status == JobStatus.SUCCEEDED:  # only a failed, cancelled or pruned job can be resumed
            finished_state[:] = [jobs.clear_resume_state(session, job_id=job_id)]
        return ended

    if not in_transaction(f"record the end of job {job_id}", finish):
        log.warning("job %s attempt %s could not record its end (%s)", job_id, claim.attempt, status)
        return None
    if status == JobStatus.SUCCEEDED:
        forget_resumable_state(finished_state[0] if finished_state else None, job_id)
    return status


Ending = tuple[str, str | None, str | None, dict | None]  # the job's status, reason, error and detail


def _train_here(
    job_id: str, claim: jobs.Claim, spec: JobSpec, control: JobControl, job_log: JobLogCapture, trial
) -> Ending:
    """Train the job in this process; how it ended."""
    settings = get_settings()
    resume = load_resumable_state(job_id)
    if resume is not None and claim.resumed_by_user:
        resume.run["elapsed"] = 0.0  # a user's resume grants a fresh max_runtime_seconds
    if resume is not None:
        detail = {
            "resumed_from_epoch": resume.position.epoch,
            "resumed_from_batch": resume.position.progress.batches,
        }
        log.info("resuming from epoch %d (batch %d)", resume.position.epoch, resume.position.progress.batches)
        in_transaction(
            f"note where job {job_id} resumed",
            lambda session: jobs.note_resume(session, job_id=job_id, attempt=claim.attempt, detail=detail),
        )
    callbacks = RecordingCallbacks(job_id, control, job_log, trial)
    if resume is not None and resume.position.progress.batches:
        callbacks.resumed_at = (resume.position.epoch, resume.position.progress.batches)
    initial_weights = None if resume else fetch_initial_weights(spec)
    limits = Limits(max_parameters=settings.max_parameters, max_bytes=settings.max_job_memory)
    control.memory = memory = MemoryWatch(settings.max_job_memory)  # one baseline for both
    with contextlib.ExitStack() as held:
        stored_dataset = hold_stored_dataset(spec, held)
        with memory_budget(settings.max_job_memory, start=memory.start):
            result = fit(
                spec,
                callbacks,
                data_dir=settings.data_dir,
                stored_dataset=stored_dataset,
                cache_dir=settings.cache_dir,
                weights_dir=settings.weights_dir,
                allow_download=settings.allow_download,
                resume=resume,
                initial_weights=initial_weights,
                limits=limits,
            )
    callbacks.record(wait=True)  # epochs trained while the database was away
    if result.stopped_at is not None and not control.lost.is_set():
        save_resumable_state(result.run, job_id, claim.attempt, result.stopped_at)
    return _ending_of(
        {"ended": result.reason, "pruned_at": callbacks.pruned_at, "pruner": getattr(trial, "pruner", None)}
    )


def _ending_of(outcome: dict) -> Ending:
    """How a job ended, from the outcome its training gave (workers/rank.py writes the same)."""
    if outcome.get("lost"):
        raise jobs.LeaseLost()
    if "unreachable" in outcome:
        raise StorageUnavailable(outcome["unreachable"])
    if "failed" in outcome:
        return JobStatus.FAILED, outcome["failed"]["reason"], outcome["failed"]["error"], None
    status, reason, error = STOP_OUTCOMES[outcome["ended"]]
    if status == JobStatus.PRUNED:
        return status, f"pruned_by_{outcome['pruner']}", None, outcome["pruned_at"]
    return status, reason, error, None


class Pruned(Exception):
    """The sweep's pruner had stopped the job when an earlier attempt died: it ends here."""

    def __init__(self, reason: str, detail: dict):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def _pruned_before(trial: sweeps.TrialReporter) -> int | None:
    try:
        return trial.pruned_at()
    except Exception as exc:  # the study's storage is away: train on, and report as it comes back
        log.warning("could not ask the sweep's study whether this job was stopped: %s", brief(exc))
        return None


def hold_stored_dataset(spec: JobSpec, held: contextlib.ExitStack):
    """For a job on an uploaded dataset, its local file (fetched into the cache from an object
    store), held (never evicted) until `held` closes; None for other datasets."""
    if not isinstance(spec.data, UploadedDatasetSpec) or not UPLOADED_ID.match(spec.data.dataset_id):
        return None
    stored, what = datasets.stored_file(spec.data.dataset_id)
    storage = get_storage()
    path = storage.patiently(f"fetch {what}", lambda: held.enter_context(storage.opened(stored, what=what)))
    return lambda dataset_id: path


def _give_back(
    job_id: str,
    attempt: int,
    reason: str,
    message: str,
    job_log: JobLogCapture,
    *,
    counted: bool = True,
) -> str | None:
    """Hand the job back to the queue, to resume from its last stored state on whichever worker
    takes it: the store stayed unreachable, or the job's processes kept dying (a counted attempt:
    past TRAINYARD_MAX_ATTEMPTS the job fails instead; the reaper sends it again after
    TRAINYARD_RESEND_AFTER_SECONDS), or the worker is shutting down (not counted, and sent again at
    the reaper's next pass: by then this worker has stopped taking jobs)."""
    settings = get_settings()
    status = in_transaction(
        f"give job {job_id} back",
        lambda session: jobs.give_back(
            session,
            job_id=job_id,
            attempt=attempt,
            max_attempts=settings.max_attempts if counted else None,
            reason=reason,
            error=message,
            send_again_soon=not counted,
        ),
    )
    # Said once what became of it: past TRAINYARD_MAX_ATTEMPTS it failed instead of going back
    if status == JobStatus.CANCELLED:
        log.warning("job %s was cancelled meanwhile: it ends cancelled (%s)", job_id, message)
    elif status == JobStatus.FAILED:
        log.warning("job %s fails (attempt %d of %d): %s", job_id, attempt, settings.max_attempts, message)
    else:
        log.warning("job %s goes back to the queue: %s", job_id, message)
    job_log.store()
    return status if status in (JobStatus.FAILED, JobStatus.CANCELLED) else None

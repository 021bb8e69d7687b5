"""One process (rank) of a distributed job, started by torchrun under the worker that claimed the
job (workers/launcher.py):

    python -m torch.distributed.run --standalone --nproc_per_node N -m workers.rank JOB ATTEMPT FOLDER

Every rank prepares the same run and trains its share of each batch; rank 0 alone records what a
single-process job records (the environment, each epoch's metrics and checkpoint, the resumable
state) through the runner's RecordingCallbacks. The worker holds the job's lease; it asks the ranks
to stop through a file in FOLDER, and they say how the job ended in another. On several machines
(nnodes > 1) each machine's worker starts torchrun with its share of the ranks; they meet at a c10d
rendezvous that the worker leading the job hosts, and rank 0, wherever it runs, records.

A rank that dies takes the group down, and torchrun starts it again (up to its --max-restarts):
each new start resumes from the last resumable state. A failure that would recur (a spec that does
not fit its data, a collective that timed out) is written to the folder's outcome before the rank
exits, so that the next start ends at once with it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from models.spec.job import JobSpec
from models.training.distributed import Ranks
from models.training.engine import Callbacks, Limits, TrainingError, fit, resolve_device
from service.core import jobs, sweeps
from service.core.background import Periodic, stop_when_orphaned
from service.core.settings import Settings, get_settings
from service.core.storage import StorageUnavailable
from workers.memory import memory_budget

log = logging.getLogger("workers.rank")  # also when run as __main__
LOG_LINE = "trainyard-rank "  # how a rank's log records start on its output, one JSON object a line


@dataclass(frozen=True)
class RunFolder:
    """What the worker and a job's ranks tell each other, as files of one folder."""

    path: Path

    @property
    def job(self) -> Path:  # the worker's: the spec and the attempt
        return self.path / "job.json"

    @property
    def stop(self) -> Path:  # the worker's: stop at the next batch (a cancel, a lost lease)
        return self.path / "stop"

    @property
    def outcome(self) -> Path:  # the ranks': how the job ended
        return self.path / "outcome.json"

    def write_outcome(self, outcome: dict) -> bool:
        """Write the outcome unless one is written already (the first rank's word stands)."""
        try:
            fd = os.open(self.outcome.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as file:
            json.dump(outcome, file)
        os.rename(self.outcome.with_suffix(".tmp"), self.outcome)
        return True

    def read_outcome(self) -> dict | None:
        try:
            return json.loads(self.outcome.read_text())
        except (OSError, ValueError):
            return None

    def write_waiting(self, rank: int, said: str | None) -> None:
        """What a rank waits for the store for, while it does (None: it does not): the worker, whose
        own storage does not see the ranks', tells the job's heartbeat (jobs.stalled)."""
        path = self.path / f"waiting.{rank}"
        if said is None:
            path.unlink(missing_ok=True)
            return
        written = self.path / f".waiting.{rank}.tmp"
        written.write_text(said)
        os.replace(written, path)

    def read_waiting(self) -> str | None:
        """The first rank's word of those that wait for the store, or None."""
        for path in sorted(self.path.glob("waiting.*")):
            try:
                return path.read_text()
            except OSError:  # it stopped waiting meanwhile
                continue
        return None


class StoreWaitReport(Periodic):
    """A rank's thread that writes what it waits for the store for into the run folder, every
    heartbeat, while it does."""

    def __init__(self, folder: RunFolder, rank: int, interval: float):
        super().__init__(f"store-wait-{rank}", interval)
        self.folder, self.rank = folder, rank

    def tick(self) -> None:
        from workers.runner import waiting_for_store

        said = waiting_for_store(own_only=True)
        self.folder.write_waiting(self.rank, f"rank {self.rank}: {said}" if said else None)

    def stop(self, timeout: float | None = None) -> None:
        super().stop(timeout)
        self.folder.write_waiting(self.rank, None)


class RankControl:
    """What RecordingCallbacks asks of the runner's JobControl, in a rank: the attempt, whether it
    lost the job, and whether to stop (the worker's stop file)."""

    def __init__(self, attempt: int, folder: RunFolder):
        self.attempt = attempt
        self.folder = folder
        self.lost = threading.Event()

    def should_stop(self) -> bool:
        return self.lost.is_set() or self.folder.stop.exists()


class _Follower(Callbacks):
    """A rank other than 0 records nothing, but a stop asked of it (its machine's worker shuts
    down) stops the whole group: the ranks agree to stop when any asks."""

    def __init__(self, control: RankControl):
        self.control = control

    def should_stop(self) -> bool:
        return self.control.should_stop()


class _LogNothing:
    """The worker stores a job's log: it reads every rank's records from their output."""

    def store(self) -> None:
        pass


class _RankRecords(logging.Formatter):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        line = {"rank": self.rank, "level": record.levelname, "logger": record.name, "message": message}
        return LOG_LINE + json.dumps(line)


def _log_to_output(ranks: Ranks) -> None:
    """Rank 0's records from INFO, the other ranks' warnings and errors, to the worker."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_RankRecords(ranks.rank))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in ("workers", "models", "service"):
        logging.getLogger(name).setLevel(logging.INFO if ranks.leader else logging.WARNING)
    logging.captureWarnings(True)


def is_timeout(exc: BaseException) -> bool:
    """A collective that waited past its timeout (gloo and nccl say 'Timed out' / 'timeout')."""
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("timed out" in text or "timeout" in text)


def is_group_broken(exc: BaseException) -> bool:
    """A collective that failed because another rank went away (torchrun starts the group again)."""
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        words in text for words in ("connection closed", "connection reset", "broken pipe", "socket", "ncclremoteerror")
    )


def rank_limits(settings: Settings, ranks: Ranks) -> Limits:
    """The worker's limits for the job, its memory shared by the job's processes on this machine
    (as admission counts them)."""
    return Limits(
        max_parameters=settings.max_parameters,
        max_bytes=settings.max_job_memory,
        processes_here=int(os.environ.get("LOCAL_WORLD_SIZE", ranks.world_size)),
    )


def local_device(spec: JobSpec, ranks: Ranks) -> torch.device:
    """Each rank's device: a GPU of its own on CUDA (an auto job takes the GPUs when there are
    enough for every rank on the machine, else the CPU)."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", ranks.world_size))
    if spec.device == "auto":
        cuda = torch.cuda.is_available() and torch.cuda.device_count() >= local_world
        return ranks.device(torch.device("cuda" if cuda else "cpu"))
    device = resolve_device(spec.device)
    if device.type == "cuda" and torch.cuda.device_count() < local_world:
        raise TrainingError(
            f"distributed.nproc_per_node {local_world} on device 'cuda' needs a GPU per process; "
            f"this worker has {torch.cuda.device_count()}"
        )
    return ranks.device(device)


def train(job_id: str, attempt: int, spec: JobSpec, resumed_by_user: bool, ranks: Ranks, folder: RunFolder) -> dict:
    """Train this rank's share of the job; how it ended (rank 0's word, on every rank)."""
    from workers.runner import (
        RecordingCallbacks,
        fetch_initial_weights,
        hold_stored_dataset,
        in_transaction,
        load_resumable_state,
        save_resumable_state,
    )

    settings = get_settings()
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
    device = local_device(spec, ranks)
    ranks.start(device, settings.distributed_timeout_seconds)
    places = ranks.gather({"rank": ranks.rank, "host": socket.gethostname(), "device": str(device)})
    control = RankControl(attempt, folder)
    resume = load_resumable_state(job_id)
    if resume is not None and resumed_by_user and restarts == 0:
        resume.run["elapsed"] = 0.0  # a user's resume grants a fresh max_runtime_seconds
    callbacks: Callbacks = _Follower(control)
    if ranks.leader:
        if resume is not None:
            detail = {
                "resumed_from_epoch": resume.position.epoch,
                "resumed_from_batch": resume.position.progress.batches,
                **({"group_restarts": restarts} if restarts else {}),
            }
            log.info(
                "resuming from epoch %d (batch %d)%s",
                resume.position.epoch,
                resume.position.progress.batches,
                f" after the group's restart {restarts}" if restarts else "",
            )
            in_transaction(
                f"note where job {job_id} resumed",
                lambda session: jobs.note_resume(session, job_id=job_id, attempt=attempt, detail=detail),
            )
        trial = in_transaction(
            f"read job {job_id}'s sweep", lambda session: sweeps.reporter(session, job_id=job_id, settings=settings)
        )
        callbacks = RecordingCallbacks(job_id, control, _LogNothing(), trial)
        callbacks.environment = {
            "distributed": {
                "world_size": ranks.world_size,
                "backend": "nccl" if device.type == "cuda" else "gloo",
                "threads_per_process": torch.get_num_threads(),
                "ranks": places,
            }
        }
    limits = rank_limits(settings, ranks)
    with contextlib.ExitStack() as held, memory_budget(limits.process_bytes):
        result = fit(
            spec,
            callbacks,
            data_dir=settings.data_dir,
            stored_dataset=hold_stored_dataset(spec, held),
            cache_dir=settings.cache_dir,
            weights_dir=settings.weights_dir,
            allow_download=settings.allow_download,
            resume=resume,
            initial_weights=None if resume else fetch_initial_weights(spec),
            limits=limits,
            ranks=ranks,
        )
    outcome = None
    if ranks.leader:
        callbacks.record(wait=True)  # epochs trained while the database was away
        if result.stopped_at is not None and not control.lost.is_set():
            save_resumable_state(result.run, job_id, attempt, result.stopped_at)
        outcome = (
            {"lost": True}
            if control.lost.is_set()
            else {"ended": result.reason, "pruned_at": callbacks.pruned_at, "pruner": getattr(trial, "pruner", None)}
        )
    return ranks.from_leader(outcome)  # every machine's processes know how the job ended


def main(job_id: str, attempt: str, folder_path: str) -> int:
    from workers.runner import JobFault, failure_of

    ranks = Ranks.from_environment()
    if ranks is None:
        raise SystemExit("workers.rank runs under torchrun (python -m torch.distributed.run ... -m workers.rank)")
    _log_to_output(ranks)
    stop_when_orphaned()  # torchrun killed outright: its ranks go too
    folder = RunFolder(Path(folder_path))
    if folder.outcome.exists():
        return 0  # an earlier start of the group ended the job: nothing to do again
    given = json.loads(folder.job.read_text())
    spec = JobSpec.model_validate(given["spec"])
    try:
        with StoreWaitReport(folder, ranks.rank, get_settings().heartbeat_seconds):
            outcome = train(job_id, int(attempt), spec, given.get("resumed_by_user", False), ranks, folder)
    except jobs.LeaseLost:
        folder.write_outcome({"lost": True})
        return 1
    except StorageUnavailable as exc:
        folder.write_outcome({"unreachable": str(exc)})
        return 1
    except Exception as exc:
        if is_timeout(exc):
            fault = JobFault(
                "collective_timeout",
                f"rank {ranks.rank} waited longer than TRAINYARD_DISTRIBUTED_TIMEOUT_SECONDS "
                f"({get_settings().distributed_timeout_seconds:g} s) for the other processes: one of them hung "
                f"({str(exc).strip().splitlines()[0]})",
            )
        elif is_group_broken(exc):
            log.warning("rank %d: another process of the job went away (%s)", ranks.rank, exc)
            return 1  # torchrun starts the group again, or the worker gives the job back
        else:
            fault = failure_of(exc)
        log.error("rank %d failed (%s): %s", ranks.rank, fault.reason, fault.message, exc_info=fault.traceback_helps)
        folder.write_outcome({"failed": {"reason": fault.reason, "error": fault.message}})
        return 1
    finally:
        ranks.stop()
    if ranks.local_rank == 0:  # for this machine's worker
        folder.write_outcome(outcome)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))

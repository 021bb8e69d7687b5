"""The worker registry: every training worker announces itself in SQL and renews its entry; the
live ones say which queues and devices there are, and so whether a queued job can be run at all."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from service.core.settings import Settings
from service.core.tables import Job, JobStatus, Worker, utcnow

NO_WORKER = "no_worker"
NO_GPU_WORKER = "no_gpu_worker"
STORE_UNAVAILABLE = "store_unavailable"  # a running job's worker retries the store (the job's `stalled` says more)
WORKER_SILENT = "worker_silent"  # a running job's worker has not renewed its lease for a while
_PROBE = "import json; from models.devices import describe_devices; print(json.dumps(describe_devices()))"


# NVIDIA's driver, its Jetson (Tegra) form, the GPU bridge of Linux on Windows, ROCm's driver:
# torch.cuda needs one of them.
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvmap", "/dev/dxg", "/dev/kfd")


def may_have_gpu() -> bool:
    """Whether this machine shows a GPU driver's device node; without one no GPU can be used."""
    return any(os.path.exists(node) for node in GPU_DEVICE_NODES)


def probe_devices(timeout: float = 120) -> dict:
    """describe_devices() run in a short-lived process, so that the caller never initialises CUDA
    (a worker forks its pool from its main process, and CUDA does not survive a fork); on a
    machine without a GPU driver, where there is nothing of CUDA to initialise, in this process
    (which then imports torch, as a worker's main process has)."""
    if not may_have_gpu():
        from models.devices import describe_devices

        return describe_devices()
    result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=timeout, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def has_cuda(description: dict) -> bool:
    return any(device["kind"] == "cuda" for device in description["devices"])


def register(
    session: Session,
    *,
    worker_id: str,
    host: str,
    pid: int,
    queues: list[str],
    description: dict,
    weights: list[str] | None = None,
    datasets: list[str] | None = None,
    processes: int | None = None,
    store: str | None = None,
) -> None:
    """Add or refresh a worker's entry (`weights`: the pretrained weights files it has; `datasets`:
    the built-in datasets whose files it has; `processes`: how many CPU processes it gives one
    distributed job; `store`: the URL of the store it reads and writes)."""
    now = utcnow()
    row = session.get(Worker, worker_id)
    if row is None:
        row = Worker(id=worker_id, started_at=now)
        session.add(row)
    if row.pid != pid:  # a new process under the same name (restarted): nothing of the dead one's
        row.started_at, row.current_job = now, None
    row.host, row.pid, row.queues = host, pid, sorted(queues)
    row.devices, row.torch, row.cuda = description["devices"], description["torch"], description["cuda"]
    row.weights, row.datasets = weights or [], datasets or []
    row.processes, row.store = processes, store
    row.last_seen = now
    session.flush()


def heartbeat(
    session: Session, *, worker_id: str, weights: list[str] | None = None, datasets: list[str] | None = None
) -> bool:
    """Renew a worker's entry, and the weights files and datasets it has when given; False if it
    has none (it must register again)."""
    values = {
        "last_seen": utcnow(),
        **({"weights": weights} if weights is not None else {}),
        **({"datasets": datasets} if datasets is not None else {}),
    }
    return session.execute(update(Worker).where(Worker.id == worker_id).values(**values)).rowcount == 1


def set_current_job(session: Session, *, worker_id: str, job_id: str | None) -> None:
    session.execute(update(Worker).where(Worker.id == worker_id).values(current_job=job_id))


def unregister(session: Session, *, worker_id: str) -> None:
    session.execute(delete(Worker).where(Worker.id == worker_id))


def live(session: Session, *, settings: Settings) -> list[Worker]:
    """Workers heard from within worker_stale_seconds, oldest first."""
    cutoff = utcnow() - timedelta(seconds=settings.worker_stale_seconds)
    return list(session.scalars(select(Worker).where(Worker.last_seen >= cutoff).order_by(Worker.started_at)))


def gpus(worker: Worker) -> int:
    return sum(device["kind"] == "cuda" for device in worker.devices or [])


def capacity(worker: Worker, device: str) -> int:
    """The processes `worker` gives one job on `device`: one per GPU for a CUDA job; for an auto
    job, its GPUs when it has GPUs, else its CPU processes; for a CPU job, its CPU processes."""
    cpu = worker.processes or 1
    if device.startswith("cuda"):
        return gpus(worker)
    if device == "auto" and gpus(worker):
        return max(gpus(worker), cpu)  # as many as its GPUs on them, else on its CPU
    return cpu


def waiting_reason_for(
    device: str, workers: list[Worker], settings: Settings, processes: int = 1, nodes: int = 1
) -> str | None:
    """Why a job for `device` on `processes` processes on each of `nodes` machines cannot start
    now: no live worker serves its queue, or too few can give it that many processes (GPUs, for a
    CUDA job); else None."""
    queue = settings.queue_for(device)
    serving = [worker for worker in workers if queue in worker.queues]
    if device.startswith("cuda"):  # a worker without one that serves the GPU queue gives the job back
        serving = [worker for worker in serving if gpus(worker)]
    if not serving:
        return NO_GPU_WORKER if queue == settings.gpu_queue else NO_WORKER
    if processes == 1 and nodes == 1:
        return None  # a worker that serves the queue runs it
    able = [worker for worker in serving if capacity(worker, device) >= processes]
    if len(able) < nodes:
        unit = "gpus" if device.startswith("cuda") else "processes"
        return f"no_worker_with_{processes}_{unit}" if nodes == 1 else f"no_{nodes}_workers_with_{processes}_{unit}"
    return None


_SHORT_OF_CAPACITY = re.compile(r"no_(?:(?P<nodes>\d+)_workers|worker)_with_(?P<count>\d+)_(?P<unit>processes|gpus)")


def describe_waiting(reason: str | None) -> str | None:
    """A waiting reason (waiting_reason_for's) in words, with what would let the job start."""
    if reason is None:
        return None
    if reason == NO_WORKER:
        return "no live worker serves its queue; start one with `trainyard worker`"
    if reason == NO_GPU_WORKER:
        return "it asks for a GPU and no live worker with a GPU serves the GPU queue"
    if reason == STORE_UNAVAILABLE:
        return (
            "its worker cannot reach the store and retries it; the job goes back to the queue if the store stays away"
        )
    if reason == WORKER_SILENT:
        return (
            "its worker has not been heard from for a while; if it stays silent for a lease "
            "(TRAINYARD_LEASE_SECONDS), the job goes back to the queue"
        )
    short = _SHORT_OF_CAPACITY.fullmatch(reason)
    if short is None:
        return reason
    count, nodes = int(short["count"]), int(short["nodes"] or 1)
    if short["unit"] == "gpus":
        gives = f"{count} GPU{'s' if count != 1 else ''}"
    else:  # every worker gives a job one process; more as TRAINYARD_MAX_JOB_PROCESSES allows
        gives = f"{count} process{'es' if count != 1 else ''}" + (" (TRAINYARD_MAX_JOB_PROCESSES)" if count > 1 else "")
    if nodes == 1:
        return f"it trains on {count} processes and no live worker gives one job {gives}"
    return (
        f"it trains on {nodes} machines at once and fewer than {nodes} live workers each give one job {gives}: "
        "start another worker (`trainyard worker`, on a machine with the same database, broker and store), "
        "or lower distributed.nnodes"
    )


def short_of_capacity(reason: str | None) -> bool:
    """Whether a waiting reason says too few workers give the job its processes (rather than that
    no worker serves its queue)."""
    return reason is not None and _SHORT_OF_CAPACITY.fullmatch(reason) is not None


def device_of(spec: dict) -> str:
    """The device a stored job spec asks for (which decides its queue)."""
    return (spec or {}).get("device", "auto")


def processes_of(spec: dict) -> int:
    """The processes a stored job spec trains on, on each machine (1 unless it is distributed)."""
    return ((spec or {}).get("distributed") or {}).get("nproc_per_node", 1)


def nodes_of(spec: dict) -> int:
    """The machines a stored job spec trains on at once."""
    return ((spec or {}).get("distributed") or {}).get("nnodes", 1)


def waiting_detail(job: Job, reason: str | None, settings: Settings) -> str | None:
    """A job's waiting reason in words: what its worker said it waits for (store_unavailable), since
    when its worker is silent (worker_silent), else describe_waiting's."""
    if reason == STORE_UNAVAILABLE and job.stalled:
        return job.stalled
    if reason in (NO_WORKER, NO_GPU_WORKER):  # a worker started with another TRAINYARD_QUEUE serves another
        queue = settings.queue_for(device_of(job.spec))
        setting = "TRAINYARD_QUEUE" if reason == NO_WORKER else "TRAINYARD_GPU_QUEUE"
        return (
            f"{describe_waiting(reason)} (its queue is {queue!r}: a worker serves its {setting}, or the queues "
            "its --queues or TRAINYARD_WORKER_QUEUES name)"
        )
    if reason == WORKER_SILENT and job.heartbeat_at is not None:
        return (
            f"its worker ({job.worker}) has not been heard from since {job.heartbeat_at:%H:%M:%S} UTC; if it stays "
            f"silent for a lease ({settings.lease_seconds:g} s, TRAINYARD_LEASE_SECONDS), the job is taken from it: "
            "it goes back to the queue and resumes from its last epoch (or ends, if it was being cancelled)"
        )
    return describe_waiting(reason)


def silent_after(settings: Settings) -> timedelta:
    """How long a running job's worker may go without renewing its lease before the job says so:
    five beats or a third of the lease, whichever is longer, and at most half the lease, at whose
    end the job is taken from it. (Heartbeats are stamped by the worker's clock and read by the
    API's: the machines' clocks must agree to within a few seconds, as NTP keeps them.)"""
    return timedelta(
        seconds=min(max(5 * settings.heartbeat_seconds, settings.lease_seconds / 3), settings.lease_seconds / 2)
    )


def waiting_reasons(session: Session, *, jobs: list[Job], settings: Settings) -> dict[str, str | None]:
    """Each queued job's waiting reason (None for jobs that wait for nothing but their turn); for a
    running job, store_unavailable when its worker's last heartbeat said it retries the store, and
    worker_silent when there has been no heartbeat for silent_after."""
    queued = [job for job in jobs if job.status == JobStatus.QUEUED]
    workers = live(session, settings=settings) if queued else []
    active = [job for job in jobs if job.status in JobStatus.ACTIVE]
    silent_before = utcnow() - silent_after(settings) if active else None
    return {
        **{
            job.id: waiting_reason_for(
                device_of(job.spec), workers, settings, processes_of(job.spec), nodes_of(job.spec)
            )
            for job in queued
        },
        **{job.id: STORE_UNAVAILABLE for job in active if job.stalled},
        **{
            job.id: WORKER_SILENT
            for job in active
            if job.heartbeat_at is not None and job.heartbeat_at < silent_before  # what it last said is old too
        },
    }

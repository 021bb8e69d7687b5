"""A distributed job's processes: started with torchrun under the worker's task, supervised there.

The worker's pool process keeps what it keeps for any job (the claim, the lease, cancel requests,
the job's log); the training happens in torchrun's ranks (workers/rank.py), each in a process of
its own, so that no CUDA state is ever forked. The worker relays the ranks' log records into the
job's log, asks them to stop through a file when the job is cancelled or its lease lost, and stops
torchrun (and with it the ranks) when they do not. torchrun starts the ranks again when one dies;
past its restarts, the job goes back to the queue like any job whose worker was lost.

A job on several machines (nnodes > 1) is led by the worker that claimed it: it hosts the c10d
rendezvous and sends join messages through the job's queue; each worker that takes one
(join_ranks) starts torchrun with its machine's share of the ranks, and stops it once the attempt
it joined no longer runs.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

from models.spec.job import JobSpec
from service.core import jobs
from service.core.background import Periodic
from service.core.broker import send_join_job
from service.core.db import session_scope
from service.core.settings import get_settings
from service.core.tables import Job, JobStatus
from workers.job_log import JobLogCapture
from workers.presence import busy_with
from workers.rank import LOG_LINE, RunFolder
from workers.stopping import worker_stopping

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1
KILL_AFTER_SECONDS = 15.0  # after torchrun was asked to stop (SIGTERM) and did not


class GroupLost(Exception):
    """The job's processes kept dying, past torchrun's restarts, without saying how the job ended."""

    reason = "distributed_processes_lost"


def _own_session_dying_with_parent() -> None:
    """In torchrun's process before it starts: a session of its own (so that it can be signalled
    apart from the worker), and SIGTERM when the worker's process dies."""
    os.setsid()
    with_errno = ctypes.CDLL(None, use_errno=True)
    with_errno.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _relay(stream, ranks_log: logging.Logger) -> None:
    """Each rank's log records into this process's logging (and so the job's log); torchrun's own
    lines too, at the level they carry."""
    for raw in stream:
        line = raw.rstrip("\n")
        if line.startswith(LOG_LINE):
            try:
                record = json.loads(line[len(LOG_LINE) :])
                level = logging.getLevelName(record["level"])
                named = re.match(rf"rank {record['rank']}\b", record["message"])
                prefix = f"rank {record['rank']}: " if record["rank"] and not named else ""
                logging.getLogger(record["logger"]).log(
                    level if isinstance(level, int) else logging.INFO, prefix + record["message"]
                )
                continue
            except (ValueError, KeyError, TypeError):
                pass
        if line.strip():
            # torchrun's records start with their level's letter (I, W, E), as glog's do.
            level = {"W": logging.WARNING, "E": logging.ERROR}.get(line[:1], logging.INFO)
            ranks_log.log(level, "torchrun: %s", line)


def train_on_ranks(job_id: str, claim: jobs.Claim, spec: JobSpec, control, job_log: JobLogCapture) -> dict:
    """Run the job on spec.distributed's processes until they end; their outcome (see
    workers/rank.py). On several machines, this worker hosts the rendezvous and asks as many other
    workers to join it. GroupLost when the processes die past torchrun's restarts without one."""
    settings = get_settings()
    nodes = spec.distributed.nnodes
    rendezvous = None
    if nodes > 1:
        rendezvous = f"{settings.worker_address or own_address(settings.broker_url)}:{_free_port()}"
        for _ in range(nodes - 1):
            send_join_job(job_id, claim.attempt, rendezvous, claim.resumed_by_user, settings.queue_for(spec.device))
        log.info("asked %d other worker(s) to join this job at %s", nodes - 1, rendezvous)
    outcome, status = run_group(
        job_id, claim.attempt, claim.spec, claim.resumed_by_user, control.should_stop, job_log, rendezvous, host=True
    )
    if outcome is not None:
        return outcome
    if control.lost.is_set():
        raise jobs.LeaseLost()
    if control.should_stop():  # cancelled, and stopped before saying so: it resumes from its last epoch
        return {"ended": "stopped"}
    raise GroupLost(
        f"the job's processes failed {settings.distributed_max_restarts + 1} time(s) (torchrun exit status "
        f"{status}, TRAINYARD_DISTRIBUTED_MAX_RESTARTS {settings.distributed_max_restarts})"
        + (f", or the other {nodes - 1} machine(s) did not join in time" if nodes > 1 else "")
        + "; its log says why"
    )


def join_ranks(job_id: str, attempt: int, rendezvous: str, resumed_by_user: bool, node: str | None = None) -> None:
    """Train this machine's share of a job on several machines that another worker leads (the
    attempt it runs), until its processes end or the attempt does."""
    settings = get_settings()
    with session_scope(write=False) as session:
        job = session.get(Job, job_id)
        running = job is not None and job.attempt == attempt and job.status == JobStatus.RUNNING
        spec = job.spec if job is not None else None
    if not running:
        log.info("job %s attempt %d is not running any more: not joining it", job_id, attempt)
        return
    busy_with(node, job_id)
    try:
        with (
            JobLogCapture(job_id, attempt, settings.job_log_lines) as job_log,
            AttemptWatch(job_id, attempt, settings.heartbeat_seconds) as watch,
        ):
            log.info("joining job %s (attempt %d) at %s", job_id, attempt, rendezvous)
            _, status = run_group(
                job_id, attempt, spec, resumed_by_user, watch.should_stop, job_log, rendezvous, host=False
            )
            log.info("this machine's share of job %s ended (torchrun exit status %s)", job_id, status)
    finally:
        busy_with(node, None)


def torchrun_command(spec: JobSpec, job_id: str, attempt: int, folder: RunFolder, rendezvous: str | None, host: bool):
    settings = get_settings()
    distributed = spec.distributed
    if rendezvous is None:
        meeting = ["--standalone"]
    else:
        local = rendezvous.rsplit(":", 1)[0] if host else settings.worker_address or own_address(settings.broker_url)
        meeting = [
            f"--nnodes={distributed.nnodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rendezvous}",
            f"--rdzv-id={job_id}",
            f"--rdzv-conf=is_host={str(host).lower()},join_timeout={settings.distributed_join_timeout_seconds:g},"
            "last_call_timeout=1",
            # The address the other machines reach this one's processes at (rank 0's store among
            # them); torch's default, this host's name, often maps to loopback in /etc/hosts. The
            # leading worker's is the rendezvous's, found already.
            f"--local-addr={local}",
        ]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *meeting,
        f"--nproc-per-node={distributed.nproc_per_node}",
        f"--max-restarts={settings.distributed_max_restarts}",
        "--monitor-interval=0.5",
        "-m",
        "workers.rank",
        job_id,
        str(attempt),
        str(folder.path),
    ]


_SUPERVISED: set[RunFolder] = set()  # the run folders of the ranks this process runs now


def ranks_waiting() -> str | None:
    """What this worker's ranks wait for the store for, while one does (their processes' storage
    is not this one's)."""
    for folder in list(_SUPERVISED):
        if said := folder.read_waiting():
            return said
    return None


def run_group(
    job_id: str,
    attempt: int,
    spec_json: dict,
    resumed_by_user: bool,
    should_stop,
    job_log: JobLogCapture,
    rendezvous: str | None,
    host: bool,
) -> tuple[dict | None, int | None]:
    """Start this machine's processes of the job with torchrun and wait for them: the outcome they
    wrote (None if none) and torchrun's exit status."""
    settings = get_settings()
    spec = JobSpec.model_validate(spec_json)
    nproc = spec.distributed.nproc_per_node
    folder = RunFolder(settings.home / "ranks" / f"{job_id}.{attempt}.{os.getpid()}")
    shutil.rmtree(folder.path, ignore_errors=True)
    folder.path.mkdir(parents=True)
    folder.job.write_text(json.dumps({"spec": spec_json, "resumed_by_user": resumed_by_user}))
    threads = max(1, settings.training_threads // nproc)
    # On several machines each says which it is: their lines share the job's log.
    machine = "" if spec.distributed.nnodes == 1 else f" on {socket.gethostname()} (worker process {os.getpid()})"
    log.info(
        "starting %d process%s with torchrun%s (%d thread(s) each, up to %d restart(s)%s)",
        nproc,
        "es" if nproc != 1 else "",
        machine,
        threads,
        settings.distributed_max_restarts,
        "" if not machine else ", hosting the rendezvous" if host else ", joining the rendezvous",
    )
    process = subprocess.Popen(
        torchrun_command(spec, job_id, attempt, folder, rendezvous, host),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env={
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "PYTHONUNBUFFERED": "1",
            # Each start of the group meets at a store of its own: in the one torchrun's agent
            # shares by default, a restarted group found the dead group's addresses and its ranks
            # waited for them until they timed out.
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
        },
        preexec_fn=_own_session_dying_with_parent,  # noqa: PLW1509 (nothing else runs in this fork)
    )
    relay = threading.Thread(target=_relay, args=(process.stdout, log), name=f"ranks-{job_id}", daemon=True)
    relay.start()
    _SUPERVISED.add(folder)
    try:
        _supervise(process, folder, should_stop, job_log, settings.lease_seconds)
        relay.join(timeout=10)
        return folder.read_outcome(), process.returncode
    finally:
        _SUPERVISED.discard(folder)
        if process.poll() is None:
            process.kill()
        shutil.rmtree(folder.path, ignore_errors=True)


class AttemptWatch(Periodic):
    """On a machine that joined a job: whether the attempt it joined still runs (it stops once the
    job is cancelled, ends, or goes to another attempt), and whether this worker shuts down. Either
    way its processes stop, and with them the whole group at the same batch (a rank stops when any
    does); the leading worker then hands the job back (workers/runner.py)."""

    def __init__(self, job_id: str, attempt: int, interval: float):
        super().__init__(f"attempt-{job_id}", interval)
        self.job_id, self.attempt = job_id, attempt
        self.over = threading.Event()
        self.stalled: str | None = None  # what this machine's ranks last said they wait for

    def should_stop(self) -> bool:
        return self.over.is_set()

    def tick(self) -> None:
        if worker_stopping():
            if not self.over.is_set():
                log.info("the worker is shutting down: job %s stops after its current batch, everywhere", self.job_id)
                self.over.set()
            return
        try:
            with session_scope(write=False) as session:
                job = session.get(Job, self.job_id)
                running = job is not None and job.attempt == self.attempt and job.status == JobStatus.RUNNING
        except Exception as exc:  # the database may be away a moment: the leader decides meanwhile
            log.warning("could not read job %s's state: %s", self.job_id, exc)
            return
        if not running:
            self.over.set()
            return
        self.report_stall()

    def report_stall(self) -> None:
        """Say on the job what this machine's ranks wait for the store for, each beat while they do
        (the leading worker's beat may clear it meanwhile), and once that they wait no more."""
        said = ranks_waiting()
        if said is None and self.stalled is None:
            return
        try:
            with session_scope() as session:
                jobs.report_stall(
                    session, job_id=self.job_id, attempt=self.attempt, stalled=said, said_before=self.stalled
                )
        except Exception as exc:
            log.warning("could not say on job %s what its ranks here wait for: %s", self.job_id, exc)
            return
        self.stalled = said


def own_address(broker_url: str) -> str:
    """The address other workers reach this one at, without TRAINYARD_WORKER_ADDRESS: its host
    name's, unless that is a loopback address (as /etc/hosts often has it), then the one this
    machine reaches the broker from, which every worker reaches. Loopback only when the broker is
    on this machine, with a warning where the broker is not."""
    try:
        address = socket.gethostbyname(socket.gethostname())
    except OSError:
        address = "127.0.0.1"
    if not ipaddress.ip_address(address).is_loopback:
        return address
    broker = urlsplit(broker_url.split(";")[0])  # the first of kombu's failover URLs
    if broker.hostname is None:  # a broker in a file: every worker is on this machine
        return address
    try:
        family, kind, proto, _, where = socket.getaddrinfo(broker.hostname, broker.port or 9, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.connect(where)  # a route is chosen; nothing is sent
            address = probe.getsockname()[0]
    except (OSError, ValueError):  # no route, or a port that is not a number
        pass
    if ipaddress.ip_address(address).is_loopback and not _is_loopback_host(broker.hostname):
        log.warning(
            "this worker's address is %s, which workers on other machines cannot reach: set "
            "TRAINYARD_WORKER_ADDRESS to an address they can",
            address,
        )
    return address


def _is_loopback_host(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _supervise(process: subprocess.Popen, folder: RunFolder, should_stop, job_log: JobLogCapture, grace: float) -> None:
    """Wait for torchrun to end: the stop file once the job should stop, SIGTERM `grace` seconds
    later if it goes on, SIGKILL after that; the job's log stored every few seconds meanwhile."""
    asked_at = terminated_at = None
    stored_at = time.monotonic()
    while True:
        try:
            process.wait(timeout=0.25)
            return
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if asked_at is None and should_stop():
            log.info("asking the job's processes to stop")
            folder.stop.touch()
            asked_at = now
        if asked_at is not None and terminated_at is None and now - asked_at > grace:
            log.warning("the job's processes did not stop within %.0f s: stopping torchrun", grace)
            process.terminate()
            terminated_at = now
        if terminated_at is not None and now - terminated_at > KILL_AFTER_SECONDS:
            process.kill()
        if now - stored_at > 2.0:
            job_log.store()
            stored_at = now

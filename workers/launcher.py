"""A distributed job's processes: started with torchrun under the worker's task, supervised there.

The worker's pool process keeps what it keeps for any job (the claim, the lease, cancel requests,
the job's log); the training happens in torchrun's ranks (workers/rank.py), each in a process of
its own, so that no CUDA state is ever forked. The worker relays the ranks' log records into the
job's log, asks them to stop through a file when the job is cancelled or its lease lost, and stops
torchrun (and with it the ranks) when they do not. torchrun starts the ranks again when one dies;
past its restarts, the job goes back to the queue like any job whose worker was lost.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

from models.spec.job import JobSpec
from service.core import jobs
from service.core.settings import get_settings
from workers.job_log import JobLogCapture
from workers.rank import LOG_LINE, RunFolder

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
                prefix = f"rank {record['rank']}: " if record["rank"] else ""
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
    workers/rank.py). GroupLost when they die past torchrun's restarts without one."""
    settings = get_settings()
    nproc = spec.distributed.nproc_per_node
    folder = RunFolder(settings.home / "ranks" / f"{job_id}.{claim.attempt}")
    shutil.rmtree(folder.path, ignore_errors=True)
    folder.path.mkdir(parents=True)
    folder.job.write_text(json.dumps({"spec": claim.spec, "resumed_by_user": claim.resumed_by_user}))
    threads = max(1, settings.training_threads // nproc)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        f"--max-restarts={settings.distributed_max_restarts}",
        "--monitor-interval=0.5",
        "-m",
        "workers.rank",
        job_id,
        str(claim.attempt),
        str(folder.path),
    ]
    log.info(
        "starting %d processes with torchrun (%d thread(s) each, up to %d restart(s))",
        nproc,
        threads,
        settings.distributed_max_restarts,
    )
    process = subprocess.Popen(
        command,
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
    try:
        _supervise(process, folder, control, job_log, settings.lease_seconds)
        relay.join(timeout=10)
        outcome = folder.read_outcome()
    finally:
        if process.poll() is None:
            process.kill()
        shutil.rmtree(folder.path, ignore_errors=True)
    if outcome is not None:
        return outcome
    if control.lost.is_set():
        raise jobs.LeaseLost()
    if control.should_stop():  # cancelled, and stopped before saying so: it resumes from its last epoch
        return {"ended": "stopped"}
    raise GroupLost(
        f"the job's {nproc} processes failed {settings.distributed_max_restarts + 1} time(s) "
        f"(torchrun exit status {process.returncode}, TRAINYARD_DISTRIBUTED_MAX_RESTARTS "
        f"{settings.distributed_max_restarts}); its log says why"
    )


def _supervise(process: subprocess.Popen, folder: RunFolder, control, job_log: JobLogCapture, grace: float) -> None:
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
        if asked_at is None and control.should_stop():
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

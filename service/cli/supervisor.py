"""The launcher: how `trainyard run`, `trainyard api` and `trainyard worker --gpus` start their
processes and stop them, the one supervisor behind all three.

How the service starts, from the command to a request:

    make run -> trainyard run            service/cli/main.py: refuses an exposed API without tokens,
                                         migrates, then starts the children below and supervises them
      |- celery worker                   workers/celery_app.py (one; `trainyard worker` starts it alone)
      '- API processes x TRAINYARD_API_WORKERS   `python -m service.api.server` each (`trainyard api`
                                         starts these alone): uvicorn on its own SO_REUSEPORT socket
                                         of the one port, so the kernel spreads connections evenly
           -> service/api/app.py         the FastAPI app: routes, auth, limits; its lifespan starts
                                         the reaper (service/core/reaper.py), which one process at a
                                         time runs (service/core/leader.py), and preloads models
           -> service/api/processes.py   each process reports its preload on a board in the shared
                                         run folder, so that /readyz speaks for all of them

The supervision (`supervise`), the same for every child: each starts in a session of its own, so a
terminal's Ctrl-C reaches only the supervisor; on SIGINT or SIGTERM, or when any child exits, it
sends every child still running SIGTERM (uvicorn finishes its requests, Celery its warm shutdown),
waits up to STOP_TIMEOUT_S, then kills what is left with its whole process group. A child that exits
on its own makes the exit status 1 (nothing is restarted: an API process that dies takes the API
down, for whoever runs it to restart, rather than limping on with fewer processes).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import typer

STOP_TIMEOUT_S = 20.0
POLL_S = 0.2


def port_is_free(host: str, port: int) -> bool:
    """Whether nothing listens on the port: SO_REUSEPORT would otherwise let the API processes
    silently share it with another server of the same user."""
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def start(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """A child in a session of its own (see the module's docstring)."""
    return subprocess.Popen(command, env=env, start_new_session=True)


def supervise(children: dict[str, subprocess.Popen]) -> int:
    """Wait until SIGINT, SIGTERM or a child's exit, then stop them all; the exit status."""
    stopping = False

    def request_stop(_signum, _frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    exit_code = 0
    while not stopping:
        for name, proc in children.items():
            if proc.poll() is not None:
                typer.echo(f"{name} exited with status {proc.returncode}; stopping", err=True)
                exit_code, stopping = 1, True
                break
        else:
            time.sleep(POLL_S)
    stop(children.values())
    return exit_code


def stop(procs) -> None:
    """SIGTERM each child still running, then SIGKILL the process groups of those left after STOP_TIMEOUT_S."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

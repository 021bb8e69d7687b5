"""The launcher: how `trainyard run`, `trainyard api` and `trainyard worker --gpus` start their
processes and stop them, the one supervisor behind all three.

How the service starts, from the command to a request:

    make run -> trainyard run            service/cli/main.py: refuses an exposed API without tokens,
                                         migrates, then starts the children below and supervises them
      |- celery worker                   workers/celery_app.py (one; `trainyard worker` starts it alone)
      '- the API's fork server           (`trainyard api` starts it alone) imports what every API
         |                               process needs (service/api/preload.py: torch, matplotlib, ...)
         |                               once, then forks the API processes, which share those pages
         |                               instead of each importing its own copy
         '- API processes x TRAINYARD_API_WORKERS   `service.api.server`, run as `python -m` would run
                                         it: uvicorn on its own SO_REUSEPORT socket of the one port,
                                         so the kernel spreads connections evenly
           -> service/api/app.py         the FastAPI app: routes, auth, limits; its lifespan starts
                                         the reaper (service/core/reaper.py), which one process at a
                                         time runs (service/core/leader.py), and preloads models
           -> service/api/processes.py   each process reports its preload on a board in the shared
                                         run folder, so that /readyz speaks for all of them

The supervision (`supervise`), the same for every child: each starts in a session of its own, so a
terminal's Ctrl-C, or its SIGHUP when it closes, reaches only the supervisor (and the fork server
and multiprocessing's resource tracker, which stay in its group and ignore both). The API
processes' parent is the fork server, not the supervisor: it tells the supervisor how each ended,
and an API process whose supervisor is killed outright sees that through
multiprocessing.parent_process() and stops.

A child that exits on its own (killed, out of memory, crashed) is started again, its exit and the
restart said on stderr; one that exits RESTART_LIMIT times within RESTART_WINDOW_S is crash-looping,
and then everything stops with exit status 1 (one that exits EXIT_MISCONFIGURED, at once and with
that status), for whoever runs the supervisor (a terminal, compose's `restart:`) to see. On SIGINT,
SIGTERM or SIGHUP, or on a crash loop, it sends every child still running SIGTERM (uvicorn
finishes its requests, Celery its warm shutdown), waits up to STOP_TIMEOUT_S, then kills what is
left with its whole process group.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import multiprocessing
import os
import runpy
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import typer

from service.core.background import EXIT_MISCONFIGURED, SUPERVISED, set_process_title

STOP_TIMEOUT_S = 20.0
POLL_S = 0.2
RESTART_LIMIT = 5
RESTART_WINDOW_S = 60.0
RESTART_DELAY_S = 1.0


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


class ForkedProcess:
    """A process forked from the fork server, seen through the part of Popen's interface the
    supervisor uses."""

    def __init__(self, process: multiprocessing.process.BaseProcess):
        self.process = process
        self.pid = process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def poll(self) -> int | None:
        return self.process.exitcode

    def send_signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(f"process {self.pid}", timeout)
        return self.process.exitcode


@dataclass
class Child:
    """A supervised process and how to start it again."""

    launch: Callable[[], subprocess.Popen | ForkedProcess]
    env: dict[str, str] | None
    proc: subprocess.Popen | ForkedProcess = field(init=False)
    exits: list[float] = field(default_factory=list)  # monotonic times of its recent exits

    def __post_init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.proc = self.launch()

    def crash_looping(self, now: float) -> bool:
        """Record an exit at `now`; whether it is the RESTART_LIMIT-th within RESTART_WINDOW_S."""
        self.exits = [t for t in self.exits if now - t < RESTART_WINDOW_S] + [now]
        return len(self.exits) >= RESTART_LIMIT


@contextlib.contextmanager
def stopped_on_error(children: dict[str, Child]) -> Iterator[dict[str, Child]]:
    """The children started so far, stopped if the block raises before supervise() takes them over
    (multiprocessing would otherwise wait for forked ones at exit, for ever)."""
    try:
        yield children
    except BaseException:
        stop(child.proc for child in children.values())
        raise


def start(command: list[str], env: dict[str, str] | None = None) -> Child:
    """A child in a session of its own (see the module's docstring)."""
    env = {**(os.environ if env is None else env), SUPERVISED: str(os.getpid())}
    return Child(lambda: subprocess.Popen(command, env=env, start_new_session=True), env)


_FORK_SERVER = multiprocessing.get_context("forkserver")


def start_forked(module: str, env: dict[str, str], preload: str) -> Child:
    """A child that runs `module` as `python -m` would, forked from the fork server, which imports
    the module `preload` once for every child forked from it; in a session of its own too.

    The fork server is one per supervisor (multiprocessing's), started by the first fork with the
    environment `env`: the children forked from it must all want the same preload and environment.
    """

    def fork() -> ForkedProcess:
        _FORK_SERVER.set_forkserver_preload([preload])
        with _environment(env), _hangup_ignored():
            process = _FORK_SERVER.Process(target=_run_forked, args=(module, env, preload), name=module)
            process.start()
        return ForkedProcess(process)

    return Child(fork, env)


@contextlib.contextmanager
def _hangup_ignored() -> Iterator[None]:
    """SIGHUP ignored for the block: the fork server and multiprocessing's resource tracker, started
    in it, stay in the supervisor's process group and so get a closing terminal's SIGHUP, which must
    not end them before the supervisor has stopped the children it forked."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """os.environ is `env` for the block (what a fork server started in it inherits)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _run_forked(module: str, env: dict[str, str], preload: str) -> None:
    """A forked child's start: a session, the command line and the environment of its own (`ps`
    shows `python -m <module>`, not the fork server's), the garbage collector back on (the preload
    turned it off so that the pages it shares stay untouched), then the module as its __main__.

    multiprocessing's fork server goes on without a preload that raised ImportError: the child
    says so, and imports what it needs itself."""
    title = f"{sys.executable} -m {module}"
    os.setsid()
    signal.signal(signal.SIGHUP, signal.SIG_DFL)  # the fork server's ignoring it is not the child's
    set_process_title(title)  # before the environment changes: it writes over exec's argv and environ
    os.environ.clear()
    os.environ.update(env)
    if preload not in sys.modules:
        why = ""
        try:
            importlib.import_module(preload)
        except Exception as error:  # the child starts all the same, and fails on what it lacks
            why = f" ({type(error).__name__}: {error})"
        print(
            f"{module}: the fork server could not import {preload}{why}; this process imports what it "
            "needs itself, and shares none of it",
            file=sys.stderr,
            flush=True,
        )
        set_process_title(title)  # the preload names the fork server
    gc.enable()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def ended_how(status: int) -> str:
    """How a child ended, in words: its exit status, or the signal that killed it (a negative
    returncode)."""
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"was killed by {name}"
    return f"exited with status {status}"


def supervise(children: dict[str, Child]) -> int:
    """Restart children that exit until SIGINT, SIGTERM, SIGHUP (its terminal closed) or a crash
    loop, then stop them all; the exit status."""
    stopping = False

    def request_stop(_signum, _frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # under nohup it stays ignored
        signal.signal(signal.SIGHUP, request_stop)
    exit_code = 0
    try:
        while not stopping:
            exited = [(name, child) for name, child in children.items() if child.proc.poll() is not None]
            for name, child in exited:
                status = child.proc.returncode
                if status == EXIT_MISCONFIGURED:  # it said why; starting it again would say it again
                    typer.echo(
                        f"{name} exited with status {status}: misconfigured (its log says why); stopping", err=True
                    )
                    exit_code, stopping = status, True
                    break
                if child.crash_looping(time.monotonic()):
                    typer.echo(
                        f"{name} {ended_how(status)}, {RESTART_LIMIT} times within {RESTART_WINDOW_S:g} s; stopping",
                        err=True,
                    )
                    exit_code, stopping = 1, True
                    break
                typer.echo(f"{name} {ended_how(status)}; restarting it", err=True)
                forget_metrics(child)
            if not stopping and exited:
                time.sleep(RESTART_DELAY_S)
                for name, child in exited:
                    if stopping:
                        break
                    try:
                        child.restart()
                    # e.g. no memory to fork (EOFError: the fork server died of it): counts as one
                    # more exit next time round
                    except (OSError, EOFError) as exc:
                        typer.echo(f"{name} could not be started again: {exc}", err=True)
            elif not stopping:
                time.sleep(POLL_S)
    finally:  # whatever ends the loop, no child outlives its supervisor
        stop(child.proc for child in children.values())
    return exit_code


def forget_metrics(child: Child) -> None:
    """A dead API process's live gauges (its prometheus_client multiprocess files) stop counting."""
    folder = (child.env or {}).get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(child.proc.pid, folder)


def stop(procs) -> None:
    """SIGTERM each process still running, then SIGKILL the process groups of those left after STOP_TIMEOUT_S."""
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

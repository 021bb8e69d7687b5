"""A worker's shutdown (SIGTERM, Ctrl-C, its supervisor stopping it, a remote `shutdown` control
command) reaches the jobs its pool processes run. Celery's own warm shutdown waits for every
running task to end, which for a training job can be hours, and the supervisor kills the worker
after STOP_TIMEOUT_S: the job would then wait for its lease to expire before anyone resumed it.
Instead the worker's main process leaves a file that each job's control (workers/runner.py's
JobControl) looks for at every lease renewal; the job stops after its current batch, keeps its
place, and goes back to the queue at once (not counted as a failed attempt), for this worker once
it starts again or for another one.

Two hooks leave the file, because neither sees every shutdown in time: worker_shutting_down comes
from Celery's signal handlers alone, and AnnounceShutdown's close() comes too late on a signal's
warm shutdown (with the step alone, a job whose worker got SIGTERM trained on to its end); the step
is how a remote `shutdown` reaches the file. SIGHUP restarts the worker in place (a warm shutdown,
then the same command again); its handler, Celery's, sends no worker_shutting_down either, and
the step alone came too late there too (on a quiet machine the job trained on to its end), so the
handler is wrapped to leave the file first.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from celery import bootsteps, platforms
from celery.signals import worker_init, worker_ready, worker_shutdown, worker_shutting_down

from service.core.broker import app
from service.core.settings import get_settings

log = logging.getLogger(__name__)


def stop_file(main_pid: int) -> Path:
    """The file a worker's main process leaves while it shuts down."""
    return get_settings().home / "run" / f"worker-{main_pid}.stopping"


def worker_stopping() -> bool:
    """Whether the worker whose pool runs this process is shutting down (call in a pool process)."""
    return stop_file(os.getppid()).exists()


@worker_shutting_down.connect  # a signal's shutdown, as soon as the signal comes
def _announce(**_kwargs) -> None:
    path = stop_file(os.getpid())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


class AnnounceShutdown(bootsteps.StartStopStep):
    """A remote `shutdown` (Flower, `celery control shutdown`), which sends no worker_shutting_down:
    the worker then closes all its steps before it stops any, so this comes before the pool's stop,
    which waits for the running tasks."""

    requires = {"celery.worker.components:Pool"}

    def close(self, parent) -> None:
        try:
            _announce()
        except OSError as error:  # the shutdown goes on; the job then waits for its lease
            log.warning("could not tell the running jobs that the worker stops: %s", error)


app.steps["worker"].add(AnnounceShutdown)


@worker_ready.connect
@worker_shutdown.connect
def _clear(**_kwargs) -> None:  # at the start too: a file an earlier process of this pid left
    stop_file(os.getpid()).unlink(missing_ok=True)


@worker_ready.connect  # after Celery installed its signal handlers
def _announce_on_restart(**_kwargs) -> None:
    restart = platforms.signals["SIGHUP"]
    if not callable(restart):
        return  # Celery installs no restart on a terminal: a closed terminal's SIGHUP ends the worker

    def announce_then_restart(*args) -> None:
        _announce()
        restart(*args)

    platforms.signals["SIGHUP"] = announce_then_restart


@worker_init.connect
def _restartable(**_kwargs) -> None:
    """Celery restarts a worker on SIGHUP by executing `sys.executable` with `sys.argv` again.
    Started as `python -m celery` (as `trainyard worker` and `trainyard run` start it), argv[0] is
    celery/__main__.py, which fails when run as a script (celery#4249): the worker died instead.
    Said as `-m celery`, after the interpreter's own options (-X, -W) it was started with, the
    restart runs the command it was started with."""
    main = Path(sys.argv[0]) if sys.argv else None
    if main is None or main.name != "__main__.py" or main.parent.name != "celery":
        return
    before_arguments = sys.orig_argv[1 : len(sys.orig_argv) - len(sys.argv) + 1]  # options, -m celery
    sys.argv[:1] = before_arguments if before_arguments[-2:] == ["-m", "celery"] else ["-m", "celery"]

"""Periodic: work repeated on a background thread until it is stopped; a process that stops when
its parent dies; and what `ps` calls a process."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path
from typing import Self

import setproctitle

log = logging.getLogger(__name__)


class Periodic:
    """A named daemon thread that calls tick() every `interval` seconds until stop().

    Subclasses implement tick(); it may return how long to wait before the next one (None:
    `interval`). A tick that raises is logged, and the next one comes after `interval`. With
    `at_start` the first tick comes at once instead of after an interval. As a context manager it
    runs for the duration of the block.
    """

    def __init__(self, name: str, interval: float, *, at_start: bool = False):
        self.interval = interval
        self.at_start = at_start
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._failures = 0  # ticks that raised, in a row

    def tick(self) -> float | None:
        raise NotImplementedError

    def wait(self, seconds: float) -> bool:
        """Sleep between ticks; True once stop() is called."""
        return self.stopped.wait(seconds)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self.stopped.set()
        self.thread.join(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        delay = self._tick() if self.at_start else None
        while not self.wait(self.interval if delay is None else delay):
            delay = self._tick()

    def _tick(self) -> float | None:
        """tick(), whose failure is logged (its traceback once in a row) and waited out: the thread
        goes on (a lease that stopped being renewed because one tick raised would lose its job)."""
        try:
            delay = self.tick()
        except Exception as error:
            self._failures += 1
            if self._failures == 1:
                log.exception("%s: a periodic step failed; trying again in %g s", self.thread.name, self.interval)
            else:
                log.warning(
                    "%s: the periodic step failed again (%d in a row): %s", self.thread.name, self._failures, error
                )
            return None
        self._failures = 0
        return delay


SUPERVISED = "TRAINYARD_SUPERVISED"  # the pid of the supervisor (service/cli/supervisor.py) that started us
# A process's exit status for a configuration it cannot work with (EX_CONFIG): its supervisor does
# not start it again, and stops with that status.
EXIT_MISCONFIGURED = 78


def stop_with_supervisor(interval: float = 1.0) -> None:
    """stop_when_orphaned for a process that may also run on its own (a worker: `trainyard worker`
    under nohup must outlive its shell), when a supervisor started it; at once if the supervisor
    is gone already."""
    supervisor = os.environ.pop(SUPERVISED, None)
    if supervisor is None:
        return
    if os.getppid() != int(supervisor):
        os.kill(os.getpid(), signal.SIGTERM)
        return
    stop_when_orphaned(interval)


def stop_when_orphaned(interval: float = 1.0) -> None:
    """Stop this process (as SIGTERM does) once the process that started it is gone: a supervisor
    killed outright must not leave its children (API processes, a job's ranks) running unsupervised.

    A process forked by a fork server has the fork server as its parent, which lives as long as its
    children do; the process that asked for the fork is multiprocessing's parent_process() then."""
    parent = os.getppid()
    requester = multiprocessing.parent_process()

    def watch() -> None:
        while os.getppid() == parent and (requester is None or requester.is_alive()):
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def set_process_title(title: str) -> None:
    """What `ps` and /proc/<pid>/cmdline show as this process's command; its short name (`ps -e`,
    top, pgrep) stays the program's."""
    try:
        short = Path("/proc/self/comm").read_text().strip()
    except OSError:  # not Linux: setproctitle does what the system allows
        short = None
    setproctitle.setproctitle(title)
    if short:
        setproctitle.setthreadtitle(short)

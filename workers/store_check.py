"""A worker whose store is not the service's takes no job: it says why and exits at its start
(service/core/storage/check.py says how it is told). Before each job it looks again whether the
service has moved to another store since (`storage migrate`, then an API started on the target):
one small query while nothing has; if its store is no longer the service's, the job goes back to
the queue for another worker and this one stops, with the same exit status as at its start."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

from celery.signals import worker_init, worker_ready, worker_shutdown

from service.core.background import EXIT_MISCONFIGURED
from service.core.db import UNAVAILABLE, brief, read_scope
from service.core.settings import get_settings
from service.core.storage import StorageUnavailable, get_storage
from service.core.storage.check import ask_store, recorded_marks

log = logging.getLogger(__name__)

# The service's mark when this worker's store was last found to be the service's, and the
# worker's main process: pool processes inherit both from it (it checks at its start).
_found_with: str | None = None
_main_pid: int | None = None


@worker_init.connect
def refuse_another_store(**_kwargs) -> None:
    global _found_with, _main_pid
    _main_pid = os.getpid()
    storage = get_storage()
    try:
        mark = _current_mark()
        problem = ask_store(storage.store)
    except UNAVAILABLE as error:
        log.warning("could not check this worker's store against the database yet: %s", brief(error))
        return
    except StorageUnavailable as error:
        log.warning("could not check this worker's store yet: %s", error)
        return
    except Exception:  # a check that cannot be made refuses nothing (a database not migrated yet, say)
        log.warning("could not check this worker's store", exc_info=True)
        return
    if problem:
        log.critical("%s", problem)
        raise SystemExit(EXIT_MISCONFIGURED)
    _found_with = mark
    log.info("this worker's store is %s", storage.url)


def store_gone_since() -> str | None:
    """In a pool process, before a job: why this worker's store is no longer the service's, or None
    (also when it cannot be asked now: the job goes on, as at the start)."""
    global _found_with
    try:
        mark = _current_mark()
        if mark == _found_with:
            return None
        problem = ask_store(get_storage().store)
    except Exception as error:  # the store or the database away now: the job waits for them as it runs
        log.warning("could not check this worker's store again: %s", brief(error))
        return None
    if problem is None:
        _found_with = mark
    return problem


def stop_refused_worker(problem: str) -> None:
    """Say why, and stop the worker whose pool runs this process (a warm shutdown, ending with
    EXIT_MISCONFIGURED)."""
    log.critical("%s; stopping this worker", problem)
    main = _main_pid or os.getppid()
    _refused_file(main).write_text(problem)
    os.kill(main, signal.SIGTERM)


@worker_ready.connect  # a file that a killed worker of the same pid left
def _clear(**_kwargs) -> None:
    _refused_file(os.getpid()).unlink(missing_ok=True)


@worker_shutdown.connect
def _exit_misconfigured(sender=None, **_kwargs) -> None:
    refused = _refused_file(os.getpid())
    if refused.exists():
        refused.unlink()
        if sender is not None:
            sender.exitcode = EXIT_MISCONFIGURED


def _current_mark() -> str | None:
    with read_scope() as session:
        current = recorded_marks(session).current
    return current.token if current else None


def _refused_file(main_pid: int) -> Path:
    path = get_settings().home / "run" / f"worker-{main_pid}.refused"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path

"""Capture what a job's worker process logs while it runs the job, for GET /v1/jobs/{id}/logs.

A training process runs one job at a time, so every record it emits meanwhile (the runner's
lines, the lease thread's, Python warnings, the final traceback) belongs to that job. Lines are
buffered and written with each lease renewal, at each epoch's end and at the job's end; a job
keeps at most `limit` lines per attempt, but errors (a traceback) are always kept. Other
libraries' lines are kept from WARNING up.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone

from celery.signals import after_setup_logger

from service.core import job_logs
from service.core.db import session_scope

log = logging.getLogger(__name__)
ERRORS_BEYOND_LIMIT = 20
OUR_LOGGERS = ("workers", "models", "service")


@after_setup_logger.connect
def _console_keeps_its_level(logger: logging.Logger, loglevel: int, **_kwargs) -> None:
    """The console's handlers show --loglevel and up, though a job lowers its loggers to INFO
    for its own log while it runs."""
    for handler in logger.handlers:
        handler.setLevel(loglevel)


class JobLogCapture(logging.Handler):
    def __init__(self, job_id: str, attempt: int, limit: int):
        super().__init__(level=logging.INFO)
        self.job_id, self.attempt, self.limit = job_id, attempt, limit
        self.setFormatter(logging.Formatter("%(message)s"))
        self._pending: list[dict] = []
        self._kept = self._dropped = self._errors_beyond = 0
        self._lock = threading.Lock()
        # One store at a time (the lease thread's and the epoch's): lines keep their order in SQL.
        self._storing = threading.Lock()

    def __enter__(self) -> JobLogCapture:
        # Our own INFO lines reach the job's log whatever level the worker's console shows.
        self._levels = {name: logging.getLogger(name).level for name in OUR_LOGGERS}
        for name in OUR_LOGGERS:
            if logging.getLogger(name).getEffectiveLevel() > logging.INFO:
                logging.getLogger(name).setLevel(logging.INFO)
        logging.getLogger().addHandler(self)
        logging.captureWarnings(True)
        return self

    def __exit__(self, *exc) -> None:
        logging.captureWarnings(False)
        logging.getLogger().removeHandler(self)
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        if self._dropped:
            self._pending.append(
                self._line(
                    logging.WARNING, __name__, f"{self._dropped} more line(s) were not kept (limit {self.limit} a run)"
                )
            )
        self.store()

    def _line(self, level: int, logger: str, message: str) -> dict:
        return {
            "at": datetime.now(timezone.utc),
            "level": logging.getLevelName(level),
            "logger": logger,
            "message": message,
        }

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == __name__ or record.name.startswith(("sqlalchemy", "celery", "kombu")):
            return  # our own complaints about storing lines, and the plumbing's chatter
        if record.levelno < logging.WARNING and not record.name.startswith(OUR_LOGGERS):
            return  # a library's notes ("Found credentials in environment variables."); its warnings stay
        try:
            message = self.format(record)
        except Exception:
            return
        with self._lock:
            if self._kept >= self.limit:
                if record.levelno < logging.ERROR or self._errors_beyond >= ERRORS_BEYOND_LIMIT:
                    self._dropped += 1
                    return
                self._errors_beyond += 1
            self._kept += 1
            self._pending.append(self._line(record.levelno, record.name, message))

    def store(self) -> None:
        """Store the lines gathered so far; kept for the next try if the database is away."""
        with self._storing:
            with self._lock:
                lines, self._pending = self._pending, []
            if not lines:
                return
            try:
                with session_scope() as session:
                    job_logs.append(session, job_id=self.job_id, attempt=self.attempt, lines=lines)
            except Exception as exc:
                with self._lock:
                    self._pending = lines + self._pending
                log.warning("could not store %d log line(s) of job %s yet: %s", len(lines), self.job_id, exc)

"""A job's own log: the lines its worker logged while running it, in order, per attempt."""

from __future__ import annotations

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from service.core.tables import JobLog

MAX_MESSAGE_CHARS = 16_000  # a long traceback fits; a runaway line does not fill the table


def append(session: Session, *, job_id: str, attempt: int, lines: list[dict]) -> None:
    """Store lines ({"at", "level", "logger", "message"}) of one attempt."""
    if lines:
        session.execute(
            insert(JobLog),
            [
                {
                    "job_id": job_id,
                    "attempt": attempt,
                    "at": line["at"],
                    "level": line["level"][:10],
                    "logger": line["logger"][:100],
                    "message": line["message"][:MAX_MESSAGE_CHARS],
                }
                for line in lines
            ],
        )


def read(session: Session, *, job_id: str, after: int = 0, limit: int = 1000) -> list[JobLog]:
    """Lines after the one with id `after`, oldest first."""
    return list(
        session.scalars(
            select(JobLog).where(JobLog.job_id == job_id, JobLog.id > after).order_by(JobLog.id).limit(limit)
        )
    )

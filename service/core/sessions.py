"""Dashboard sessions that were signed out: the one thing about a session the service keeps, so
that a copy of a signed-out cookie opens nothing until it would have expired."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.core.tables import SignedOutSession, utcnow


def sign_out(session: Session, *, session_id: str, expires: int) -> None:
    """Record a session as signed out until it expires, and forget those that have expired."""
    session.execute(delete(SignedOutSession).where(SignedOutSession.expires_at < utcnow()))
    if session.get(SignedOutSession, session_id) is None:
        session.add(SignedOutSession(id=session_id, expires_at=datetime.fromtimestamp(expires, UTC)))
    try:
        session.commit()
    except IntegrityError:  # signed out twice at once (a double click): the other recorded it
        session.rollback()


def signed_out(session: Session, *, session_id: str) -> bool:
    return session.get(SignedOutSession, session_id) is not None

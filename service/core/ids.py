"""Ids as people type them: the full id, or a unique prefix of at least 6 hex characters (as git
and docker take them). Ids are lower-case UUID strings; a prefix is matched with SQL `LIKE
'prefix%'` only after it is checked to be hex and dashes, so it can hold no LIKE wildcard."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.errors import Conflict

ID_LENGTH = 36
MIN_PREFIX = 6
_PREFIX = re.compile(rf"^[0-9a-f][0-9a-f-]{{{MIN_PREFIX - 1},{ID_LENGTH - 1}}}$")
MAX_LISTED = 10


class AmbiguousId(Conflict):
    """A prefix that begins more than one id."""

    def __init__(self, kind: str, prefix: str, matches: list[str]):
        more = ", ..." if len(matches) > MAX_LISTED else ""
        super().__init__(
            f"{kind} id {prefix!r} is ambiguous: it begins {', '.join(matches[:MAX_LISTED])}{more}; give more of the id"
        )
        self.matches = matches[:MAX_LISTED]


def not_found(kind: str, given: str, *, named: bool = False) -> str:
    """ "<kind> <given> not found", saying why when `given` cannot be an id (`named`: it may be a name)."""
    return f"{kind} {given} not found{id_hint(given, named=named)}"


def id_hint(given: str, *, named: bool = False) -> str:
    """Why `given` cannot name an id, where it cannot ("; an id's prefix needs at least 6
    characters", or, unless a name may be given instead, "; ids are hex digits ..."), else ""."""
    given = given.strip()
    if re.fullmatch(rf"[0-9a-fA-F-]{{1,{MIN_PREFIX - 1}}}", given):
        return f"; an id's prefix needs at least {MIN_PREFIX} characters"
    if given and not named and not re.fullmatch(r"[0-9a-fA-F-]+", given):
        return "; ids are hex digits (0-9, a-f) and dashes"
    return ""


def matching(session: Session, table, given: str, limit: int = MAX_LISTED + 1) -> list[str]:
    """The ids of `table` that `given` begins (at most `limit`, in order); none unless `given` is
    a prefix of at least 6 hex characters (a full id matches itself)."""
    prefix = given.strip().lower()
    if not _PREFIX.match(prefix):
        return []
    return list(session.scalars(select(table.id).where(table.id.like(f"{prefix}%")).order_by(table.id).limit(limit)))


def resolve_id(session: Session, table, given: str, *, kind: str) -> str:
    """The full id `given` names: the one id of `table` it begins, else `given` itself (lower-cased),
    for the caller's own lookup to find or report as not found; AmbiguousId (a Conflict) when it
    begins several."""
    given = given.strip().lower()
    if len(given) == ID_LENGTH:
        return given
    found = matching(session, table, given)
    if len(found) > 1:
        raise AmbiguousId(kind, given, found)
    return found[0] if found else given

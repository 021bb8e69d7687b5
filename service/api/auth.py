"""Token authentication: a bearer token for the /v1 and /v2 routes; for the dashboard's pages, a
session cookie given at /ui/login for one of the same tokens.

The cookie does not hold the token: it holds when it expires, a random session id and an HMAC of
both keyed by the token's digest. A stolen cookie is no API token; removing a token from
TRAINYARD_API_TOKENS ends its sessions, and signing out records the session's id as ended
(service/core/sessions.py), so that a copy of the cookie opens nothing either."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated
from urllib.parse import urlencode

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.deps import read
from service.core import sessions
from service.core.settings import api_tokens, get_settings

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# A route's openapi_extra that marks a POST which changes nothing (a predict, an inference): a
# read-only token may call it, as a serving client holds one.
READS_ONLY = {"x-reads-only": True}
COOKIE = "trainyard_session"
SESSION_SECONDS = 7 * 24 * 3600
READ_ONLY = "this token may only read"
bearer = HTTPBearer(auto_error=False, description="An API token from TRAINYARD_API_TOKENS")


@dataclass(frozen=True)
class TokenTable:
    """SHA-256 digests of the configured tokens: only digests are kept in memory."""

    read_write: frozenset[bytes]
    read_only: frozenset[bytes]

    @property
    def enabled(self) -> bool:
        return bool(self.read_write or self.read_only)

    def lookup(self, token: str) -> str | None:
        """'rw', 'ro' or None, compared in constant time."""
        digest = _digest(token)
        found = None
        for known in self.read_write:
            if hmac.compare_digest(known, digest):
                found = "rw"
        for known in self.read_only:
            if hmac.compare_digest(known, digest):
                found = found or "ro"
        return found

    def session(self, cookie: str, *, now: float | None = None) -> PageSession | None:
        """The session a cookie holds (see session_cookie); None once it has expired or when no
        configured token signed it. Whether it was signed out is the caller's to ask."""
        found = re.fullmatch(r"([0-9]{1,12})\.([0-9a-f]{32})\.([0-9a-f]{64})", cookie)
        if found is None or int(found[1]) <= (time.time() if now is None else now):
            return None
        access = None
        for kind, digests in (("rw", self.read_write), ("ro", self.read_only)):
            for known in digests:
                if hmac.compare_digest(_session_signature(known, found[1], found[2]), found[3]):
                    access = access or kind
        return PageSession(id=found[2], expires=int(found[1]), access=access) if access else None


@dataclass(frozen=True)
class PageSession:
    """A dashboard session: its id, when it expires (Unix seconds), and 'rw' or 'ro'."""

    id: str
    expires: int
    access: str


def session_cookie(token: str, *, now: float | None = None) -> str:
    """A new session cookie's value for `token`: `<expiry>.<id>.<signature>`, valid for SESSION_SECONDS."""
    expires, session_id = str(int(time.time() if now is None else now) + SESSION_SECONDS), secrets.token_hex(16)
    return f"{expires}.{session_id}.{_session_signature(_digest(token), expires, session_id)}"


def _session_signature(digest: bytes, expires: str, session_id: str) -> str:
    return hmac.new(digest, f"trainyard-session:{expires}.{session_id}".encode(), hashlib.sha256).hexdigest()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_tokens(raw: str) -> TokenTable:
    """`tok1,tok2:read` -> two tokens, the second read-only."""
    entries = api_tokens(raw)
    return TokenTable(
        frozenset(_digest(token) for token, read in entries if not read),
        frozenset(_digest(token) for token, read in entries if read),
    )


@lru_cache
def token_table() -> TokenTable:
    return parse_tokens(get_settings().api_tokens)


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """401 without a valid token, 403 for a read-only token on a write (a POST marked READS_ONLY
    is not one); open when no tokens are set."""
    table = token_table()
    if not table.enabled:
        return
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing bearer token", headers=challenge)
    access = table.lookup(credentials.credentials)
    if access is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid token", headers=challenge)
    if access == "ro" and not _reads_only(request):
        raise HTTPException(status.HTTP_403_FORBIDDEN, READ_ONLY)


def _reads_only(request: Request) -> bool:
    route = request.scope.get("route")
    return request.method in READ_METHODS or bool((getattr(route, "openapi_extra", None) or {}).get("x-reads-only"))


async def _cookie_access(request: Request) -> str:
    """'rw' or 'ro' by the session cookie (open: 'rw'); without a valid one, or one signed out, to
    the login form, which comes back to a page asked for (not to a fragment or an action, which a
    page's script or form sent)."""
    table = token_table()
    if not table.enabled:
        return "rw"
    known = getattr(request.state, "access", None)
    if known is not None:  # read once already, by the route's guard before the body (service/api/routes.py)
        return known
    session = await live_session(request)
    access = request.state.access = session.access if session else None  # pages hide what "ro" may not do
    if access is None:
        asked = {}
        if request.method == "GET" and not request.url.path.startswith("/ui/fragments/"):
            asked["next"] = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.cookies.get(COOKIE):  # a session it no longer is: the form says so
            asked["ended"] = "1"
        login = "/ui/login" + (f"?{urlencode(asked)}" if asked else "")
        raise HTTPException(status.HTTP_303_SEE_OTHER, headers={"Location": login})
    return access


async def live_session(request: Request) -> PageSession | None:
    """The session the request's cookie holds, unless it expired, its token was taken away or it
    was signed out."""
    session = token_table().session(request.cookies.get(COOKIE, ""))
    if session is None or await read(lambda db: sessions.signed_out(db, session_id=session.id)):
        return None
    return session


async def page_viewer(request: Request) -> None:
    """A dashboard page: any valid token."""
    await _cookie_access(request)


async def page_editor(request: Request) -> None:
    """A dashboard action: 403 for a read-only token."""
    if await _cookie_access(request) != "rw":
        raise HTTPException(status.HTTP_403_FORBIDDEN, READ_ONLY)

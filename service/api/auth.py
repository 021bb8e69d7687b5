"""Token authentication: a bearer token for the /v1 and /v2 routes; for the dashboard's pages, a
session cookie given at /ui/login for one of the same tokens.

The cookie does not hold the token: it holds when it expires and an HMAC of that keyed by the
token's digest. A stolen cookie opens the pages until it expires but is no API token, and removing
a token from TRAINYARD_API_TOKENS ends its sessions."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated
from urllib.parse import urlencode

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.core.settings import get_settings

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# A route's openapi_extra that marks a POST which changes nothing (a predict, an inference): a
# read-only token may call it, as a serving client holds one.
READS_ONLY = {"x-reads-only": True}
COOKIE = "trainyard_session"
SESSION_SECONDS = 7 * 24 * 3600
READ_ONLY = "this token may only read"
_bearer = HTTPBearer(auto_error=False, description="An API token from TRAINYARD_API_TOKENS")


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

    def session_access(self, cookie: str, *, now: float | None = None) -> str | None:
        """'rw', 'ro' or None for a session cookie (see session_cookie): None once it has expired
        or when no configured token signed it."""
        expires, _, signature = cookie.partition(".")
        if not re.fullmatch(r"[0-9]{1,12}", expires) or int(expires) <= (time.time() if now is None else now):
            return None
        found = None
        for access, digests in (("rw", self.read_write), ("ro", self.read_only)):
            for known in digests:
                if hmac.compare_digest(_session_signature(known, expires), signature):
                    found = found or access
        return found


def session_cookie(token: str, *, now: float | None = None) -> str:
    """A session cookie's value for `token`: `<expiry>.<signature>`, valid for SESSION_SECONDS."""
    expires = str(int(time.time() if now is None else now) + SESSION_SECONDS)
    return f"{expires}.{_session_signature(_digest(token), expires)}"


def _session_signature(digest: bytes, expires: str) -> str:
    return hmac.new(digest, f"trainyard-session:{expires}".encode(), hashlib.sha256).hexdigest()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_tokens(raw: str) -> TokenTable:
    """`tok1,tok2:read` -> two tokens, the second read-only."""
    read_write, read_only = set(), set()
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        if item.endswith(":read"):
            read_only.add(_digest(item.removesuffix(":read")))
        else:
            read_write.add(_digest(item))
    return TokenTable(frozenset(read_write), frozenset(read_only))


@lru_cache
def token_table() -> TokenTable:
    return parse_tokens(get_settings().api_tokens)


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
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


def _cookie_access(request: Request) -> str:
    """'rw' or 'ro' by the session cookie (open: 'rw'); without a valid one, to the login form, which
    comes back to a page asked for (not to a fragment or an action, which a page's script or form sent)."""
    table = token_table()
    if not table.enabled:
        return "rw"
    access = table.session_access(request.cookies.get(COOKIE, ""))
    request.state.access = access  # the pages hide what a read-only session may not do
    if access is None:
        login = "/ui/login"
        if request.method == "GET" and not request.url.path.startswith("/ui/fragments/"):
            asked = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            login += "?" + urlencode({"next": asked})
        raise HTTPException(status.HTTP_303_SEE_OTHER, headers={"Location": login})
    return access


async def page_viewer(request: Request) -> None:
    """A dashboard page: any valid token."""
    _cookie_access(request)


async def page_editor(request: Request) -> None:
    """A dashboard action: 403 for a read-only token."""
    if _cookie_access(request) != "rw":
        raise HTTPException(status.HTTP_403_FORBIDDEN, READ_ONLY)

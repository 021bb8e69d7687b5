"""Request body size limit, enforced while the body streams in (Content-Length or chunked)."""

from __future__ import annotations

import json
from typing import NamedTuple

from starlette.exceptions import HTTPException


class Limit(NamedTuple):
    """The most bytes a request body may have, and the setting that says so."""

    max_bytes: int
    setting: str

    def message(self) -> str:
        return (
            f"request body exceeds the limit of {self.max_bytes} bytes ({self.max_bytes / 2**20:.4g} MiB), "
            f"set by {self.setting}"
        )


class _BodyTooLarge(HTTPException):
    """Raised from receive(); an HTTPException so that body parsers pass it through as a 413."""

    def __init__(self, limit: Limit):
        super().__init__(413, limit.message())


class BodySizeLimit:
    """ASGI middleware answering 413 to any request body larger than its path's limit."""

    def __init__(self, app, default: Limit, overrides: dict[str, Limit] | None = None):
        self.app = app
        self.default = default
        self.overrides = overrides or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        return await _Limited(self.app, self.overrides.get(scope["path"].rstrip("/"), self.default))(
            scope, receive, send
        )


class _Limited:
    def __init__(self, app, limit: Limit):
        self.app = app
        self.limit = limit
        self.max_bytes = limit.max_bytes

    async def __call__(self, scope, receive, send):
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > self.max_bytes:
                return await self._reject(send)
            # The server delivers exactly Content-Length bytes, so there is nothing to count.
            return await self.app(scope, receive, send)
        received = 0
        started = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self.limit)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send) -> None:
        body = json.dumps({"detail": self.limit.message()}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

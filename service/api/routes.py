"""The API's route class: a route's guards run before its body is read.

FastAPI reads a request's body (a form: an upload of up to TRAINYARD_MAX_UPLOAD_BYTES) before it
runs the route's dependencies, so a client its token, its page session or a store that is not the
service's refuses would first send the whole upload, and the API would spool it to disk. A
GuardedRoute runs those guards on the headers first; a client that sent `Expect: 100-continue`
(curl does past 1 MiB) then sends nothing. They run again as the route's dependencies: a token
lookup and a readiness answer kept for seconds (a page session, read once, is kept in request.state).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request
from fastapi.routing import APIRoute

from service.api.auth import bearer, page_editor, page_viewer, require_token, token_table
from service.api.deps import DeletesFiles, WritesFiles

Guard = Callable[[Request], Awaitable[None]]


async def _token(request: Request) -> None:
    if token_table().enabled:
        await require_token(request, await bearer(request))


# The route's own dependencies (and its router's) that read headers only.
GUARDS: dict[Callable, Guard] = {
    page_viewer: page_viewer,
    page_editor: page_editor,
    WritesFiles.dependency: WritesFiles.dependency,
    DeletesFiles.dependency: DeletesFiles.dependency,
}


class GuardedRoute(APIRoute):
    """A route of a router that include_api guards with the token (service/api/routers/__init__.py):
    FastAPI does not show a route the dependencies it is included with, so the token guard is named
    here; the dashboard's PageRoute, which its session guards, sets `token_guarded` False."""

    token_guarded = True

    def get_route_handler(self):
        handler = super().get_route_handler()
        guards = [_token] if self.token_guarded else []
        guards += [GUARDS[d.dependency] for d in self.dependencies if d.dependency in GUARDS]
        if self.body_field is None or not guards:
            return handler

        async def guarded(request: Request):
            for guard in guards:
                await guard(request)
            return await handler(request)

        return guarded

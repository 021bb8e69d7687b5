"""One API process: uvicorn serving service/api/app.py on its own listening socket of the shared port.

`trainyard api` (and `trainyard run`) start TRAINYARD_API_WORKERS of these side by side and
supervise them (service/cli/supervisor.py, which also describes the whole start-up chain). Each binds
its own socket to the port with SO_REUSEPORT, so the kernel spreads new connections evenly over the
processes. (With one socket shared by all, as uvicorn's --workers does, whichever process is awake
accepts: under a burst of keep-alive connections one process took nearly all of them and the others
idled.) SIGTERM or SIGINT stops it after it has finished its requests, and so does its supervisor's
death. Model serving (the cache and
the batcher) is service/api/serving.py (and service/api/batching.py).
"""

from __future__ import annotations

import logging
import socket

import uvicorn

from service.core.background import stop_when_orphaned
from service.core.settings import get_settings

APP = "service.api.app:app"


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def serve(host: str, port: int) -> None:
    """Its own socket on the shared port, then uvicorn until told to stop."""
    stop_when_orphaned()
    # No proxy-header rewriting (nothing here trusts a proxy's headers) and no Server header.
    settings = get_settings()
    config = uvicorn.Config(
        APP,
        host=host,
        port=port,
        access_log=settings.access_log,
        log_level=settings.log_level.lower(),
        proxy_headers=False,
        server_header=False,
    )
    if settings.access_log:  # asked for, it is shown whatever the level (uvicorn gave it the same)
        logging.getLogger("uvicorn.access").setLevel(logging.INFO)
    uvicorn.Server(config).run(sockets=[listening_socket(host, port)])


if __name__ == "__main__":
    settings = get_settings()
    serve(settings.host, settings.port)

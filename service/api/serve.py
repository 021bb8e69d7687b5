"""Run the API in TRAINYARD_API_WORKERS processes (`trainyard api` starts this).

Each process binds its own listening socket to the same port with SO_REUSEPORT, so the kernel
spreads new connections evenly over the processes. (With one socket shared by all, as uvicorn's
--workers does, whichever process is awake accepts: under a burst of keep-alive connections one
process took nearly all of them and the others idled.) A process that dies is started again
(unless it dies while starting, e.g. on a port already taken: then all stop, with status 1);
SIGTERM or SIGINT stops them all, each finishing its requests first.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import sys
import time

import uvicorn

from service.core.settings import get_settings

log = logging.getLogger("trainyard.serve")
APP = "service.api.app:app"
STOP_TIMEOUT_S = 15.0
STARTUP_GRACE_S = 10.0  # a process that dies this soon cannot start; starting it again would not help


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def port_is_free(host: str, port: int) -> bool:
    """Whether nothing listens on the port: SO_REUSEPORT would otherwise let these processes
    silently share it with another server of the same user."""
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def serve_one(host: str, port: int) -> None:
    """One API process: its own socket on the shared port, then uvicorn until told to stop."""
    # No proxy-header rewriting (nothing here trusts a proxy's headers) and no Server header.
    config = uvicorn.Config(APP, host=host, port=port, access_log=False, log_level="info",
                            proxy_headers=False, server_header=False)
    uvicorn.Server(config).run(sockets=[listening_socket(host, port)])


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    refusal = settings.exposure_refusal()
    if refusal:
        log.error(refusal)
        return 2
    if not port_is_free(settings.host, settings.port):
        log.error("%s:%d is already in use; is another server running? (TRAINYARD_PORT)", settings.host, settings.port)
        return 1
    if settings.api_workers == 1:
        serve_one(settings.host, settings.port)
        return 0
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter each: nothing inherited half-made

    def start(index: int) -> multiprocessing.Process:
        process = spawn.Process(target=serve_one, args=(settings.host, settings.port), name=f"api-{index}")
        process.start()
        return process

    processes = [start(i) for i in range(settings.api_workers)]
    started = [time.monotonic()] * len(processes)
    log.info("API listening on http://%s:%d in %d processes", settings.host, settings.port, len(processes))
    stopping, exit_code = False, 0

    def request_stop(_signum, _frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    while not stopping:
        for index, process in enumerate(processes):
            if process.is_alive() or stopping:
                continue
            if time.monotonic() - started[index] < STARTUP_GRACE_S:  # it cannot start (port taken?)
                log.error("API process %d exited with %s while starting; stopping", index, process.exitcode)
                stopping, exit_code = True, 1
                break
            log.warning("API process %d (pid %s) exited with %s; starting it again", index, process.pid,
                        process.exitcode)
            processes[index], started[index] = start(index), time.monotonic()
        time.sleep(0.2)
    for process in processes:
        if process.is_alive():
            process.terminate()  # SIGTERM: uvicorn finishes what it is serving, then exits
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for process in processes:
        process.join(max(0.1, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())

"""`make run`: migrates, serves the API with one worker, and Ctrl-C stops everything."""

from __future__ import annotations

import os
import signal
import subprocess

import httpx
import pytest

from tests.support.servers import REPO, free_port, wait_until

pytestmark = pytest.mark.e2e


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, whole command line), read from /proc: `ps` cuts long command lines at
    the terminal's width, which hid `uvicorn` when the clone lay in a deep folder."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
            args = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # it exited while we looked
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # the name in (...) may hold spaces
        found[int(entry)] = (parent, args.strip())
    return found


def descendants(pid: int) -> dict[int, str]:
    """Live processes below pid, by pid, with their command lines."""
    children: dict[int, list[tuple[int, str]]] = {}
    for child, (parent, args) in _processes().items():
        children.setdefault(parent, []).append((child, args))
    found, todo = {}, [pid]
    while todo:
        for child, args in children.get(todo.pop(), []):
            found[child] = args
            todo.append(child)
    return found


def alive(pids) -> list[int]:
    return [pid for pid in pids if os.path.exists(f"/proc/{pid}") and "zombie" not in _state(pid)]


def _state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/status").read().lower()
    except OSError:
        return "zombie"


def test_make_run_serves_and_ctrl_c_stops_api_and_worker(tmp_path, data_dir):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_") and not k.startswith("MAKE")}
    env.update(
        TRAINYARD_HOME=str(tmp_path / "home"),
        TRAINYARD_PORT=str(port),
        TRAINYARD_DATA_DIR=str(data_dir),
        TRAINYARD_QUEUE=f"make-run-{port}",
    )
    log = open(tmp_path / "run.log", "wb")
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def output():
        return (tmp_path / "run.log").read_text(errors="replace")

    try:
        wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200,
            timeout=90,
            what=f"make run to serve /readyz\n{output()}",
        )
        wait_until(lambda: "ready." in output(), timeout=60, what=f"the worker to start\n{output()}")
        assert f"http://127.0.0.1:{port}" in output()
        assert (tmp_path / "home" / "trainyard.db").exists() and (tmp_path / "home" / "broker.db").exists()
        tree = descendants(proc.pid)
        # The API's fork server, and the API process it forked, each named for what it is.
        assert any(args.startswith("trainyard api fork server") for args in tree.values()), tree
        assert any(args.endswith("-m service.api.server") for args in tree.values()), tree
        assert any("celery" in args for args in tree.values()), tree
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        proc.wait(timeout=60)
        wait_until(lambda: alive(tree) == [], timeout=30, what=f"every process of make run to exit\n{output()}")
        assert "trainyard stopped" in output()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

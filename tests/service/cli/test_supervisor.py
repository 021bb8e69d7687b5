"""The supervisor restarts a child that dies, stops a crash-looping one, and stops everything on
SIGTERM; run in a process of its own (it installs signal handlers), over real child processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from tests.support.servers import REPO, wait_until

# A supervisor of two children: one that sleeps, and one that counts its starts in a file and then
# exits with status 3 (or, from its `sleep_after`-th start on, sleeps).
SUPERVISOR = textwrap.dedent("""
    import sys
    from service.cli import supervisor
    supervisor.RESTART_DELAY_S = 0.05
    counter, sleep_after = sys.argv[1], int(sys.argv[2])
    flaky = ("import sys, time; path, after = sys.argv[1], int(sys.argv[2]); "
             "open(path, 'a').write('start\\\\n'); "
             "starts = len(open(path).read().split()); "
             "time.sleep(3600) if after and starts >= after else sys.exit(3)")
    children = {
        "steady": supervisor.start([sys.executable, "-c", "import time; time.sleep(3600)"]),
        "flaky": supervisor.start([sys.executable, "-c", flaky, counter, str(sleep_after)]),
    }
    print("pids", children["steady"].proc.pid, flush=True)
    sys.exit(supervisor.supervise(children))
""")


def supervisor(tmp_path, sleep_after: int) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, str(tmp_path / "starts"), str(sleep_after)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    steady = int(proc.stdout.readline().split()[1])
    return proc, steady


def starts(tmp_path) -> int:
    path = tmp_path / "starts"
    return len(path.read_text().split()) if path.exists() else 0


def alive(pid: int) -> bool:
    return subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip() not in (
        "",
        "Z",
    )


def test_a_child_that_dies_is_restarted_and_sigterm_stops_all(tmp_path):
    proc, steady = supervisor(tmp_path, sleep_after=3)
    try:
        wait_until(lambda: starts(tmp_path) == 3, timeout=30, what="the flaky child's third start")
        time.sleep(0.5)
        assert proc.poll() is None and alive(steady)  # the others ran on through its restarts
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert err.count("flaky exited with status 3; restarting it") == 2
    assert not alive(steady)


def test_a_crash_loop_stops_everything_with_status_1(tmp_path):
    proc, steady = supervisor(tmp_path, sleep_after=0)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert starts(tmp_path) == 5 and "flaky exited with status 3, 5 times within 60 s; stopping" in err
    assert not alive(steady)


def test_a_child_that_cannot_be_started_again_stops_everything(monkeypatch):
    """No memory to fork, say: the failed restarts count as exits, and no child is left behind."""
    from service.cli import supervisor as sup

    monkeypatch.setattr(sup, "RESTART_DELAY_S", 0.01)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    children = {
        "steady": sup.start([sys.executable, "-c", "import time; time.sleep(3600)"]),
        "flaky": sup.start([sys.executable, "-c", "raise SystemExit(3)"]),
    }

    def cannot_fork(self):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(sup.Child, "restart", cannot_fork)
    try:
        assert sup.supervise(children) == 1
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert children["steady"].proc.poll() is not None and len(children["flaky"].exits) == sup.RESTART_LIMIT


def test_a_misconfigured_child_is_not_started_again_and_its_status_ends_everything():
    """A worker whose store is not the service's exits EXIT_MISCONFIGURED once it has said why:
    starting it again would only say it again."""
    from service.cli import supervisor as sup

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    children = {
        "steady": sup.start([sys.executable, "-c", "import time; time.sleep(3600)"]),
        "worker": sup.start([sys.executable, "-c", f"raise SystemExit({sup.EXIT_MISCONFIGURED})"]),
    }
    try:
        assert sup.supervise(children) == sup.EXIT_MISCONFIGURED == 78
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert children["steady"].proc.poll() is not None and children["worker"].exits == []


# A supervisor of one child forked from a fork server (as the API's processes are).
FORKING_SUPERVISOR = textwrap.dedent("""
    import os, sys
    from service.cli import supervisor
    supervisor.RESTART_DELAY_S = 0.05
    env = {**os.environ, "TEST_MARK": "given"}
    child = supervisor.start_forked("tests.support.forked_child", env, "tests.support.forked_preload")
    sys.exit(supervisor.supervise({"forked": child}))
""")


def forked_line(proc: subprocess.Popen) -> tuple[int, int, str, str]:
    """(pid, parent pid, preloaded, mark) from the line the forked child prints."""
    word, pid, parent, preloaded, mark = proc.stdout.readline().split()
    assert word == "forked"
    return int(pid), int(parent), preloaded, mark


def test_a_forked_child_gets_its_preload_and_environment_and_is_restarted_and_stopped(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", FORKING_SUPERVISOR], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        pid, fork_server, preloaded, mark = forked_line(proc)
        assert (preloaded, mark) == ("True", "given") and fork_server != proc.pid
        with open(f"/proc/{pid}/cmdline") as fh:  # as `ps` shows it: the module's, not the fork server's
            assert fh.read().rstrip("\0") == f"{sys.executable} -m tests.support.forked_child"
        with open(f"/proc/{pid}/comm") as fh:  # its short name stays the program's (ps -e, top, pgrep)
            assert fh.read().strip() == os.path.basename(sys.executable)[:15]
        os.kill(pid, signal.SIGKILL)
        again, same_server, _, _ = forked_line(proc)
        assert again != pid and same_server == fork_server
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0 and not alive(again)


def test_a_closed_terminal_stops_everything_as_ctrl_c_does(tmp_path):
    """A terminal that closes sends SIGHUP to the supervisor's whole process group, the fork server
    and the resource tracker included: the supervisor stops its children gently and exits 0, and
    nothing it started is left running."""
    proc = subprocess.Popen(
        [sys.executable, "-c", FORKING_SUPERVISOR], cwd=REPO, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        pid, fork_server, _, _ = forked_line(proc)
        os.killpg(proc.pid, signal.SIGHUP)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0 and not alive(pid)
    wait_until(lambda: not alive(fork_server), timeout=5, what="the fork server's exit")


def test_under_nohup_a_closed_terminal_stops_nothing(tmp_path):
    """nohup ignores SIGHUP for what it starts: the supervisor keeps it ignored."""
    proc = subprocess.Popen(
        [sys.executable, "-c", FORKING_SUPERVISOR],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),
    )
    try:
        pid, fork_server, _, _ = forked_line(proc)
        os.killpg(proc.pid, signal.SIGHUP)
        os.kill(pid, signal.SIGKILL)  # a supervisor still supervising starts it again, a stopping one does not
        again, same_server, _, _ = forked_line(proc)
        assert again != pid and same_server == fork_server and proc.poll() is None and alive(fork_server)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0 and not alive(again)


def test_a_preload_that_fails_is_named_and_the_child_still_starts(tmp_path):
    """multiprocessing's fork server ignores a preload it cannot import; the child says so."""
    script = FORKING_SUPERVISOR.replace("tests.support.forked_preload", "tests.support.no_such_preload")
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        pid, _, preloaded, _ = forked_line(proc)
        assert preloaded == "False"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert (
        "the fork server could not import tests.support.no_such_preload (ModuleNotFoundError: "
        "No module named 'tests.support.no_such_preload')" in err
    ), err


def test_a_forked_child_stops_when_its_supervisor_is_killed_outright(tmp_path):
    """Its parent is the fork server, which outlives the supervisor while children hold its pipe:
    the child watches the supervisor itself, and with the children gone the fork server goes too."""
    proc = subprocess.Popen([sys.executable, "-c", FORKING_SUPERVISOR], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        pid, fork_server, _, _ = forked_line(proc)
        proc.kill()  # the supervisor alone, not its process group
        proc.wait(timeout=30)
        wait_until(lambda: not alive(pid), timeout=15, what=f"forked child {pid} to stop")
        wait_until(lambda: not alive(fork_server), timeout=15, what=f"fork server {fork_server} to stop")
    finally:
        proc.kill()


# A supervisor of one child started by command that stops with its supervisor, as a worker does.
WATCHING_SUPERVISOR = textwrap.dedent("""
    import sys
    from service.cli import supervisor
    watching = ("import os, time; from service.core.background import stop_with_supervisor; "
                "stop_with_supervisor(0.1); print('child', os.getpid(), flush=True); time.sleep(3600)")
    sys.exit(supervisor.supervise({"watching": supervisor.start([sys.executable, "-c", watching])}))
""")


def test_a_child_started_by_command_stops_with_a_supervisor_killed_outright():
    proc = subprocess.Popen([sys.executable, "-c", WATCHING_SUPERVISOR], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        child = int(proc.stdout.readline().split()[1])
        proc.kill()
        proc.wait(timeout=30)
        wait_until(lambda: not alive(child), timeout=15, what=f"child {child} to stop")
    finally:
        proc.kill()


def test_a_worker_started_alone_or_after_its_supervisor_died_is_handled_at_once(monkeypatch):
    """Not started by a supervisor: nothing to watch. Started by one already gone (killed before
    the worker looked): it stops at once rather than watching its new parent for ever."""
    from service.core import background

    monkeypatch.delenv(background.SUPERVISED, raising=False)
    alone = subprocess.run(
        [sys.executable, "-c", "from service.core.background import stop_with_supervisor as s; s(0.1); print('on')"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert alone.stdout.strip() == "on"
    late = subprocess.run(
        [
            sys.executable,
            "-c",
            "import time; from service.core.background import stop_with_supervisor as s; "
            "s(0.1); time.sleep(30); print('still running')",
        ],
        cwd=REPO,
        env={**os.environ, background.SUPERVISED: "1"},  # pid 1 is not this child's parent
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert late.returncode == -signal.SIGTERM and "still running" not in late.stdout


def test_a_child_killed_by_a_signal_is_said_so():
    from service.cli.supervisor import ended_how

    assert ended_how(3) == "exited with status 3" and ended_how(-9) == "was killed by SIGKILL"

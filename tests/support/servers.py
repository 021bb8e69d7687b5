"""Real processes and real servers for the tests: the API, a Celery worker, PostgreSQL, Redis."""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
POSTGRES_ADMIN_URL = os.environ.get("TRAINYARD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TRAINYARD_TEST_REDIS", "redis://127.0.0.1:6379/0")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(available: bool, why: str) -> None:
    """Skip when a server is absent, except in CI, where that is a failure."""
    if available:
        return
    if in_ci():
        pytest.fail(f"{why} (CI=true: a missing server is a failure)")
    pytest.skip(why)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, *, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll predicate until it returns a truthy value, or fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the thing waited for may not exist yet
            last_error = exc
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_error})" if last_error else "")
    )


def postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3):
            return True
    except Exception:
        return False


def redis_available() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping())
    except Exception:
        return False


class PostgresSchema:
    """A private schema in the test database, so runs never see each other's tables."""

    def __init__(self):
        self.name = f"ty_{uuid.uuid4().hex[:12]}"

    @property
    def url(self) -> str:
        base = POSTGRES_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1)
        return f"{base}?options=-csearch_path%3D{self.name}"

    def __enter__(self) -> PostgresSchema:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{self.name}"')
        return self

    def __exit__(self, *exc) -> None:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.name}_optuna" CASCADE')  # adaptive sweeps' studies


class PrivatePostgres:
    """A PostgreSQL server of the test's own (initdb and pg_ctl from the machine's binaries, its own
    port and data folder), to be stopped and started while a stack uses it."""

    def __init__(self):
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")) or [shutil.which("pg_ctl")]
        self.bin = Path(found[-1]).parent if found[-1] else None
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="trainyard-pg-"))
        # initdb refuses to run as root: run the server as the postgres account then.
        self.user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def available(self) -> bool:
        return self.bin is not None and (self.bin / "initdb").exists()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run([*self.user, *args], check=True, capture_output=True, timeout=120)

    def init(self) -> PrivatePostgres:
        if self.user:
            shutil.chown(self.dir, "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-U", "postgres", "--auth=trust", "--no-sync")
        return self.start()

    def start(self) -> PrivatePostgres:
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.dir / "data"),
            "-l",
            str(self.dir / "server.log"),
            "-w",
            "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )
        return self

    def stop(self) -> None:
        """Stop now, dropping every connection (what a crash or a failover looks like to clients)."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        subprocess.run(
            [*self.user, str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.dir, ignore_errors=True)


_MIGRATED: dict[Path, Path] = {}  # a source tree -> an embedded database its `trainyard migrate` made


def _migrated_database(source: Path, data_dir: Path) -> Path:
    if source not in _MIGRATED:
        home = Path(tempfile.mkdtemp(prefix="trainyard-migrated-"))
        atexit.register(shutil.rmtree, home, True)
        migrated = Stack(home=home, data_dir=data_dir, source=source).cli("migrate")
        assert migrated.returncode == 0, f"migrate failed:\n{migrated.stdout}\n{migrated.stderr}"
        _MIGRATED[source] = home / "trainyard.db"
    return _MIGRATED[source]


@dataclass
class Stack:
    """An API server and a Celery worker sharing one state folder, database and broker."""

    home: Path
    data_dir: Path
    database_url: str | None = None
    broker_url: str | None = None
    extra_env: dict = field(default_factory=dict)
    with_worker: bool = True
    serve_gpu_queue: bool = False  # whether the worker also takes jobs that asked for CUDA
    port: int = field(default_factory=free_port)
    procs: dict = field(default_factory=dict)
    source: Path = REPO  # the tree the processes run (a benchmark's baseline runs an older revision's)

    @property
    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
        env.update(
            {
                "TRAINYARD_HOME": str(self.home),
                "TRAINYARD_DATA_DIR": str(self.data_dir),
                "TRAINYARD_PORT": str(self.port),
                "TRAINYARD_QUEUE": f"trainyard-test-{self.home.name}-{self.port}",
                "TRAINYARD_GPU_QUEUE": f"trainyard-test-{self.home.name}-{self.port}-gpu",
                "PYTHONUNBUFFERED": "1",
                # Short leases so that crash tests recover in seconds, not the production half minute.
                "TRAINYARD_HEARTBEAT_SECONDS": "0.5",
                "TRAINYARD_LEASE_SECONDS": "4",
                "TRAINYARD_REAPER_INTERVAL_SECONDS": "0.5",
                "TRAINYARD_RESEND_AFTER_SECONDS": "2",
                "TRAINYARD_API_WORKERS": "1",  # one API process unless a test asks for more
                "TRAINYARD_WORKER_HEARTBEAT_SECONDS": "0.5",  # a killed worker leaves the registry in 1.5 s
                "TORCH_HOME": str(self.home / "torch"),  # no weights but those a test puts there
            }
        )
        if self.database_url:
            env["TRAINYARD_DATABASE_URL"] = self.database_url
        if self.broker_url:
            env["TRAINYARD_BROKER_URL"] = self.broker_url
        env.update(self.extra_env)
        return env

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "service.cli.main", *args],
            cwd=self.source,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.home / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, *args],
            cwd=self.source,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_worker(self, name: str = "worker") -> None:
        queues = [self.env["TRAINYARD_QUEUE"]] + ([self.env["TRAINYARD_GPU_QUEUE"]] if self.serve_gpu_queue else [])
        self._spawn(
            name,
            [
                "-m",
                "celery",
                "-A",
                "workers.celery_app",
                "worker",
                f"--loglevel={self.env.get('TRAINYARD_LOG_LEVEL', 'INFO')}",
                "--queues",
                ",".join(queues),
                "--concurrency",
                "1",
                "--hostname",
                f"test-{name}-{self.home.name}-{self.port}@%h",
                "--without-mingle",
                "--without-gossip",
            ],
        )

    def migrate(self) -> None:
        """`trainyard migrate`; for a new home on the embedded database, a copy of one that command
        migrated earlier in the run instead (a migration costs a process start and two seconds, and
        the suite starts dozens of stacks; a migrated database holds its schema alone)."""
        database = self.home / "trainyard.db"
        if "TRAINYARD_DATABASE_URL" in self.env or database.exists():
            migrated = self.cli("migrate")
            assert migrated.returncode == 0, f"migrate failed:\n{migrated.stdout}\n{migrated.stderr}"
        else:
            shutil.copyfile(_migrated_database(self.source, self.data_dir), database)

    def start(self) -> Stack:
        self.home.mkdir(parents=True, exist_ok=True)
        self.migrate()
        if self.with_worker:
            self.start_worker()
        self._spawn("api", ["-m", "service.cli.main", "api"])
        wait_until(
            lambda: httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200,
            timeout=60,
            what=f"the API at {self.url} to be ready\n{self.logs()}",
        )
        if self.with_worker:
            self.wait_for_worker()
        return self

    def __enter__(self) -> Stack:
        try:
            return self.start()
        except BaseException:
            self.stop()  # a start that failed halfway leaves no process behind
            raise

    def __exit__(self, *exc) -> None:
        self.stop(wait=False)

    def wait_for_worker(self, name: str = "worker") -> None:
        """Until the worker consumes its queues and has its entry in the registry (which it makes
        once it does): said in its log, or, where TRAINYARD_LOG_LEVEL keeps that quiet, listed by the API."""
        said = self.env.get("TRAINYARD_LOG_LEVEL", "INFO").upper() in ("DEBUG", "INFO")
        node = f"test-{name}-{self.home.name}-{self.port}@"

        def registered() -> bool:
            if said:
                return "ready." in self.log(name) and " registered: queues" in self.log(name)
            listed = httpx.get(f"{self.url}/v1/workers", timeout=2).json()["workers"]
            return any(worker["id"].startswith(node) for worker in listed)

        wait_until(
            registered,
            timeout=60,
            what=f"the worker to be ready and registered\n{self.logs()}",
        )

    def api_server_pids(self) -> list[int]:
        """The API processes (service/api/server.py), each in a session of its own: forked by the
        fork server that their supervisor started (service/cli/supervisor.py)."""
        return [pid for server in child_pids(self.procs["api"].pid) for pid in child_pids(server)]

    def worker_pool_pids(self) -> list[int]:
        """The worker's prefork pool processes (where tasks run)."""
        return child_pids(self.procs["worker"].pid)

    def log(self, name: str) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {name} log ---\n{self.log(name)[-4000:]}" for name in self.procs)

    def stop(self, *, wait: bool = True) -> None:
        """SIGTERM to every process, then wait for them (SIGKILL after 15 s).

        With wait=False (the end of a `with Stack(...)` block) the waiting goes on in a thread and
        the caller goes on at once: a worker's warm shutdown is seconds of waiting (Celery's loop
        sees the signal only after a last two-second poll of the broker), which the next test need
        not spend. The interpreter waits for that thread before it exits, so no process outlives
        the run; a stack stopped this way is not started again.
        """
        procs = list(self.procs.values())
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        if wait:
            _wait_for(procs)
        else:
            threading.Thread(target=_wait_for, args=(procs,), name=f"stopping {self.url}").start()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def wait_for_job(
        self,
        client: httpx.Client,
        job_id: str,
        *,
        timeout: float = 120,
        states=("succeeded", "failed"),
        interval: float = 0.1,
    ) -> dict:
        def final():
            job = client.get(f"/v1/jobs/{job_id}").json()
            return job if job["status"] in states else None

        return wait_until(
            final, timeout=timeout, interval=interval, what=f"job {job_id} to reach one of {states}\n{self.logs()}"
        )


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(child) for child in out.split()]


def _wait_for(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

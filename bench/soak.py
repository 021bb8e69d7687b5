"""A bounded soak: many predicts and many short jobs on one stack, watching for leaks.

Starts an API and a worker (PostgreSQL and Redis when they answer, else the embedded default),
registers a model, warms up with a tenth of the load, then runs the rest: `--predicts` image
predicts from `--concurrency` clients while `--jobs` short training jobs go through the worker.
It samples, for the API's and the worker's process trees: resident memory, open file descriptors,
and the database connections the stack holds, and reports their growth after warm-up.

Targets (flat): RSS growth under 50 MB for each of the API and the worker; open files and
database connections no more than a handful above their warmed-up level.

Usage: .venv/bin/python -m bench.soak [--predicts 30000] [--jobs 100] [--concurrency 16]
                                      [--database auto|sqlite|postgres] [--report-only]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.datagen import make_idx_dataset, png_bytes
from tests.support.servers import REDIS_URL, PostgresSchema, Stack, postgres_available, redis_available

RSS_GROWTH_LIMIT_MB = 50
FD_GROWTH_LIMIT = 8
CONNECTION_GROWTH_LIMIT = 4
JOB = {
    "model": {"arch": "softmax_regression"},
    "data": {"dataset": "fashion-mnist", "limit_train": 512, "limit_test": 128},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "epochs": 2,
    "batch_size": 64,
}


def tree(pid: int) -> list[int]:
    """The process and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        pending.extend(children.get(current, []))
    return found


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as fh:
                total += next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return total / 1024


def open_files(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    return total


@dataclass
class Sample:
    at: str
    api_rss: float
    worker_rss: float
    api_fds: int
    worker_fds: int
    connections: int | None


class Soak:
    def __init__(self, stack: Stack, schema: PostgresSchema | None):
        self.stack = stack
        self.schema = schema

    def connections(self) -> int | None:
        """Database connections the stack holds: PostgreSQL backends on its schema's URL (the
        application name says whose), or SQLite files held open."""
        if self.schema is None:
            db = str(self.stack.home / "trainyard.db")
            count = 0
            for pid in tree(self.stack.procs["api"].pid) + tree(self.stack.procs["worker"].pid):
                try:
                    count += sum(os.readlink(f"/proc/{pid}/fd/{fd}") == db for fd in os.listdir(f"/proc/{pid}/fd"))
                except OSError:
                    continue
            return count
        import psycopg

        from tests.support.servers import POSTGRES_ADMIN_URL

        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            return conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (self.schema.name,)
            ).fetchone()[0]

    def sample(self, at: str) -> Sample:
        api, worker = tree(self.stack.procs["api"].pid), tree(self.stack.procs["worker"].pid)
        return Sample(at, rss_mb(api), rss_mb(worker), open_files(api), open_files(worker), self.connections())


async def predicts(url: str, count: int, concurrency: int, model: str) -> list[int]:
    images = [png_bytes(i % 10, seed=i) for i in range(32)]
    statuses: list[int] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        next_index = iter(range(count))

        async def client_loop():
            for i in next_index:
                answer = await client.post(
                    "/v1/predict",
                    data={"model": model},
                    files={"files": ("x.png", images[i % len(images)], "image/png")},
                )
                statuses.append(answer.status_code)

        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return statuses


def run_load(soak: Soak, client: httpx.Client, predict_count: int, job_count: int, concurrency: int) -> None:
    """Predicts in the foreground, jobs submitted evenly alongside; all must succeed."""
    jobs = []
    per_round = max(1, predict_count // max(1, job_count))
    done = 0
    while done < predict_count or len(jobs) < job_count:
        if len(jobs) < job_count:
            answer = client.post("/v1/jobs", json={**JOB, "name": f"soak-{len(jobs)}"})
            assert answer.status_code == 202, answer.text
            jobs.append(answer.json()["id"])
        batch = min(per_round, predict_count - done)
        if batch:
            statuses = asyncio.run(predicts(soak.stack.url, batch, concurrency, "soak"))
            failed = [s for s in statuses if s != 200]
            assert not failed, f"{len(failed)} predicts failed: {sorted(set(failed))}"
            done += batch
    for job_id in jobs:
        job = soak.stack.wait_for_job(client, job_id, timeout=600, interval=0.2)
        assert job["status"] == "succeeded", job


def soak(predict_count: int, job_count: int, concurrency: int, database: str, root: Path) -> list[Sample]:
    data_dir = root / "data"
    make_idx_dataset(data_dir, "FashionMNIST", n_train=2000, n_test=200, gz=True)
    use_postgres = database == "postgres" or (database == "auto" and postgres_available() and redis_available())
    schema = PostgresSchema() if use_postgres else None
    if schema:
        schema.__enter__()
    database_url = f"{schema.url}&application_name={schema.name}" if schema else None
    stack = Stack(
        home=root / "home",
        data_dir=data_dir,
        database_url=database_url,
        broker_url=REDIS_URL if schema else None,
        extra_env={"TRAINYARD_API_WORKERS": "1", "TRAINYARD_MAX_BATCH_DELAY_MS": "1"},
    )
    samples = []
    try:
        stack.start()
        runner = Soak(stack, schema)
        print(
            f"soak on {'PostgreSQL + Redis' if schema else 'SQLite + the embedded broker'}: "
            f"{predict_count} predicts from {concurrency} clients, {job_count} jobs",
            flush=True,
        )
        with stack.client() as client:
            first = client.post("/v1/jobs", json={**JOB, "name": "soak-model"}).json()["id"]
            assert stack.wait_for_job(client, first, timeout=300)["status"] == "succeeded"
            assert client.post("/v1/models", json={"name": "soak", "job_id": first}).status_code == 201
            samples.append(runner.sample("start"))
            warm_predicts, warm_jobs = predict_count // 10, max(1, job_count // 10)
            run_load(runner, client, warm_predicts, warm_jobs, concurrency)
            samples.append(runner.sample("warmed up"))
            rounds = 4
            for index in range(rounds):
                started = time.perf_counter()
                run_load(
                    runner,
                    client,
                    (predict_count - warm_predicts) // rounds,
                    (job_count - warm_jobs) // rounds,
                    concurrency,
                )
                samples.append(runner.sample(f"round {index + 1}/{rounds} ({time.perf_counter() - started:.0f} s)"))
    finally:
        stack.stop()
        if schema:
            schema.__exit__(None, None, None)
    return samples


def report(samples: list[Sample]) -> bool:
    print("\n| when | API RSS MB | worker RSS MB | API open files | worker open files | DB connections |")
    print("|---|---|---|---|---|---|")
    for s in samples:
        print(f"| {s.at} | {s.api_rss:.0f} | {s.worker_rss:.0f} | {s.api_fds} | {s.worker_fds} | {s.connections} |")
    warm, last = samples[1], samples[-1]
    checks = [
        ("API RSS growth after warm-up", last.api_rss - warm.api_rss, RSS_GROWTH_LIMIT_MB, "MB"),
        ("worker RSS growth after warm-up", last.worker_rss - warm.worker_rss, RSS_GROWTH_LIMIT_MB, "MB"),
        ("API open files growth", last.api_fds - warm.api_fds, FD_GROWTH_LIMIT, ""),
        ("worker open files growth", last.worker_fds - warm.worker_fds, FD_GROWTH_LIMIT, ""),
        ("database connections growth", (last.connections or 0) - (warm.connections or 0), CONNECTION_GROWTH_LIMIT, ""),
    ]
    print()
    met = True
    for name, value, limit, unit in checks:
        ok = value < limit if unit == "MB" else value <= limit
        met &= ok
        print(f"{name}: {value:+.1f}{unit} (target {'<' if unit else '<='} {limit}{unit}) {'MET' if ok else 'MISSED'}")
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predicts", type=int, default=30_000)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--database", choices=["auto", "sqlite", "postgres"], default="auto")
    parser.add_argument("--report-only", action="store_true", help="exit 0 even when a target is missed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trainyard-soak-") as root:
        started = time.perf_counter()
        samples = soak(args.predicts, args.jobs, args.concurrency, args.database, Path(root))
    met = report(samples)
    print(f"\n{args.predicts} predicts and {args.jobs} jobs in {time.perf_counter() - started:.0f} s")
    return 0 if met or args.report_only else 1


if __name__ == "__main__":
    sys.exit(main())

"""Memory of each API process (PSS, from /proc/<pid>/smaps_rollup) through an evaluation and a few predicts.

Starts the service (TRAINYARD_API_WORKERS API processes and a worker) on a private state folder and
small data of its own: a Fashion-MNIST stand-in and a CIFAR-10 stand-in, each with `--test-images`
test images. It trains a LeNet and a ResNet-18 (from scratch, one epoch on `--train-images`
images), then, over one connection to each API process (the kernel spreads connections over
them), measures every process:
- fresh: started, nothing asked of it yet;
- after training: the jobs submitted (through the first process) and trained;
- after evaluation: the ResNet-18 job's evaluation report on its whole test set (each process);
- after predicts: both models registered, then image predicts by name with each (each process).
Beside the API processes, the processes their supervisor starts for them (the fork server that forks
them, multiprocessing's resource tracker) are measured too, and each stage's total, all of them.

With `--baseline REV`, the same run goes first on the service as it was at git revision REV
(`git archive`, nothing checked out), and the ratio of each figure to the baseline's is printed.

Target: every API process under 500 MB PSS after the predicts.

Usage: .venv/bin/python -m bench.api_memory [--test-images 10000] [--train-images 256]
                                            [--api-workers 2] [--baseline REV] [--report-only]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.datagen import make_cifar10, make_idx_dataset, png_bytes
from tests.support.servers import Stack, wait_until

REPO = Path(__file__).resolve().parent.parent

TARGET_MB = 500
STAGES = ("fresh", "after training", "after evaluation", "after predicts")
PREDICTS = 8  # per model and process


def pss_mb(pid: int) -> dict[str, float]:
    """The process's Pss, Pss_Anon and Pss_File in MB."""
    found = {}
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            name, _, rest = line.partition(":")
            if name in ("Pss", "Pss_Anon", "Pss_File"):
                found[name] = int(rest.split()[0]) / 1024
    return found


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return sorted(int(p) for p in out.split())


def api_processes(supervisor: int) -> tuple[list[int], list[int]]:
    """The API processes `trainyard api` supervises, and the processes beside them: they are its
    children, or where a fork server forks them, its grandchildren (the fork server, and
    multiprocessing's resource tracker, are then the processes beside them)."""
    direct = children(supervisor)
    forked = [pid for parent in direct for pid in children(parent)]
    return (forked, direct) if forked else (direct, [])


def owner(conn: http.client.HTTPConnection, port: int, pids: list[int]) -> int | None:
    """Which of the processes holds the server side of an open connection (by its socket's inode)."""
    client_port = conn.sock.getsockname()[1]
    with open("/proc/net/tcp") as fh:
        rows = [line.split() for line in fh.readlines()[1:]]
    inodes = {
        f"socket:[{row[9]}]"
        for row in rows
        if int(row[1].split(":")[1], 16) == port and int(row[2].split(":")[1], 16) == client_port
    }
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return pid
            except OSError:
                continue
    return None


def connect(port: int, pid: int, pids: list[int]) -> http.client.HTTPConnection:
    """A connection that process `pid` accepted (the server closes idle ones after a few seconds,
    so each step opens its own)."""
    for _ in range(200):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1800)
        call(conn, "GET", "/healthz")
        if owner(conn, port, pids) == pid:
            return conn
        conn.close()
    raise RuntimeError(f"200 connections and none reached API process {pid}")


def call(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict | None = None,
    expect: int = 200,
) -> dict:
    """One request on an open connection; its JSON answer ({} for another kind)."""
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    if response.status != expect:
        raise RuntimeError(f"{method} {path}: HTTP {response.status}: {data[:500]!r}")
    return json.loads(data) if response.getheader("content-type", "").startswith("application/json") else {}


@dataclass
class Run:
    """One service's figures: stage -> pid -> {Pss, Pss_Anon, Pss_File}."""

    label: str
    figures: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    beside: dict[str, float] = field(default_factory=dict)  # stage -> PSS of the fork server and the like
    seconds: float = 0.0

    def total(self, stage: str) -> float:
        """The PSS of every process of the API at a stage: what the API holds in all."""
        return sum(mb["Pss"] for mb in self.figures[stage].values()) + self.beside[stage]


def job_spec(arch: str, dataset: str, train_images: int, test_images: int) -> dict:
    """One epoch of `arch` from scratch on the first train_images images of `dataset`."""
    return {
        "name": f"memory-{arch}",
        "model": {"arch": arch},
        "data": {"dataset": dataset, "limit_train": train_images, "limit_test": test_images},
        "optimizer": {"name": "sgd", "lr": 0.05},
        "epochs": 1,
        "batch_size": 64,
    }


def measure(label: str, source: Path, data: Path, home: Path, args) -> Run:
    """The whole scenario on one service started from `source`."""
    run = Run(label)
    started = time.perf_counter()
    stack = Stack(home=home, data_dir=data, source=source, extra_env={"TRAINYARD_API_WORKERS": str(args.api_workers)})
    with stack:
        supervisor = stack.procs["api"].pid
        pids, beside = wait_until(
            lambda: len(api_processes(supervisor)[0]) == args.api_workers and api_processes(supervisor),
            timeout=60,
            what="the API processes",
        )

        def on(
            pid: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None, expect: int = 200
        ) -> dict:
            with contextlib.closing(connect(stack.port, pid, pids)) as conn:
                return call(conn, method, path, body, headers, expect)

        def record(stage: str) -> None:
            run.figures[stage] = {pid: pss_mb(pid) for pid in pids}
            run.beside[stage] = sum(pss_mb(pid)["Pss"] for pid in beside)
            print(
                f"  {label}: {stage}: "
                + ", ".join(f"{run.figures[stage][p]['Pss']:.0f}" for p in pids)
                + f" MB; beside them {run.beside[stage]:.0f} MB",
                flush=True,
            )

        record("fresh")
        as_json = {"Content-Type": "application/json"}
        jobs = {}
        for arch, dataset in (("lenet", "fashion-mnist"), ("resnet18", "cifar10")):
            spec = job_spec(arch, dataset, args.train_images, args.test_images)
            jobs[arch] = on(pids[0], "POST", "/v1/jobs", json.dumps(spec).encode(), as_json, 202)["id"]
        with stack.client() as client:
            for job in jobs.values():
                final = stack.wait_for_job(client, job, timeout=1800, interval=0.5)
                assert final["status"] == "succeeded", final
        record("after training")

        for pid in pids:
            report = on(pid, "GET", f"/v1/jobs/{jobs['resnet18']}/evaluation")
            assert report["num_test"] == args.test_images, report["num_test"]
        record("after evaluation")

        for name, job in jobs.items():
            on(
                pids[0],
                "POST",
                "/v1/models",
                json.dumps({"name": f"memory-{name}", "job_id": job}).encode(),
                as_json,
                201,
            )
        images = {"lenet": png_bytes(3, seed=1), "resnet18": png_bytes(3, seed=1, size=32, mode="RGB")}
        for pid in pids:
            with contextlib.closing(connect(stack.port, pid, pids)) as conn:
                for name, image in images.items():
                    for _ in range(PREDICTS):
                        call(conn, "POST", f"/v1/models/memory-{name}/predict", image, {"Content-Type": "image/png"})
        record("after predicts")
    run.seconds = time.perf_counter() - started
    return run


def export_revision(revision: str, folder: Path) -> Path:
    """The repository's files at `revision`, written under folder (nothing in the checkout changes)."""
    archive = subprocess.run(["git", "archive", "--format=tar", revision], cwd=REPO, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def table(run: Run, baseline: Run | None) -> list[str]:
    """One row per stage: each process's PSS (anonymous + file-backed), and the ratio to the baseline."""
    lines = [f"{run.label} ({run.seconds:.0f} s)"]
    for stage in STAGES:
        cells = []
        for index, (_pid, mb) in enumerate(sorted(run.figures[stage].items())):
            cell = f"API {index + 1}: {mb['Pss']:5.0f} MB (anon {mb['Pss_Anon']:.0f} + file {mb['Pss_File']:.0f})"
            if baseline is not None:
                before = sorted(baseline.figures[stage].items())[index][1]["Pss"]
                cell += f" = {mb['Pss'] / before:.2f} x baseline"
            cells.append(cell)
        cells.append(f"beside them: {run.beside[stage]:.0f} MB; all: {run.total(stage):.0f} MB")
        if baseline is not None:
            cells[-1] += f" = {run.total(stage) / baseline.total(stage):.2f} x baseline"
        lines.append(f"  {stage:17s} " + "; ".join(cells))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test-images", type=int, default=10_000)
    parser.add_argument("--train-images", type=int, default=256)
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--baseline", metavar="REV", help="also run the service as it was at this git revision")
    parser.add_argument("--report-only", action="store_true", help="print the target's outcome without failing on it")
    args = parser.parse_args()

    # A stopped stack's last process may still be writing its state files as the folder goes: the
    # figures are printed by then, so what cannot be removed is left rather than failing the run.
    with tempfile.TemporaryDirectory(prefix="trainyard-memory-", ignore_cleanup_errors=True) as tmp:
        scratch = Path(tmp)
        data = scratch / "data"
        make_idx_dataset(data, n_train=args.train_images, n_test=args.test_images)
        make_cifar10(data, per_batch=max(1, args.train_images // 5), n_test=args.test_images)
        baseline = None
        if args.baseline:
            source = export_revision(args.baseline, scratch / "baseline")
            baseline = measure(f"baseline ({args.baseline})", source, data, scratch / "state-baseline", args)
        current = measure("this tree", REPO, data, scratch / "state", args)

    print(
        f"\nPSS per API process ({args.api_workers} API processes, a ResNet-18 evaluated on "
        f"{args.test_images:,} images, LeNet and ResNet-18 loaded):"
    )
    for run in filter(None, (baseline, current)):
        print("\n".join(table(run, baseline if run is current else None)))
    worst = max(mb["Pss"] for mb in current.figures["after predicts"].values())
    met = worst < TARGET_MB
    print(
        f"largest API process after the predicts: {worst:.0f} MB (target < {TARGET_MB} MB) {'MET' if met else 'MISSED'}"
    )
    return 0 if met or args.report_only else 1


if __name__ == "__main__":
    sys.exit(main())

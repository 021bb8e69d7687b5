"""What storing files in an S3-compatible object store costs, against the home's folders and
against boto3 alone, on one real SeaweedFS S3 server (tests/support/object_store.py):

- training: the same LeNet job (60,000 synthetic 28x28 images in Fashion-MNIST's IDX files,
  batch 256, CPU) through a stack on the home's folders and through a stack with
  TRAINYARD_STORAGE_URL on the server; wall time from submit to succeeded (every per-epoch
  checkpoint and training state stored in between counts), each --rounds times (2), which goes
  first alternating, medians compared. Target: store / folders <= 1.1. The epochs' own seconds
  move with whatever else the machine runs; what the store adds happens outside them (start-up,
  between epochs, the end), so that time is printed too, and the ratio the store's run would have
  at the folders' epoch speed;
- reading a stored dataset of about 1 GB (random bytes, so nothing compresses) on a machine that
  has no copy yet: the first Storage.fetch (download, sha256, fsync, into the cache) and the
  second (the cached copy), against a plain boto3 get_object of the same object into a file;
- storing a checkpoint (a LeNet's and a ResNet-18's weights, written as the worker writes them):
  Storage.put (sha256, upload, adoption as the cached copy) against a plain boto3 put_object of the
  same bytes with the same client. Target: Storage.put at least 0.8x the plain PUT's speed.

A short run (--quick, or small sizes) is too noisy to judge the targets: --report-only prints
them without failing on them; any other failure still exits non-zero.

Usage: .venv/bin/python -m bench.storage [--epochs N] [--images N] [--dataset-mb N] [--rounds N]
       [--quick] [--report-only]
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from bench.train import PRODUCTION_TIMINGS
from tests.support.datagen import make_idx_dataset
from tests.support.object_store import SeaweedS3
from tests.support.servers import Stack

BATCH = 256
TARGET_STORE_OVER_FOLDERS = 1.1
TARGET_PUT_OVER_PLAIN = 0.8
CHUNK = 1024 * 1024
MB = 1e6  # speeds in MB/s (10^6 bytes), sizes of the 1 GB set in MiB as --dataset-mb says


def job_body(epochs: int, images: int) -> dict:
    return {
        "model": {"arch": "lenet", "activation": "relu", "pool": "max"},
        "data": {"dataset": "fashion-mnist"},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "epochs": epochs,
        "batch_size": BATCH,
        "seed": 0,
        "device": "cpu",
    }


def train_once(stack: Stack, body: dict) -> dict:
    """Wall seconds from submit to succeeded, the epochs' own seconds, and the mean time between
    one epoch's row and the next one's beyond the next epoch's own (checkpoint, state, metrics)."""
    with stack.client() as client:
        started = time.perf_counter()
        job_id = client.post("/v1/jobs", json=body).json()["id"]
        job = stack.wait_for_job(client, job_id, timeout=7200, interval=0.2)
        wall = time.perf_counter() - started
        assert job["status"] == "succeeded", f"{job}\n{stack.logs()}"
        epochs = client.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]
    stamps = [datetime.fromisoformat(e["recorded_at"]) for e in epochs]
    gaps = [(b - a).total_seconds() - e["seconds"] for a, b, e in zip(stamps, stamps[1:], epochs[1:], strict=False)]
    own = sum(e["seconds"] for e in epochs)
    return {
        "wall": wall,
        "own": own,
        "bookkeeping": statistics.mean(gaps) if gaps else float("nan"),
        "outside": wall - own,  # start-up, dataset decode, bookkeeping, the end, polling
    }


def training(root: Path, s3: SeaweedS3, epochs: int, images: int, rounds: int) -> dict[str, list[dict]]:
    data_dir = root / "data"
    make_idx_dataset(data_dir, "FashionMNIST", n_train=images, n_test=min(10_000, images), gz=False)
    body = job_body(epochs, images)
    results: dict[str, list[dict]] = {"folders": [], "store": []}
    order = [("folders", {}), ("store", s3.env())]
    stopping: threading.Thread | None = None
    try:
        for n in range(rounds):
            for name, env in order if n % 2 == 0 else order[::-1]:  # which goes first alternates
                stack = Stack(home=root / f"{name}-{n}", data_dir=data_dir, extra_env={**PRODUCTION_TIMINGS, **env})
                try:
                    stack.start()
                    if stopping is not None:  # the last stack has wound down before this one is timed
                        stopping.join()
                    results[name].append(train_once(stack, body))
                except BaseException:
                    stack.stop()
                    raise
                # A worker's warm shutdown is seconds of waiting: let it overlap the next stack's start.
                stopping = threading.Thread(target=stop_and_remove, args=(stack,))
                stopping.start()
    finally:
        if stopping is not None:
            stopping.join()
    return results


def stop_and_remove(stack: Stack) -> None:
    stack.stop()
    shutil.rmtree(stack.home, ignore_errors=True)


def storage_for(home: Path, s3: SeaweedS3):
    """A Storage on the server for a process whose home is `home` (its own, empty, cache)."""
    from service.core.settings import Settings
    from service.core.storage import Storage

    env = s3.env()
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    return Storage(Settings(home=home, storage_url=env["TRAINYARD_STORAGE_URL"], storage_retry_seconds=0))


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, 16 * CHUNK)
            fh.write(os.urandom(n))
            left -= n


def drop_file(path: Path) -> None:
    path.unlink(missing_ok=True)


def plain_get(storage, key: str, target: Path) -> float:
    """Seconds to read the object with the store's own boto3 client into a file (no digest)."""
    store = storage.store
    started = time.perf_counter()
    with open(target, "wb") as fh:
        body = store.client.get_object(Bucket=store.bucket, Key=store._key(key))["Body"]
        for chunk in body.iter_chunks(CHUNK):
            fh.write(chunk)
    seconds = time.perf_counter() - started
    drop_file(target)
    return seconds


def reading(root: Path, s3: SeaweedS3, size: int, rounds: int) -> dict:
    """Store `size` random bytes as a dataset, then read it on machines with empty caches: each
    first fetch has a plain get_object before and after it. The first fetch's download is timed
    inside it (the bytes hashed as they arrive); the rest is its fsync and rename."""
    writer = storage_for(root / "writer", s3)
    staged = writer.staging("datasets/bench.safetensors")
    write_random(staged, size)
    started = time.perf_counter()
    stored = writer.put("datasets/bench.safetensors", staged)
    put_seconds = time.perf_counter() - started
    shutil.rmtree(root / "writer", ignore_errors=True)  # its cached copy
    first, download, second = [], [], []
    plain = [plain_get(writer, stored.key, root / "plain.bin")]
    for n in range(rounds):
        reader = storage_for(root / f"reader-{n}", s3)
        downloading = Stopwatch(reader.store, "download")
        assert not reader.cached(stored)
        fetch = functools.partial(reader.fetch, stored, what="the benchmark's dataset")
        seconds, path = timed(fetch)
        first.append(seconds)
        download.append(downloading.seconds)
        assert path.stat().st_size == size and reader.cached(stored)
        second.append(timed(fetch)[0])
        shutil.rmtree(root / f"reader-{n}", ignore_errors=True)
        plain.append(plain_get(writer, stored.key, root / "plain.bin"))
    writer.delete(stored.key)
    return {"size": size, "put": put_seconds, "first": first, "download": download, "second": second, "plain": plain}


def checkpoint_file(path: Path, arch: str, shape: tuple[int, ...]) -> int:
    """A checkpoint of a freshly built network, written the way the worker writes them."""
    import torch

    from models.checkpoint import write_checkpoint
    from models.nets.archs import build_model
    from models.spec.job import JobSpec

    spec = JobSpec.model_validate({"model": {"arch": arch}, "data": {"dataset": "fashion-mnist"}}).model
    torch.manual_seed(0)
    return write_checkpoint(path, build_model(spec, shape, 10).state_dict(), {"arch": arch})


def timed(call, *args) -> tuple[float, object]:
    started = time.perf_counter()
    result = call(*args)
    return time.perf_counter() - started, result


def plain_put(store, key: str, source: Path) -> None:
    """One put_object of the file with the store's own boto3 client (no digest, no s3transfer)."""
    with open(source, "rb") as fh:
        store.client.put_object(Bucket=store.bucket, Key=store._key(key), Body=fh)


class Stopwatch:
    """Wraps a method of one object to add up the seconds spent in it."""

    def __init__(self, owner, name: str):
        self.seconds, self.method = 0.0, getattr(owner, name)
        setattr(owner, name, self)

    def __call__(self, *args, **kwargs):
        seconds, result = timed(lambda: self.method(*args, **kwargs))
        self.seconds += seconds
        return result


def uploading(root: Path, s3: SeaweedS3, reps: int) -> list[dict]:
    """Storage.put against put_object of the same file, `reps` times each, which goes first
    alternating (after one of each that warms the connection and the server up). Storage.put's own
    steps are timed inside it: the store's upload (one put_object below 64 MiB, s3transfer's
    multipart upload from there) and the cache's adoption of the file; the rest is the file's
    sha256 (and a stat)."""
    storage = storage_for(root / "uploader", s3)
    store = storage.store
    upload, adopt = Stopwatch(store, "upload"), Stopwatch(storage.cache, "adopt")
    rows = []
    for name, arch, shape in (("LeNet", "lenet", (1, 28, 28)), ("ResNet-18", "resnet18", (3, 32, 32))):
        source = root / f"{arch}.safetensors"
        size = checkpoint_file(source, arch, shape)
        times: dict[str, list[float]] = {"plain": [], "put": [], "upload": [], "adopt": []}
        for n in range(reps + 1):
            key = f"checkpoints/bench/{arch}-{n}.safetensors"
            staged = storage.staging(key)
            shutil.copyfile(source, staged)
            with open(staged, "rb+") as fh:
                os.fsync(fh.fileno())  # written as the worker writes its checkpoints
            upload.seconds = adopt.seconds = 0.0
            if n % 2:
                plain, _ = timed(plain_put, store, f"{key}.plain", source)
            put, stored = timed(storage.put, key, staged)
            if not n % 2:
                plain, _ = timed(plain_put, store, f"{key}.plain", source)
            assert stored.size == size
            if n:
                for what, seconds in zip(times, (plain, put, upload.seconds, adopt.seconds), strict=True):
                    times[what].append(seconds)
        storage.delete_prefix("checkpoints/bench/")
        shutil.rmtree(root / "uploader" / "cache", ignore_errors=True)
        row = {what: statistics.median(t) for what, t in times.items()}
        steps = zip(times["put"], times["upload"], times["adopt"], strict=True)
        row["sha256"] = statistics.median(p - u - a for p, u, a in steps)
        rows.append({"name": name, "size": size, **row})
    return rows


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--images", type=int, default=60_000)
    parser.add_argument("--dataset-mb", type=int, default=1024, help="MiB of the stored dataset read")
    parser.add_argument("--rounds", type=int, default=2, help="training runs of each, alternating; reads of the set")
    parser.add_argument("--reps", type=int, default=10, help="uploads of each checkpoint, each way")
    parser.add_argument("--quick", action="store_true", help="1 epoch of 1,024 images, a 16 MiB set, 2 reps, 1 round")
    parser.add_argument("--report-only", action="store_true", help="print the targets without failing on them")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.images, args.dataset_mb, args.reps, args.rounds = 1, 1024, 16, 2, 1
    failures = 0
    with tempfile.TemporaryDirectory(prefix="trainyard-bench-") as tmp, SeaweedS3() as s3:
        root = Path(tmp)
        took = [time.perf_counter()]
        trained = training(root, s3, args.epochs, args.images, args.rounds)
        took.append(time.perf_counter())
        read = reading(root, s3, args.dataset_mb * 1024 * 1024, args.rounds)
        took.append(time.perf_counter())
        uploads = uploading(root, s3, args.reps)
        took.append(time.perf_counter())

    print(
        f"LeNet, {args.epochs} epoch(s) of {args.images:,} images, batch {BATCH}, cpu; "
        f"SeaweedFS S3 on loopback; {args.rounds} round(s)"
    )
    print(f"{'storage':<8} {'wall s':>8} {'epochs s':>9} {'outside s':>10} {'between epochs ms':>18}")
    for name, runs in trained.items():
        for run in runs:
            print(
                f"{name:<8} {run['wall']:>8.2f} {run['own']:>9.2f} {run['outside']:>10.2f} "
                f"{1000 * run['bookkeeping']:>18.1f}"
            )
    store_wall = statistics.median(r["wall"] for r in trained["store"])
    folders_wall = statistics.median(r["wall"] for r in trained["folders"])
    ratio = store_wall / folders_wall
    ok = ratio <= TARGET_STORE_OVER_FOLDERS
    failures += not ok
    print(
        f"training wall time, store / folders: {ratio:.3f} ({store_wall:.2f} s / {folders_wall:.2f} s) "
        f"(target <= {TARGET_STORE_OVER_FOLDERS}) {verdict(ok)}"
    )
    # Everything the store does (checkpoints and states stored, old ones deleted, the client made)
    # happens outside the epochs' own seconds; the epochs themselves move with the machine's load.
    store_outside = statistics.median(r["outside"] for r in trained["store"])
    folders_outside = statistics.median(r["outside"] for r in trained["folders"])
    folders_own = statistics.median(r["own"] for r in trained["folders"])
    print(
        f"outside the epochs: store {store_outside:.2f} s, folders {folders_outside:.2f} s; at the folders' "
        f"epoch speed the store's run would be {(folders_own + store_outside) / (folders_own + folders_outside):.3f}x"
    )
    print()
    size = read["size"]
    first, second, plain = min(read["first"]), min(read["second"]), min(read["plain"])
    download = read["download"][read["first"].index(first)]
    print(f"stored dataset of {size / 2**20:,.0f} MiB (random bytes): Storage.put {size / MB / read['put']:,.0f} MB/s")
    print(
        f"  first fetch (uncached: download + sha256 + fsync): {first:.2f} s, {size / MB / first:,.0f} MB/s "
        f"(download with sha256 {download:.2f} s, fsync and rename {first - download:.2f} s)"
    )
    print(f"  second fetch (cached): {1000 * second:.2f} ms")
    print(
        f"  plain get_object into a file (best of {len(read['plain'])}, no fsync): {plain:.2f} s, "
        f"{size / MB / plain:,.0f} MB/s"
    )
    print(f"  first fetch / plain get_object speed: {plain / first:.2f}")
    print()
    for row in uploads:
        speed, plain_speed = row["size"] / MB / row["put"], row["size"] / MB / row["plain"]
        ok = speed / plain_speed >= TARGET_PUT_OVER_PLAIN
        failures += not ok
        print(
            f"checkpoint upload {row['name']:<9} {row['size'] / MB:6.2f} MB: Storage.put {1000 * row['put']:7.1f} ms "
            f"({speed:,.0f} MB/s), plain put_object {1000 * row['plain']:7.1f} ms ({plain_speed:,.0f} MB/s), "
            f"put / plain speed {speed / plain_speed:.2f} (target >= {TARGET_PUT_OVER_PLAIN}) {verdict(ok)}"
        )
        print(
            f"  inside Storage.put (medians): the store's upload {1000 * row['upload']:.1f} ms, "
            f"adoption into the cache {1000 * row['adopt']:.1f} ms, sha256 and the rest {1000 * row['sha256']:.1f} ms"
        )
    spent = [f"{b - a:.0f} s" for a, b in zip(took, took[1:], strict=False)]
    print(f"the run took: training {spent[0]}, reading {spent[1]}, uploads {spent[2]}")
    print("ALL TARGETS MET" if not failures else f"{failures} TARGET(S) MISSED")
    return 1 if failures and not args.report_only else 0


if __name__ == "__main__":
    sys.exit(main())

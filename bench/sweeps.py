"""What an adaptive sweep saves: random search against TPE sampling with ASHA pruning, over the
same search space, through one running stack (API + worker on the embedded default).

The search space: an MLP's learning rate (log-uniform), weight decay (log-uniform) and hidden
width (a choice), SGD, --epochs epochs a trial (9), ranked by validation accuracy (a fifth of the
training set held out), on a Fashion-MNIST-shaped set made here: 28x28 grey images of 10 classes
in IDX files, each class a smooth random pattern buried in noise, so that accuracy depends on the
values chosen and no trial reaches 100%. Each search runs --trials trials (27) one at a time (TPE
draws each from those that ended before it), for each of --seeds seeds (three).

For each seed, the target accuracy is the best either search found, less 0.005; each search's
cost is the epochs its trials had trained, in the order they ended, when its best so far first
reached the target (all its epochs, marked "never", if it did not). Target: TPE + ASHA spends at
most half the epochs random search does (summed over the seeds), at a best accuracy no more than
0.005 below random search's (their means over the seeds).

A short run (small --trials, --epochs or --seeds) cannot judge the target: --report-only prints it
without failing on it; any other failure still exits non-zero.

Usage: .venv/bin/python -m bench.sweeps [--trials N] [--epochs N] [--seeds N] [--images N]
       [--plots DIR] [--report-only]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tests.support.datagen import write_idx
from tests.support.servers import Stack, wait_until

CLASSES = 10
LABEL_NOISE = 0.1
TOLERANCE = 0.005
TARGET_EPOCHS_RATIO = 0.5
SPACE = {
    "optimizer.lr": {"log_uniform": [1e-5, 10.0]},
    "optimizer.weight_decay": {"log_uniform": [1e-6, 1.0]},
    "model.hidden": {"choice": [[8], [32], [128], [512]]},
}


def make_dataset(root: Path, n_train: int, n_test: int) -> None:
    """Fashion-MNIST's four IDX files under root/FashionMNIST/raw: each class a smooth random
    pattern, each image its class's pattern faintly over noise (some classes alike), and a tenth
    of the labels drawn at random (no model is right on those)."""
    rng = np.random.default_rng(0)
    coarse = rng.normal(size=(CLASSES, 7, 7))
    patterns = np.kron(coarse, np.ones((4, 4)))  # smooth 28x28 patterns
    patterns[1::2] = 0.6 * patterns[1::2] + 0.4 * patterns[0::2]  # pairs of classes that look alike
    raw = root / "FashionMNIST" / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        drawn = rng.integers(0, CLASSES, size=n)
        images = 0.3 * patterns[drawn] + rng.normal(size=(n, 28, 28))
        labels = np.where(rng.random(n) < LABEL_NOISE, rng.integers(0, CLASSES, size=n), drawn).astype(np.uint8)
        pixels = np.clip(128 + 45 * images, 0, 255).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", pixels, gz=True)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, gz=True)


def sweep_body(kind: str, seed: int, trials: int, epochs: int, images: int) -> dict:
    base = {
        "model": {"arch": "mlp", "hidden": [64]},
        "data": {"dataset": "fashion-mnist", "val_fraction": 0.2, "limit_train": images},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "epochs": epochs,
        "batch_size": 64,
        "seed": 0,
        "device": "cpu",
    }
    search = {"distributions": SPACE, "count": trials, "seed": seed}
    body = {"name": f"bench-{kind}-{seed}", "base": base, "metric": "val_acc", "max_parallel": 1}
    if kind == "random":
        return {**body, "random": search}
    return {**body, "tpe": search, "pruner": {"name": "asha", "min_epochs": 1, "reduction_factor": 3}}


def run_sweep(stack: Stack, body: dict, plots: Path | None = None) -> dict:
    """The sweep's history (its ended trials in order) once every trial has ended, and its wall
    time; its history and importance plots saved into `plots` if given."""
    with stack.client() as client:
        started = time.perf_counter()
        created = client.post("/v1/sweeps", json=body)
        assert created.status_code == 202, created.text
        sweep_id = created.json()["id"]

        def ended():
            sweep = client.get(f"/v1/sweeps/{sweep_id}").json()
            return sweep if sweep["status"] != "running" else None

        sweep = wait_until(ended, timeout=7200, interval=0.5, what=f"sweep {sweep_id}\n{stack.logs()}")
        wall = time.perf_counter() - started
        # A trial may fail (a learning rate so high that the loss is NaN): it ended, and counts.
        assert set(sweep["counts"]) <= {"succeeded", "pruned", "failed"}, sweep
        history = client.get(f"/v1/sweeps/{sweep_id}/history").json()["ended"]
        if plots is not None:
            plots.mkdir(parents=True, exist_ok=True)
            for picture in ("history.png", "importances.png", "compare.png"):
                (plots / f"{body['name']}-{picture}").write_bytes(
                    client.get(f"/v1/sweeps/{sweep_id}/{picture}").content
                )
    return {"history": history, "wall": wall, "pruned": sweep["counts"].get("pruned", 0)}


def epochs_to_reach(history: list[dict], target: float) -> tuple[int, bool]:
    """The epochs spent when the best so far first reached target; all of them if never."""
    for ended in history:
        if ended["best"] is not None and ended["best"] >= target:
            return ended["spent"], True
    return (history[-1]["spent"] if history else 0), False


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=27)
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--images", type=int, default=6000, help="training images (a fifth held out)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--plots", type=Path, help="save each sweep's history, importance and learning-curve plots here"
    )
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-sweeps-") as tmp:
        root = Path(tmp)
        make_dataset(root / "data", args.images, 2000)
        with Stack(home=root / "home", data_dir=root / "data") as stack:
            for seed in range(args.seeds):
                results = {}
                for kind in ("random", "tpe") if seed % 2 == 0 else ("tpe", "random"):
                    body = sweep_body(kind, seed, args.trials, args.epochs, args.images)
                    results[kind] = run_sweep(stack, body, args.plots)
                best = {
                    kind: max((e["best"] for e in r["history"] if e["best"] is not None), default=0.0)
                    for kind, r in results.items()
                }
                target = max(best.values()) - TOLERANCE
                reach = {kind: epochs_to_reach(r["history"], target) for kind, r in results.items()}
                rows.append({"seed": seed, "best": best, "reach": reach, "results": results})

    print(
        f"\nrandom search against TPE + ASHA: {args.trials} trials of up to {args.epochs} epochs each, "
        f"one at a time, MLP on {args.images} Fashion-MNIST-shaped images (a fifth for validation)\n"
    )
    header = f"{'best val_acc':>12} {'epochs to reach':>16} {'epochs in all':>14} {'pruned':>7}"
    print(f"  {'seed':>4}  {'search':<12} {header}")
    for row in rows:
        for kind, name in (("random", "random"), ("tpe", "TPE + ASHA")):
            spent, reached = row["reach"][kind]
            result = row["results"][kind]
            print(
                f"  {row['seed']:>4}  {name:<12} {row['best'][kind]:>12.4f} "
                f"{(str(spent) if reached else f'never ({spent})'):>16} "
                f"{result['history'][-1]['spent']:>14} {result['pruned']:>7}"
            )
    random_epochs = sum(row["reach"]["random"][0] for row in rows)
    tpe_epochs = sum(row["reach"]["tpe"][0] for row in rows)
    random_best = statistics.mean(row["best"]["random"] for row in rows)
    tpe_best = statistics.mean(row["best"]["tpe"] for row in rows)
    ratio = tpe_epochs / random_epochs if random_epochs else float("inf")
    ok_epochs = ratio <= TARGET_EPOCHS_RATIO
    ok_best = tpe_best >= random_best - TOLERANCE
    print(
        f"\n  epochs to reach within {TOLERANCE} of the best, TPE + ASHA / random: {tpe_epochs} / {random_epochs} = "
        f"{ratio:.2f} (target <= {TARGET_EPOCHS_RATIO}) {verdict(ok_epochs)}"
    )
    print(
        f"  mean best val_acc, TPE + ASHA against random: {tpe_best:.4f} against {random_best:.4f} "
        f"(target: no more than {TOLERANCE} below) {verdict(ok_best)}"
    )
    walls = {kind: sum(row["results"][kind]["wall"] for row in rows) for kind in ("random", "tpe")}
    print(f"  wall time in all: random {walls['random']:.0f} s, TPE + ASHA {walls['tpe']:.0f} s")
    return 0 if args.report_only or (ok_epochs and ok_best) else 1


if __name__ == "__main__":
    sys.exit(main())

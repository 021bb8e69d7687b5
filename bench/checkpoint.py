"""What writing a job's training state costs in memory and time: trainyard's streamed writer
(models/checkpoint.py, as the worker writes every checkpoint and resumable state) against
safetensors' own save_file of the same tensors followed by an fsync (the streamed writer fsyncs
before it renames), each in a fresh process, in one run; and, for the record, safetensors' `save`,
which builds the file as bytes (how the worker wrote before: about twice the state at its peak).

The state is an MLP's weights with Adam's two moments (three times the weights), --mb MiB in all
(default 384). Memory is the process's peak resident memory while writing over what it held
before (VmHWM). Targets: the streamed writer needs at most 0.1x the state's size more memory (a
job's memory budget, sized by its weights and optimizer state, must not be spent on storing them)
and is no slower than save_file (ratio <= 1.1, the machine being noisy).

Usage: .venv/bin/python -m bench.checkpoint [--mb N] [--rounds N] [--report-only]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WRITE = """
import json, sys, time, torch
from pathlib import Path
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
how, path, mb = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
width = int((mb * 2**20 / 4 / 3 / 2) ** 0.5)  # two square layers, weights and Adam's two moments
state = {}
for layer in range(2):
    for part in ("weight", "exp_avg", "exp_avg_sq"):
        state[f"{layer}.{part}"] = torch.rand(width, width)
size = sum(t.numel() * t.element_size() for t in state.values())
before, start = hwm(), time.perf_counter()
if how == "streamed":
    from models.checkpoint import write_checkpoint
    write_checkpoint(path, state, {"epoch": 1})
else:
    import os
    from safetensors.torch import save, save_file
    if how == "save_file":
        save_file(state, str(path), metadata={"trainyard": "{}"})
    else:  # how the worker wrote until the streamed writer: the file built as bytes first
        path.write_bytes(save(state, metadata={"trainyard": "{}"}))
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())  # as durable as the streamed file
print(json.dumps({"seconds": time.perf_counter() - start, "extra": hwm() - before, "size": size}))
"""


def write_once(how: str, mb: int, folder: Path) -> dict:
    path = folder / f"{how}.safetensors"
    done = subprocess.run(
        [sys.executable, "-c", WRITE, how, str(path), str(mb)], capture_output=True, text=True, check=True
    )
    path.unlink()
    return json.loads(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=384, help="the training state's size in MiB")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--report-only", action="store_true", help="print the targets without failing on them")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"streamed": [], "save_file": [], "bytes": []}
    with tempfile.TemporaryDirectory(prefix="bench-checkpoint-") as folder:
        for round_ in range(args.rounds):
            order = list(runs) if round_ % 2 == 0 else list(reversed(runs))
            for how in order:
                runs[how].append(write_once(how, args.mb, Path(folder)))
    size = runs["streamed"][0]["size"]
    print(f"training state of {size / 2**20:,.0f} MiB, {args.rounds} rounds, medians:")
    print(f"{'writer':<10} {'seconds':>8} {'MB/s':>7} {'extra memory MiB':>17} {'x state':>8}")
    median = {}
    for how, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        extra = statistics.median(r["extra"] for r in results)
        median[how] = (seconds, extra)
        print(f"{how:<10} {seconds:>8.2f} {size / 1e6 / seconds:>7.0f} {extra / 2**20:>17.0f} {extra / size:>8.2f}")
    memory_share = median["streamed"][1] / size
    speed_ratio = median["streamed"][0] / median["save_file"][0]
    failures = 0
    for name, value, target, ok in (
        ("streamed extra memory / state size", memory_share, "<= 0.10", memory_share <= 0.10),
        ("streamed seconds / save_file seconds", speed_ratio, "<= 1.10", speed_ratio <= 1.10),
    ):
        print(f"{name}: {value:.2f} (target {target}) {'met' if ok else 'MISSED'}")
        failures += not ok
    print("ALL TARGETS MET" if not failures else f"{failures} TARGET(S) MISSED")
    return 0 if args.report_only or not failures else 1


if __name__ == "__main__":
    sys.exit(main())

"""The engine on several processes (gloo, under torchrun) trains exactly what it trains on one:
the same per-epoch losses and accuracies and the same final weights, a short last batch split
unevenly included; and a stop asked of one rank stops every rank at the same batch."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest
import torch

from models.training.distributed import Ranks
from models.training.engine import STOP_POLLS_APART
from tests.support.datagen import make_idx_dataset

pytestmark = pytest.mark.slow

# LeNet without batch norm or dropout; 601 training images in batches of 256 end with a batch of
# 89, which two ranks share as 44 and 45.
SPEC = {
    "model": {"arch": "lenet"},
    "data": {"dataset": "fashion-mnist"},
    "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.9},
    "epochs": 2,
    "batch_size": 256,
    "seed": 5,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd")
    make_idx_dataset(root, "FashionMNIST", n_train=601, n_test=201)
    return root


def train(spec: dict, data, out, nproc: int | None, *extra: str) -> dict | None:
    args = ["-m", "tests.support.ddp_fit", json.dumps(spec), str(data), str(out), *extra]
    if nproc is not None:
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return torch.load(out) if out.exists() else None


def test_two_ranks_train_what_one_process_trains(odd_data, tmp_path):
    one = train(SPEC, odd_data, tmp_path / "one.pt", None)
    two = train({**SPEC, "distributed": {"nproc_per_node": 2}}, odd_data, tmp_path / "two.pt", 2)
    assert len(one["epochs"]) == len(two["epochs"]) == 2
    for a, b in zip(one["epochs"], two["epochs"], strict=True):
        for key in ("train_loss", "test_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), key
        for key in ("train_acc", "test_acc"):
            assert abs(a[key] - b[key]) <= 0.002, key
    assert one["weights"].keys() == two["weights"].keys()
    for name, weight in one["weights"].items():
        torch.testing.assert_close(two["weights"][name], weight, rtol=1e-4, atol=1e-5)


def test_a_stop_asked_of_rank_0_stops_every_rank_at_the_same_batch(odd_data, tmp_path):
    spec = {**SPEC, "distributed": {"nproc_per_node": 2}, "batch_size": 16}
    train(spec, odd_data, tmp_path / "stopped.pt", 2, "50")  # rank 1 alone would train on
    ends = [torch.load(tmp_path / f"stopped.pt.rank{rank}", weights_only=False) for rank in (0, 1)]
    assert ends[0]["reason"] == "stopped"  # rank 0's callbacks asked (rank 1's say nothing: not its to record)
    assert ends[1]["stopped_at"] is not None and ends[0]["stopped_at"] == ends[1]["stopped_at"]
    # The ranks agree every STOP_POLLS_APART polls: the first agreement at or after the 50th poll
    # comes before batch 56 - 39 = 17 of epoch 2 (38 batches and 1 evaluating an epoch), with 16 done.
    agreed = -(-50 // STOP_POLLS_APART) * STOP_POLLS_APART
    assert (ends[0]["stopped_at"].epoch, ends[0]["stopped_at"].progress.batches) == (2, agreed - 1 - 39)


def test_a_stop_during_the_evaluation_stops_every_rank_there(odd_data, tmp_path):
    """Batches of 86: 7 of training and 1 of evaluation an epoch, so the ranks' first agreement,
    at poll STOP_POLLS_APART = 8, comes in epoch 1's evaluation, which keeps the epoch's training."""
    assert STOP_POLLS_APART == 8
    spec = {**SPEC, "distributed": {"nproc_per_node": 2}, "batch_size": 86}
    train(spec, odd_data, tmp_path / "stopped.pt", 2, "8")
    ends = [torch.load(tmp_path / f"stopped.pt.rank{rank}", weights_only=False) for rank in (0, 1)]
    assert ends[0]["reason"] == "stopped" and ends[0]["stopped_at"] == ends[1]["stopped_at"]
    position = ends[0]["stopped_at"]
    assert (position.epoch, position.progress.batches, position.progress.seen) == (1, 7, 601)


@pytest.mark.parametrize(("n", "world"), [(89, 2), (1, 2), (10, 3), (256, 4)])
def test_the_ranks_shares_of_a_batch_are_contiguous_and_cover_it_once(n, world):
    shares = [Ranks(rank=r, world_size=world).bounds(n) for r in range(world)]
    assert shares[0][0] == 0 and shares[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(shares))
    assert max(hi - lo for lo, hi in shares) - min(hi - lo for lo, hi in shares) <= 1


FEATURES_FIT_ON_EACH_RANK = """
import sys
from pathlib import Path
from types import SimpleNamespace
import torch
from models.training.distributed import Ranks
from models.training.frozen import features_fit
ranks = Ranks.from_environment()
ranks.start(torch.device("cpu"), timeout_seconds=30)
pretrained = SimpleNamespace(head=SimpleNamespace(in_features=512))
ds = SimpleNamespace(x_train=torch.zeros(1000, 1), x_test=torch.zeros(200, 1), x_val=None)  # 2.4 MB of features
budget = 10**9 if ranks.rank == 0 else 10**6  # rank 1's machine gives its jobs less memory
said = (features_fit(pretrained, ds, budget), features_fit(pretrained, ds, budget, ranks))
Path(sys.argv[1], f"rank{ranks.rank}").write_text(" ".join(map(str, said)))  # one file each: no lines interleaved
ranks.stop()
"""


def test_the_ranks_agree_whether_frozen_features_fit(tmp_path):
    """Each machine's worker has its own memory budget; a rank that computed features would train
    the head alone while another trained the whole network, and their gradients would never meet."""
    script = tmp_path / "fit.py"
    script.write_text(FEATURES_FIT_ON_EACH_RANK)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            str(script),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    said = [(tmp_path / f"rank{rank}").read_text() for rank in (0, 1)]
    assert said == ["True False", "False False"]  # rank 0 alone would have computed them


def test_each_process_runs_under_its_share_of_the_budget(monkeypatch):
    """The worker's budget is split among its machine's processes, as admission counts them: each
    runs under its share (workers/rank.py) and weighs its frozen features against it."""
    from models.training.distributed import Ranks
    from service.core.settings import Settings
    from workers.rank import rank_limits

    settings = Settings(max_job_memory=4 * 2**30)
    four = Ranks(rank=5, local_rank=1, world_size=8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # two machines of four processes
    assert rank_limits(settings, four).process_bytes == 2**30
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert rank_limits(settings, four).process_bytes == 2**29  # all of them here

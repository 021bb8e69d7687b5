"""The memory budget: an allocation past it fails in this process, and the limit is lifted after."""

import subprocess
import sys

import torch

from workers.memory import is_out_of_memory, memory_budget

MIB = 1024**2


PAST_THE_BUDGET = """
import resource
import torch
from workers.memory import data_bytes, is_out_of_memory, memory_budget

MIB = 1024**2
before = resource.getrlimit(resource.RLIMIT_DATA)
assert data_bytes() > 0
with memory_budget(64 * MIB):
    small = torch.ones(4 * MIB)  # 16 MiB: within the budget
    try:
        torch.ones(32 * MIB)  # 128 MiB: past it
        raise SystemExit("the allocation past the budget did not fail")
    except RuntimeError as exc:
        assert is_out_of_memory(exc) and "134217728 bytes" in str(exc), exc
assert resource.getrlimit(resource.RLIMIT_DATA) == before
assert torch.ones(32 * MIB).sum() == 32 * MIB and small.sum() == 4 * MIB
print("ok")
"""


def test_an_allocation_past_the_budget_fails_and_the_limit_is_lifted_after():
    """In a fresh process: one that ran other tests may hold freed heap that an allocation reuses
    without asking the system for more (so no limit is met)."""
    done = subprocess.run([sys.executable, "-c", PAST_THE_BUDGET], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr[-3000:]


def test_other_errors_are_not_memory():
    assert not is_out_of_memory(RuntimeError("shapes do not match"))
    assert is_out_of_memory(MemoryError())


def test_the_watch_reports_the_peak_share_of_the_budget_since_it_was_last_asked():
    import gc

    from workers.memory import MemoryWatch

    gc.collect()  # what earlier tests left is not given back in the middle of this one, shrinking its growth
    watch = MemoryWatch(budget=256 * MIB)
    held = torch.ones(32 * MIB)  # 128 MiB: half the budget
    assert watch.sample() >= 0.45
    del held
    assert watch.peak() >= 0.45  # the peak, though the memory is given back
    assert watch.peak() >= 0.45  # kept until it is recorded
    watch.clear()
    assert watch.peak() < 0.45  # a new interval


def test_a_memory_mapped_dataset_larger_than_the_budget_trains_within_it(tmp_path):
    """Stored datasets are mapped shared and read-only: their pages are the file's, not the job's."""
    from models.data.contract import InputContract
    from models.data.dataset import Dataset
    from models.data.loading import load_stored_dataset, save_stored_dataset

    images = torch.randint(0, 255, (150_000, 1, 32, 32), dtype=torch.uint8)  # 150 MiB
    labels = torch.randint(0, 10, (150_000,))
    path = tmp_path / "big.safetensors"
    save_stored_dataset(
        path,
        Dataset(
            name="big",
            task="classification",
            x_train=images,
            y_train=labels,
            x_test=images[:10],
            y_test=labels[:10],
            checksum="x",
            contract=InputContract.image(1, 32, 32, [str(c) for c in range(10)]),
        ),
    )
    expected = int(images[::997].sum())
    del images
    with memory_budget(64 * MIB):
        stored = load_stored_dataset(path)
        assert int(stored.x_train[::997].sum()) == expected  # every page of the file touched in between
        total = sum(
            int(stored.x_train[start : start + 1000].sum(dtype=torch.int64))
            for start in range(0, len(stored.x_train), 1000)
        )  # the whole file, a batch at a time
        assert total > 0

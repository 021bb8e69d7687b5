"""Decoded datasets on disk: streamed out, memory-mapped back in, and trained from with bounded memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from models.data.contract import InputContract
from models.data.dataset import Dataset
from models.data.loading import load_stored_dataset, save_stored_dataset
from models.data.stored import StoredFileError, read_arrays, write_arrays
from tests.support.servers import REPO


def _mapping_of(address: int) -> tuple[str, str]:
    """(permissions, file) of this process's memory mapping that holds an address."""
    for line in open("/proc/self/maps"):
        span, perms, _offset, _dev, _inode, *name = line.split()
        low, high = (int(part, 16) for part in span.split("-"))
        if low <= address < high:
            return perms, name[0] if name else ""
    raise AssertionError(f"{address:#x} is not mapped")


def test_written_files_are_safetensors_and_read_back_mapped(tmp_path):
    tensors = {
        "a": torch.arange(10, dtype=torch.int64),
        "b": torch.randint(0, 255, (3, 5), dtype=torch.uint8),
        "empty": torch.empty(0, 3, dtype=torch.uint8),
        "f": torch.rand(4),
    }
    path = tmp_path / "t.safetensors"
    write_arrays(path, tensors, {"note": "hi"})
    with safe_open(str(path), framework="pt") as fh:  # the reference reader agrees
        assert fh.metadata() == {"note": "hi"}
        assert all(torch.equal(fh.get_tensor(k), v) for k, v in tensors.items())
    back, meta = read_arrays(path)
    assert meta == {"note": "hi"} and all(torch.equal(back[k], v) for k, v in tensors.items())
    # Mapped shared and read-only: the pages are the file's (a job's memory budget does not count them)
    assert _mapping_of(back["b"].data_ptr()) == ("r--s", str(path))
    path.write_bytes(path.read_bytes()[:-3])
    try:
        read_arrays(path)
    except StoredFileError as exc:
        assert "truncated" in str(exc)
    else:
        raise AssertionError("a truncated file was read")


def test_a_stored_dataset_round_trips_memory_mapped(tmp_path):
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (50, 3, 8, 8), dtype=np.uint8))
    data = Dataset(
        name="d",
        task="classification",
        x_train=x[:40],
        y_train=torch.arange(40) % 2,
        x_test=x[40:],
        y_test=torch.arange(10) % 2,
        contract=InputContract.image(3, 8, 8, ["a", "b"]),
        checksum="c" * 64,
    )
    save_stored_dataset(tmp_path / "d.safetensors", data, {"kind": "image_folder"})
    again = load_stored_dataset(tmp_path / "d.safetensors")
    assert again.contract == data.contract and again.checksum == data.checksum
    assert torch.equal(again.x_train, data.x_train) and torch.equal(again.y_test, data.y_test)
    assert str(tmp_path / "d.safetensors") in Path("/proc/self/maps").read_text()  # mapped, not read


TRAIN_FROM_DISK = r"""
import sys
from pathlib import Path
import torch
from models.data.loading import load_stored_dataset
from models.training.engine import fit
from models.spec.job import JobSpec

def anon_mb():
    line = next(l for l in open("/proc/self/status") if l.startswith("RssAnon:"))
    return int(line.split()[1]) / 1024

spec = JobSpec.model_validate({"model": {"arch": "softmax_regression"}, "data": {"dataset": "mnist"},
                               "epochs": 1, "batch_size": 256, "device": "cpu", "optimizer": {"lr": 0.01}})
torch.set_num_threads(1)
dataset = load_stored_dataset(Path(sys.argv[1]))
if sys.argv[2] == "validation":  # a held-out split keeps row indices into the mapped file
    from models.data.splits import holdout_split, with_validation
    dataset = with_validation(dataset, *holdout_split(len(dataset.x_train), 0.2, 0, what="val_fraction"))
warm = fit(spec, dataset=dataset.replace(x_train=dataset.x_train[:512], y_train=dataset.y_train[:512]), data_dir=".")
before = anon_mb()
fit(spec, dataset=dataset, data_dir=".")
print(anon_mb() - before)
"""


@pytest.mark.slow
@pytest.mark.parametrize("split", ["none", "validation"])
def test_training_from_a_memory_mapped_set_holds_batches_not_the_set(tmp_path, split):
    """12,000 RGB images of 64x64 (141 MiB) train for an epoch while the process's anonymous memory
    grows by far less than the set (loaded into memory it grows by more than the set): its pages
    are the file's, read as batches need them."""
    n = 12_000
    x = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (n, 3, 64, 64), dtype=np.uint8))
    data = Dataset(
        name="big",
        task="classification",
        x_train=x[:10_000],
        y_train=torch.arange(10_000) % 10,
        x_test=x[10_000:],
        y_test=torch.arange(2000) % 10,
        contract=InputContract.image(3, 64, 64, [str(i) for i in range(10)]),
        checksum="0" * 64,
    )
    path = tmp_path / "big.safetensors"
    save_stored_dataset(path, data)
    del data, x
    size_mb = path.stat().st_size / 2**20
    run = subprocess.run(
        [sys.executable, "-c", TRAIN_FROM_DISK, str(path), split], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    growth = float(run.stdout.strip().splitlines()[-1])
    # Half the set: glibc keeps freed batch buffers (its mmap threshold rises after large frees), so
    # the growth moves by tens of MB from run to run (35-48 seen); loaded whole it exceeds the set.
    assert size_mb > 130 and growth < size_mb / 2, (growth, size_mb)

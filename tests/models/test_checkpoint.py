import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.checkpoint import (
    CheckpointError,
    checkpoint_name,
    read_checkpoint,
    read_meta,
    write_checkpoint,
)


def test_round_trip_keeps_weights_and_metadata(tmp_path):
    state = {"layer.weight": torch.randn(3, 4), "layer.bias": torch.zeros(3)}
    path = tmp_path / "job" / checkpoint_name(7)
    size = write_checkpoint(path, state, {"epoch": 7, "classes": ["a", "b", "c"]})
    assert path.name == "epoch-0007.safetensors" and path.stat().st_size == size
    loaded, meta = read_checkpoint(path)
    assert meta["epoch"] == 7 and meta["classes"] == ["a", "b", "c"]
    assert meta["format"] == "trainyard-checkpoint/1"
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor)
    assert read_meta(path) == meta
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left behind


def test_overwrite_is_atomic_replacement(tmp_path):
    path = tmp_path / "c.safetensors"
    write_checkpoint(path, {"w": torch.ones(2)}, {"epoch": 1})
    write_checkpoint(path, {"w": torch.full((2,), 5.0)}, {"epoch": 2})
    loaded, meta = read_checkpoint(path)
    assert meta["epoch"] == 2 and torch.equal(loaded["w"], torch.full((2,), 5.0))


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    write_checkpoint(path, {"w": torch.ones(2)}, {"epoch": 1})

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("models.checkpoint.os.fsync", broken_fsync)
    with pytest.raises(OSError):
        write_checkpoint(path, {"w": torch.zeros(2)}, {"epoch": 2})
    assert read_meta(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


def test_foreign_and_corrupt_files_are_refused(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.ones(1)}, str(foreign))
    with pytest.raises(CheckpointError, match="no trainyard metadata"):
        read_meta(foreign)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x80\x04\x95 this is a pickle, not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        read_checkpoint(garbage)
    other_format = tmp_path / "other.safetensors"
    save_file({"w": torch.ones(1)}, str(other_format), metadata={"trainyard": json.dumps({"format": "v0"})})
    with pytest.raises(CheckpointError, match="unknown format"):
        read_meta(other_format)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_meta(tmp_path / "missing.safetensors")


WRITE_UNDER_A_BUDGET = """
import resource, sys, torch
from pathlib import Path
from models.checkpoint import read_meta, write_checkpoint
state = {f"layer{i}.weight": torch.ones(16, 1024, 1024) for i in range(4)}  # 256 MiB
def data_bytes():
    for line in open("/proc/self/status"):
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
resource.setrlimit(resource.RLIMIT_DATA, (data_bytes() + 64 * 1024 * 1024, hard))
print(write_checkpoint(Path(sys.argv[1]), state, {"epoch": 3}))
print(read_meta(Path(sys.argv[1]))["epoch"])  # the header alone: no mapping of the whole file
"""


def test_writing_a_checkpoint_does_not_hold_the_weights_twice(tmp_path):
    """A job stores weights and optimizer state under the memory budget it trains in: 256 MiB of
    tensors are written with 64 MiB to spare (a file built in memory first needs its whole size),
    and its header is read back there (safetensors' safe_open maps the whole file)."""
    path = tmp_path / "big.safetensors"
    done = subprocess.run(
        [sys.executable, "-c", WRITE_UNDER_A_BUDGET, str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    written, epoch = done.stdout.split()
    assert int(written) == path.stat().st_size and epoch == "3"
    loaded, meta = read_checkpoint(path)
    assert meta["epoch"] == 3
    assert sorted(loaded) == [f"layer{i}.weight" for i in range(4)]
    assert all(torch.equal(tensor, torch.ones(16, 1024, 1024)) for tensor in loaded.values())


def test_every_dtype_and_layout_a_state_holds_round_trips(tmp_path):
    state = {
        "half": torch.randn(3, 4, dtype=torch.bfloat16),
        "mask": torch.tensor([True, False, True]),
        "count": torch.arange(5, dtype=torch.int32),
        "transposed": torch.randn(4, 3).t(),  # not contiguous
        "scalar": torch.tensor(3.0),
        "empty": torch.zeros(0),
        "negated": torch.tensor([1.0, -2.0])._neg_view(),  # a lazy view: its storage holds the other sign
        "complex": torch.tensor([1 + 2j], dtype=torch.complex64).conj(),
        "fp8": torch.tensor([0.5, -1.0]).to(torch.float8_e4m3fn),
    }
    path = tmp_path / "kinds.safetensors"
    write_checkpoint(path, state, {"epoch": 1})
    loaded = load_file(str(path))  # safetensors' own reader accepts the streamed file
    assert sorted(loaded) == sorted(state)
    for name, tensor in state.items():
        want = tensor.resolve_conj().resolve_neg()
        got = loaded[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name

        def raw(t: torch.Tensor) -> torch.Tensor:  # byte for byte: fp8 has no equality of its own
            return t.contiguous().reshape(-1).view(torch.uint8)

        assert torch.equal(raw(got), raw(want)), name
    with pytest.raises(TypeError, match="cannot hold"):
        write_checkpoint(path, {"z": torch.zeros(2, dtype=torch.complex128)}, {"epoch": 2})
    with pytest.raises(ValueError, match="header's own key"):
        write_checkpoint(path, {"__metadata__": torch.zeros(1)}, {"epoch": 2})


def test_a_checkpoint_cut_short_or_not_utf8_is_refused_by_its_header_read(tmp_path):
    path = tmp_path / "whole.safetensors"
    write_checkpoint(path, {"w": torch.ones(64)}, {"epoch": 1})
    assert read_meta(path)["epoch"] == 1
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="holds .* bytes where its header describes"):
        read_meta(cut)
    header = json.dumps({"__metadata__": {"trainyard": json.dumps({"format": "x"})}}).encode("utf-16")
    wide = tmp_path / "wide.safetensors"
    wide.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_meta(wide)

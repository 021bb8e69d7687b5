"""A run's resumable state and its file: what an attempt saves (after each epoch, or when it is
stopped) so that the next attempt continues at exactly that point.

TrainingRun.state() builds a TrainingState and TrainingRun.restore() applies one (models/training/engine.py);
this module is the one place that knows how it is laid out on disk: a safetensors file (via
models/checkpoint.py) with the tensors flat and everything else as JSON in its header.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from models.checkpoint import read_checkpoint, write_checkpoint

TRAINING_STATE = "training-state.safetensors"


@dataclass
class EpochProgress:
    """How far an epoch has got: batches done and the running sums behind its train metrics."""

    batches: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0


@dataclass
class Position:
    """A point in training: `epoch` is in progress with `progress.batches` batches done."""

    epoch: int
    progress: EpochProgress = field(default_factory=EpochProgress)


@dataclass
class TrainingState:
    """Everything needed to continue a run exactly where an earlier attempt stopped."""

    position: Position
    model: dict[str, torch.Tensor]
    optimizer: dict | None = None
    rng: dict[str, torch.Tensor] = field(default_factory=dict)  # generator states by device: cpu, cuda
    run: dict = field(default_factory=dict)  # JSON: scheduler, scaler, early stopping, elapsed, folds


def save_training_state(path: Path, state: TrainingState, meta: dict) -> int:
    """Write a training state atomically, with `meta` (e.g. the job id) in its header."""
    tensors = {f"model.{k}": v for k, v in state.model.items()}
    optimizer = None
    if state.optimizer is not None:
        scalars = {}
        for param_id, values in state.optimizer["state"].items():
            for key, value in values.items():
                if torch.is_tensor(value):
                    tensors[f"optimizer.{param_id}.{key}"] = value
                else:
                    scalars[f"{param_id}.{key}"] = value
        optimizer = {"param_groups": state.optimizer["param_groups"], "scalars": scalars}
    tensors.update({f"rng.{device}": value for device, value in state.rng.items()})
    position = {"epoch": state.position.epoch, "progress": asdict(state.position.progress)}
    return write_checkpoint(
        path, tensors, {**meta, "position": position, "run_state": state.run, "optimizer": optimizer}
    )


def load_training_state(path: Path) -> tuple[TrainingState, dict]:
    """Inverse of save_training_state: the state and the header's metadata."""
    tensors, meta = read_checkpoint(path)
    model = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    optimizer = None
    if meta.get("optimizer"):
        values: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, param_id, name = key.split(".", 2)
                values.setdefault(int(param_id), {})[name] = value
        for key, value in meta["optimizer"]["scalars"].items():
            param_id, name = key.split(".", 1)
            values.setdefault(int(param_id), {})[name] = value
        optimizer = {"state": values, "param_groups": meta["optimizer"]["param_groups"]}
    rng = {k.removeprefix("rng."): v for k, v in tensors.items() if k.startswith("rng.")}
    if "rng_state" in tensors:  # written before the GPU's generator was saved too
        rng["cpu"] = tensors["rng_state"]
    raw = meta.get("position") or {"epoch": 1}
    position = Position(epoch=raw["epoch"], progress=EpochProgress(**raw.get("progress", {})))
    return TrainingState(
        position=position, model=model, optimizer=optimizer, rng=rng, run=meta.get("run_state") or {}
    ), meta

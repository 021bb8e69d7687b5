"""Small real checkpoints written to disk, for tests that serve, register or store one."""

from __future__ import annotations

import torch

from models.checkpoint import write_checkpoint
from models.data.contract import InputContract
from models.nets.archs import build_model
from models.spec.job import JobSpec


def write_model(path, seed: int):
    """An MLP classifier checkpoint for 28x28 grayscale images, its weights drawn from `seed`."""
    spec = JobSpec.model_validate({"model": {"arch": "mlp", "hidden": [16]}, "data": {"dataset": "fashion-mnist"}})
    torch.manual_seed(seed)
    model = build_model(spec.model, (1, 28, 28), 10)
    write_checkpoint(
        path,
        model.state_dict(),
        {
            "spec": spec.model_dump(mode="json"),
            "task": "classification",
            "classes": [str(i) for i in range(10)],
            "input_shape": [1, 28, 28],
            "epoch": 1,
            "input": InputContract.image(1, 28, 28, [str(i) for i in range(10)]).to_json(),
        },
    )
    return path

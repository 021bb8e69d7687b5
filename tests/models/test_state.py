"""The resumable training state: what TrainingRun.state() captures, its file, and older files."""

import weakref

import pytest
import torch

from models.checkpoint import read_checkpoint, write_checkpoint
from models.spec.job import JobSpec
from models.training.engine import prepare
from models.training.state import EpochProgress, Position, TrainingState, load_training_state, save_training_state


def test_the_file_keeps_every_part_and_reads_the_older_layout(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    rng = {"cpu": torch.get_rng_state(), "cuda": torch.arange(16, dtype=torch.uint8)}
    position = Position(epoch=2, progress=EpochProgress(batches=3, loss_sum=1.5, correct=7, seen=30))
    state = TrainingState(
        position=position,
        model=model.state_dict(),
        optimizer=optimizer.state_dict(),
        rng=rng,
        run={"elapsed": 4.5, "folds": [{"fold": 1}]},
    )
    path = tmp_path / "state.safetensors"
    save_training_state(path, state, {"job_id": "j"})
    read, meta = load_training_state(path)
    assert meta["job_id"] == "j" and read.position == position and read.run == state.run
    assert set(read.rng) == {"cpu", "cuda"} and all(torch.equal(read.rng[k], rng[k]) for k in rng)
    assert torch.equal(read.model["weight"], model.weight)
    assert set(read.optimizer["state"][0]) == {"momentum_buffer"}
    assert read.optimizer["param_groups"] == optimizer.state_dict()["param_groups"]

    # Written before the GPU's generator was saved too: one tensor named rng_state, the CPU's.
    tensors, old_meta = read_checkpoint(path)
    older = {k: v for k, v in tensors.items() if not k.startswith("rng.")} | {"rng_state": rng["cpu"]}
    write_checkpoint(path, older, old_meta)
    read, _ = load_training_state(path)
    assert set(read.rng) == {"cpu"} and torch.equal(read.rng["cpu"], rng["cpu"])


def test_a_run_restored_from_its_state_continues_identically(tmp_path):
    spec = JobSpec.model_validate(
        {
            "model": {"arch": "mlp", "hidden": [16], "dropout": [0.5]},
            "data": {"dataset": "synthetic-linear", "num_examples": 64, "num_test": 16, "true_w": [1, 2, 3, 4]},
            "optimizer": {"name": "adam", "lr": 0.01},
            "schedule": {"name": "step", "step_size": 1, "gamma": 0.5},
            "epochs": 3,
            "device": "cpu",
        }
    )
    first = prepare(spec, data_dir=tmp_path)
    first.optimizer.zero_grad()
    first.model(first.dataset.x_train).sum().backward()
    first.optimizer.step()
    first.scheduler.step()
    path = tmp_path / "state.safetensors"
    save_training_state(path, first.state(Position(epoch=2)), {})
    expected = first.model(first.dataset.x_train[:8])  # dropout draws from the saved generator

    state = load_training_state(path)[0]
    loaded_weights = [weakref.ref(tensor) for tensor in state.model.values()]
    second = prepare(spec, data_dir=tmp_path, resume=state)
    assert loaded_weights and not any(ref() for ref in loaded_weights)  # the model holds them, not a copy too
    assert second.start == Position(epoch=2)
    assert second.scheduler.get_last_lr() == first.scheduler.get_last_lr()
    assert torch.equal(second.model(second.dataset.x_train[:8]), expected)
    assert torch.equal(
        second.optimizer.state_dict()["state"][0]["exp_avg"], first.optimizer.state_dict()["state"][0]["exp_avg"]
    )


def test_a_resumed_run_keeps_the_input_statistics_its_weights_learnt(tmp_path):
    """The statistics a run standardised with travel in its state: a resumed attempt whose data
    preparation computes others (a later version, say) goes on in the units its weights learnt."""
    spec = JobSpec.model_validate(
        {
            "model": {"arch": "linear_regression"},
            "data": {"dataset": "synthetic-linear", "num_examples": 64, "num_test": 16},
            "epochs": 2,
            "device": "cpu",
        }
    )
    first = prepare(spec, data_dir=tmp_path)
    assert not first.dataset.contract.target_scaled
    state = first.state(Position(epoch=2))
    assert state.run["input"] == first.dataset.contract.to_json()
    state.run["input"].update(mean=[1.0, -1.0], std=[2.0, 4.0], target_mean=3.0, target_std=0.5)
    resumed = prepare(spec, data_dir=tmp_path, resume=state).dataset.contract
    assert (resumed.mean, resumed.std, resumed.target_mean, resumed.target_std) == ([1.0, -1.0], [2.0, 4.0], 3.0, 0.5)
    mismatched = first.state(Position(epoch=2))
    mismatched.run["input"].update(mean=[1.0], std=[2.0])  # one column's for two: not this run's
    with pytest.raises(ValueError, match="mean has 1 values for 2 feature"):
        prepare(spec, data_dir=tmp_path, resume=mismatched)
    older = first.state(Position(epoch=2))  # restoring lets go of a state's weights
    del older.run["input"]  # as saved before states carried it: the run's own preparation stands
    assert prepare(spec, data_dir=tmp_path, resume=older).dataset.contract == first.dataset.contract

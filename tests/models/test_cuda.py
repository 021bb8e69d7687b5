"""The engine's GPU paths. They need a CUDA device, so they skip elsewhere; bench/gpu_check.sh runs them."""

import functools

import pytest
import torch

from models.checkpoint import read_checkpoint, write_checkpoint
from models.inference.predictor import Predictor
from models.spec.job import JobSpec
from models.training import engine
from models.training.engine import fit, place_on_gpu, prepare
from models.training.state import load_training_state, save_training_state
from tests.models.common import Recorder, StopAt

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def job(**overrides) -> JobSpec:
    base = {
        "model": {"arch": "lenet", "activation": "relu"},
        "data": {"dataset": "fashion-mnist"},
        "optimizer": {"name": "adam", "lr": 0.01},
        "epochs": 3,
        "batch_size": 50,
        "device": "cuda",
    }
    return JobSpec.model_validate({**base, **overrides})


@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_training_on_the_gpu_learns(idx_dir, amp):
    recorder = Recorder()
    result = fit(job(amp=amp), recorder, data_dir=idx_dir)
    run = result.run
    assert run.device.type == "cuda" and next(run.model.parameters()).is_cuda
    assert (run.scaler is not None) == (amp == "fp16")
    assert recorder.epochs[-1].test_acc > 0.8
    assert recorder.epochs[-1].train_loss < recorder.epochs[0].train_loss


def test_dataset_moves_to_the_gpu_when_it_fits_and_is_pinned_otherwise(idx_dir, monkeypatch):
    dataset = prepare(job(device="cpu"), data_dir=idx_dir).dataset
    device = torch.device("cuda")
    on_device = place_on_gpu(dataset, device)
    assert on_device.x_train.is_cuda and on_device.y_test.is_cuda
    assert on_device.x_train.dtype == torch.uint8  # still compact: converted per batch
    pinned = place_on_gpu(dataset, device, headroom=0.0)
    assert not pinned.x_train.is_cuda and pinned.x_train.is_pinned()
    assert torch.equal(pinned.x_train, dataset.x_train) and torch.equal(on_device.x_train.cpu(), dataset.x_train)

    from_device, from_host = Recorder(), Recorder()
    fit(job(epochs=1), from_device, dataset=dataset, data_dir=idx_dir)
    monkeypatch.setattr(engine, "place_on_gpu", functools.partial(place_on_gpu, headroom=0.0))  # "too big"
    result = fit(job(epochs=1), from_host, dataset=dataset, data_dir=idx_dir)
    assert result.run.dataset.x_train.is_pinned()
    assert from_host.epochs[0].train_loss == pytest.approx(from_device.epochs[0].train_loss, rel=1e-3)


def test_stop_mid_epoch_then_resume_on_the_gpu_matches_an_uninterrupted_run(idx_dir, tmp_path):
    """Dropout draws from the GPU's generator and fp16 has a loss scale: both carry over."""
    spec = job(model={"arch": "mlp", "hidden": [64], "dropout": 0.3}, amp="fp16", epochs=2)
    full = Recorder()
    fit(spec, full, data_dir=idx_dir)

    stopped = fit(spec, StopAt(20), data_dir=idx_dir)  # part-way through epoch 2 (12 batches, 1 evaluating)
    run = stopped.run
    path = tmp_path / "state.safetensors"  # through the file, as a worker that restarts reads it
    save_training_state(path, run.state(stopped.stopped_at), {})
    state, _ = load_training_state(path)
    assert set(state.rng) == {"cpu", "cuda"} and state.run["scaler"]["scale"] > 0
    torch.manual_seed(12345)
    torch.cuda.manual_seed(12345)  # whatever the process did in between must not matter
    rest = Recorder()
    fit(spec, rest, data_dir=idx_dir, resume=state)
    assert rest.epochs[0].train_loss == pytest.approx(full.epochs[1].train_loss, rel=1e-4)
    assert rest.epochs[0].test_loss == pytest.approx(full.epochs[1].test_loss, rel=1e-4)


def test_a_model_trained_on_the_gpu_predicts_on_the_cpu(idx_dir, tmp_path):
    result = fit(job(epochs=1), data_dir=idx_dir)
    dataset = result.run.dataset
    path = tmp_path / "model.safetensors"
    write_checkpoint(path, result.run.model.state_dict(), result.run.model_meta())
    tensors, _ = read_checkpoint(path)
    assert all(t.device.type == "cpu" for t in tensors.values())
    predictor = Predictor.from_checkpoint(path)
    images = dataset.x_test[:64].cpu()
    on_cpu = predictor.probabilities(dataset.to_float(images))
    with torch.inference_mode():
        on_gpu = torch.softmax(result.run.model.eval()(dataset.to_float(images.cuda())), dim=1).cpu()
    assert torch.allclose(on_cpu, on_gpu, atol=1e-4)


def test_compiled_model_trains_on_the_gpu(idx_dir):
    plain, compiled = Recorder(), Recorder()
    fit(job(epochs=1), plain, data_dir=idx_dir)
    fit(job(epochs=1, compile=True), compiled, data_dir=idx_dir)
    assert compiled.epochs[0].train_loss == pytest.approx(plain.epochs[0].train_loss, rel=2e-2)
    assert compiled.epochs[0].test_acc > 0.8


def test_a_fine_tune_on_every_gpu_with_nccl_learns_and_synchronises_batch_norm(idx_dir, tmp_path):
    """The distributed path on CUDA: nproc_per_node = the GPUs present, over nccl, 2 epochs of a
    ResNet-18 fine-tune (batch norm becomes SyncBatchNorm)."""
    import json
    import subprocess
    import sys

    gpus = torch.cuda.device_count()
    spec = {
        "model": {"arch": "pretrained", "backbone": "resnet18", "weights": None},
        "data": {"dataset": "fashion-mnist"},
        "optimizer": {"name": "adam", "lr": 0.001},
        "epochs": 2,
        "batch_size": 32 * gpus,
        "device": "cuda",
        "distributed": {"nproc_per_node": gpus},
    }
    out = tmp_path / "ddp.pt"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}"]
        + ["-m", "tests.support.ddp_fit", json.dumps(spec), str(idx_dir), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    epochs = torch.load(out)["epochs"]
    assert len(epochs) == 2 and epochs[-1]["train_loss"] < epochs[0]["train_loss"]

import math
import statistics
from collections.abc import Callable

import pytest
import torch

from models.spec.job import JobSpec
from models.training.engine import Position, TrainingError, fit, resolve_device
from models.training.state import TrainingState
from tests.models.common import LENET_LAYERS, Recorder, StopAt, trace


def job(**overrides) -> JobSpec:
    base = {
        "model": {"arch": "softmax_regression"},
        "data": {"dataset": "fashion-mnist"},
        "optimizer": {"lr": 0.5},
        "epochs": 3,
        "batch_size": 50,
        "device": "cpu",
    }
    return JobSpec.model_validate({**base, **overrides})


def test_fit_learns_and_reports_every_epoch(idx_dir):
    recorder = Recorder()
    result = fit(job(), recorder, data_dir=idx_dir)
    assert [m.epoch for m in recorder.epochs] == [1, 2, 3]
    assert recorder.started.start_epoch == 1 and not result.stopped_early
    first, last = recorder.epochs[0], recorder.epochs[-1]
    assert last.train_loss < first.train_loss
    assert last.test_acc > 0.9 and last.train_acc > 0.9
    assert all(m.seconds > 0 and m.samples_per_second > 0 and m.lr == 0.5 for m in recorder.epochs)


def test_same_seed_same_metrics_other_seed_differs(idx_dir):
    mlp = {"arch": "mlp", "hidden": [32], "dropout": 0.2}
    first = trace(job(model=mlp, epochs=2), idx_dir)
    assert trace(job(model=mlp, epochs=2), idx_dir) == first
    assert trace(job(model=mlp, epochs=2, seed=1), idx_dir) != first


def test_resume_continues_exactly_where_an_uninterrupted_run_goes(idx_dir):
    spec = job(epochs=3)
    full = Recorder()
    fit(spec, full, data_dir=idx_dir)

    class StopAfterFirst(Recorder):
        def on_epoch_end(self, run, metrics):
            super().on_epoch_end(run, metrics)
            self.state = {k: v.clone() for k, v in run.model.state_dict().items()}

    first = StopAfterFirst()
    fit(job(epochs=1), first, data_dir=idx_dir)
    resumed = Recorder()
    fit(spec, resumed, data_dir=idx_dir, resume=TrainingState(position=Position(epoch=2), model=first.state))
    assert resumed.started.start_epoch == 2
    assert [m.epoch for m in resumed.epochs] == [2, 3]
    for a, b in zip(resumed.epochs, full.epochs[1:], strict=False):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-6)
        assert a.test_acc == b.test_acc


def test_should_stop_ends_training_between_batches(idx_dir):
    recorder = StopAt(4)
    result = fit(job(epochs=5), recorder, data_dir=idx_dir)
    assert result.stopped_early and recorder.epochs == []
    assert result.stopped_at.epoch == 1 and result.stopped_at.progress.batches == 3
    assert result.stopped_at.progress.seen == 150


def test_stop_mid_epoch_then_resume_matches_an_uninterrupted_run(idx_dir):
    """Weights, optimizer momentum, RNG (dropout) and the epoch's shuffle all carry over."""
    spec = job(model={"arch": "mlp", "hidden": [32], "dropout": 0.3}, optimizer={"lr": 0.1, "momentum": 0.9}, epochs=2)
    full = Recorder()
    fit(spec, full, data_dir=idx_dir)

    first = StopAt(20)  # part-way through epoch 2 (12 batches and an evaluation's one per epoch)
    stopped = fit(spec, first, data_dir=idx_dir)
    position = stopped.stopped_at
    assert position.epoch == 2 and 0 < position.progress.batches < 12
    run = stopped.run
    resume = run.state(position)
    torch.manual_seed(12345)  # whatever the process did in between must not matter
    rest = Recorder()
    fit(spec, rest, data_dir=idx_dir, resume=resume)
    assert [m.epoch for m in rest.epochs] == [2]
    assert rest.epochs[0].train_loss == pytest.approx(full.epochs[1].train_loss, rel=1e-5)
    assert rest.epochs[0].test_loss == pytest.approx(full.epochs[1].test_loss, rel=1e-5)


def test_a_stop_during_the_evaluation_keeps_the_epochs_training(idx_dir):
    """The evaluation polls too (a large test set can take minutes): a stop there resumes at the
    epoch's last batch, evaluates the same weights, and goes on as an uninterrupted run does."""
    spec = job(model={"arch": "mlp", "hidden": [32], "dropout": 0.3}, optimizer={"lr": 0.1, "momentum": 0.9}, epochs=2)
    spec = spec.model_copy(update={"batch_size": 64})  # 10 batches an epoch, the last one short
    full = Recorder()
    uninterrupted = fit(spec, full, data_dir=idx_dir).run.model.state_dict()

    first = StopAt(11)  # epoch 1's evaluation (one batch of the 200 test images)
    stopped = fit(spec, first, data_dir=idx_dir)
    position = stopped.stopped_at
    assert first.epochs == [] and stopped.reason == "stopped"
    assert position.epoch == 1 and position.progress.batches == 10 and position.progress.seen == 600
    resume = stopped.run.state(position)
    torch.manual_seed(12345)
    rest = Recorder()
    resumed = fit(spec, rest, data_dir=idx_dir, resume=resume)
    assert [m.epoch for m in rest.epochs] == [1, 2]
    for again, once in zip(rest.epochs, full.epochs, strict=True):
        assert again.train_loss == pytest.approx(once.train_loss, rel=1e-6)
        assert again.train_acc == once.train_acc and again.test_acc == once.test_acc
        assert again.test_loss == pytest.approx(once.test_loss, rel=1e-6)
    assert rest.epochs[0].samples_per_second is None and rest.epochs[1].samples_per_second > 0
    final = resumed.run.model.state_dict()
    assert all(torch.allclose(final[k], v) for k, v in uninterrupted.items())


def test_linear_regression_recovers_weights():
    spec = JobSpec.model_validate(
        {
            "model": {"arch": "linear_regression"},
            "data": {
                "dataset": "synthetic-linear",
                "num_examples": 1000,
                "true_w": [2, -3.4],
                "true_b": 4.2,
                "noise": 0.01,
            },
            "optimizer": {"lr": 0.03},
            "epochs": 3,
            "batch_size": 10,
            "device": "cpu",
        }
    )
    recorder = Recorder()
    result = fit(spec, recorder, data_dir=".")
    linear = result.run.model[1]
    torch.testing.assert_close(linear.weight.detach().squeeze(), torch.tensor([2.0, -3.4]), atol=0.02, rtol=0)
    assert abs(float(linear.bias.detach()) - 4.2) < 0.02
    assert recorder.epochs[-1].train_acc is None and recorder.epochs[-1].test_loss < 1e-3


def test_val_fraction_reports_validation_metrics(idx_dir):
    recorder = Recorder()
    fit(job(epochs=1, data={"dataset": "fashion-mnist", "val_fraction": 0.2}), recorder, data_dir=idx_dir)
    assert recorder.started.dataset.x_val is not None and len(recorder.started.dataset.x_train) == 480
    assert recorder.epochs[0].val_loss is not None and recorder.epochs[0].val_acc is not None


def test_weight_decay_shrinks_weights(idx_dir):
    plain, decayed = (
        fit(job(epochs=2), data_dir=idx_dir),
        fit(job(epochs=2, optimizer={"lr": 0.5, "weight_decay": 0.05}), data_dir=idx_dir),
    )

    def norm(r):
        return float(r.run.model[1].weight.detach().norm())

    assert norm(decayed) < 0.8 * norm(plain)


def test_divergence_is_a_training_error():
    spec = JobSpec.model_validate(
        {
            "model": {"arch": "linear_regression"},
            "data": {"dataset": "synthetic-linear"},
            "optimizer": {"lr": 50},
            "epochs": 3,
            "batch_size": 10,
            "device": "cpu",
        }
    )
    with pytest.raises(TrainingError, match="loss became"):
        fit(spec, data_dir=".")


def test_mismatched_model_and_data_is_a_training_error():
    spec = JobSpec.model_validate(
        {"model": {"arch": "lenet"}, "data": {"dataset": "synthetic-linear"}, "device": "cpu"}
    )
    with pytest.raises(TrainingError, match="model.arch"):
        fit(spec, data_dir=".")


def test_device_selection():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="no CUDA device"):
            resolve_device("cuda:0")


def last(recorder):
    return recorder.epochs[-1]


def test_optimizers_differ_and_learn(idx_dir):
    results = {}
    for name, extra in (
        ("sgd", {"momentum": 0.9}),
        ("sgd-nesterov", {"momentum": 0.9, "nesterov": True}),
        ("adam", {}),
        ("adamw", {"weight_decay": 0.1}),
    ):
        recorder = Recorder()
        optimizer = {"name": name.split("-")[0], "lr": 0.01, **extra}
        result = fit(job(epochs=2, optimizer=optimizer), recorder, data_dir=idx_dir)
        assert type(result.run.optimizer).__name__.lower() == optimizer["name"]
        assert last(recorder).test_acc > 0.8
        results[name] = last(recorder).train_loss
    assert len(set(results.values())) == 4


def test_weight_decay_spares_biases_unless_decay_bias(idx_dir):
    spec = {"epochs": 2, "optimizer": {"lr": 0.5, "weight_decay": 0.5}}
    spared = fit(job(**spec), data_dir=idx_dir).run
    decayed = fit(job(**{**spec, "optimizer": {**spec["optimizer"], "decay_bias": True}}), data_dir=idx_dir).run
    assert [g["weight_decay"] for g in spared.optimizer.param_groups] == [0.5, 0.0]
    assert [len(g["params"]) for g in spared.optimizer.param_groups] == [1, 1]
    assert [g["weight_decay"] for g in decayed.optimizer.param_groups] == [0.5]

    def bias(run):
        return float(run.model[1].bias.detach().norm())

    assert bias(decayed) < 0.8 * bias(spared)


@pytest.mark.slow
def test_l1_penalty_makes_weights_sparser(idx_dir):
    plain = fit(job(epochs=2), data_dir=idx_dir).run
    lasso = fit(job(epochs=2, optimizer={"lr": 0.5, "l1": 0.001}), data_dir=idx_dir).run

    def small(run):
        return float((run.model[1].weight.detach().abs() < 1e-2).float().mean())

    assert small(lasso) > small(plain) + 0.1


@pytest.mark.parametrize(
    "schedule, expected",
    [
        ({"name": "none"}, [0.5, 0.5, 0.5, 0.5]),
        ({"name": "step", "step_size": 2, "gamma": 0.1}, [0.5, 0.5, 0.05, 0.05]),
        (
            {"name": "cosine", "min_lr": 0.1},
            [0.5, 0.1 + 0.4 * (1 + math.cos(math.pi / 4)) / 2, 0.3, 0.1 + 0.4 * (1 + math.cos(3 * math.pi / 4)) / 2],
        ),
    ],
)
def test_learning_rate_schedules(idx_dir, schedule, expected):
    recorder = Recorder()
    fit(job(epochs=4, schedule=schedule), recorder, data_dir=idx_dir)
    assert [m.lr for m in recorder.epochs] == pytest.approx(expected)


def test_early_stopping_stops_and_says_why(idx_dir):
    recorder = Recorder()
    result = fit(
        job(epochs=10, early_stopping={"metric": "test_loss", "patience": 2, "min_delta": 10.0}),
        recorder,
        data_dir=idx_dir,
    )
    assert result.reason == "early_stopped" and len(recorder.epochs) == 3 and result.stopped_at is None
    recorder = Recorder()
    result = fit(job(epochs=4, early_stopping={"metric": "test_acc", "patience": 3}), recorder, data_dir=idx_dir)
    assert result.reason is None and len(recorder.epochs) == 4


def test_max_runtime_stops_between_batches(idx_dir):
    result = fit(job(epochs=50, batch_size=8, max_runtime_seconds=0.2), data_dir=idx_dir)
    assert result.reason == "max_runtime_exceeded" and result.stopped_at.epoch < 50


@pytest.mark.slow
def test_cross_validation_reports_every_fold_then_trains_the_final_model(idx_dir):
    recorder = Recorder()
    folds = []

    class Folds(Recorder):
        def on_fold_end(self, run, fold):
            folds.append(fold)

    recorder = Folds()
    result = fit(job(epochs=2, cross_validation={"folds": 3}), recorder, data_dir=idx_dir)
    assert [f["fold"] for f in folds] == [1, 2, 3] and result.run.folds == folds
    assert all(f["val_acc"] > 0.8 and f["val_loss"] > 0 for f in folds)
    assert len({f["val_loss"] for f in folds}) == 3
    from models.training.engine import summarise_folds

    summary = summarise_folds(folds)
    for key in ("val_acc", "val_loss"):
        values = [f[key] for f in folds]
        assert summary[key]["mean"] == pytest.approx(statistics.fmean(values))
        assert summary[key]["std"] == pytest.approx(statistics.pstdev(values))  # over the folds themselves
    assert summary["val_loss"]["std"] > 0  # three different folds cannot agree to the last digit
    assert [m.epoch for m in recorder.epochs] == [1, 2]


@pytest.mark.slow
def test_sequential_and_builtin_train_identically(idx_dir):
    a, b = Recorder(), Recorder()
    fit(job(model={"arch": "lenet"}, epochs=1, optimizer={"lr": 0.9}), a, data_dir=idx_dir)
    fit(job(model={"arch": "sequential", "layers": LENET_LAYERS}, epochs=1, optimizer={"lr": 0.9}), b, data_dir=idx_dir)
    assert a.epochs[0].train_loss == b.epochs[0].train_loss and a.epochs[0].test_loss == b.epochs[0].test_loss


def test_resize_option_reaches_the_model(idx_dir):
    result = fit(
        job(
            model={"arch": "lenet", "activation": "relu"},
            epochs=1,
            optimizer={"lr": 0.1},
            data={"dataset": "fashion-mnist", "resize": 32, "limit_train": 200},
        ),
        data_dir=idx_dir,
    )
    assert result.run.model[0].size == 32


def test_resume_restores_schedule_and_early_stopping(idx_dir):
    spec = job(
        epochs=3,
        schedule={"name": "step", "step_size": 1, "gamma": 0.5},
        early_stopping={"metric": "test_loss", "patience": 5},
        optimizer={"lr": 0.5, "momentum": 0.5},
    )
    full = Recorder()
    fit(spec, full, data_dir=idx_dir)

    first = StopAt(16)  # 12 batches and an evaluation's one an epoch: part-way through epoch 2
    stopped = fit(spec, first, data_dir=idx_dir)
    run = stopped.run
    resume = run.state(stopped.stopped_at)
    rest = Recorder()
    result = fit(spec, rest, data_dir=idx_dir, resume=resume)
    assert [m.lr for m in rest.epochs] == [0.25, 0.125]
    assert [m.test_loss for m in rest.epochs] == pytest.approx([m.test_loss for m in full.epochs[1:]], rel=1e-5)
    assert result.run.early_stopping.best == pytest.approx(min(m.test_loss for m in full.epochs), rel=1e-5)


def test_adam_betas_and_early_stopping_mode_are_used(idx_dir):
    a, b = Recorder(), Recorder()
    fit(job(epochs=1, optimizer={"name": "adam", "lr": 0.01}), a, data_dir=idx_dir)
    fit(job(epochs=1, optimizer={"name": "adam", "lr": 0.01, "betas": [0.5, 0.9]}), b, data_dir=idx_dir)
    assert a.epochs[0].train_loss != b.epochs[0].train_loss
    # "max" on a loss that keeps falling means no improvement after the first epoch.
    result = fit(job(epochs=5, early_stopping={"metric": "train_loss", "mode": "max", "patience": 2}), data_dir=idx_dir)
    assert result.reason == "early_stopped" and len(result.run.history) == 3


def test_mixed_precision_flags(idx_dir):
    plain, mixed = Recorder(), Recorder()
    fit(job(epochs=1), plain, data_dir=idx_dir)
    fit(job(epochs=1, amp="bf16"), mixed, data_dir=idx_dir)
    assert mixed.epochs[0].test_acc > 0.8 and mixed.epochs[0].train_loss != plain.epochs[0].train_loss
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="fp16 needs a CUDA device"):
            fit(job(epochs=1, amp="fp16"), data_dir=idx_dir)
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        job(amp="fp8")


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one(idx_dir):
    eager, compiled = Recorder(), Recorder()
    fit(job(epochs=1, model={"arch": "mlp", "hidden": [32]}), eager, data_dir=idx_dir)
    result = fit(job(epochs=1, model={"arch": "mlp", "hidden": [32]}, compile=True), compiled, data_dir=idx_dir)
    assert result.run.compiled  # the training forward went through torch.compile
    assert compiled.epochs[0].train_loss == pytest.approx(eager.epochs[0].train_loss, rel=1e-3)
    assert "_orig_mod" not in next(iter(result.run.model.state_dict()))  # checkpoints keep plain names


def test_decoded_datasets_are_cached_on_disk(idx_dir, tmp_path):
    from models.data import loading as data_module
    from models.spec.job import ImageDatasetSpec

    spec = ImageDatasetSpec(dataset="fashion-mnist")
    data_module._decoded.clear()
    first = data_module.load_dataset(spec, data_dir=idx_dir, cache_dir=tmp_path)
    (cached,) = tmp_path.glob("fashion-mnist-*.safetensors")
    data_module._decoded.clear()
    again = data_module.load_dataset(spec, data_dir=idx_dir, cache_dir=tmp_path)
    assert torch.equal(first.x_train, again.x_train) and again.checksum == first.checksum
    cached.write_bytes(b"damaged")
    data_module._decoded.clear()
    rebuilt = data_module.load_dataset(spec, data_dir=idx_dir, cache_dir=tmp_path)
    assert torch.equal(rebuilt.y_test, first.y_test) and cached.stat().st_size > 1000


RAW_COLUMNS_DIVERGE = 'lower the learning rate, or standardise the columns .*"normalize": "dataset"'


def _houses(tmp_path, price_of, area_scale: float = 1.0) -> tuple[dict, Callable[[str | None], JobSpec]]:
    """A CSV of houses (rooms 1-6, area 20-200 times area_scale, a hundredfold apart) priced by
    price_of(rooms, area), stored as an upload: fit's arguments for it, and a linear regression's
    spec on it."""
    import uuid

    from models.data.loading import save_stored_dataset
    from models.data.uploads import decode_archive
    from tests.support.datagen import zip_bytes

    generator = torch.Generator().manual_seed(0)
    rooms = torch.randint(1, 7, (300,), generator=generator).float()
    area = (20 + 180 * torch.rand(300, generator=generator)) * area_scale
    price = price_of(rooms, area)
    rows = "rooms,area,target\n" + "".join(
        f"{r:g},{a:.3f},{p:.4f}\n" for r, a, p in zip(rooms, area, price, strict=True)
    )
    decoded = decode_archive(zip_bytes({"houses.csv": rows.encode()}), name="houses", test_fraction=0.2)
    dataset_id = str(uuid.uuid4())
    save_stored_dataset(tmp_path / "houses.safetensors", decoded.dataset, {"kind": decoded.kind})

    def spec(normalize: str | None) -> JobSpec:
        data = {"dataset": f"uploaded:{dataset_id}", **({"normalize": normalize} if normalize else {})}
        return JobSpec.model_validate(
            {
                "model": {"arch": "linear_regression"},
                "data": data,
                "optimizer": {"name": "sgd", "lr": 0.1},
                "epochs": 30,
                "batch_size": 16,
                "device": "cpu",
            }
        )

    return {"data_dir": tmp_path, "stored_dataset": lambda _id: tmp_path / "houses.safetensors"}, spec


def _exports_answer_as(predictor, raw: torch.Tensor, predicted: torch.Tensor) -> None:
    import io

    import onnxruntime

    from models.inference.interchange import export

    session = onnxruntime.InferenceSession(export(predictor, "onnx"))
    (exported,) = session.run(None, {"input": raw.numpy()})
    assert torch.allclose(torch.from_numpy(exported), predicted, rtol=1e-5, atol=1e-4)
    program = torch.export.load(io.BytesIO(export(predictor, "pt2"))).module()
    assert torch.allclose(program(raw), predicted, rtol=1e-5, atol=1e-4)


def test_standardised_csv_columns_train_where_raw_ones_diverge_and_predict_takes_raw_rows(tmp_path):
    """Columns a hundredfold apart: plain SGD on the raw columns diverges at a rate that trains
    them once `normalize: dataset` standardises each; the predictor, its checkpoint and its
    exports take the raw columns and answer alike."""
    from models.checkpoint import write_checkpoint
    from models.inference.predictor import Predictor

    stored, spec = _houses(tmp_path, lambda rooms, area: 3 * rooms + 0.05 * area + 1)
    with pytest.raises(TrainingError, match=RAW_COLUMNS_DIVERGE):
        fit(spec(None), **stored)
    result = fit(spec("dataset"), **stored)
    run = result.run
    contract = run.dataset.contract
    assert contract.columns == ["rooms", "area"] and 100 < contract.mean[1] < 120
    write_checkpoint(tmp_path / "m.safetensors", run.model.state_dict(), run.model_meta())
    predictor = Predictor.from_checkpoint(tmp_path / "m.safetensors")
    raw = torch.tensor([[2.0, 50.0], [5.0, 180.0]])
    predicted = predictor.probabilities(predictor.decode_values(raw.tolist()))
    assert torch.allclose(predicted.squeeze(1), 3 * raw[:, 0] + 0.05 * raw[:, 1] + 1, atol=0.05), predicted
    _exports_answer_as(predictor, raw, predicted)


def test_a_target_in_the_hundreds_of_thousands_learns_standardised_and_answers_in_its_own_units(tmp_path):
    """Prices of 150,000 to 600,000: `normalize: dataset` standardises the target with the
    columns, so the same SGD trains it; losses are reported, and predict, the checkpoint and the
    exports answer, in the target's own units (without it, the same job diverges)."""
    from models.checkpoint import write_checkpoint
    from models.inference.predictor import Predictor

    def price_of(rooms, area):
        return 50_000 * rooms + 1_000 * area + 80_000

    stored, spec = _houses(tmp_path, price_of)
    with pytest.raises(TrainingError, match=RAW_COLUMNS_DIVERGE):
        fit(spec(None), **stored)
    result = fit(spec("dataset"), **stored)
    run = result.run
    contract = run.dataset.contract
    assert 250_000 < contract.target_mean < 450_000 and 50_000 < contract.target_std < 150_000
    write_checkpoint(tmp_path / "m.safetensors", run.model.state_dict(), run.model_meta())
    predictor = Predictor.from_checkpoint(tmp_path / "m.safetensors")
    test_x, test_y = run.dataset.x_test, run.dataset.y_test.reshape(-1)
    predicted = predictor.probabilities(test_x).squeeze(1)
    assert torch.allclose(predicted, test_y, rtol=1e-3), (predicted[:4], test_y[:4])
    mse = float((predicted.double() - test_y.double()).square().mean())
    last = run.history[-1]
    assert last.test_loss == pytest.approx(mse, rel=0.02, abs=1.0)  # the same squared error, in price²
    assert last.test_loss < 1e-4 * contract.target_std**2
    raw = torch.tensor([[2.0, 50.0], [5.0, 180.0]])
    expected = price_of(raw[:, 0], raw[:, 1])
    answer = predictor.probabilities(predictor.decode_values(raw.tolist()))
    assert torch.allclose(answer.squeeze(1), expected, rtol=1e-3), answer
    _exports_answer_as(predictor, raw, answer)


def test_a_finite_loss_a_million_times_an_untrained_guess_fails_the_job_as_diverged(tmp_path):
    """lr 5 on the course's linear data: no nan yet, but a test loss of ~1e9 where predicting 0
    costs ~28: the job fails (reason diverged) instead of succeeding with lost weights. A target
    near 0, or raw columns in the ten thousands that make the untrained network's loss large, are
    no divergence."""
    from models.training.engine import Diverged

    spec = JobSpec.model_validate(
        {
            "model": {"arch": "linear_regression"},
            "data": {"dataset": "synthetic-linear", "num_examples": 40, "num_test": 20},
            "optimizer": {"name": "sgd", "lr": 5.0},
            "epochs": 2,
            "batch_size": 10,
            "device": "cpu",
        }
    )
    said = r"loss reached .* in epoch 1, over a million times what the network cost before training"
    with pytest.raises(Diverged, match=said) as raised:
        fit(spec, data_dir=tmp_path)
    assert raised.value.reason == "diverged" and "normalize" not in str(raised.value)  # synthetic data has none
    calm = fit(spec.model_copy(update={"optimizer": spec.optimizer.model_copy(update={"lr": 0.03})}), data_dir=tmp_path)
    assert calm.run.history[-1].train_loss < 28
    tiny = {"dataset": "synthetic-linear", "true_w": [1e-4, 1e-4], "true_b": 0.0, "noise": 0.0}
    calm_spec = spec.model_dump() | {"data": tiny, "optimizer": {"name": "sgd", "lr": 0.03}}
    fit(JobSpec.model_validate(calm_spec), data_dir=tmp_path)
    # Areas of 4,000 to 40,000 square feet against a target under 1: the untrained network's loss
    # is ~1e8, which Adam brings down; a million times the target's square it is, divergence not.
    stored, houses = _houses(tmp_path, lambda rooms, area: rooms / 10, area_scale=200)
    wide = JobSpec.model_validate(houses(None).model_dump() | {"epochs": 2, "optimizer": {"name": "adam", "lr": 0.01}})
    fit(wide, **stored)

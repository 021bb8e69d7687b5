
import pytest
import torch

from models.engine import Callbacks, EpochProgress, Position, ResumePoint, TrainingError, fit, resolve_device
from models.spec import JobSpec
from tests.datagen import make_idx_dataset


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine-data")
    make_idx_dataset(root, "FashionMNIST", n_train=600, n_test=200)
    return root


def job(**overrides) -> JobSpec:
    base = {"model": {"arch": "softmax_regression"}, "data": {"dataset": "fashion-mnist"},
            "optimizer": {"lr": 0.5}, "epochs": 3, "batch_size": 50, "device": "cpu"}
    return JobSpec.model_validate({**base, **overrides})


class Recorder(Callbacks):
    def __init__(self):
        self.epochs = []
        self.started = None

    def on_start(self, run):
        self.started = run

    def on_epoch_end(self, run, metrics):
        self.epochs.append(metrics)


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
    spec = job(model={"arch": "mlp", "hidden": [32], "dropout": 0.2}, epochs=2)
    a, b = Recorder(), Recorder()
    fit(spec, a, data_dir=idx_dir)
    fit(spec, b, data_dir=idx_dir)
    key = lambda r: [(m.train_loss, m.test_loss, m.test_acc) for m in r.epochs]
    assert key(a) == key(b)
    c = Recorder()
    fit(job(model={"arch": "mlp", "hidden": [32], "dropout": 0.2}, epochs=2, seed=1), c, data_dir=idx_dir)
    assert key(c) != key(a)


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
    fit(spec, resumed, data_dir=idx_dir, resume=ResumePoint(position=Position(epoch=2), model_state=first.state))
    assert resumed.started.start_epoch == 2
    assert [m.epoch for m in resumed.epochs] == [2, 3]
    for a, b in zip(resumed.epochs, full.epochs[1:]):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-6)
        assert a.test_acc == b.test_acc


def test_should_stop_ends_training_between_batches(idx_dir):
    class StopSoon(Recorder):
        calls = 0

        def should_stop(self):
            self.calls += 1
            return self.calls > 3

    recorder = StopSoon()
    result = fit(job(epochs=5), recorder, data_dir=idx_dir)
    assert result.stopped_early and recorder.epochs == []
    assert result.stopped_at.epoch == 1 and result.stopped_at.progress.batches == 3
    assert result.stopped_at.progress.seen == 150


def test_stop_mid_epoch_then_resume_matches_an_uninterrupted_run(idx_dir):
    """Weights, optimizer momentum, RNG (dropout) and the epoch's shuffle all carry over."""
    spec = job(model={"arch": "mlp", "hidden": [32], "dropout": 0.3}, optimizer={"lr": 0.1, "momentum": 0.9}, epochs=2)
    full = Recorder()
    fit(spec, full, data_dir=idx_dir)

    class StopAt(Recorder):
        calls = 0

        def should_stop(self):
            self.calls += 1
            return self.calls == 20  # part-way through epoch 2 (12 batches per epoch)

    first = StopAt()
    stopped = fit(spec, first, data_dir=idx_dir)
    position = stopped.stopped_at
    assert position.epoch == 2 and 0 < position.progress.batches < 12
    run = stopped.run
    resume = ResumePoint(position=position, model_state=run.model.state_dict(),
                         optimizer_state=run.optimizer.state_dict(), rng_state=torch.get_rng_state())
    torch.manual_seed(12345)  # whatever the process did in between must not matter
    rest = Recorder()
    fit(spec, rest, data_dir=idx_dir, resume=resume)
    assert [m.epoch for m in rest.epochs] == [2]
    assert rest.epochs[0].train_loss == pytest.approx(full.epochs[1].train_loss, rel=1e-5)
    assert rest.epochs[0].test_loss == pytest.approx(full.epochs[1].test_loss, rel=1e-5)


def test_linear_regression_recovers_weights():
    spec = JobSpec.model_validate({
        "model": {"arch": "linear_regression"},
        "data": {"dataset": "synthetic-linear", "num_examples": 1000, "true_w": [2, -3.4], "true_b": 4.2, "noise": 0.01},
        "optimizer": {"lr": 0.03}, "epochs": 3, "batch_size": 10, "device": "cpu",
    })
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
    plain, decayed = fit(job(epochs=2), data_dir=idx_dir), fit(job(epochs=2, optimizer={"lr": 0.5, "weight_decay": 0.05}), data_dir=idx_dir)
    norm = lambda r: float(r.run.model[1].weight.detach().norm())
    assert norm(decayed) < 0.8 * norm(plain)


def test_divergence_is_a_training_error():
    spec = JobSpec.model_validate({
        "model": {"arch": "linear_regression"}, "data": {"dataset": "synthetic-linear"},
        "optimizer": {"lr": 50}, "epochs": 3, "batch_size": 10, "device": "cpu"})
    with pytest.raises(TrainingError, match="loss became"):
        fit(spec, data_dir=".")


def test_mismatched_model_and_data_is_a_training_error():
    spec = JobSpec.model_validate({"model": {"arch": "lenet"}, "data": {"dataset": "synthetic-linear"}, "device": "cpu"})
    with pytest.raises(TrainingError, match="model.arch"):
        fit(spec, data_dir=".")


def test_device_selection():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="no CUDA device"):
            resolve_device("cuda:0")

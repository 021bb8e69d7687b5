"""What the model tests share: callbacks that record what fit reports or stop it at a chosen batch,
and the course's LeNet written as layers."""

from models.training.engine import Callbacks, fit


class Recorder(Callbacks):
    def __init__(self):
        self.epochs = []
        self.started = None

    def on_start(self, run):
        self.started = run

    def on_epoch_end(self, run, metrics):
        self.epochs.append(metrics)


def trace(spec, data_dir) -> list[tuple[float, float, float]]:
    """Train `spec`; each epoch's (train loss, test loss, test accuracy), for comparing runs exactly."""
    recorder = Recorder()
    fit(spec, recorder, data_dir=data_dir)
    return [(m.train_loss, m.test_loss, m.test_acc) for m in recorder.epochs]


class StopAt(Recorder):
    """A Recorder that says stop at the n-th should_stop() poll (the engine polls once a batch, of
    training and of evaluation)."""

    def __init__(self, poll: int):
        super().__init__()
        self.poll, self.calls = poll, 0

    def should_stop(self):
        self.calls += 1
        return self.calls == self.poll


LENET_LAYERS = [
    {"type": "conv2d", "out_channels": 6, "kernel_size": 5, "padding": 2},
    {"type": "sigmoid"},
    {"type": "avgpool2d", "kernel_size": 2, "stride": 2},
    {"type": "conv2d", "out_channels": 16, "kernel_size": 5},
    {"type": "sigmoid"},
    {"type": "avgpool2d", "kernel_size": 2, "stride": 2},
    {"type": "flatten"},
    {"type": "linear", "out_features": 120},
    {"type": "sigmoid"},
    {"type": "linear", "out_features": 84},
    {"type": "sigmoid"},
    {"type": "linear", "out_features": 10},
]

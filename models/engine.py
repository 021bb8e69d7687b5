"""The training loop: train_one_epoch, evaluate, and fit(spec, callbacks) around them."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from models.archs import build_model
from models.data import Dataset, load_dataset
from models.spec import JobSpec, spec_problems


class TrainingError(Exception):
    """Training cannot go on; the message says why."""

    reason = "training_error"


class NonFiniteLoss(TrainingError):
    reason = "nan_loss"


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    train_acc: float | None
    test_loss: float
    test_acc: float | None
    seconds: float
    samples_per_second: float
    val_loss: float | None = None
    val_acc: float | None = None
    lr: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainingRun:
    """Everything a callback may want to look at while a job trains."""

    spec: JobSpec
    dataset: Dataset
    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    start: Position = field(default_factory=lambda: Position(epoch=1))
    history: list[EpochMetrics] = field(default_factory=list)

    @property
    def start_epoch(self) -> int:
        return self.start.epoch


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
class ResumePoint:
    """Everything needed to continue a run exactly where an earlier attempt stopped."""

    position: Position
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict | None = None
    rng_state: torch.Tensor | None = None


class Callbacks:
    """Hooks fit calls; override what you need. should_stop is polled between batches."""

    def on_start(self, run: TrainingRun) -> None:
        pass

    def on_epoch_end(self, run: TrainingRun, metrics: EpochMetrics) -> None:
        pass

    def should_stop(self) -> bool:
        return False


@dataclass
class FitResult:
    run: TrainingRun
    stopped_at: Position | None = None

    @property
    def stopped_early(self) -> bool:
        return self.stopped_at is not None


def resolve_device(name: str) -> torch.device:
    """Turn the spec's device into a torch device; 'auto' picks CUDA when present."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError(f"device {name!r} was requested but this worker has no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise TrainingError(f"device {name!r} does not exist; this worker has "
                                f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def loss_function(task: str) -> nn.Module:
    return nn.CrossEntropyLoss() if task == "classification" else nn.MSELoss()


def _correct(outputs: torch.Tensor, targets: torch.Tensor) -> int:
    return int((outputs.argmax(dim=1) == targets).sum())


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    should_stop=lambda: False,
    progress: EpochProgress | None = None,
) -> tuple[EpochProgress, bool]:
    """One pass over the shuffled training set, or the rest of one after `progress.batches`.

    Returns the epoch's progress (its sums give the train loss and accuracy) and whether it
    stopped early because should_stop() said so.
    """
    model.train()
    done = progress or EpochProgress()
    x_all, y_all = dataset.x_train, dataset.y_train
    classify = dataset.task == "classification"
    # Shuffle by index instead of copying the dataset: each batch gathers its rows, and image
    # batches become float only here, so the stored dataset stays compact uint8. The order
    # depends only on the generator's seed, so a resumed epoch can skip what was done.
    order = torch.randperm(len(x_all), generator=generator).to(x_all.device)
    # Accumulate on the device and read back once per epoch: a .item() per batch would force
    # a GPU sync on every step.
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    batches, seen, stopped = done.batches, done.seen, False
    for start in range(batches * batch_size, len(order), batch_size):
        if should_stop():
            stopped = True
            break
        idx = order[start:start + batch_size]
        x = dataset.to_float(x_all[idx].to(device, non_blocking=True))
        y = y_all[idx].to(device, non_blocking=True)
        outputs = model(x)
        loss = loss_fn(outputs, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(idx)
        if classify:
            correct += (outputs.detach().argmax(dim=1) == y).sum()
        seen += len(idx)
        batches += 1
    return EpochProgress(batches=batches, loss_sum=done.loss_sum + float(loss_sum),
                         correct=done.correct + int(correct), seen=seen), stopped


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loss_fn: nn.Module,
    dataset: Dataset,
    x_all: torch.Tensor,
    y_all: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
) -> tuple[float, float | None]:
    """Mean loss and accuracy (None for regression) over a held-out split, in eval mode."""
    model.eval()
    classify = dataset.task == "classification"
    loss_sum, correct = 0.0, 0
    eval_batch = max(batch_size, 1024)
    for start in range(0, len(x_all), eval_batch):
        x = dataset.to_float(x_all[start:start + eval_batch].to(device))
        y = y_all[start:start + eval_batch].to(device)
        outputs = model(x)
        loss_sum += float(loss_fn(outputs, y)) * len(x)
        if classify:
            correct += _correct(outputs, y)
    n = len(x_all)
    if n == 0:
        return math.nan, None
    return loss_sum / n, (correct / n if classify else None)


def build_optimizer(spec: JobSpec, model: nn.Module) -> torch.optim.Optimizer:
    opt = spec.optimizer
    return torch.optim.SGD(model.parameters(), lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)


def prepare(
    spec: JobSpec,
    *,
    data_dir: Path,
    allow_download: bool = False,
    dataset: Dataset | None = None,
    resume: ResumePoint | None = None,
    initial_weights: dict[str, torch.Tensor] | None = None,
) -> TrainingRun:
    """Load data, build the model and optimizer on the chosen device.

    `initial_weights` starts a new run from other weights; `resume` continues an earlier run.
    """
    problems = spec_problems(spec)
    if problems:
        raise TrainingError("; ".join(f"{'.'.join(p.loc)}: {p.msg}" for p in problems))
    device = resolve_device(spec.device)
    if dataset is None:
        dataset = load_dataset(spec.data, data_dir=data_dir, allow_download=allow_download, seed=spec.seed)
    if device.type == "cuda":
        dataset = _to_device(dataset, device)
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, dataset.input_shape, dataset.outputs).to(device)
    optimizer = build_optimizer(spec, model)
    start = Position(epoch=1)
    if initial_weights is not None:
        _load_weights(model, initial_weights)
    if resume is not None:
        _load_weights(model, resume.model_state)
        if resume.optimizer_state is not None:
            optimizer.load_state_dict(resume.optimizer_state)
        if resume.rng_state is not None:
            torch.set_rng_state(resume.rng_state)
        start = resume.position
    return TrainingRun(spec=spec, dataset=dataset, model=model, optimizer=optimizer,
                       device=device, start=start)


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise TrainingError(f"the starting weights do not fit this model: {first}") from None


def _to_device(dataset: Dataset, device: torch.device) -> Dataset:
    moved = {name: getattr(dataset, name).to(device) if getattr(dataset, name) is not None else None
             for name in ("x_train", "y_train", "x_test", "y_test", "x_val", "y_val")}
    return Dataset(name=dataset.name, task=dataset.task, classes=dataset.classes,
                   checksum=dataset.checksum, preprocess=dataset.preprocess, **moved)


def fit(spec: JobSpec, callbacks: Callbacks | None = None, **prepare_args) -> FitResult:
    """Train until spec.epochs, evaluating after each epoch and reporting it to the callbacks.

    Stops between batches when callbacks.should_stop() is true; the result then says where,
    so that the run can be resumed from exactly that point.
    """
    callbacks = callbacks or Callbacks()
    run = prepare(spec, **prepare_args)
    callbacks.on_start(run)
    loss_fn = loss_function(run.dataset.task)
    ds = run.dataset
    progress = run.start.progress
    for epoch in range(run.start.epoch, spec.epochs + 1):
        # One generator per epoch, seeded from (seed, epoch): a resumed job shuffles its
        # remaining epochs exactly as an uninterrupted one would.
        generator = torch.Generator().manual_seed(spec.seed * 100_003 + epoch)
        started = time.perf_counter()
        seen_before = progress.seen
        progress, stopped = train_one_epoch(
            run.model, run.optimizer, loss_fn, ds,
            batch_size=spec.batch_size, generator=generator, device=run.device,
            should_stop=callbacks.should_stop, progress=progress,
        )
        train_seconds = time.perf_counter() - started
        if stopped:
            return FitResult(run=run, stopped_at=Position(epoch=epoch, progress=progress))
        train_loss = progress.loss_sum / progress.seen if progress.seen else math.nan
        if not math.isfinite(train_loss):
            raise NonFiniteLoss(f"training loss became {train_loss} in epoch {epoch}; lower the learning rate")
        classify = ds.task == "classification"
        test_loss, test_acc = evaluate(run.model, loss_fn, ds, ds.x_test, ds.y_test,
                                       batch_size=spec.batch_size, device=run.device)
        val_loss = val_acc = None
        if ds.x_val is not None:
            val_loss, val_acc = evaluate(run.model, loss_fn, ds, ds.x_val, ds.y_val,
                                         batch_size=spec.batch_size, device=run.device)
        metrics = EpochMetrics(
            epoch=epoch, train_loss=train_loss,
            train_acc=progress.correct / progress.seen if classify and progress.seen else None,
            test_loss=test_loss, test_acc=test_acc, val_loss=val_loss, val_acc=val_acc,
            seconds=time.perf_counter() - started,
            samples_per_second=(progress.seen - seen_before) / train_seconds if train_seconds > 0 else 0.0,
            lr=run.optimizer.param_groups[0]["lr"],
        )
        run.history.append(metrics)
        progress = EpochProgress()
        callbacks.on_epoch_end(run, metrics)
    return FitResult(run=run)

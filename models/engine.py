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
    start_epoch: int = 1
    history: list[EpochMetrics] = field(default_factory=list)


@dataclass
class ResumePoint:
    """Where a previous attempt stopped: the last completed epoch and its weights."""

    epoch: int
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict | None = None


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
    stopped_early: bool


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
) -> tuple[float, float | None, int]:
    """One pass over the shuffled training set; returns mean loss, accuracy and samples seen."""
    model.train()
    x_all, y_all = dataset.x_train, dataset.y_train
    classify = dataset.task == "classification"
    # Shuffle by index instead of copying the dataset: each batch gathers its rows, and image
    # batches become float only here, so the stored dataset stays compact uint8.
    order = torch.randperm(len(x_all), generator=generator).to(x_all.device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for start in range(0, len(order), batch_size):
        if should_stop():
            break
        idx = order[start:start + batch_size]
        x = dataset.to_float(x_all[idx].to(device, non_blocking=True))
        y = y_all[idx].to(device, non_blocking=True)
        outputs = model(x)
        loss = loss_fn(outputs, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Accumulate on the device and read back once per epoch: a .item() per batch would
        # force a GPU sync on every step.
        loss_sum += loss.detach() * len(idx)
        if classify:
            correct += (outputs.detach().argmax(dim=1) == y).sum()
        seen += len(idx)
    if seen == 0:
        return math.nan, None, 0
    mean_loss = float(loss_sum) / seen
    return mean_loss, (int(correct) / seen if classify else None), seen


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
) -> TrainingRun:
    """Load data, build the model and optimizer on the chosen device, restoring a resume point."""
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
    start_epoch = 1
    if resume is not None:
        model.load_state_dict(resume.model_state)
        if resume.optimizer_state is not None:
            optimizer.load_state_dict(resume.optimizer_state)
        start_epoch = resume.epoch + 1
    return TrainingRun(spec=spec, dataset=dataset, model=model, optimizer=optimizer,
                       device=device, start_epoch=start_epoch)


def _to_device(dataset: Dataset, device: torch.device) -> Dataset:
    moved = {name: getattr(dataset, name).to(device) if getattr(dataset, name) is not None else None
             for name in ("x_train", "y_train", "x_test", "y_test", "x_val", "y_val")}
    return Dataset(name=dataset.name, task=dataset.task, classes=dataset.classes,
                   checksum=dataset.checksum, preprocess=dataset.preprocess, **moved)


def fit(spec: JobSpec, callbacks: Callbacks | None = None, **prepare_args) -> FitResult:
    """Train for spec.epochs epochs, evaluating after each and reporting it to the callbacks."""
    callbacks = callbacks or Callbacks()
    run = prepare(spec, **prepare_args)
    callbacks.on_start(run)
    loss_fn = loss_function(run.dataset.task)
    ds = run.dataset
    for epoch in range(run.start_epoch, spec.epochs + 1):
        # One generator per epoch, seeded from (seed, epoch): a resumed job shuffles its
        # remaining epochs exactly as an uninterrupted one would.
        generator = torch.Generator().manual_seed(spec.seed * 100_003 + epoch)
        started = time.perf_counter()
        train_loss, train_acc, seen = train_one_epoch(
            run.model, run.optimizer, loss_fn, ds,
            batch_size=spec.batch_size, generator=generator, device=run.device,
            should_stop=callbacks.should_stop,
        )
        train_seconds = time.perf_counter() - started
        if callbacks.should_stop():
            return FitResult(run=run, stopped_early=True)
        if not math.isfinite(train_loss):
            raise TrainingError(f"training loss became {train_loss} in epoch {epoch}; lower the learning rate")
        test_loss, test_acc = evaluate(run.model, loss_fn, ds, ds.x_test, ds.y_test,
                                       batch_size=spec.batch_size, device=run.device)
        val_loss = val_acc = None
        if ds.x_val is not None:
            val_loss, val_acc = evaluate(run.model, loss_fn, ds, ds.x_val, ds.y_val,
                                         batch_size=spec.batch_size, device=run.device)
        metrics = EpochMetrics(
            epoch=epoch, train_loss=train_loss, train_acc=train_acc,
            test_loss=test_loss, test_acc=test_acc, val_loss=val_loss, val_acc=val_acc,
            seconds=time.perf_counter() - started,
            samples_per_second=seen / train_seconds if train_seconds > 0 else 0.0,
            lr=run.optimizer.param_groups[0]["lr"],
        )
        run.history.append(metrics)
        callbacks.on_epoch_end(run, metrics)
    return FitResult(run=run, stopped_early=False)

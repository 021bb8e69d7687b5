"""The training loop: train_one_epoch, evaluate, and fit(spec, callbacks) around them."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from models import devices
from models.data.augment import Augmenter
from models.data.contract import InputContract
from models.data.dataset import Dataset
from models.data.loading import load_dataset
from models.data.splits import kfold_indices, with_validation
from models.nets.archs import build_model
from models.nets.cost import admission_problems, eval_batch_size
from models.nets.pretrained import find_pretrained, load_backbone, load_pretrained_weights, transforms_of
from models.nets.state_dict import load_state, state_mismatch
from models.spec.job import EarlyStoppingSpec, JobSpec
from models.spec.problems import spec_problems
from models.training.distributed import Ranks, Replicas, synchronised_batch_norm
from models.training.frozen import features_fit, frozen_features, set_frozen
from models.training.state import EpochProgress, Position, TrainingState


class TrainingError(Exception):
    """Training cannot go on; the message says why."""

    reason = "training_error"


class NonFiniteLoss(TrainingError):
    reason = "nan_loss"


class Diverged(TrainingError):
    """A finite loss so far past an untrained guess's that the weights are lost."""

    reason = "diverged"


class TooLarge(TrainingError):
    """The job would need more memory or parameters than this worker allows."""

    reason = "out_of_memory"


@dataclass(frozen=True)
class Limits:
    """What one job may cost on this worker (see models.nets.cost)."""

    max_parameters: int
    max_bytes: int
    processes_here: int = 1  # a distributed job's processes on this machine, which share max_bytes

    @property
    def process_bytes(self) -> int:
        """This process's share of the memory budget: each of a distributed job's processes runs
        under it (workers/rank.py) and computes every row's frozen features."""
        return self.max_bytes // self.processes_here


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    train_acc: float | None
    test_loss: float
    test_acc: float | None
    seconds: float
    samples_per_second: float | None  # None: its training was all done before a stop (in its evaluation)
    val_loss: float | None = None
    val_acc: float | None = None
    lr: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


class EarlyStopping:
    """Counts epochs without improvement of the monitored metric by more than min_delta."""

    def __init__(self, spec: EarlyStoppingSpec, state: dict | None = None):
        self.spec = spec
        self.best: float | None = (state or {}).get("best")
        self.bad_epochs: int = (state or {}).get("bad_epochs", 0)

    def update(self, metrics: EpochMetrics) -> bool:
        """Record an epoch; True when training should stop."""
        value = getattr(metrics, self.spec.metric)
        if value is None:
            raise TrainingError(f"early_stopping.metric {self.spec.metric} is not measured for this job")
        better = (
            self.best is None
            or (self.spec.direction == "min" and value < self.best - self.spec.min_delta)
            or (self.spec.direction == "max" and value > self.best + self.spec.min_delta)
        )
        if better:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.spec.patience

    def state(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs}


@dataclass
class TrainingRun:
    """Everything a callback may want to look at while a job trains."""

    spec: JobSpec
    dataset: Dataset
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    device: torch.device
    start: Position = field(default_factory=lambda: Position(epoch=1))
    early_stopping: EarlyStopping | None = None
    elapsed_before: float = 0.0  # training seconds of earlier attempts
    started_at: float = field(default_factory=time.monotonic)
    folds: list[dict] = field(default_factory=list)
    history: list[EpochMetrics] = field(default_factory=list)
    scaler: torch.amp.GradScaler | None = None
    compiled: dict[int, nn.Module] = field(default_factory=dict)  # id(model) -> its torch.compile wrapper
    augmenter: Augmenter | None = None
    initial_state: dict[str, torch.Tensor] | None = None  # what each cross-validation fold starts from
    features: dict[tuple[int, int], Dataset] = field(default_factory=dict)  # frozen backbones' outputs (frozen.py)
    limits: Limits | None = None
    ranks: Ranks | None = None  # this process's place in a distributed job; None: the job's only process
    replicas: Replicas | None = None  # with ranks: the DistributedDataParallel wrappers it trains through
    diverged_above: float | None = None  # a loss past this is a diverged run (measured at its first epoch)

    @property
    def start_epoch(self) -> int:
        return self.start.epoch

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started_at

    def model_meta(self) -> dict:
        """What a checkpoint needs beside its weights to be rebuilt and fed inputs (Predictor)."""
        return {
            "spec": self.spec.model_dump(mode="json"),
            "task": self.dataset.task,
            "classes": list(self.dataset.classes) if self.dataset.classes else None,
            "input_shape": list(self.dataset.input_shape),
            "input": self.dataset.contract.to_json(),
        }

    def state(self, position: Position) -> TrainingState:
        """What a later attempt needs to continue from `position` exactly as this one would."""
        return TrainingState(
            position=position,
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            # The generators dropout draws from: the CPU's and, on a GPU, the device's own.
            rng={
                "cpu": torch.get_rng_state(),
                **({"cuda": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {}),
            },
            run={
                "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "early_stopping": self.early_stopping.state() if self.early_stopping else None,
                "elapsed": self.elapsed(),
                "folds": self.folds,
                "input": self.dataset.contract.to_json(),
            },
        )

    def restore(self, state: TrainingState) -> None:
        """Continue from a state an earlier attempt saved (state() of an identically prepared run).
        The state's weights are let go once the model holds them, so that a resumed run does not
        keep a second copy of its model for as long as it trains."""
        _load_weights(self.model, state.model, what="the saved weights", hint=None)
        state.model.clear()
        if state.optimizer is not None:
            self.optimizer.load_state_dict(state.optimizer)
        if "cpu" in state.rng:
            torch.set_rng_state(state.rng["cpu"])
        if "cuda" in state.rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(state.rng["cuda"], self.device)
        run = state.run
        if self.scaler is not None and run.get("scaler"):
            self.scaler.load_state_dict(run["scaler"])
        if self.scheduler is not None and run.get("scheduler"):
            self.scheduler.load_state_dict(run["scheduler"])
        if self.spec.early_stopping and run.get("early_stopping"):
            self.early_stopping = EarlyStopping(self.spec.early_stopping, run["early_stopping"])
        self.elapsed_before = run.get("elapsed", 0.0)
        self.folds = list(run.get("folds", []))
        self.start = state.position
        if "input" in run:  # the weights learnt these statistics; a later version may compute others
            learnt = {k: run["input"].get(k) for k in ("mean", "std", "target_mean", "target_std")}
            contract = InputContract.model_validate({**self.dataset.contract.to_json(), **learnt})
            self.dataset = self.dataset.replace(contract=contract)


class Callbacks:
    """Hooks fit calls; override what you need. should_stop is polled between batches."""

    def on_start(self, run: TrainingRun) -> None:
        pass

    def on_fold_end(self, run: TrainingRun, fold: dict) -> None:
        pass

    def on_epoch_end(self, run: TrainingRun, metrics: EpochMetrics) -> None:
        pass

    def end_after_epoch(self, run: TrainingRun, metrics: EpochMetrics) -> str | None:
        """After on_epoch_end: a reason to train no further epochs (such as "pruned"), or None."""
        return None

    def should_stop(self) -> bool:
        return False


@dataclass
class FitResult:
    run: TrainingRun
    stopped_at: Position | None = None
    # "stopped" (should_stop), "max_runtime_exceeded", "early_stopped", or end_after_epoch's reason
    reason: str | None = None

    @property
    def stopped_early(self) -> bool:
        return self.reason is not None


def resolve_device(name: str) -> torch.device:
    """The spec's device on this worker; TrainingError if it has no such device."""
    try:
        return devices.resolve_device(name)
    except devices.DeviceUnavailable as exc:
        raise TrainingError(str(exc)) from None


def autocast(spec: JobSpec, device: torch.device):
    """The spec's mixed-precision context for this device (a no-op when amp is off)."""
    if spec.amp == "off":
        return contextlib.nullcontext()
    if spec.amp == "fp16" and device.type != "cuda":
        raise TrainingError("amp fp16 needs a CUDA device; use bf16 on the CPU")
    dtype = torch.float16 if spec.amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def loss_function(task: str) -> nn.Module:
    return nn.CrossEntropyLoss() if task == "classification" else nn.MSELoss()


def penalised_parameters(model: nn.Module, decay_bias: bool) -> tuple[list, list]:
    """(weights, the rest): weight decay and L1 apply to weights only unless decay_bias is set."""
    weights, rest = [], []
    for param in model.parameters():
        (weights if param.ndim > 1 or decay_bias else rest).append(param)
    return weights, rest


def optimizer_step(
    objective: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None
) -> None:
    """One optimisation step on the objective: zero the gradients, backpropagate, step; with fp16's
    scaler, the loss scaled so that small gradients do not underflow."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(objective).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        objective.backward()
        optimizer.step()


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    should_stop: Callable[[], bool] = lambda: False,
    progress: EpochProgress | None = None,
    penalty: Callable[[], torch.Tensor] | None = None,
    precision=contextlib.nullcontext,
    scaler: torch.amp.GradScaler | None = None,
    augment: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    ranks: Ranks | None = None,
) -> tuple[EpochProgress, bool]:
    """One pass over the shuffled training set, or the rest of one after `progress.batches`.

    Returns the epoch's progress (its sums give the train loss and accuracy) and whether it
    stopped early because should_stop() said so. `penalty` (e.g. L1) is added to the loss that
    is minimised but not to the reported training loss, as in the course's weight-decay chapter.
    `augment(pixels, batch index)` changes each uint8 training batch before it becomes float.

    With `ranks` (a distributed job, `model` wrapped in DistributedDataParallel), each rank takes
    its contiguous share of every global batch, weights its loss by that share, and the returned
    progress is the whole group's (summed over the ranks); should_stop() must then give every rank
    the same answer (fit's asks them all), so that they stop at the same batch.
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
    first = done.batches * batch_size
    # Empty when the epoch's training was all done (a stop came in its evaluation).
    hits = torch.zeros(max(len(order) - first, 0), device=device, dtype=torch.bool) if classify else None
    batches, seen, stopped = done.batches, done.seen, False
    for start in range(batches * batch_size, len(order), batch_size):
        if should_stop():
            stopped = True
            break
        idx = order[start : start + batch_size]
        n = len(idx)
        lo, hi, share = 0, n, 1.0
        if ranks is not None:
            lo, hi = ranks.bounds(len(idx))
            # A rank whose share of a short last batch is empty still takes part in the gradients'
            # all-reduce: with one example and weight 0, it adds nothing to them.
            share = (hi - lo) * ranks.world_size / n
            idx = idx[lo:hi] if hi > lo else idx[:1]
        x = x_all[idx].to(device, non_blocking=True)
        if augment is not None:  # seeded by the batch's index, so a resumed epoch augments alike
            x = augment(x, batches if ranks is None else batches * ranks.world_size + ranks.rank)
        x = dataset.to_float(x)
        y = dataset.contract.to_target(y_all[idx].to(device, non_blocking=True))
        with precision():
            outputs = model(x)
            loss = loss_fn(outputs, y)
        objective = loss if share == 1.0 else loss * share
        optimizer_step(objective + penalty() if penalty is not None else objective, optimizer, scaler)
        # One kernel each: launches are what a small GPU model waits on.
        loss_sum.add_(loss.detach(), alpha=(hi - lo) * dataset.loss_scale)  # in the target's units
        if classify and hi > lo:  # whether each example was right, summed once at the end
            at = start - first + lo
            torch.eq(outputs.detach().argmax(dim=1), y, out=hits[at : at + hi - lo])
        seen += n
        batches += 1
    loss_total, correct = float(loss_sum), int(hits.sum()) if classify else 0
    if ranks is not None:
        loss_total, correct = ranks.sum(loss_total, correct)
    return EpochProgress(
        batches=batches,
        loss_sum=done.loss_sum + loss_total,
        correct=done.correct + int(correct),
        seen=seen,
    ), stopped


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
    precision=contextlib.nullcontext,
    resize: int | None = None,
    ranks: Ranks | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[float, float | None] | None:
    """Mean loss and accuracy (None for regression) over a held-out split, in eval mode
    (`resize`: the side the network resizes its inputs to, which sizes the batches); None if
    should_stop() said so between batches. With `ranks`, each rank evaluates its contiguous share
    of the split, and the sums are gathered; every rank polls should_stop() as often, as many
    times as the largest share has batches, so that a should_stop() that is a collective agrees."""
    model.eval()
    classify = dataset.task == "classification"
    n = len(x_all)
    lo, hi = ranks.bounds(n) if ranks is not None else (0, n)
    loss_sum = 0.0
    correct = torch.zeros((), dtype=torch.long, device=device)
    eval_batch = eval_batch_size(x_all.shape[1:], batch_size, resize)
    largest = -(-n // ranks.world_size) if ranks is not None else n
    for step in range(-(-largest // eval_batch)):
        if should_stop():
            return None
        start = lo + step * eval_batch
        if start >= hi:
            continue  # a smaller share, already evaluated
        end = min(start + eval_batch, hi)
        x = dataset.to_float(x_all[start:end].to(device))
        y = y_all[start:end].to(device)
        with precision():
            outputs = model(x)
        loss_sum += float(loss_fn(outputs.float(), dataset.contract.to_target(y))) * len(x) * dataset.loss_scale
        if classify:
            correct += (outputs.argmax(dim=1) == y).sum()
    total_correct = int(correct)
    if ranks is not None:
        loss_sum, total_correct = ranks.sum(loss_sum, total_correct)
    if n == 0:
        return math.nan, None
    return loss_sum / n, (int(total_correct) / n if classify else None)


def build_optimizer(spec: JobSpec, model: nn.Module) -> torch.optim.Optimizer:
    """The spec's optimizer, with weight decay on weights (and on biases only with decay_bias);
    a pretrained model's head learns at head_lr_mult times the rate of its backbone."""
    opt = spec.optimizer
    pretrained = find_pretrained(model)
    parts = (
        [(model, opt.lr)]
        if pretrained is None
        else [(pretrained.backbone, opt.lr), (pretrained.head, opt.lr * spec.model.head_lr_mult)]
    )
    groups = []
    for part, lr in parts:
        weights, rest = penalised_parameters(part, opt.decay_bias)
        groups.append({"params": weights, "weight_decay": opt.weight_decay, "lr": lr})
        if rest:
            groups.append({"params": rest, "weight_decay": 0.0, "lr": lr})
    if opt.name == "sgd":
        return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov)
    cls = torch.optim.Adam if opt.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=opt.lr, betas=opt.betas)


def build_scheduler(spec: JobSpec, optimizer: torch.optim.Optimizer):
    """The learning-rate schedule, stepped once per epoch; None for a constant rate."""
    schedule = spec.schedule
    if schedule.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=schedule.step_size, gamma=schedule.gamma)
    if schedule.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=spec.epochs, eta_min=schedule.min_lr)
    return None


def l1_penalty(spec: JobSpec, model: nn.Module) -> Callable[[], torch.Tensor] | None:
    if spec.optimizer.l1 == 0:
        return None
    weights, _ = penalised_parameters(model, spec.optimizer.decay_bias)
    return lambda: spec.optimizer.l1 * sum(p.abs().sum() for p in weights if p.requires_grad)


def _fresh_model(spec: JobSpec, dataset: Dataset, device: torch.device, ranks: Ranks | None = None) -> nn.Module:
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, dataset.input_shape, dataset.outputs, resize=spec.resize)
    if ranks is not None:
        model = synchronised_batch_norm(model, device)
    return model.to(device)


def backbone_contract(spec: JobSpec, dataset: Dataset) -> Dataset:
    """A pretrained model's inputs are normalised as its backbone's were, unless the spec says how
    (grey images with the mean of its three channels' statistics, as they are repeated to three)."""
    if spec.model.arch != "pretrained" or spec.data.normalize is not None:
        return dataset
    _, mean, std = transforms_of(spec.model.backbone, spec.model.weights)
    if dataset.contract.channels == 1:
        mean, std = [sum(mean) / 3], [sum(std) / 3]
    return dataset.replace(contract=dataset.contract.with_normalisation(mean, std))


def prepare(
    spec: JobSpec,
    *,
    data_dir: Path,
    stored_dataset: Callable[[str], Path] | None = None,
    cache_dir: Path | None = None,
    weights_dir: Path | None = None,
    allow_download: bool = False,
    dataset: Dataset | None = None,
    resume: TrainingState | None = None,
    initial_weights: dict[str, torch.Tensor] | None = None,
    limits: Limits | None = None,
    ranks: Ranks | None = None,
) -> TrainingRun:
    """Load data, build the model, optimizer and schedule on the chosen device.

    `initial_weights` starts a new run from other weights; `resume` continues an earlier run; a
    pretrained backbone's weights are read from `weights_dir` or torchvision's folder otherwise.
    With `ranks`, this process is one rank of a distributed job (its group already started).
    """
    device = resolve_device(spec.device)
    if ranks is not None:
        device = ranks.device(device)
    if dataset is None:
        dataset = load_dataset(
            spec.data,
            data_dir=data_dir,
            stored_dataset=stored_dataset,
            cache_dir=cache_dir,
            allow_download=allow_download,
            seed=spec.seed,
        )
    problems = spec_problems(spec, dataset.info)
    if problems:
        raise TrainingError("; ".join(f"{'.'.join(map(str, p.loc))}: {p.msg}" for p in problems))
    if limits is not None:
        too_large = admission_problems(
            spec,
            dataset.input_shape,
            dataset.outputs,
            max_parameters=limits.max_parameters,
            max_bytes=limits.max_bytes,
            where="this worker's TRAINYARD_MAX_JOB_MEMORY",
        )
        if too_large:
            raise TooLarge("; ".join(f"{'.'.join(loc)}: {msg}" for loc, msg in too_large))
    autocast(spec, device)  # refuses fp16 on the CPU before any work is done
    dataset = backbone_contract(spec, dataset)
    if device.type == "cuda":
        dataset = place_on_gpu(dataset, device)
    model = _fresh_model(spec, dataset, device, ranks)
    if initial_weights is not None:
        _load_weights(model, initial_weights)
    elif resume is None:
        load_pretrained_weights(model, spec.model, weights_dir=weights_dir, allow_download=allow_download)
    optimizer = build_optimizer(spec, model)
    scheduler = build_scheduler(spec, optimizer)
    run = TrainingRun(
        spec=spec,
        dataset=dataset,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        device=device,
        early_stopping=EarlyStopping(spec.early_stopping) if spec.early_stopping else None,
        scaler=torch.amp.GradScaler("cuda") if spec.amp == "fp16" else None,
        limits=limits,
        ranks=ranks,
        replicas=Replicas(ranks) if ranks is not None else None,
    )
    augment = getattr(spec.data, "augment", None)
    if augment is not None and dataset.contract.images:
        run.augmenter = Augmenter(augment, spec.seed, dataset.input_shape)
    if spec.compile:
        run.compiled[id(model)] = torch.compile(model)
    if resume is not None:
        run.restore(resume)  # before folds finish, the model it restores is still untrained
    if ranks is not None and ranks.rank > 0:  # each rank's own dropout masks, seeded
        torch.manual_seed((spec.seed * 1_000_003 + run.start.epoch) * 1_009 + ranks.rank)
    if spec.cross_validation and run.start.epoch == 1 and run.start.progress.batches == 0:
        run.initial_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return run


INIT_FROM_HINT = "init_from must name weights of the same network, for inputs of the same shape and as many classes"


def _load_weights(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    what: str = "the starting weights",
    hint: str | None = INIT_FROM_HINT,
) -> None:
    pretrained = find_pretrained(model)
    try:
        if pretrained is not None and not any(key.startswith("backbone.") for key in state):
            load_backbone(pretrained, state, what)  # a torchvision network, imported
        elif pretrained is not None and state["head.weight"].shape != pretrained.head.weight.shape:
            # A fine-tuned model of other classes: its backbone is the start; the head is new.
            load_backbone(
                pretrained,
                {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")},
                what,
            )
        else:
            mismatch = state_mismatch(model, state)
            if mismatch is not None:
                raise TrainingError(f"{what} do not fit this model: {mismatch}" + (f". {hint}" if hint else ""))
            load_state(model, state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise TrainingError(f"{what} do not fit this model: {first}") from None


_SPLITS = ("x_train", "y_train", "x_test", "y_test", "x_val", "y_val")


def place_on_gpu(dataset: Dataset, device: torch.device, headroom: float = 0.5) -> Dataset:
    """Move the whole dataset to the GPU once when it fits in `headroom` of free memory;
    otherwise pin it in host memory so each batch copies asynchronously, unless it is
    memory-mapped (larger than memory, perhaps): then batches are copied from the file's pages."""
    size = sum(t.numel() * t.element_size() for t in (getattr(dataset, n) for n in _SPLITS) if t is not None)
    free, _ = torch.cuda.mem_get_info(device)
    if size >= headroom * free and dataset.mapped:
        return dataset
    move = (lambda t: t.to(device)) if size < headroom * free else (lambda t: t.pin_memory())
    moved = {name: move(getattr(dataset, name)) if getattr(dataset, name) is not None else None for name in _SPLITS}
    return dataset.replace(**moved)


def _epoch(
    run: TrainingRun,
    model: nn.Module,
    optimizer,
    ds: Dataset,
    epoch: int,
    progress: EpochProgress,
    should_stop,
    penalty,
) -> tuple[EpochMetrics | None, EpochProgress]:
    """Train and evaluate one epoch; metrics are None if it was stopped part-way."""
    spec = run.spec
    loss_fn = loss_function(ds.task)
    # One generator per epoch, seeded from (seed, epoch): a resumed job shuffles its remaining
    # epochs exactly as an uninterrupted one would.
    generator = torch.Generator().manual_seed(spec.seed * 100_003 + epoch)
    started = time.perf_counter()
    seen_before = progress.seen

    def precision():
        return autocast(spec, run.device)

    augmenter = run.augmenter
    side = spec.resize  # what the network resizes its inputs to
    pretrained = find_pretrained(model)
    if (
        pretrained is not None
        and set_frozen(pretrained, spec.model, epoch, run.features)
        and augmenter is None
        and not spec.compile
        and features_fit(pretrained, ds, run.limits and run.limits.process_bytes, run.ranks)
    ):
        # The frozen backbone maps each image to the same features every epoch: compute them once
        # and train the head alone on them, so later epochs cost only the head.
        features = frozen_features(
            run.features,
            pretrained,
            ds,
            batch_size=spec.batch_size,
            resize=spec.resize,
            device=run.device,
            precision=precision,
            should_stop=should_stop,  # every rank computes every row's: their polls stay in step
        )
        if features is None:
            return None, progress
        ds, model, side = features, pretrained.head, None
    if run.diverged_above is None:
        run.diverged_above = DIVERGED_FACTOR * reference_loss(model, loss_fn, ds, run.device)
    trained = run.replicas.of(model) if run.replicas is not None else run.compiled.get(id(model), model)
    progress, stopped = train_one_epoch(
        trained,
        optimizer,
        loss_fn,
        ds,
        batch_size=spec.batch_size,
        generator=generator,
        device=run.device,
        should_stop=should_stop,
        progress=progress,
        penalty=penalty,
        precision=precision,
        scaler=run.scaler,
        augment=(lambda x, batch: augmenter(x, epoch, batch)) if augmenter else None,
        ranks=run.ranks,
    )
    train_seconds = time.perf_counter() - started
    if stopped:
        return None, progress
    train_loss = progress.loss_sum / progress.seen if progress.seen else math.nan
    if not math.isfinite(train_loss):
        raise NonFiniteLoss(f"training loss became {train_loss} in epoch {epoch}; {_divergence_hint(spec, ds)}")
    classify = ds.task == "classification"
    # A stop during the evaluation keeps the epoch's training: the position is its last batch, and
    # a resumed run evaluates the same weights.
    held_out = {}
    for split in ("test", "val"):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        if x is None:
            held_out[split] = (None, None)
            continue
        scores = evaluate(
            model,
            loss_fn,
            ds,
            x,
            y,
            batch_size=spec.batch_size,
            device=run.device,
            precision=precision,
            resize=side,
            ranks=run.ranks,
            should_stop=should_stop,
        )
        if scores is None:
            return None, progress
        held_out[split] = scores
    (test_loss, test_acc), (val_loss, val_acc) = held_out["test"], held_out["val"]
    samples_trained = progress.seen - seen_before
    speed = None  # all trained before a stop in the evaluation: this run timed none of it
    if samples_trained:
        speed = samples_trained / train_seconds if train_seconds > 0 else 0.0
    _check_not_diverged(run, ds, epoch, train=train_loss, test=test_loss, validation=val_loss)
    metrics = EpochMetrics(
        epoch=epoch,
        train_loss=train_loss,
        train_acc=progress.correct / progress.seen if classify and progress.seen else None,
        test_loss=test_loss,
        test_acc=test_acc,
        val_loss=val_loss,
        val_acc=val_acc,
        seconds=time.perf_counter() - started,
        samples_per_second=speed,
        lr=optimizer.param_groups[0]["lr"],
    )
    return metrics, EpochProgress()


# A loss this many times what nothing learnt costs is a run that diverged, not one still learning.
DIVERGED_FACTOR = 1e6  # (a million: the message says so)
REFERENCE_EXAMPLES = 64  # training examples the network's own loss before training is measured on


def _divergence_hint(spec: JobSpec, ds: Dataset) -> str:
    """What a diverged job should change: its learning rate, and raw numeric columns standardised."""
    raw_columns = "normalize" in type(spec.data).model_fields and not (ds.contract.images or ds.contract.normalised)
    standardise = ', or standardise the columns (and a regression\'s target) with "data": {"normalize": "dataset"}'
    return "lower the learning rate" + (standardise if raw_columns else "")


@torch.inference_mode()
def reference_loss(model: nn.Module, loss_fn: nn.Module, ds: Dataset, device: torch.device) -> float:
    """What a loss is measured against to call a run diverged, in the units losses are reported
    in: the largest of the network's own loss before this run trains it (on a few training
    examples: a raw column in the thousands starts it high), a constant guess's (uniform
    probabilities, log K; or an output of 0, the targets' mean square as learnt) and a floor of 1
    as learnt (a target that is nearly 0, or constant)."""
    if ds.task == "classification":
        guess = math.log(max(len(ds.classes or ()), 2))
    else:
        learnt = ds.contract.to_target(ds.y_train[:65536].double())
        guess = max(float(learnt.square().mean()) if len(learnt) else 0.0, 1.0) * ds.loss_scale
    x, y = ds.x_train[:REFERENCE_EXAMPLES], ds.y_train[:REFERENCE_EXAMPLES]
    if len(x) == 0:
        return guess
    was_training = model.training
    model.eval()
    try:
        outputs = model(ds.to_float(x.to(device))).float()
        own = float(loss_fn(outputs, ds.contract.to_target(y.to(device)))) * ds.loss_scale
    finally:
        model.train(was_training)
    return max(guess, own) if math.isfinite(own) else guess


def _check_not_diverged(run: TrainingRun, ds: Dataset, epoch: int, **losses: float | None) -> None:
    """Diverged if a loss of the epoch is past run.diverged_above: finite, but the weights are
    lost all the same (a run that ended there would be called a success)."""
    limit = run.diverged_above
    for split, loss in losses.items():
        if limit is not None and loss is not None and loss > limit:
            raise Diverged(
                f"the {split} loss reached {loss:.4g} in epoch {epoch}, over a million times what the network "
                f"cost before training or a constant guess costs ({limit / DIVERGED_FACTOR:.4g}): training "
                f"diverged; {_divergence_hint(run.spec, ds)}"
            )


FOLD_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")  # what a fold's last epoch records


def summarise_folds(folds: list[dict]) -> dict:
    """Mean and standard deviation over folds of each final-epoch metric."""
    summary = {}
    for key in FOLD_METRICS:
        values = [f[key] for f in folds if f.get(key) is not None]
        if values:
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
            summary[key] = {"mean": mean, "std": std}
    return summary


def cross_validate(run: TrainingRun, callbacks: Callbacks, should_stop) -> bool:
    """Train a fresh model per fold (each holding out one fold for validation), as the course's
    k_fold does; record each fold's final-epoch metrics. Returns False if stopped part-way."""
    spec = run.spec
    splits = kfold_indices(len(run.dataset.x_train), spec.cross_validation.folds, spec.seed)
    for index, (train_idx, val_idx) in enumerate(splits):
        if index < len(run.folds):
            continue  # finished by an earlier attempt
        ds = with_validation(
            run.dataset, train_idx.to(run.dataset.x_train.device), val_idx.to(run.dataset.x_train.device)
        )
        run.features.clear()
        if run.replicas is not None:
            run.replicas.clear()
        model = _fresh_model(spec, ds, run.device, run.ranks)
        load_state(model, run.initial_state)  # the same start as the final model: pretrained, init_from
        optimizer = build_optimizer(spec, model)
        scheduler = build_scheduler(spec, optimizer)
        metrics = None
        for epoch in range(1, spec.epochs + 1):
            metrics, _ = _epoch(run, model, optimizer, ds, epoch, EpochProgress(), should_stop, l1_penalty(spec, model))
            if metrics is None:
                return False
            if scheduler is not None:
                scheduler.step()
        fold = {"fold": index + 1, **{key: getattr(metrics, key) for key in FOLD_METRICS}}
        run.folds.append(fold)
        callbacks.on_fold_end(run, fold)
    return True


STOP_POLLS_APART = 8  # batches (of training or evaluation) between a distributed job's ranks' agreements to stop


def fit(spec: JobSpec, callbacks: Callbacks | None = None, **prepare_args) -> FitResult:
    """Train until spec.epochs (after cross-validation, if asked), reporting each epoch.

    Stops between batches when callbacks.should_stop() is true or max_runtime_seconds has
    passed, and after an epoch when early stopping says so; the result says where and why, so
    the run can be resumed from exactly that point.
    """
    callbacks = callbacks or Callbacks()
    run = prepare(spec, **prepare_args)
    callbacks.on_start(run)

    def over_time() -> bool:
        return spec.max_runtime_seconds is not None and run.elapsed() > spec.max_runtime_seconds

    asked = False  # whether callbacks.should_stop() said so (on any rank of a distributed job)
    polls = 0

    def should_stop() -> bool:
        nonlocal asked, polls
        asked = asked or callbacks.should_stop()
        late = over_time()
        if run.ranks is not None:
            # Every rank's answer is the same: stop when any rank would. The ranks poll in step, and
            # agree every STOP_POLLS_APART polls only: a collective a batch costs small models dearly.
            polls += 1
            if polls % STOP_POLLS_APART:
                return False
            asked, late = (bool(flag) for flag in run.ranks.sum(asked, late))
        return asked or late

    def stop_reason() -> str:
        return "stopped" if asked or (run.ranks is None and not over_time()) else "max_runtime_exceeded"

    if spec.cross_validation and run.start.epoch == 1 and run.start.progress.batches == 0:
        if not cross_validate(run, callbacks, should_stop):
            return FitResult(run=run, stopped_at=Position(epoch=1), reason=stop_reason())
    penalty = l1_penalty(spec, run.model)
    progress = run.start.progress
    for epoch in range(run.start.epoch, spec.epochs + 1):
        metrics, progress = _epoch(run, run.model, run.optimizer, run.dataset, epoch, progress, should_stop, penalty)
        if metrics is None:
            return FitResult(run=run, stopped_at=Position(epoch=epoch, progress=progress), reason=stop_reason())
        if run.scheduler is not None:
            run.scheduler.step()
        stop_now = run.early_stopping.update(metrics) if run.early_stopping else False
        run.history.append(metrics)
        callbacks.on_epoch_end(run, metrics)
        ended = callbacks.end_after_epoch(run, metrics)
        if run.ranks is not None:  # rank 0's callbacks decide for every rank
            ended = run.ranks.from_leader(ended)
        if ended is not None and epoch < spec.epochs:
            return FitResult(run=run, reason=ended)
        if stop_now and epoch < spec.epochs:
            return FitResult(run=run, reason="early_stopped")
    return FitResult(run=run)

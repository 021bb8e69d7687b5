"""What a job costs before it runs: its parameters and the memory of one training step,
estimated by building the network on the meta device (shapes only: no memory, no compute); and
how many examples an evaluation's batches may hold."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from models.nets.archs import build_on_meta
from models.nets.pretrained import find_pretrained
from models.units import human_bytes

FLOAT_BYTES = 4
EVAL_BATCH_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Cost:
    """Bytes of one training step at the spec's batch size, by what holds them."""

    parameters: int
    trainable: int
    weights: int
    gradients: int
    optimizer: int
    activations: int  # outputs kept for the backward pass, and the batch itself

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def describe(self) -> str:
        parts = {
            "weights": self.weights,
            "gradients": self.gradients,
            "optimizer state": self.optimizer,
            "activations": self.activations,
        }
        return f"about {human_bytes(self.total)} (" + ", ".join(f"{k} {human_bytes(v)}" for k, v in parts.items()) + ")"


def _optimizer_slots(spec) -> int:
    """Tensors the optimizer keeps per trainable parameter."""
    opt = spec.optimizer
    if opt.name in ("adam", "adamw"):
        return 2
    return 1 if opt.momentum > 0 else 0


def estimate(spec, input_shape: tuple[int, ...], outputs: int) -> Cost:
    """The parameters and training-step memory of the spec's network for inputs of input_shape."""
    shape = tuple(input_shape)
    if spec.resize is not None:
        shape = (shape[0], spec.resize, spec.resize)
    net = build_on_meta(spec.model, shape, outputs)
    pretrained = find_pretrained(net)
    frozen = pretrained is not None and spec.model.freeze == "backbone" and spec.model.unfreeze_at_epoch is None
    parameters = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in pretrained.head.parameters()) if frozen else parameters
    kept = _activation_elements(net, (spec.batch_size, *shape), frozen)
    return Cost(
        parameters=parameters,
        trainable=trainable,
        weights=parameters * FLOAT_BYTES,
        gradients=trainable * FLOAT_BYTES,
        optimizer=trainable * FLOAT_BYTES * _optimizer_slots(spec),
        activations=kept * FLOAT_BYTES,
    )


def _activation_elements(net: nn.Module, batch_shape: tuple[int, ...], frozen: bool) -> int:
    """Elements of the outputs a training step keeps for backward (every layer's), plus the batch;
    a frozen backbone keeps nothing, so only its largest output counts."""
    sizes: list[int] = []

    def record(_module, _inputs, output) -> None:
        if isinstance(output, tuple) and output:  # attention returns (output, weights)
            output = output[0]
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel())

    leaves = [m for m in net.modules() if not list(m.children())]
    handles = [m.register_forward_hook(record) for m in leaves]
    try:
        # Eval mode: the same shapes, and batch norm takes a batch of one (training mode refuses it).
        with torch.device("meta"), torch.no_grad():
            net.eval()(torch.empty(batch_shape))
    finally:
        for handle in handles:
            handle.remove()
    batch = math.prod(batch_shape)
    return batch + (max(sizes, default=0) if frozen else sum(sizes))


def admission_problems(
    spec, input_shape: tuple[int, ...], outputs: int, *, max_parameters: int, max_bytes: int, where: str
) -> list[tuple[tuple, str]]:
    """(location, message) of each limit the spec's job would exceed; `where` names the limit's
    setting. A distributed job's processes each hold the model and their share of the batch, and
    a machine's share of the job's memory is all of its processes'."""
    distributed = getattr(spec, "distributed", None)
    ranks = distributed.nproc_per_node if distributed else 1  # on one machine
    share = spec.batch_size // (distributed.world_size if distributed else 1)
    try:
        cost = estimate(spec.model_copy(update={"batch_size": share}), input_shape, outputs)
    except (ValueError, RuntimeError, AssertionError, NotImplementedError) as exc:
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return [
            (("model",), f"the cost of {spec.model.arch} on inputs {tuple(input_shape)} cannot be estimated: {why}")
        ]
    problems = []
    if cost.parameters > max_parameters:
        problems.append(
            (
                ("model",),
                f"the model has {cost.parameters:,} parameters, more than "
                f"TRAINYARD_MAX_PARAMETERS ({max_parameters:,}) allows; make it smaller",
            )
        )
    if cost.total * ranks > max_bytes:
        field = "batch_size" if cost.activations > cost.total / 2 else "model"
        needs = (
            f"needs {cost.describe()}"
            if ranks == 1
            else f"on {ranks} processes a machine ({share} examples each) needs "
            f"{cost.describe()} in each, {human_bytes(cost.total * ranks)} in all"
        )
        problems.append(
            (
                (field,),
                f"one training step at batch_size {spec.batch_size} {needs}, more than {where} "
                f"({human_bytes(max_bytes)}); lower batch_size or the model's size"
                + ("" if ranks == 1 else ", or use fewer processes"),
            )
        )
    return problems


def eval_batch_size(shape, minimum: int = 1, resize: int | None = None) -> int:
    """Examples per batch when evaluating inputs of `shape` (one example's): larger batches are
    faster, but activations grow with them: at most 1024, no more than about EVAL_BATCH_BYTES of
    float inputs as the network sees them (resized, if it resizes), and at least `minimum`."""
    shape = tuple(shape) if resize is None else (shape[0], resize, resize)
    per_example = max(1, math.prod(shape) * 4)
    return max(minimum, min(1024, EVAL_BATCH_BYTES // per_example))

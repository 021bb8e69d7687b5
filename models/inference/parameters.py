"""A model's learned parameters for people: each tensor's values while it is small, else its
statistics; and, on the course's synthetic data, how far the learned weights are from the ones that
generated it (the linear-regression chapter's "error in estimating w")."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from models.spec.job import JobSpec, SyntheticLinearSpec, SyntheticPolynomialSpec

VALUES_SHOWN = 100  # a tensor of up to this many numbers is given whole by default
MAX_VALUES_SHOWN = 10_000


@dataclass
class ParameterView:
    name: str
    shape: list[int]
    count: int
    values: list | float | None  # nested as the tensor is; None past the limit asked for
    # Of the values themselves (std without Bessel's correction: 0 for one number); None where a value
    # is NaN or infinite, as such a value is itself.
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    norm: float | None  # L2


@dataclass
class EstimationError:
    """The weights that generated a synthetic dataset against the ones learned: error = true - learned."""

    weight: str  # the names of the learned tensors compared
    bias: str
    true_w: list[float | None] | None  # None past the values asked for
    true_b: float | None
    w_error: list[float | None] | None
    b_error: float | None
    w_error_norm: float | None  # L2
    w_error_max: float | None  # the largest by absolute value
    unfitted: int  # higher terms of the data's polynomial the model has no weight for (compared as 0)


def _finite(value):
    """A number, or the numbers nested in a list, with each NaN or infinity as None (JSON has neither)."""
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value if math.isfinite(value) else None


def parameter_views(model: nn.Module, *, max_values: int = VALUES_SHOWN) -> list[ParameterView]:
    """Each learned tensor of `model`, in its own order (buffers such as batch-norm statistics are not
    learned and are left out)."""
    views = []
    for name, parameter in model.named_parameters():
        data = parameter.detach().float().cpu()
        views.append(
            ParameterView(
                name=name,
                shape=list(data.shape),
                count=data.numel(),
                values=_finite(data.tolist()) if data.numel() <= max_values else None,
                mean=_finite(float(data.mean())),
                std=_finite(float(data.std(correction=0))),
                min=_finite(float(data.min())),
                max=_finite(float(data.max())),
                norm=_finite(float(data.norm())),
            )
        )
    return views


def _truth(spec: JobSpec) -> tuple[list[float], float] | None:
    """The weights and bias that generated the job's data, if its model is the one linear layer that
    learns them: a polynomial's feature i is x^i / i!, so its weight is coefficients[i]; the list is
    as long as the data's polynomial or the model's, whichever is longer (0 where one has no term)."""
    data, arch = spec.data, spec.model.arch
    if isinstance(data, SyntheticLinearSpec) and arch == "linear_regression":
        return list(data.true_w), data.true_b
    if isinstance(data, SyntheticPolynomialSpec) and arch == "polynomial":
        higher = list(data.coefficients[1:])
        return higher + [0.0] * (spec.model.degree - len(higher)), data.coefficients[0]
    return None


def estimation_error(spec: JobSpec, model: nn.Module, *, max_values: int = VALUES_SHOWN) -> EstimationError | None:
    """How far `model`, trained by `spec`, is from the weights that generated its data: None unless
    the data is synthetic and the model the one linear layer that can learn them. A polynomial of a
    lower degree than the data's has no weight for the higher terms: it is compared as 0 there. The
    vectors are given while they have at most `max_values` numbers; their size in any case."""
    truth = _truth(spec)
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if truth is None or len(linears) != 1 or linears[0][1].bias is None:
        return None
    true_w, true_b = truth
    name, linear = linears[0]
    learned_w = linear.weight.detach().float().cpu().reshape(-1)
    missing = len(true_w) - learned_w.numel()
    if missing < 0 or (missing and spec.model.arch != "polynomial"):
        return None
    learned_w = torch.cat([learned_w, torch.zeros(missing)])
    prefix = f"{name}." if name else ""
    w_error = torch.tensor(true_w, dtype=torch.float32) - learned_w
    whole = len(true_w) <= max_values
    return EstimationError(
        weight=f"{prefix}weight",
        bias=f"{prefix}bias",
        # Specs refuse NaN and infinities; a checkpoint from before may hold them.
        true_w=_finite(true_w) if whole else None,
        true_b=_finite(true_b),
        w_error=_finite(w_error.tolist()) if whole else None,
        b_error=_finite(true_b - float(linear.bias.detach().float().cpu().reshape(-1)[0])),
        w_error_norm=_finite(float(w_error.norm())),
        w_error_max=_finite(float(w_error.abs().max())),
        unfitted=missing,
    )

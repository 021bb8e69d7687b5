"""Architectures of the course, built from a spec for a given input shape and output width."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from models.spec import LeNetSpec, LinearRegressionSpec, MLPSpec, SoftmaxRegressionSpec

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def linear_regression(spec: LinearRegressionSpec, input_shape: Sequence[int], outputs: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(_numel(input_shape), outputs))


def softmax_regression(spec: SoftmaxRegressionSpec, input_shape: Sequence[int], outputs: int) -> nn.Module:
    # The softmax itself lives in the loss (cross-entropy on logits), which is numerically stable.
    return nn.Sequential(nn.Flatten(), nn.Linear(_numel(input_shape), outputs))


def mlp(spec: MLPSpec, input_shape: Sequence[int], outputs: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = _numel(input_shape)
    dropout = spec.dropout or [0.0] * len(spec.hidden)
    for hidden, p in zip(spec.hidden, dropout):
        layers += [nn.Linear(width, hidden), ACTIVATIONS[spec.activation]()]
        if p > 0:
            layers.append(nn.Dropout(p))
        width = hidden
    layers.append(nn.Linear(width, outputs))
    return nn.Sequential(*layers)


def lenet(spec: LeNetSpec, input_shape: Sequence[int], outputs: int) -> nn.Module:
    """LeNet-5 as in the course: two conv/pool stages, then three dense layers."""
    act = ACTIVATIONS[spec.activation]
    pool = nn.AvgPool2d if spec.pool == "avg" else nn.MaxPool2d
    channels = input_shape[0]
    features = nn.Sequential(
        nn.Conv2d(channels, 6, kernel_size=5, padding=2), act(), pool(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), act(), pool(kernel_size=2, stride=2),
        nn.Flatten(),
    )
    with torch.no_grad():
        flat = features(torch.zeros(1, *input_shape)).shape[1]
    return nn.Sequential(
        *features,
        nn.Linear(flat, 120), act(),
        nn.Linear(120, 84), act(),
        nn.Linear(84, outputs),
    )


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "linear_regression": linear_regression,
    "softmax_regression": softmax_regression,
    "mlp": mlp,
    "lenet": lenet,
}


def initialise(model: nn.Module, init: str, std: float) -> None:
    """Apply the spec's weight initialisation to every linear and conv layer; biases start at zero."""
    if init == "default":
        return
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            if init == "normal":
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif init == "xavier":
                nn.init.xavier_uniform_(module.weight)
            else:
                raise ValueError(f"unknown init {init!r}")
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def build_model(spec, input_shape: Sequence[int], outputs: int) -> nn.Module:
    """Build and initialise the network a model spec describes."""
    model = BUILDERS[spec.arch](spec, tuple(input_shape), outputs)
    initialise(model, spec.init, spec.init_std)
    return model

"""Architectures of the course, built from a spec for a given input shape and output width."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
}


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


class Resize(nn.Module):
    """Bilinear resize of image batches to size x size, the `resize` option of image datasets.

    Part of the network, so a checkpoint carries it and prediction resizes exactly as training did.
    """

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class PolynomialFeatures(nn.Module):
    """x -> [x^1/1!, ..., x^d/d!], the scaled features of the polynomial-fitting chapter."""

    def __init__(self, degree: int):
        super().__init__()
        powers = torch.arange(1, degree + 1, dtype=torch.float32)
        self.register_buffer("powers", powers, persistent=False)
        self.register_buffer("scale", torch.exp(-torch.lgamma(powers + 1)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, 1).pow(self.powers) * self.scale


def linear_regression(spec, input_shape, outputs) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(_numel(input_shape), outputs))


def polynomial(spec, input_shape, outputs) -> nn.Module:
    return nn.Sequential(PolynomialFeatures(spec.degree), nn.Linear(spec.degree, outputs))


def softmax_regression(spec, input_shape, outputs) -> nn.Module:
    # The softmax itself lives in the loss (cross-entropy on logits), which is numerically stable.
    return nn.Sequential(nn.Flatten(), nn.Linear(_numel(input_shape), outputs))


def mlp(spec, input_shape, outputs) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = _numel(input_shape)
    dropout = spec.dropout or [0.0] * len(spec.hidden)
    for hidden, p in zip(spec.hidden, dropout, strict=False):
        layers += [nn.Linear(width, hidden), ACTIVATIONS[spec.activation]()]
        if p > 0:
            layers.append(nn.Dropout(p))
        width = hidden
    layers.append(nn.Linear(width, outputs))
    return nn.Sequential(*layers)


def lenet(spec, input_shape, outputs) -> nn.Module:
    """LeNet-5 as in the course: two conv/pool stages, then three dense layers."""
    act = ACTIVATIONS[spec.activation]
    pool = nn.AvgPool2d if spec.pool == "avg" else nn.MaxPool2d
    features = [
        nn.Conv2d(input_shape[0], 6, kernel_size=5, padding=2),
        act(),
        pool(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5),
        act(),
        pool(kernel_size=2, stride=2),
        nn.Flatten(),
    ]
    flat = _output_shape(nn.Sequential(*features), input_shape)[0]
    return nn.Sequential(
        *features,
        nn.Linear(flat, 120),
        act(),
        nn.Linear(120, 84),
        act(),
        nn.Linear(84, outputs),
    )


def resnet18(spec, input_shape, outputs) -> nn.Module:
    """torchvision's ResNet-18 with its first convolution taking the dataset's channels."""
    from torchvision.models import resnet18 as tv_resnet18

    net = tv_resnet18(weights=None, num_classes=outputs)
    net.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net


def pretrained(spec, input_shape, outputs) -> nn.Module:
    """A torchvision backbone with a new head (models.nets.pretrained); the weights are loaded by training."""
    from models.nets.pretrained import Pretrained

    return Pretrained(spec.backbone, spec.weights, outputs, size=input_shape[-1])


def _layer(layer, shape: tuple[int, ...]) -> nn.Module:
    """One sequential layer for an input of the given shape (without the batch dimension)."""
    kind = layer.type
    if kind == "flatten":
        return nn.Flatten()
    if kind == "linear":
        if len(shape) != 1:
            raise ValueError(f"linear needs a flat input but gets {_fmt(shape)}; put a flatten before it")
        return nn.Linear(shape[0], layer.out_features)
    if kind == "conv2d":
        if len(shape) != 3:
            raise ValueError(f"conv2d needs a (channels, height, width) input but gets {_fmt(shape)}")
        return nn.Conv2d(shape[0], layer.out_channels, layer.kernel_size, layer.stride, layer.padding)
    if kind in ("maxpool2d", "avgpool2d"):
        if len(shape) != 3:
            raise ValueError(f"{kind} needs a (channels, height, width) input but gets {_fmt(shape)}")
        if 2 * layer.padding > layer.kernel_size:
            raise ValueError(f"padding {layer.padding} is more than half of kernel_size {layer.kernel_size}")
        cls = nn.MaxPool2d if kind == "maxpool2d" else nn.AvgPool2d
        return cls(layer.kernel_size, layer.stride, layer.padding)
    if kind == "batchnorm":
        if len(shape) == 1:
            return nn.BatchNorm1d(shape[0])
        if len(shape) == 3:
            return nn.BatchNorm2d(shape[0])
        raise ValueError(f"batchnorm needs a flat or (channels, height, width) input but gets {_fmt(shape)}")
    if kind == "dropout":
        return nn.Dropout(layer.p)
    return ACTIVATIONS[kind]()


def sequential(spec, input_shape, outputs) -> nn.Module:
    """The layers of the spec in order, each sized from the output shape of the one before."""
    layers, shape = [], tuple(input_shape)
    for index, layer in enumerate(spec.layers):
        try:
            module = _layer(layer, shape)
            shape = _output_shape(module, shape)
        except (ValueError, RuntimeError) as exc:
            raise LayerError(index, layer.type, shape, str(exc).strip().splitlines()[0]) from None
        layers.append(module)
    return nn.Sequential(*layers)


class LayerError(ValueError):
    """A sequential layer does not fit the shape it receives."""

    def __init__(self, index: int, kind: str, shape: tuple[int, ...], why: str):
        super().__init__(f"layer {index} ({kind}) gets input {_fmt(shape)}: {why}")
        self.index = index


def _fmt(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _output_shape(module: nn.Module, shape: Sequence[int]) -> tuple[int, ...]:
    """Shape of the module's output for one input of the given shape, computed without real data."""
    with torch.device("meta"):
        probe = _meta_copy(module)
        out = probe.eval()(torch.empty(2, *shape))
    if out.numel() == 0 or any(d <= 0 for d in out.shape):
        raise ValueError(f"the output would be empty {_fmt(out.shape[1:])}")
    return tuple(out.shape[1:])


def _meta_copy(module: nn.Module) -> nn.Module:
    """The same module with its parameters on the meta device (shapes only, no memory, no RNG)."""
    import copy

    clone = copy.deepcopy(module) if not any(p.is_meta for p in module.parameters()) else module
    return clone.to("meta")


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "linear_regression": linear_regression,
    "polynomial": polynomial,
    "softmax_regression": softmax_regression,
    "mlp": mlp,
    "lenet": lenet,
    "resnet18": resnet18,
    "sequential": sequential,
    "pretrained": pretrained,
}
# Architectures that resize their inputs themselves rather than behind a Resize layer.
RESIZE_INSIDE = frozenset({"pretrained"})


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


def build_model(spec, input_shape: Sequence[int], outputs: int, *, resize: int | None = None) -> nn.Module:
    """Build and initialise the network a model spec describes, for inputs of input_shape."""
    shape = tuple(input_shape)
    if resize is not None:
        shape = (shape[0], resize, resize)
    net = BUILDERS[spec.arch](spec, shape, outputs)
    if hasattr(spec, "init"):
        initialise(net, spec.init, spec.init_std)
    if resize is not None and spec.arch not in RESIZE_INSIDE:
        return nn.Sequential(Resize(resize), net)
    return net


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Modules built meanwhile put their parameters and buffers on the meta device as they register
    them, while everything else runs on the CPU: torchvision computes some architectures' widths
    with tensors (RegNet's), which cannot be read on the meta device."""
    register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def parameter(self, name, param):
        register_parameter(self, name, param)
        if param is not None:
            self._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    def buffer(self, name, tensor, persistent=True):
        register_buffer(self, name, tensor, persistent)
        if tensor is not None:
            self._buffers[name] = tensor.to("meta")

    nn.Module.register_parameter, nn.Module.register_buffer = parameter, buffer
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = register_parameter, register_buffer


def build_on_meta(spec, shape: tuple[int, ...], outputs: int) -> nn.Module:
    """The spec's network with every tensor on the meta device: shapes only, no memory, no compute."""
    if spec.arch in RESIZE_INSIDE:  # torchvision's backbones: parameters on meta, arithmetic on the CPU
        with _parameters_on_meta():
            return BUILDERS[spec.arch](spec, shape, outputs)
    with torch.device("meta"):
        return BUILDERS[spec.arch](spec, shape, outputs)


def shape_problems(spec, info) -> list[tuple[tuple, str]]:
    """Build the spec's network without memory or compute and check it maps inputs to outputs."""
    shape = tuple(info.input_shape)
    if spec.resize is not None:
        shape = (shape[0], spec.resize, spec.resize)
    try:
        net = build_on_meta(spec.model, shape, info.outputs)
        out = _output_shape(net, shape)
    except LayerError as exc:
        return [(("layers", exc.index), str(exc))]
    except (ValueError, RuntimeError, AssertionError) as exc:
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return [(("arch",), f"{spec.model.arch} does not fit inputs of shape {_fmt(shape)}: {why}")]
    if out != (info.outputs,):
        last = len(getattr(spec.model, "layers", [])) - 1
        where = ("layers", last) if spec.model.arch == "sequential" else ("arch",)
        return [
            (
                where,
                f"the network outputs {_fmt(out)} per example but {spec.data.dataset} needs "
                f"{_fmt((info.outputs,))}: end with a linear layer of {info.outputs} outputs",
            )
        ]
    return []

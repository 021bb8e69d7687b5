"""Weights into a network: a plain dict of tensors loaded as the network's own state dict."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


def load_state(model: nn.Module, state: dict[str, torch.Tensor], *, strict: bool = True):
    """model.load_state_dict for a plain dict of tensors (a safetensors file, a copy): the module
    versions the model's own state dict records are attached when the dict has none, since some
    modules (torchvision's MNASNet) refuse a state without them."""
    if getattr(state, "_metadata", None) is None:
        state = OrderedDict(state)
        state._metadata = model.state_dict()._metadata
    return model.load_state_dict(state, strict=strict)


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "a scalar"


def state_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """Why `state` does not load into `model`, in one line: the first tensor whose shape differs
    (and how many more do), the first missing and the first unexpected; None when none."""
    own = model.state_dict()
    shapes = [
        f"{key} is {_shape(state[key])} in them and {_shape(own[key])} here"
        for key in own
        if key in state and state[key].shape != own[key].shape
    ]
    missing = [key for key in own if key not in state]
    extra = [key for key in state if key not in own]
    parts = []
    if shapes:
        parts.append(shapes[0] + (f" (and {len(shapes) - 1} more tensor(s) differ)" if len(shapes) > 1 else ""))
    if missing:
        parts.append(f"they lack {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    if extra:
        parts.append(
            f"they hold {extra[0]}"
            + (f" and {len(extra) - 1} more" if len(extra) > 1 else "")
            + " that this model has not"
        )
    return "; ".join(parts) or None

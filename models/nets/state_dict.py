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

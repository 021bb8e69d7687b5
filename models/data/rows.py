"""Rows of a tensor gathered only when a batch asks for them: how a split of a memory-mapped set
holds its rows without copying them."""

from __future__ import annotations

import numpy as np
import torch


class Rows:
    """Some rows of a tensor, gathered only when a batch asks for them: a validation split or a
    fold of a memory-mapped set without copying its training rows into memory. Indexing with a
    slice or an index tensor gives a tensor of those rows."""

    def __init__(self, base: torch.Tensor, index: torch.Tensor):
        if isinstance(base, Rows):  # rows of rows: one index into the same base
            base, index = base.base, base.index[index.to(base.index.device)]
        self.base, self.index = base, index.to(base.device)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key) -> torch.Tensor:
        return self.base[self.index[key]]

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.index), *self.base.shape[1:]))

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    def numel(self) -> int:
        return len(self.index) * int(np.prod(self.base.shape[1:]))

    def element_size(self) -> int:
        return self.base.element_size()

    def to(self, device, non_blocking: bool = False) -> Rows:
        return Rows(self.base.to(device, non_blocking=non_blocking), self.index)

    def pin_memory(self) -> Rows:
        return Rows(self.base.pin_memory(), self.index)

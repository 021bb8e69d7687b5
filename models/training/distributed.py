"""One job on several processes: each process's place in the group, and the collectives the
training loop needs (torch.distributed, started by torchrun).

Every process draws the same seeded order of examples; each global batch of that order is split
into contiguous shards, one per rank, so that the union of the ranks' shards is exactly the batch
one process would take. Each rank's loss is weighted by its share of the batch, so that
DistributedDataParallel's mean of the ranks' gradients is the gradient of the whole batch's mean
loss, short last batch included.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Ranks:
    """This process's rank among `world_size` processes, and its rank on its machine."""

    rank: int
    world_size: int
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> Ranks | None:
        """The place torchrun gave this process (RANK, WORLD_SIZE, LOCAL_RANK); None outside torchrun."""
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return None
        return cls(
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def bounds(self, n: int) -> tuple[int, int]:
        """This rank's contiguous share [lo, hi) of n items (shares differ by at most one)."""
        return n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size

    def device(self, device: torch.device) -> torch.device:
        """On CUDA, each process trains on a GPU of its own: its local rank's."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" else device

    def start(self, device: torch.device, timeout_seconds: float) -> None:
        """Join the group (gloo on the CPU, nccl on CUDA); a collective that waits longer than
        `timeout_seconds` for a rank fails instead of hanging."""
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=timedelta(seconds=timeout_seconds),
            **({"device_id": device} if device.type == "cuda" else {}),
        )

    def stop(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def _tensor(self, values, dtype) -> torch.Tensor:
        device = torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")
        return torch.tensor(values, dtype=dtype, device=device)

    def sum(self, *values: float) -> list[float]:
        """Each value summed over the ranks (float64), the same on every rank."""
        total = self._tensor(list(values), torch.float64)
        dist.all_reduce(total)
        return total.tolist()

    def from_leader(self, value):
        """Rank 0's value of a picklable object, on every rank."""
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list:
        """Every rank's value of a picklable object, in rank order, on every rank."""
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered


class Replicas:
    """The DistributedDataParallel wrapper of each module a job trains (the model, or a frozen
    backbone's head), rebuilt when the set of parameters that learn changes (a backbone unfrozen):
    DistributedDataParallel synchronises the parameters that required gradients when it was made."""

    def __init__(self, ranks: Ranks):
        self.ranks = ranks
        self._wrapped: dict[int, tuple[tuple[int, ...], nn.Module, DistributedDataParallel]] = {}

    def of(self, module: nn.Module) -> nn.Module:
        learning = tuple(id(p) for p in module.parameters() if p.requires_grad)
        if not learning:
            return module
        held = self._wrapped.get(id(module))
        if held is None or held[0] != learning or held[1] is not module:
            device = next(module.parameters()).device
            wrapper = DistributedDataParallel(
                module, device_ids=[device] if device.type == "cuda" else None, gradient_as_bucket_view=True
            )
            self._wrapped[id(module)] = held = (learning, module, wrapper)
        return held[2]

    def clear(self) -> None:
        self._wrapped.clear()


def synchronised_batch_norm(model: nn.Module, device: torch.device) -> nn.Module:
    """Batch norm's statistics over the whole global batch on CUDA (SyncBatchNorm); torch has no
    CPU SyncBatchNorm, so on the CPU each rank normalises by its own shard's statistics."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model) if device.type == "cuda" else model

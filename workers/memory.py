"""A job's memory budget: a soft limit on the training process's data memory while it trains.

RLIMIT_DATA counts the heap and private anonymous mappings (where tensors live), not the shared
libraries or the memory-mapped dataset files, so the budget is what the job itself allocates.
Past it an allocation fails in this process alone (torch raises, the job fails with
out_of_memory); the machine and the worker carry on, and the limit is lifted when the job ends.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import resource
from collections.abc import Iterator
from pathlib import Path

_STATUS_FIELD = re.compile(r"^(VmData|RssAnon):\s+(\d+) kB$", re.MULTILINE)


def _status() -> dict[str, int]:
    """VmData and RssAnon (resident memory of its own, not file pages) of this process, in bytes
    (empty where /proc does not say)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return {}
    return {name: int(kib) * 1024 for name, kib in _STATUS_FIELD.findall(text)}


def data_bytes() -> int:
    """This process's data memory now (VmData), in bytes; 0 where /proc does not say."""
    return _status().get("VmData", 0)


def machine_bytes() -> int | None:
    """The memory this process's machine (or its cgroup, if that is smaller) has, in bytes."""
    limits = []
    try:
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError):
        pass
    try:
        cgroup = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if cgroup.isdigit():
            limits.append(int(cgroup))
    except OSError:
        pass
    return min(limits) if limits else None


class MemoryWatch:
    """How near a training process is to being out of memory: the larger of its data growth over
    its budget and its own resident memory over the machine's, at most, since it was last cleared."""

    def __init__(self, budget: int):
        self.budget = budget
        self.machine = machine_bytes()
        self.start = data_bytes()  # the budget's baseline too (memory_budget's `start`)
        self._peak = 0.0

    def sample(self) -> float:
        status = _status()
        share = max(
            (status.get("VmData", 0) - self.start) / self.budget,
            status.get("RssAnon", 0) / self.machine if self.machine else 0.0,
            0.0,
        )
        self._peak = max(self._peak, share)
        return share

    def peak(self) -> float:
        """The largest share seen since the last clear() (sampling once more now)."""
        self.sample()
        return round(self._peak, 4)

    def clear(self) -> None:
        """Start a new interval (once its peak has been recorded)."""
        self._peak = 0.0


@contextlib.contextmanager
def memory_budget(budget: int, start: int | None = None) -> Iterator[None]:
    """Allow the process `budget` more bytes of data memory than it holds now (or at `start`),
    until the block ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = (data_bytes() if start is None else start) + budget
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception is an allocation that failed (the budget's or the machine's)."""
    return (
        isinstance(exc, MemoryError)
        or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM)
        or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))
    )

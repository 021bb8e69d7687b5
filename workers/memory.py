"""A job's memory budget: a soft limit on the training process's data memory while it trains.

RLIMIT_DATA counts the heap and private anonymous mappings (where tensors live), not the shared
libraries or the memory-mapped dataset files, so the budget is what the job itself allocates.
Past it an allocation fails in this process alone (torch raises, the job fails with
out_of_memory); the machine and the worker carry on, and the limit is lifted when the job ends.
"""

from __future__ import annotations

import contextlib
import re
import resource
from collections.abc import Iterator
from pathlib import Path

_VM_DATA = re.compile(r"^VmData:\s+(\d+) kB$", re.MULTILINE)


def data_bytes() -> int:
    """This process's data memory now (VmData), in bytes; 0 where /proc does not say."""
    try:
        found = _VM_DATA.search(Path("/proc/self/status").read_text())
    except OSError:
        return 0
    return int(found.group(1)) * 1024 if found else 0


@contextlib.contextmanager
def memory_budget(budget: int) -> Iterator[None]:
    """Allow the process `budget` more bytes of data memory than it holds now, until the block ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = data_bytes() + budget
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception is an allocation that failed (the budget's or the machine's)."""
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError)
                                            and "can't allocate memory" in str(exc))

"""Garbage collection and the C allocator tuned for serving.

A request allocates thousands of short-lived objects, and with dozens of requests in flight the
young generation passes CPython's default threshold (700) every few requests. Each collection
then walks every live in-flight object and finds almost nothing to free: requests leave next to
no reference cycles, reference counting frees the rest. Measured under load, that was about a
tenth of the API's CPU. So the API freezes what startup built (torch alone is hundreds of
thousands of objects), collects the young generation rarely, and still collects on a clock, so
that a cycle never lives longer than about a second however little is allocated.

Loading a model and evaluating one on a test set free hundreds of megabytes at once, from the
threads that did the work. glibc keeps what a thread freed in that thread's arena for its next
allocation, which never comes in the API, so the process would keep its peak for good: those
steps hand the free memory back (release_free_memory).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc

YOUNG_THRESHOLD = 50_000

try:
    _malloc_trim = ctypes.CDLL(None).malloc_trim
except (OSError, AttributeError):  # not glibc: its allocator is left as it is
    _malloc_trim = None


def tune() -> None:
    """Freeze the objects built so far and raise the young generation's threshold."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


def release_free_memory() -> None:
    """Hand the C allocator's free pages back to the system (every arena's, not only this thread's)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


async def collect_periodically(interval: float = 1.0) -> None:
    """Collect the young and middle generations every `interval` seconds, until cancelled."""
    while True:
        await asyncio.sleep(interval)
        gc.collect(1)

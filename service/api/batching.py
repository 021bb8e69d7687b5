"""Concurrent requests for one model merged into one forward pass: requests queue while a batch
runs, and the next batch takes everything waiting (up to max_batch_size inputs), after waiting at
most max_batch_delay_ms for more. A single request therefore pays no delay when the model is idle
(with the default delay of 0), and a burst is served in a few large batches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from models.inference.predictor import Predictor
from service.api.telemetry import PREDICT_BATCH
from service.core.errors import Unavailable


@dataclass
class _Request:
    size: int  # inputs this request adds to a batch
    prepare: Callable[[], torch.Tensor]  # runs on the batch's worker thread (e.g. decodes images)
    finish: Callable[[torch.Tensor], Any] | None  # runs there too, on this request's outputs (e.g. labels them)
    future: asyncio.Future


class Batcher:
    """Runs a predictor's forward passes on a worker thread, batching concurrent requests.

    At most `max_queue` requests wait; one more is refused (Unavailable) rather than left to wait
    without end. Closing (the model was evicted from the cache) answers every request already
    queued first; a request that still arrives after that is answered on its own.
    """

    def __init__(self, predictor: Predictor, max_batch_size: int, max_delay_s: float, max_queue: int):
        self.predictor = predictor
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.queue: asyncio.Queue[_Request | None] = asyncio.Queue()  # None: wake up, we are closing
        self.batch_sizes: list[int] = []  # recent batch sizes, for tests and metrics
        self._carry: _Request | None = None  # too big for the last batch: it leads the next
        self._closing = False
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run())

    async def probabilities(self, inputs: torch.Tensor) -> torch.Tensor:
        """Class probabilities for a batch of prepared inputs [N, ...]."""
        return await self.submit(len(inputs), lambda: inputs)

    async def submit(
        self, size: int, prepare: Callable[[], torch.Tensor], finish: Callable[[torch.Tensor], Any] | None = None
    ) -> Any:
        """Outputs for the `size` inputs that prepare() makes, or finish(outputs) if given.

        Both run off the event loop, in the batch's thread, so decoding and labelling cost one
        thread hop per batch rather than one per request, and the event loop runs no tensor
        code. If prepare() or finish() raises, only this request fails."""
        request = _Request(size, prepare, finish, self._loop.create_future())
        if self._task.done():  # closed and drained: nobody collects any more
            (result,) = await asyncio.to_thread(self._forward, [request])
            if isinstance(result, BaseException):
                raise result
            return result
        if self.queue.qsize() >= self.max_queue:
            raise Unavailable(f"{self.max_queue} requests are already waiting for this model; retry shortly")
        self.queue.put_nowait(request)
        return await request.future

    def close(self) -> None:
        """Stop once the requests already queued are answered; callable from any thread."""
        self._loop.call_soon_threadsafe(self._begin_closing)

    def _begin_closing(self) -> None:
        self._closing = True
        self.queue.put_nowait(None)

    async def _collect(self) -> list[_Request]:
        first = self._carry or await self.queue.get()
        self._carry = None
        if first is None:
            return []
        items, size = [first], first.size
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_delay_s
        while size < self.max_batch_size:
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            if item is None:
                break
            if size + item.size > self.max_batch_size:
                self._carry = item
                break
            items.append(item)
            size += item.size
        return items

    def _forward(self, items: list[_Request]) -> list[Any]:
        """Prepare every request's inputs, run one forward pass, split and finish the outputs (worker thread)."""
        prepared: list[torch.Tensor | BaseException] = []
        for item in items:
            try:
                prepared.append(item.prepare())
            except Exception as exc:  # this request's own input is bad
                prepared.append(exc)
        good = [p for p in prepared if isinstance(p, torch.Tensor)]
        if not good:
            return prepared
        if len({p.dtype for p in good}) > 1:  # image pixels (uint8) beside float inputs
            good = [self.predictor.to_input(p) if p.dtype == torch.uint8 else p for p in good]
        batch = torch.cat(good) if len(good) > 1 else good[0]
        outputs = self.predictor.probabilities(batch)
        self.batch_sizes = (self.batch_sizes + [len(batch)])[-1000:]
        PREDICT_BATCH.observe(len(batch))
        results, start = [], 0
        for item, p in zip(items, prepared, strict=False):
            if isinstance(p, BaseException):
                results.append(p)
                continue
            mine = outputs[start : start + len(p)]
            start += len(p)
            try:
                results.append(item.finish(mine) if item.finish else mine)
            except Exception as exc:
                results.append(exc)
        return results

    async def _run(self) -> None:
        while not (self._closing and self._carry is None and self.queue.empty()):
            # Requests whose deadline passed while they waited have been cancelled: skip them.
            items = [item for item in await self._collect() if not item.future.done()]
            if not items:
                continue
            try:
                results = await asyncio.to_thread(self._forward, items)
            except Exception as exc:  # the forward pass itself failed: every request hears of it
                results = [exc] * len(items)
            for item, result in zip(items, results, strict=False):
                if item.future.done():
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)

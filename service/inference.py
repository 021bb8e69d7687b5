"""Serving loaded models: an LRU cache of warmed-up predictors, each with a request batcher.

Concurrent requests for one model are merged into one forward pass: requests queue while a
batch runs, and the next batch takes everything waiting (up to max_batch_size images), after
waiting at most max_batch_delay_ms for more. A single request therefore pays no delay when
the model is idle (with the default delay of 0), and a burst is served in a few large batches.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models.predictor import Predictor
from service.model_store import ModelNotFound

log = logging.getLogger(__name__)


@dataclass
class _Request:
    inputs: torch.Tensor
    future: asyncio.Future


class Batcher:
    """Runs a predictor's forward passes on a worker thread, batching concurrent requests."""

    def __init__(self, predictor: Predictor, max_batch_size: int, max_delay_s: float):
        self.predictor = predictor
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.queue: asyncio.Queue[_Request] = asyncio.Queue()
        self.batch_sizes: list[int] = []  # recent batch sizes, for tests and metrics
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run())

    async def probabilities(self, inputs: torch.Tensor) -> torch.Tensor:
        """Class probabilities for a batch of prepared inputs [N, ...]."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Request(inputs, future))
        return await future

    def close(self) -> None:
        """Stop the batching task; callable from any thread."""
        self._loop.call_soon_threadsafe(self._task.cancel)

    async def _collect(self) -> list[_Request]:
        items = [await self.queue.get()]
        size = len(items[0].inputs)
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
            if size + len(item.inputs) > self.max_batch_size:
                # Too big to join; it leads the next batch instead.
                await self.queue.put(item)
                break
            items.append(item)
            size += len(item.inputs)
        return items

    async def _run(self) -> None:
        while True:
            items = await self._collect()
            batch = torch.cat([item.inputs for item in items]) if len(items) > 1 else items[0].inputs
            try:
                probs = await asyncio.to_thread(self.predictor.probabilities, batch)
            except Exception as exc:  # hand the failure to every waiting request, keep serving
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self.batch_sizes = (self.batch_sizes + [len(batch)])[-1000:]
            start = 0
            for item in items:
                if not item.future.done():
                    item.future.set_result(probs[start:start + len(item.inputs)])
                start += len(item.inputs)


@dataclass
class LoadedModel:
    predictor: Predictor
    batcher: Batcher | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class ModelServer:
    """Predictors by checkpoint file, least recently used evicted first, loaded once each."""

    def __init__(self, *, cache_size: int, max_batch_size: int, max_batch_delay_ms: float):
        self.cache_size = cache_size
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_batch_delay_ms / 1000
        self._items: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def load(self, path: Path) -> LoadedModel:
        """The loaded, warmed-up model of a checkpoint file (thread-safe; loads at most once)."""
        try:
            key = (str(path), path.stat().st_mtime_ns)
        except FileNotFoundError:
            raise ModelNotFound(f"checkpoint file {path.name} is missing") from None
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
        predictor = Predictor.from_checkpoint(path)
        predictor.warm_up()
        with self._lock:
            if key in self._items:  # another thread loaded it meanwhile
                return self._items[key]
            self.misses += 1
            loaded = self._items[key] = LoadedModel(predictor)
            while len(self._items) > self.cache_size:
                _, evicted = self._items.popitem(last=False)
                if evicted.batcher is not None:
                    evicted.batcher.close()
        return loaded

    async def probabilities(self, loaded: LoadedModel, inputs: torch.Tensor) -> torch.Tensor:
        """Probabilities for prepared inputs, batched with other requests for the same model."""
        if loaded.batcher is None:
            with loaded.lock:
                if loaded.batcher is None:
                    loaded.batcher = Batcher(loaded.predictor, self.max_batch_size, self.max_delay_s)
        return await loaded.batcher.probabilities(inputs)

    def __len__(self) -> int:
        return len(self._items)

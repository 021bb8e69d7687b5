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
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.predictor import Prediction, Predictor
from service.metrics import PREDICT_BATCH
from service.model_store import ModelNotFound, ResolvedCheckpoint

log = logging.getLogger(__name__)


@dataclass
class _Request:
    size: int  # inputs this request adds to a batch
    prepare: Callable[[], torch.Tensor]  # runs on the batch's worker thread (e.g. decodes images)
    finish: Callable[[torch.Tensor], Any] | None  # runs there too, on this request's outputs (e.g. labels them)
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
        return await self.submit(len(inputs), lambda: inputs)

    async def submit(self, size: int, prepare: Callable[[], torch.Tensor],
                     finish: Callable[[torch.Tensor], Any] | None = None) -> Any:
        """Outputs for the `size` inputs that prepare() makes, or finish(outputs) if given.

        Both run off the event loop, in the batch's thread, so decoding and labelling cost one
        thread hop per batch rather than one per request, and the event loop runs no tensor
        code. If prepare() or finish() raises, only this request fails."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Request(size, prepare, finish, future))
        return await future

    def close(self) -> None:
        """Stop the batching task; callable from any thread."""
        self._loop.call_soon_threadsafe(self._task.cancel)

    async def _collect(self) -> list[_Request]:
        items = [await self.queue.get()]
        size = items[0].size
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
            if size + item.size > self.max_batch_size:
                # Too big to join; it leads the next batch instead.
                await self.queue.put(item)
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
        for item, p in zip(items, prepared):
            if isinstance(p, BaseException):
                results.append(p)
                continue
            mine = outputs[start:start + len(p)]
            start += len(p)
            try:
                results.append(item.finish(mine) if item.finish else mine)
            except Exception as exc:
                results.append(exc)
        return results

    async def _run(self) -> None:
        while True:
            items = await self._collect()
            try:
                results = await asyncio.to_thread(self._forward, items)
            except Exception as exc:  # the forward pass itself failed: every request hears of it
                results = [exc] * len(items)
            for item, result in zip(items, results):
                if item.future.done():
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)


@dataclass
class LoadedModel:
    predictor: Predictor
    batcher: Batcher | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class ReferenceCache:
    """Resolved model references, so that a hot path skips the database.

    A resolution is fresh for `ttl` seconds. After that the stale one is still served while a
    single caller refreshes it, so a busy model never sends every request to the database at once.
    """

    def __init__(self, ttl: float):
        self.ttl = ttl
        self._items: dict[str, tuple[float, ResolvedCheckpoint]] = {}
        self._refreshing: set[str] = set()

    def lookup(self, reference: str) -> tuple[ResolvedCheckpoint | None, bool]:
        """(the cached resolution or None, whether this caller should refresh it)."""
        hit = self._items.get(reference)
        if hit is None:
            return None, True
        stamp, value = hit
        if time.monotonic() - stamp <= self.ttl or reference in self._refreshing:
            return value, False
        self._refreshing.add(reference)
        return value, True

    def clear(self) -> None:
        """Forget every resolution (the registry changed in this process)."""
        self._items.clear()

    def put(self, reference: str, resolved: ResolvedCheckpoint) -> None:
        if len(self._items) > 10_000:
            self._items.clear()
        self._items[reference] = (time.monotonic(), resolved)
        self._refreshing.discard(reference)

    def forget(self, reference: str) -> None:
        self._items.pop(reference, None)
        self._refreshing.discard(reference)


class ModelServer:
    """Predictors by checkpoint file, least recently used evicted first, loaded once each."""

    def __init__(self, *, cache_size: int, max_batch_size: int, max_batch_delay_ms: float,
                 reference_ttl: float = 0.0):
        self.references = ReferenceCache(reference_ttl)
        self.cache_size = cache_size
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_batch_delay_ms / 1000
        self._items: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _key(self, path: Path) -> tuple[str, int]:
        try:
            return str(path), path.stat().st_mtime_ns
        except FileNotFoundError:
            raise ModelNotFound(f"checkpoint file {path.name} is missing") from None

    def loaded(self, path: Path) -> LoadedModel | None:
        """The model if it is already in the cache (cheap enough for the event loop)."""
        key = self._key(path)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
        return None

    def load(self, path: Path) -> LoadedModel:
        """The loaded, warmed-up model of a checkpoint file (thread-safe; loads at most once)."""
        cached = self.loaded(path)
        if cached is not None:
            return cached
        key = self._key(path)
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

    def _batcher(self, loaded: LoadedModel) -> Batcher:
        if loaded.batcher is None:
            with loaded.lock:
                if loaded.batcher is None:
                    loaded.batcher = Batcher(loaded.predictor, self.max_batch_size, self.max_delay_s)
        return loaded.batcher

    async def probabilities(self, loaded: LoadedModel, inputs: torch.Tensor) -> torch.Tensor:
        """Probabilities for prepared inputs, batched with other requests for the same model."""
        return await self._batcher(loaded).probabilities(inputs)

    async def classify_images(self, loaded: LoadedModel, uploads: list[tuple[str, bytes]],
                              max_pixels: int, top_k: int = 1) -> list[Prediction]:
        """Labelled predictions for encoded images, decoded and run in a batch with other requests.

        Raises the InputError of the first unusable image; other requests are not affected.
        """
        predictor = loaded.predictor

        def prepare() -> torch.Tensor:  # uint8 pixels: the batch becomes float in one step
            return torch.from_numpy(np.stack([predictor.decode_pixels(data, name, max_pixels=max_pixels)
                                              for name, data in uploads]))

        return await self._batcher(loaded).submit(len(uploads), prepare, lambda probs: predictor.label(probs, top_k))

    def __len__(self) -> int:
        return len(self._items)

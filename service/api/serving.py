"""Serving models: reference -> checkpoint (cached), checkpoint -> warmed-up predictor (an LRU), and
a batcher per predictor (service/api/batching.py). The predict routes, the v2 protocol, the
evaluation report and the dashboard all serve through one ModelServer per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from fastapi.concurrency import run_in_threadpool

from models.cache import LRU
from models.devices import DeviceUnavailable, resolve_device
from models.inference.interchange import ExportError
from models.inference.onnx_runtime import PREDICTORS
from models.inference.predictor import InputError, Prediction, Predictor
from service.api.batching import Batcher
from service.api.gc_tuning import release_free_memory
from service.api.telemetry import MODEL_CACHE, MODELS_LOADED
from service.core.db import session_scope
from service.core.errors import Invalid, Unavailable
from service.core.references import ModelNotFound, ResolvedCheckpoint, resolve
from service.core.settings import Settings
from service.core.storage import get_storage
from service.core.storage.cache import file_sha256

log = logging.getLogger(__name__)
IMAGES_HINT = (
    "images go as multipart/form-data, one `files` part per image beside `model` "
    "(curl -F model=... -F files=@boot.png), or one image as the raw body of "
    "POST /v1/models/{model}/predict with Content-Type image/*; with the CLI, `trainyard predict MODEL boot.png`"
)


@dataclass
class LoadedModel:
    predictor: Predictor
    batcher: Batcher | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()


class Resolution(NamedTuple):
    """What a reference names: the checkpoint, and its file's key in the model cache."""

    target: ResolvedCheckpoint
    key: tuple[str, int]


class ReferenceCache:
    """Resolved model references, so that a hot path skips the database (and the file system).

    A resolution is fresh for `ttl` seconds. After that the stale one is still served while a
    single caller refreshes it, so a busy model never sends every request to the database at once.
    """

    def __init__(self, ttl: float, size: int = 10_000):
        self.ttl = ttl
        self._items: LRU[tuple[float, Resolution]] = LRU(size)
        self._refreshing: set[str] = set()

    def lookup(self, reference: str) -> tuple[Resolution | None, bool]:
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

    def put(self, reference: str, resolved: Resolution) -> None:
        self._items.pop(reference)
        self._items.put(reference, (time.monotonic(), resolved))
        self._refreshing.discard(reference)

    def forget(self, reference: str) -> None:
        self._items.pop(reference)
        self._refreshing.discard(reference)


def checkpoint_key(target: ResolvedCheckpoint) -> tuple[str, int | str]:
    """What names a resolved checkpoint's model in the cache: the sha256 SQL records for its file
    (no byte of the file is read), or for a file recorded without one, its path and version on disk."""
    if target.file.sha256 is not None:
        return "sha256", target.file.sha256
    return file_key(get_storage().fetch(target.file, what=target.what))


def file_key(path: Path) -> tuple[str, int]:
    """A checkpoint file and its version on disk: a rewritten file is a different model."""
    try:
        return str(path), path.stat().st_mtime_ns
    except FileNotFoundError:
        raise ModelNotFound(f"checkpoint file {path.name} is missing") from None


def _content_digest(path: Path) -> str:
    """The sha256 of a checkpoint file's bytes."""
    try:
        return file_sha256(path)
    except FileNotFoundError:
        raise ModelNotFound(f"checkpoint file {path.name} is missing") from None


class ModelServer:
    """Resolves references, keeps predictors loaded (least recently used evicted first, each
    loaded once), and runs their forward passes in batches."""

    def __init__(self, settings: Settings):
        self.settings = settings
        # Raises DeviceUnavailable now, at start-up, for a device this process does not have.
        self.device = resolve_device(settings.predict_device)
        backend = settings.predict_backend
        if backend == "auto":
            backend = "onnxruntime" if self.device.type == "cpu" else "torch"
        elif backend == "onnxruntime" and self.device.type != "cpu":
            raise DeviceUnavailable(
                f"TRAINYARD_PREDICT_BACKEND=onnxruntime runs on the CPU, not on "
                f"{self.device}; set TRAINYARD_PREDICT_DEVICE=cpu"
            )
        self.predictor = PREDICTORS[backend]
        self.references = ReferenceCache(settings.reference_cache_seconds)
        self.max_batch_size = settings.max_batch_size
        self.max_delay_s = settings.max_batch_delay_ms / 1000
        # Models by their file's content: a job's checkpoint and its registered copy are one model.
        self._models: LRU[LoadedModel] = LRU(settings.model_cache_size, on_evict=LoadedModel.close)
        self._contents: LRU[str] = LRU(10_000)  # checkpoint key -> its file's sha256
        self._loading = threading.Lock()

    def loaded(self, key: tuple[str, int]) -> LoadedModel | None:
        """The model of a checkpoint key if it is already in the cache (cheap enough for the event loop)."""
        digest = self._contents.get(key)
        found = self._models.get(digest) if digest is not None else None
        if found is not None:
            MODEL_CACHE.labels("hit").inc()
        return found

    def load_target(self, target: ResolvedCheckpoint) -> LoadedModel:
        """The loaded, warmed-up model of a resolved checkpoint, its file fetched from the store
        unless this process has the model already (call in a thread)."""
        key = checkpoint_key(target)
        cached = self.loaded(key)
        if cached is not None:
            return cached
        with get_storage(self.settings).opened(target.file, what=target.what) as path:
            return self.load(path, key=key, digest=target.file.sha256)

    def load(self, path: Path, *, key: tuple | None = None, digest: str | None = None) -> LoadedModel:
        """The loaded, warmed-up model of a checkpoint file (thread-safe; kept once per content).
        `key` and `digest`: what the file is cached as, and its sha256, when SQL says."""
        key = key or file_key(path)
        cached = self.loaded(key)
        if cached is not None:
            return cached
        with self._loading:  # the first requests for a cold model arrive together: load it once
            digest = digest or self._contents.get(key) or _content_digest(path)
            self._contents.put(key, digest)
            cached = self._models.get(digest)
            if cached is not None:  # loaded meanwhile, or the same weights under another file
                MODEL_CACHE.labels("hit").inc()
                return cached
            try:
                predictor = self.predictor.from_checkpoint(path, self.device)
            except ExportError as exc:  # a graph ONNX cannot hold: torch serves it
                log.warning("serving %s with torch: %s", path.name, exc)
                predictor = Predictor.from_checkpoint(path, self.device)
            predictor.warm_up()
            loaded = self._models.put(digest, LoadedModel(predictor))
            release_free_memory()  # building and exporting the model freed several times its size
        MODEL_CACHE.labels("miss").inc()
        MODELS_LOADED.set(len(self._models))
        return loaded

    def resolve(self, reference: str) -> Resolution:
        """Resolve a reference in a read session of its own, and stat its file (call in a thread).

        The file's modification time is part of the cache key, so a rewritten checkpoint is
        loaded afresh; it is read here, once per reference_cache_seconds, not on every request."""
        with session_scope(write=False) as session:
            target = resolve(session, reference=reference, settings=self.settings)
        return Resolution(target, checkpoint_key(target))

    @contextlib.asynccontextmanager
    async def deadline(self):
        """Give up on a predict after predict_timeout_ms with Unavailable (503), never hang."""
        timeout_ms = self.settings.predict_timeout_ms
        try:
            async with asyncio.timeout(timeout_ms / 1000):
                yield
        except TimeoutError:
            raise Unavailable(
                f"no answer within {timeout_ms:g} ms (TRAINYARD_PREDICT_TIMEOUT_MS); the server is busy, retry shortly"
            ) from None

    def preload(self, reference: str) -> LoadedModel:
        """Resolve and load a model now (call in a thread), so its first request finds it warm."""
        return self.load_target(self.resolve(reference).target)

    async def get(self, reference: str) -> tuple[ResolvedCheckpoint, LoadedModel]:
        """The checkpoint a reference names and its loaded model.

        A hot model is served without leaving the event loop or touching the database: its
        reference was resolved within the last reference_cache_seconds and its predictor is in
        the cache. Raises core's ModelNotFound / ModelNotReady, or CheckpointError.
        """
        resolution, refresh = self.references.lookup(reference)
        if resolution is None:
            resolution = await run_in_threadpool(self.resolve, reference)
            self.references.put(reference, resolution)
        elif refresh:
            asyncio.get_running_loop().create_task(self._refresh(reference))
        target, key = resolution
        return target, self.loaded(key) or await run_in_threadpool(self.load_target, target)

    async def _refresh(self, reference: str) -> None:
        """Re-resolve a reference in the background (its stale resolution is served meanwhile)."""
        try:
            self.references.put(reference, await run_in_threadpool(self.resolve, reference))
        except Exception:  # gone or broken: the next request resolves it afresh and reports why
            self.references.forget(reference)

    def _batcher(self, loaded: LoadedModel) -> Batcher:
        if loaded.batcher is None:
            with loaded.lock:
                if loaded.batcher is None:
                    loaded.batcher = Batcher(
                        loaded.predictor, self.max_batch_size, self.max_delay_s, self.settings.predict_queue_size
                    )
        return loaded.batcher

    async def probabilities(self, loaded: LoadedModel, inputs: torch.Tensor) -> torch.Tensor:
        """Probabilities for prepared inputs, batched with other requests for the same model."""
        return await self._batcher(loaded).probabilities(inputs)

    def _pixels(self, loaded: LoadedModel, uploads: list[tuple[str, bytes]]) -> Callable[[], torch.Tensor]:
        """Decodes encoded images to uint8 pixels, on the batch's thread: the batch becomes float in one step."""
        predictor, max_pixels = loaded.predictor, self.settings.max_image_pixels
        return lambda: torch.from_numpy(
            np.stack([predictor.decode_pixels(data, name, max_pixels=max_pixels) for name, data in uploads])
        )

    async def image_probabilities(self, loaded: LoadedModel, uploads: list[tuple[str, bytes]]) -> torch.Tensor:
        """Probabilities for encoded images, decoded and run in a batch with other requests."""
        return await self._batcher(loaded).submit(len(uploads), self._pixels(loaded, uploads))

    async def classify_images(
        self, loaded: LoadedModel, uploads: list[tuple[str, bytes]], top_k: int = 1, threshold: float | None = None
    ) -> list[Prediction]:
        """Labelled predictions for encoded images, decoded and run in a batch with other requests
        (labels withheld below `threshold`).

        Raises the InputError of the first unusable image; other requests are not affected.
        """
        predictor = loaded.predictor
        return await self._batcher(loaded).submit(
            len(uploads), self._pixels(loaded, uploads), lambda probs: predictor.label(probs, top_k, threshold)
        )

    async def classify_uploads(
        self, reference: str, uploads: list[tuple[str, bytes]], top_k: int, threshold: float | None = None
    ) -> tuple[ResolvedCheckpoint, LoadedModel, list[Prediction]]:
        """Resolve, load, decode and classify uploaded images; Invalid if the model cannot take them.
        `threshold` is the request's; without one the version's default applies."""
        async with self.deadline():
            return await self._classify_uploads(reference, uploads, top_k, threshold)

    async def _classify_uploads(
        self, reference: str, uploads: list[tuple[str, bytes]], top_k: int, threshold: float | None
    ) -> tuple[ResolvedCheckpoint, LoadedModel, list[Prediction]]:
        target, loaded = await self.get(reference)
        predictor = loaded.predictor
        if predictor.task != "classification" or not predictor.contract.images:
            raise Invalid(
                [
                    (
                        ("model",),
                        f"model {reference!r} does not classify images; send its numeric rows as JSON inputs instead "
                        "(`trainyard predict MODEL --row 1,2,3`, or the dashboard predict page's rows)",
                    )
                ]
            )
        if top_k > len(predictor.classes):
            raise Invalid(
                [(("top_k",), f"top_k is {top_k} but model {reference!r} has {len(predictor.classes)} classes")]
            )
        return target, loaded, await self.classify_images(loaded, uploads, top_k, target.threshold_for(threshold))

    async def predict_values(
        self,
        reference: str,
        rows: list[list[float]],
        threshold: float | None = None,
        top_k: int = 1,
        row_names: list[str] | None = None,
        images_hint: str = IMAGES_HINT,
    ) -> tuple[ResolvedCheckpoint, LoadedModel, torch.Tensor]:
        """Outputs for numeric rows; Invalid if the model does not take them (or a regression, a
        threshold or a top_k above 1). Its errors call the rows `row_names` (else inputs[i]), and
        tell how to send an image model its images with `images_hint`."""
        async with self.deadline():
            target, loaded = await self.get(reference)
            if loaded.predictor.task != "classification":
                for field, given in (("threshold", threshold is not None), ("top_k", top_k != 1)):
                    if given:
                        raise Invalid(
                            [((field,), f"model {reference!r} does not classify; {field} applies to classification")]
                        )
            try:
                inputs = loaded.predictor.decode_values(rows, row_names)
            except InputError as exc:
                hint = f"; {images_hint}" if loaded.predictor.contract.images else ""
                raise Invalid([(("inputs",), f"model {reference!r}: {exc}{hint}")]) from exc
            return target, loaded, await self.probabilities(loaded, inputs)

    def __len__(self) -> int:
        return len(self._models)

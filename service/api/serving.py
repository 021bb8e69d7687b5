"""Serving models: reference -> checkpoint (cached), checkpoint -> warmed-up predictor (an LRU), and
a batcher per predictor. The predict routes, the v2 protocol, plots and the dashboard all serve
through one ModelServer per process.

Concurrent requests for one model are merged into one forward pass: requests queue while a
batch runs, and the next batch takes everything waiting (up to max_batch_size images), after
waiting at most max_batch_delay_ms for more. A single request therefore pays no delay when
the model is idle (with the default delay of 0), and a burst is served in a few large batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from fastapi.concurrency import run_in_threadpool

from models.cache import LRU
from models.data.dataset import Dataset, DatasetError
from models.data.loading import load_dataset
from models.devices import DeviceUnavailable, resolve_device
from models.inference.evaluation import Evaluation
from models.inference.interchange import ExportError
from models.inference.onnx_runtime import PREDICTORS
from models.inference.predictor import InputError, Prediction, Predictor
from models.spec.job import JobSpec
from service.api.gc_tuning import release_free_memory
from service.api.telemetry import MODEL_CACHE, MODELS_LOADED, PREDICT_BATCH
from service.core import jobs
from service.core.db import session_scope
from service.core.errors import Invalid, NotFound, Unavailable, Unprocessable
from service.core.references import ModelNotFound, ResolvedCheckpoint, resolve
from service.core.settings import Settings
from service.core.tables import Job

log = logging.getLogger(__name__)
MAX_MISTAKES = 100  # mistakes an evaluation report keeps (its route's `limit` is at most this)
IMAGES_HINT = ("images go as multipart/form-data, one `files` part per image beside `model` "
               "(curl -F model=... -F files=@boot.png), or one image as the raw body of "
               "POST /v1/models/{model}/predict with Content-Type image/*")


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

    async def submit(self, size: int, prepare: Callable[[], torch.Tensor],
                     finish: Callable[[torch.Tensor], Any] | None = None) -> Any:
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
        while not (self._closing and self._carry is None and self.queue.empty()):
            # Requests whose deadline passed while they waited have been cancelled: skip them.
            items = [item for item in await self._collect() if not item.future.done()]
            if not items:
                continue
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


def _checkpoint_key(path: Path) -> tuple[str, int]:
    """A checkpoint file and its version on disk: a rewritten file is a different model."""
    try:
        return str(path), path.stat().st_mtime_ns
    except FileNotFoundError:
        raise ModelNotFound(f"checkpoint file {path.name} is missing") from None


def _content_digest(path: Path) -> str:
    """The sha256 of a checkpoint file's bytes."""
    try:
        with path.open("rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
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
            raise DeviceUnavailable(f"TRAINYARD_PREDICT_BACKEND=onnxruntime runs on the CPU, not on "
                                    f"{self.device}; set TRAINYARD_PREDICT_DEVICE=cpu")
        self.predictor = PREDICTORS[backend]
        self.references = ReferenceCache(settings.reference_cache_seconds)
        self.max_batch_size = settings.max_batch_size
        self.max_delay_s = settings.max_batch_delay_ms / 1000
        # Models by their file's content: a job's checkpoint and its registered copy are one model.
        self._models: LRU[LoadedModel] = LRU(settings.model_cache_size, on_evict=LoadedModel.close)
        self._contents: LRU[str] = LRU(10_000)  # checkpoint key -> its file's sha256
        self._evaluations: LRU[Evaluation] = LRU(32)  # per checkpoint file
        # A report is a pass over a test set: one at a time, so that requests for the same one wait
        # for it instead of each computing it again.
        self._evaluating = threading.Lock()
        self._loading = threading.Lock()

    def loaded(self, key: tuple[str, int]) -> LoadedModel | None:
        """The model of a checkpoint key if it is already in the cache (cheap enough for the event loop)."""
        digest = self._contents.get(key)
        found = self._models.get(digest) if digest is not None else None
        if found is not None:
            MODEL_CACHE.labels("hit").inc()
        return found

    def load(self, path: Path) -> LoadedModel:
        """The loaded, warmed-up model of a checkpoint file (thread-safe; kept once per content)."""
        key = _checkpoint_key(path)
        cached = self.loaded(key)
        if cached is not None:
            return cached
        with self._loading:  # the first requests for a cold model arrive together: load it once
            digest = self._contents.get(key) or self._contents.put(key, _content_digest(path))
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
        return Resolution(target, _checkpoint_key(target.path))

    @contextlib.asynccontextmanager
    async def deadline(self):
        """Give up on a predict after predict_timeout_ms with Unavailable (503), never hang."""
        timeout_ms = self.settings.predict_timeout_ms
        try:
            async with asyncio.timeout(timeout_ms / 1000):
                yield
        except TimeoutError:
            raise Unavailable(f"no answer within {timeout_ms:g} ms (TRAINYARD_PREDICT_TIMEOUT_MS); "
                              "the server is busy, retry shortly") from None

    def preload(self, reference: str) -> LoadedModel:
        """Resolve and load a model now (call in a thread), so its first request finds it warm."""
        return self.load(self.resolve(reference).target.path)

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
        return target, self.loaded(key) or await run_in_threadpool(self.load, target.path)

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
                    loaded.batcher = Batcher(loaded.predictor, self.max_batch_size, self.max_delay_s,
                                             self.settings.predict_queue_size)
        return loaded.batcher

    async def probabilities(self, loaded: LoadedModel, inputs: torch.Tensor) -> torch.Tensor:
        """Probabilities for prepared inputs, batched with other requests for the same model."""
        return await self._batcher(loaded).probabilities(inputs)

    def _pixels(self, loaded: LoadedModel, uploads: list[tuple[str, bytes]]) -> Callable[[], torch.Tensor]:
        """Decodes encoded images to uint8 pixels, on the batch's thread: the batch becomes float in one step."""
        predictor, max_pixels = loaded.predictor, self.settings.max_image_pixels
        return lambda: torch.from_numpy(np.stack([predictor.decode_pixels(data, name, max_pixels=max_pixels)
                                                  for name, data in uploads]))

    async def image_probabilities(self, loaded: LoadedModel, uploads: list[tuple[str, bytes]]) -> torch.Tensor:
        """Probabilities for encoded images, decoded and run in a batch with other requests."""
        return await self._batcher(loaded).submit(len(uploads), self._pixels(loaded, uploads))

    async def classify_images(self, loaded: LoadedModel, uploads: list[tuple[str, bytes]],
                              top_k: int = 1, threshold: float | None = None) -> list[Prediction]:
        """Labelled predictions for encoded images, decoded and run in a batch with other requests
        (labels withheld below `threshold`).

        Raises the InputError of the first unusable image; other requests are not affected.
        """
        predictor = loaded.predictor
        return await self._batcher(loaded).submit(len(uploads), self._pixels(loaded, uploads),
                                                  lambda probs: predictor.label(probs, top_k, threshold))

    async def classify_uploads(self, reference: str, uploads: list[tuple[str, bytes]], top_k: int,
                               threshold: float | None = None) -> tuple[ResolvedCheckpoint, LoadedModel, list[Prediction]]:
        """Resolve, load, decode and classify uploaded images; Invalid if the model cannot take them.
        `threshold` is the request's; without one the version's default applies."""
        async with self.deadline():
            return await self._classify_uploads(reference, uploads, top_k, threshold)

    async def _classify_uploads(self, reference: str, uploads: list[tuple[str, bytes]], top_k: int,
                                threshold: float | None) -> tuple[ResolvedCheckpoint, LoadedModel, list[Prediction]]:
        target, loaded = await self.get(reference)
        predictor = loaded.predictor
        if predictor.task != "classification" or not predictor.contract.images:
            raise Invalid([(("model",),
                            f"model {reference!r} does not classify images; send JSON inputs instead")])
        if top_k > len(predictor.classes):
            raise Invalid([(("top_k",),
                            f"top_k is {top_k} but model {reference!r} has {len(predictor.classes)} classes")])
        return target, loaded, await self.classify_images(loaded, uploads, top_k, target.threshold_for(threshold))

    async def predict_values(self, reference: str, rows: list[list[float]], threshold: float | None = None
                             ) -> tuple[ResolvedCheckpoint, LoadedModel, torch.Tensor]:
        """Outputs for numeric rows; Invalid if the model does not take them (or a threshold, a regression)."""
        async with self.deadline():
            target, loaded = await self.get(reference)
            if threshold is not None and loaded.predictor.task != "classification":
                raise Invalid([(("threshold",), f"model {reference!r} does not classify; "
                                                "threshold applies to classification")])
            try:
                inputs = loaded.predictor.decode_values(rows)
            except InputError as exc:
                hint = f"; {IMAGES_HINT}" if loaded.predictor.contract.images else ""
                raise Invalid([(("inputs",), f"model {reference!r}: {exc}{hint}")]) from exc
            return target, loaded, await self.probabilities(loaded, inputs)

    def _test_set(self, job: Job) -> Dataset:
        """A job's dataset as far as its test set goes (call in a thread). The validation split and
        normalisation change only the training rows and the input contract, so they are left out:
        reading a test image never costs a pass over the training images. The set is read afresh
        each time (memory-mapped, so that is cheap) rather than kept: the API needs it once per
        checkpoint, and kept, its pages would stay in the process."""
        spec = JobSpec.model_validate(job.spec)
        data = spec.data.model_copy(update={"val_fraction": 0.0, **(
            {"normalize": "none"} if "normalize" in type(spec.data).model_fields else {})})
        settings = self.settings
        try:
            return load_dataset(data, data_dir=settings.data_dir, datasets_dir=settings.datasets_dir,
                                cache_dir=settings.cache_dir, seed=spec.seed, remember=False)
        except DatasetError as exc:
            raise NotFound(f"the test set of job {job.id} cannot be read here: {exc}") from None

    def _job(self, job_id: str) -> Job:
        """A job's record, read in a session of its own (call in a thread); NotFound if there is none."""
        with session_scope(write=False) as session:
            return jobs.require_job(session, job_id=job_id)

    async def evaluation(self, job_id: str) -> tuple[ResolvedCheckpoint, LoadedModel, Evaluation]:
        """The evaluation report (and confusion matrix) of the checkpoint `job:<id>` names, on the
        job's test set, remembered per checkpoint file; Unprocessable unless the job classifies."""
        job = await run_in_threadpool(self._job, job_id)
        if job.task != "classification":
            raise Unprocessable(f"job {job.id} is a {job.task} job; the evaluation report and the confusion "
                                "matrix need a classification job")
        target, loaded = await self.get(f"job:{job.id}")

        def compute() -> Evaluation:
            test = self._test_set(job)
            report = loaded.predictor.evaluate(test.x_test, test.y_test, mistakes=MAX_MISTAKES)
            del test  # its pages go with it, before the free memory is handed back
            release_free_memory()
            return report

        key = _checkpoint_key(target.path)
        def once() -> Evaluation:
            with self._evaluating:
                return self._evaluations.get_or_load(key, compute)

        return target, loaded, await run_in_threadpool(once)

    async def test_image(self, job_id: str, index: int) -> np.ndarray:
        """One test image of a job as stored, uint8 pixels [C, H, W]; NotFound outside its test set."""
        def read() -> np.ndarray:
            job = self._job(job_id)
            if job.task != "classification" or str((job.spec.get("data") or {}).get("dataset")).startswith("synthetic"):
                raise Unprocessable(f"job {job.id} does not train on images")  # known without building its data
            images = self._test_set(job).x_test
            if images.dtype != torch.uint8:
                raise Unprocessable(f"job {job.id} does not train on images")
            if not 0 <= index < len(images):
                raise NotFound(f"job {job.id}'s test set has {len(images)} images, numbered from 0; "
                               f"there is no image {index}")
            return images[index].numpy().copy()

        return await run_in_threadpool(read)

    def __len__(self) -> int:
        return len(self._models)

"""ModelServer in-process: LRU eviction, warm-up, and batching of concurrent requests."""

from __future__ import annotations

import asyncio
import hashlib
import time

import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY
from sqlalchemy import select

from service.api.evaluations import Evaluations
from service.api.serving import ModelServer
from service.core import db
from service.core.errors import Unavailable
from service.core.references import ModelNotFound
from service.core.settings import Settings
from service.core.tables import Checkpoint, EvaluationReport


def server_with(tmp_path, *, cache: int, batch: int, delay_ms: float, **settings) -> ModelServer:
    settings = Settings(
        home=tmp_path / "home",
        model_cache_size=cache,
        max_batch_size=batch,
        max_batch_delay_ms=delay_ms,
        max_image_pixels=10**6,
        **settings,
    )
    return ModelServer(settings)


def cache_lookups() -> np.ndarray:
    """The model cache's (hits, misses) as /metrics counts them."""
    return np.array(
        [REGISTRY.get_sample_value("trainyard_model_cache_total", {"result": r}) or 0 for r in ("hit", "miss")]
    )


def test_lru_eviction_and_reload(tmp_path, checkpoint):
    server = server_with(tmp_path, cache=1, batch=8, delay_ms=0)
    a, b = checkpoint(tmp_path / "a.safetensors", 0), checkpoint(tmp_path / "b.safetensors", 1)
    before = cache_lookups()
    first = server.load(a)
    assert server.load(a) is first and tuple(cache_lookups() - before) == (1, 1)  # (hits, misses)
    server.load(b)
    assert len(server) == 1
    assert server.load(a) is not first and tuple(cache_lookups() - before) == (1, 3)
    with pytest.raises(ModelNotFound):
        server.load(tmp_path / "missing.safetensors")


def test_a_checkpoint_and_its_copy_are_one_loaded_model(tmp_path, checkpoint):
    """A registered version is a copy of its job's checkpoint: serving both holds the weights once."""
    import shutil

    server = server_with(tmp_path, cache=4, batch=8, delay_ms=0)
    original = checkpoint(tmp_path / "epoch-0001.safetensors", 0)
    registered = shutil.copy(original, tmp_path / "v1.safetensors")
    assert server.load(registered) is server.load(original) and len(server) == 1
    other = server.load(checkpoint(tmp_path / "other.safetensors", 1))
    assert other is not server.load(original) and len(server) == 2


def test_an_evaluation_keeps_its_report_not_its_test_set(service_env, trained_job):
    """The test set is read for the report and let go: no decoded dataset stays in the process."""
    from models.data import loading

    loading._decoded.clear()
    report = asyncio.run(Evaluations(ModelServer(service_env)).report(trained_job)).report
    assert report.num_test > 0 and len(loading._decoded) == 0


def test_a_report_is_computed_by_one_api_process_and_answered_by_every_one(service_env, trained_job, monkeypatch):
    """Another process (here a second ModelServer and Evaluations) answers the report SQL keeps,
    reading no test set; a retrained checkpoint (another sha256) is computed afresh."""
    from service.core import datasets

    with db.session_scope() as session:  # as a worker records them (the fixture's are as older versions did)
        for row in session.scalars(select(Checkpoint).where(Checkpoint.job_id == trained_job)):
            row.sha256 = hashlib.sha256((service_env.checkpoint_dir / row.path).read_bytes()).hexdigest()
    first = asyncio.run(Evaluations(ModelServer(service_env)).report(trained_job))
    assert first.images

    def no_test_set(*args, **kwargs):
        raise AssertionError("the test set was read again")

    monkeypatch.setattr(datasets, "test_set", no_test_set)
    other = asyncio.run(Evaluations(ModelServer(service_env)).report(trained_job))
    assert other.report == first.report and other.target.file == first.target.file
    with db.session_scope() as session:
        (row,) = session.scalars(select(EvaluationReport)).all()
        assert (row.job_id, row.checkpoint_sha256) == (trained_job, first.target.file.sha256)
        row.checkpoint_sha256 = "0" * 64  # as if it had been kept for an earlier file of that epoch
    with pytest.raises(AssertionError, match="read again"):
        asyncio.run(Evaluations(ModelServer(service_env)).report(trained_job))


def test_concurrent_requests_are_batched_and_answered_apart(tmp_path, checkpoint):
    server = server_with(tmp_path, cache=2, batch=16, delay_ms=5)
    loaded = server.load(checkpoint(tmp_path / "m.safetensors", 0))
    inputs = [torch.rand(1, 1, 28, 28) for _ in range(40)]
    expected = [loaded.predictor.probabilities(x) for x in inputs]

    async def run():
        return await asyncio.gather(*(server.probabilities(loaded, x) for x in inputs))

    results = asyncio.run(run())
    for got, want in zip(results, expected, strict=True):
        torch.testing.assert_close(got, want)
    sizes = loaded.batcher.batch_sizes
    assert sum(sizes) == 40 and max(sizes) == 16 and len(sizes) < 40


def test_images_and_float_inputs_share_a_batch_and_a_bad_image_fails_alone(tmp_path, checkpoint):
    """Encoded images are decoded to uint8 pixels in the batch thread and labelled there; float
    inputs (v2's FP32 tensors) can join the same forward pass."""
    from models.inference.predictor import InputError
    from tests.support.datagen import png_bytes

    server = server_with(tmp_path, cache=2, batch=64, delay_ms=20)
    loaded = server.load(checkpoint(tmp_path / "m.safetensors", 0))
    predictor = loaded.predictor
    images = [png_bytes(i % 10, seed=i) for i in range(6)]
    floats = [torch.rand(2, 1, 28, 28) for _ in range(3)]

    async def run():
        labelled = [server.classify_images(loaded, [(f"{i}.png", data)], top_k=3) for i, data in enumerate(images)]
        bad = server.classify_images(loaded, [("good.png", images[0]), ("bad.png", b"not an image")])
        tensors = [server.probabilities(loaded, x) for x in floats]
        return await asyncio.gather(*labelled, bad, *tensors, return_exceptions=True)

    results = asyncio.run(run())
    labelled, bad, tensors = results[:6], results[6], results[7:]
    assert isinstance(bad, InputError) and "bad.png" in str(bad)
    for data, (prediction,) in zip(images, labelled, strict=True):
        want = predictor.probabilities(torch.from_numpy(predictor.decode_pixels(data, "x", max_pixels=10**6))[None])[0]
        assert prediction.index == int(want.argmax()) and len(prediction.top_k) == 3
        assert prediction.probability == pytest.approx(float(want.max()), rel=1e-5)
    for got, x in zip(tensors, floats, strict=True):
        torch.testing.assert_close(got, predictor.probabilities(x))
    assert max(loaded.batcher.batch_sizes) > 2  # they were batched together


def test_batching_off_runs_one_request_at_a_time(tmp_path, checkpoint):
    server = server_with(tmp_path, cache=2, batch=1, delay_ms=0)
    loaded = server.load(checkpoint(tmp_path / "m.safetensors", 0))

    async def run():
        return await asyncio.gather(*(server.probabilities(loaded, torch.rand(1, 1, 28, 28)) for _ in range(10)))

    asyncio.run(run())
    assert loaded.batcher.batch_sizes == [1] * 10


def test_reference_cache_serves_stale_while_one_caller_refreshes(tmp_path):
    from service.api.serving import ReferenceCache
    from service.core.references import ResolvedCheckpoint
    from service.core.storage import StoredFile

    cache = ReferenceCache(ttl=0.05)
    assert cache.lookup("m") == (None, True)
    first = ResolvedCheckpoint(
        reference="m", file=StoredFile("registry/m/v1.safetensors"), job_id="j", epoch=1, name="m", version=1
    )
    cache.put("m", first)
    assert cache.lookup("m") == (first, False)
    import time

    time.sleep(0.06)
    assert cache.lookup("m") == (first, True)  # this caller refreshes...
    assert cache.lookup("m") == (first, False)  # ...the others keep the stale answer meanwhile
    second = ResolvedCheckpoint(
        reference="m", file=StoredFile("registry/m/v2.safetensors"), job_id="j", epoch=1, name="m", version=2
    )
    cache.put("m", second)
    assert cache.lookup("m") == (second, False)
    cache.forget("m")
    assert cache.lookup("m") == (None, True)


def slow(inputs: torch.Tensor, seconds: float):
    """A prepare() that holds the batch thread, so that requests queue up behind it."""

    def prepare():
        time.sleep(seconds)
        return inputs

    return prepare


def test_an_evicted_model_answers_every_request_it_had_queued(tmp_path, checkpoint):
    server = server_with(tmp_path, cache=1, batch=4, delay_ms=0)
    a, b = checkpoint(tmp_path / "a.safetensors", 0), checkpoint(tmp_path / "b.safetensors", 1)

    async def run():
        first = server.load(a)
        batcher = server._batcher(first)
        waiting = [asyncio.ensure_future(batcher.submit(1, slow(torch.rand(1, 1, 28, 28), 0.02))) for _ in range(12)]
        await asyncio.sleep(0.005)
        server.load(b)  # evicts a while its requests wait
        answered = await asyncio.wait_for(asyncio.gather(*waiting), 10)
        await asyncio.wait_for(batcher._task, 5)  # drained, then it stopped
        late = await batcher.probabilities(torch.rand(1, 1, 28, 28))  # one still holding the old model
        return answered, late

    answered, late = asyncio.run(run())
    assert len(answered) == 12 and all(x.shape == (1, 10) for x in answered) and late.shape == (1, 10)


def test_a_full_queue_refuses_at_once_and_says_when_to_retry(tmp_path, checkpoint):
    server = server_with(tmp_path, cache=1, batch=1, delay_ms=0, predict_queue_size=3)
    loaded = server.load(checkpoint(tmp_path / "m.safetensors", 0))

    async def run():
        batcher = server._batcher(loaded)
        return await asyncio.gather(
            *(batcher.submit(1, slow(torch.rand(1, 1, 28, 28), 0.05)) for _ in range(8)), return_exceptions=True
        )

    results = asyncio.run(run())
    refused = [r for r in results if isinstance(r, Unavailable)]
    # All eight arrive before the batch task takes the first: three may wait, five are refused.
    assert len(refused) == 5 and all(r.retry_after >= 1 for r in refused)
    assert sum(isinstance(r, torch.Tensor) for r in results) == 3


def test_a_predict_past_its_deadline_is_unavailable_not_a_hang(tmp_path, checkpoint):
    server = server_with(tmp_path, cache=1, batch=1, delay_ms=0, predict_timeout_ms=100)
    loaded = server.load(checkpoint(tmp_path / "m.safetensors", 0))

    async def run():
        batcher = server._batcher(loaded)
        blocker = asyncio.ensure_future(batcher.submit(1, slow(torch.rand(1, 1, 28, 28), 0.5)))
        await asyncio.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(Unavailable, match="no answer within 100 ms"):
            async with server.deadline():
                await batcher.probabilities(torch.rand(1, 1, 28, 28))
        waited = time.monotonic() - started
        await blocker
        return waited

    assert asyncio.run(run()) < 0.4


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_predict_device_the_process_lacks_fails_at_start(tmp_path):
    from models.devices import DeviceUnavailable

    with pytest.raises(DeviceUnavailable, match="'cuda' was requested but this process has no CUDA device"):
        server_with(tmp_path, cache=1, batch=1, delay_ms=0, predict_device="cuda")
    assert server_with(tmp_path, cache=1, batch=1, delay_ms=0, predict_device="auto").device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_inference_answers_as_the_cpu_does(tmp_path, checkpoint):
    path = checkpoint(tmp_path / "m.safetensors", 0)
    cpu = server_with(tmp_path, cache=1, batch=8, delay_ms=0, predict_device="cpu")
    gpu = server_with(tmp_path, cache=1, batch=8, delay_ms=0, predict_device="cuda")
    from tests.support.datagen import png_bytes

    images = [(f"{i}.png", png_bytes(i, seed=i)) for i in range(6)]

    async def run(server):
        loaded = server.load(path)
        return await server.image_probabilities(loaded, images), next(loaded.predictor.model.parameters()).device

    (on_cpu, _), (on_gpu, where) = asyncio.run(run(cpu)), asyncio.run(run(gpu))
    assert where.type == "cuda" and on_gpu.device.type == "cpu"
    torch.testing.assert_close(on_gpu, on_cpu, atol=1e-5, rtol=1e-4)


def test_the_onnxruntime_backend_answers_as_torch_does(tmp_path, checkpoint):
    from models.inference.onnx_runtime import OnnxRuntimePredictor
    from tests.support.datagen import png_bytes

    path = checkpoint(tmp_path / "m.safetensors", 0)
    images = [(f"{i}.png", png_bytes(i, seed=i)) for i in range(5)]

    async def run(server):
        loaded = server.load(path)
        return loaded, await server.image_probabilities(loaded, images)

    torch_loaded, by_torch = asyncio.run(
        run(server_with(tmp_path, cache=1, batch=8, delay_ms=0, predict_backend="torch"))
    )
    loaded, by_onnx = asyncio.run(
        run(server_with(tmp_path, cache=1, batch=8, delay_ms=0, predict_backend="onnxruntime"))
    )
    assert isinstance(loaded.predictor, OnnxRuntimePredictor)
    assert not isinstance(torch_loaded.predictor, OnnxRuntimePredictor)
    default = server_with(tmp_path, cache=1, batch=8, delay_ms=0)  # auto: ONNX Runtime on the CPU
    assert isinstance(default.load(path).predictor, OnnxRuntimePredictor)
    torch.testing.assert_close(by_onnx, by_torch, atol=1e-5, rtol=1e-4)


def test_a_model_onnx_cannot_hold_is_served_by_torch(tmp_path, checkpoint, monkeypatch):
    from models.inference import onnx_runtime
    from models.inference.interchange import ExportError
    from models.inference.predictor import Predictor

    def refuse(_predictor, _path):
        raise ExportError("ONNX cannot express this model")

    monkeypatch.setattr(onnx_runtime, "write_onnx", refuse)
    loaded = server_with(tmp_path, cache=1, batch=8, delay_ms=0).load(checkpoint(tmp_path / "m.safetensors", 0))
    assert type(loaded.predictor) is Predictor

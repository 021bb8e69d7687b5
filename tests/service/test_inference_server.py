"""ModelServer in-process: LRU eviction, warm-up, and batching of concurrent requests."""

from __future__ import annotations

import asyncio

import pytest
import torch

from models.archs import build_model
from models.checkpoint import write_checkpoint
from models.spec import JobSpec
from service.inference import ModelServer
from service.model_store import ModelNotFound


def checkpoint(path, seed: int):
    spec = JobSpec.model_validate({"model": {"arch": "mlp", "hidden": [16]}, "data": {"dataset": "fashion-mnist"}})
    torch.manual_seed(seed)
    model = build_model(spec.model, (1, 28, 28), 10)
    write_checkpoint(path, model.state_dict(), {
        "spec": spec.model_dump(mode="json"), "task": "classification", "classes": [str(i) for i in range(10)],
        "input_shape": [1, 28, 28], "epoch": 1,
        "preprocess": {"kind": "image", "channels": 1, "height": 28, "width": 28, "scale": 1 / 255}})
    return path


def test_lru_eviction_and_reload(tmp_path):
    server = ModelServer(cache_size=1, max_batch_size=8, max_batch_delay_ms=0)
    a, b = checkpoint(tmp_path / "a.safetensors", 0), checkpoint(tmp_path / "b.safetensors", 1)
    first = server.load(a)
    assert server.load(a) is first and (server.hits, server.misses) == (1, 1)
    server.load(b)
    assert len(server) == 1
    assert server.load(a) is not first and server.misses == 3
    with pytest.raises(ModelNotFound):
        server.load(tmp_path / "missing.safetensors")


def test_concurrent_requests_are_batched_and_answered_apart(tmp_path):
    server = ModelServer(cache_size=2, max_batch_size=16, max_batch_delay_ms=5)
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


def test_batching_off_runs_one_request_at_a_time(tmp_path):
    server = ModelServer(cache_size=2, max_batch_size=1, max_batch_delay_ms=0)
    loaded = server.load(checkpoint(tmp_path / "m.safetensors", 0))

    async def run():
        return await asyncio.gather(*(server.probabilities(loaded, torch.rand(1, 1, 28, 28)) for _ in range(10)))

    asyncio.run(run())
    assert loaded.batcher.batch_sizes == [1] * 10


def test_reference_cache_serves_stale_while_one_caller_refreshes(tmp_path):
    from service.inference import ReferenceCache
    from service.model_store import ResolvedCheckpoint

    cache = ReferenceCache(ttl=0.05)
    assert cache.lookup("m") == (None, True)
    first = ResolvedCheckpoint(reference="m", path=tmp_path / "v1", job_id="j", epoch=1, name="m", version=1)
    cache.put("m", first)
    assert cache.lookup("m") == (first, False)
    import time

    time.sleep(0.06)
    assert cache.lookup("m") == (first, True)  # this caller refreshes...
    assert cache.lookup("m") == (first, False)  # ...the others keep the stale answer meanwhile
    second = ResolvedCheckpoint(reference="m", path=tmp_path / "v2", job_id="j", epoch=1, name="m", version=2)
    cache.put("m", second)
    assert cache.lookup("m") == (second, False)
    cache.forget("m")
    assert cache.lookup("m") == (None, True)

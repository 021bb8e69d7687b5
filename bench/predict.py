"""Predict latency and throughput, as ratios against floors measured in the same run.

Starts the service (API and a worker) on a private state folder, trains and registers a small
LeNet, then measures against that same model:
- the in-process floor: decode + preprocess + forward of one 28x28 PNG, no HTTP;
- the HTTP floor: a route of the same server that receives the same upload and answers a constant;
- /v1/predict (multipart) and /v1/models/{name}/predict (raw image body) at concurrency 1 and 32,
  with request batching on, then again with a server started with batching off, and once more
  with the ONNX Runtime backend (TRAINYARD_PREDICT_BACKEND=onnxruntime);
- the forward pass of each curriculum image classifier on both backends.

Usage: .venv/bin/python -m bench.predict [--requests N] [--smoke] [--report-only]

--smoke shrinks every workload (64 requests a measurement unless --requests says otherwise, a
tenth of the timing runs, a quarter of the training set): it shows that the whole run works and
prints every figure, too noisy to judge the targets (the tests use it with --report-only).
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.support.datagen import make_idx_dataset, png_bytes  # small learnable data in IDX files
from tests.support.servers import Stack, free_port, wait_until

REPO = Path(__file__).resolve().parent.parent

TARGET_LATENCY_OVER_FLOOR_MS = 1.5
TARGET_THROUGHPUT_RATIO = 0.7
BOUNDARY = "benchboundary7d3f"


def multipart(model: str, image: bytes) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'.encode(),
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + image
        + b"\r\n",
        f"--{BOUNDARY}--\r\n".encode(),
    ]
    return b"".join(parts)


def load(port: int, path: str, body: bytes, content_type: str, *, requests: int, concurrency: int) -> dict:
    """Send `requests` POSTs over `concurrency` keep-alive connections; latencies and throughput."""
    latencies: list[float] = []
    lock = threading.Lock()
    per_thread = requests // concurrency
    errors = []

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port)
        mine = []
        for _ in range(per_thread):
            started = time.perf_counter()
            conn.request("POST", path, body=body, headers={"Content-Type": content_type})
            response = conn.getresponse()
            response.read()
            mine.append(time.perf_counter() - started)
            if response.status != 200:
                errors.append(response.status)
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{path}: {len(errors)} failed requests, e.g. HTTP {errors[0]}")
    latencies.sort()
    return {
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "rps": len(latencies) / elapsed,
    }


def in_process_floor(checkpoint: Path, image: bytes, runs: int, backend: str = "torch") -> float:
    """Median ms of decode + preprocess + forward of one image, in this process."""
    import torch

    from models.inference.onnx_runtime import PREDICTORS

    torch.set_num_threads(1)
    predictor = PREDICTORS[backend].from_checkpoint(checkpoint)
    predictor.warm_up()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        pixels = torch.from_numpy(predictor.decode_pixels(image, "x.png", max_pixels=10**7))
        predictor.label(predictor.probabilities(pixels.unsqueeze(0)), 1)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


BACKEND_MODELS = {  # the curriculum's image classifiers, for the backend comparison
    "softmax": {"arch": "softmax_regression"},
    "mlp": {"arch": "mlp", "hidden": [256]},
    "lenet": {"arch": "lenet"},
    "lenet-relu-max": {"arch": "lenet", "activation": "relu", "pool": "max"},
    "resnet18": {"arch": "resnet18"},
}


def backend_forward_ms(runs: int = 200) -> dict[str, dict[str, float]]:
    """Median ms of one batch of 32 images through each backend, per architecture (one thread)."""
    import torch

    from models.inference.onnx_runtime import PREDICTORS
    from models.nets.archs import build_model
    from models.spec.job import MODEL_SPEC

    torch.set_num_threads(1)
    from models.data.contract import InputContract

    classes = [str(i) for i in range(10)]
    meta = {
        "task": "classification",
        "classes": classes,
        "input_shape": [1, 28, 28],
        "input": InputContract.image(1, 28, 28, classes).to_json(),
    }
    batch = torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8)
    table = {}
    for name, model in BACKEND_MODELS.items():
        spec = MODEL_SPEC.validate_python(model)
        table[name] = {}
        for backend, cls in PREDICTORS.items():
            predictor = cls(build_model(spec, [1, 28, 28], 10), {**meta, "model": model})
            predictor.probabilities(batch)
            times = []
            for _ in range(runs if name != "resnet18" else runs // 10):
                started = time.perf_counter()
                predictor.probabilities(batch)
                times.append(time.perf_counter() - started)
            table[name][backend] = 1000 * statistics.median(times)
    return table


def trained_model(home: Path, n_train: int = 2000) -> tuple[Stack, str, Path]:
    data = home / "data"
    make_idx_dataset(data, "FashionMNIST", n_train=n_train, n_test=200)
    stack = Stack(home=home / "state", data_dir=data, extra_env={"TRAINYARD_BENCH_ROUTES": "true"}).start()
    with stack.client() as client:
        job = client.post(
            "/v1/jobs",
            json={
                "model": {"arch": "lenet", "activation": "relu", "pool": "max"},
                "data": {"dataset": "fashion-mnist"},
                "epochs": 1,
                "batch_size": 64,
                "optimizer": {"lr": 0.1},
            },
        ).json()["id"]
        assert stack.wait_for_job(client, job)["status"] == "succeeded"
        version = client.post("/v1/models", json={"name": "bench-lenet", "job_id": job}).json()
    return stack, "bench-lenet", stack.home / "registry" / "bench-lenet" / f"v{version['version']}.safetensors"


def api_server(stack: Stack, extra_env: dict, uvicorn_args: list[str]) -> tuple[subprocess.Popen, int]:
    """One API process (the per-process cost is what this benchmark measures)."""
    port = free_port()
    env = {**stack.env, "TRAINYARD_PORT": str(port), "TRAINYARD_BENCH_ROUTES": "true", **extra_env}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "service.api.app:app",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
            *uvicorn_args,
        ],
        cwd=REPO,
        env=env,
    )
    import httpx

    wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200, timeout=60)
    return proc, port


def measure(port: int, model: str, image: bytes, requests: int, warm_up: int = 100) -> dict:
    form = multipart(model, image)
    content = f"multipart/form-data; boundary={BOUNDARY}"
    load(port, "/v1/predict", form, content, requests=warm_up, concurrency=4)  # warm up: load, threads, JIT
    results = {}
    for concurrency in (1, 32):
        n = requests if concurrency == 32 else requests // 2
        results[("floor", concurrency)] = load(
            port, "/v1/_bench/floor", form, content, requests=n, concurrency=concurrency
        )
        results[("multipart", concurrency)] = load(
            port, "/v1/predict", form, content, requests=n, concurrency=concurrency
        )
        results[("raw", concurrency)] = load(
            port, f"/v1/models/{model}/predict", image, "image/png", requests=n, concurrency=concurrency
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, help="requests per measurement at concurrency 32 (3200; --smoke: 64)")
    parser.add_argument("--uvicorn", default="", help="extra uvicorn options, e.g. '--loop asyncio --http h11'")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="exit 0 when a target is missed (the table still says MISSED); for smoke runs",
    )
    parser.add_argument("--smoke", action="store_true", help="the smallest run that prints every figure")
    args = parser.parse_args()
    if args.requests is None:
        args.requests = 64 if args.smoke else 3200
    runs = 50 if args.smoke else 500  # in-process floor; the backend comparison runs 200 (smoke: 20)
    image = png_bytes(3, seed=11)
    with tempfile.TemporaryDirectory(prefix="trainyard-bench-") as tmp:
        stack, model, checkpoint = trained_model(Path(tmp), n_train=500 if args.smoke else 2000)
        stack.stop()  # the worker is no longer needed; measure the API alone
        floor_ms = in_process_floor(checkpoint, image, runs=runs)
        onnx_floor_ms = in_process_floor(checkpoint, image, runs=runs, backend="onnxruntime")
        rows = {}
        for label, env in (
            ("batching on", {}),
            ("batching off", {"TRAINYARD_MAX_BATCH_SIZE": "1"}),
            ("onnxruntime", {"TRAINYARD_PREDICT_BACKEND": "onnxruntime"}),
        ):
            proc, port = api_server(stack, env, args.uvicorn.split())
            try:
                rows[label] = measure(port, model, image, args.requests, warm_up=16 if args.smoke else 100)
            finally:
                proc.terminate()
                proc.wait()

    print(
        f"in-process floor (decode + preprocess + forward, one 28x28 PNG): {floor_ms:.3f} ms p50 "
        f"(torch), {onnx_floor_ms:.3f} ms (onnxruntime)"
    )
    print(f"{'server':<13} {'route':<10} {'c':>3} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
    for label, results in rows.items():
        for (route, concurrency), r in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            print(f"{label:<13} {route:<10} {concurrency:>3} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['rps']:>8.0f}")
    on = rows["batching on"]
    failures = 0
    print()
    for route in ("multipart", "raw"):
        over = on[(route, 1)]["p50_ms"] - floor_ms
        ratio = on[(route, 32)]["rps"] / on[("floor", 32)]["rps"]
        off_ratio = rows["batching off"][(route, 32)]["rps"] / rows["batching off"][("floor", 32)]["rps"]
        ok_latency, ok_ratio = over <= TARGET_LATENCY_OVER_FLOOR_MS, ratio >= TARGET_THROUGHPUT_RATIO
        failures += (not ok_latency) + (not ok_ratio)
        print(
            f"{route:<9} p50 at c=1 over the in-process floor: {over:6.3f} ms "
            f"(target <= {TARGET_LATENCY_OVER_FLOOR_MS}) {'MET' if ok_latency else 'MISSED'}"
        )
        print(
            f"{route:<9} throughput at c=32 / HTTP floor: {ratio:5.2f} (target >= {TARGET_THROUGHPUT_RATIO}) "
            f"{'MET' if ok_ratio else 'MISSED'}; with batching off {off_ratio:5.2f}; "
            f"p99 at c=32 {on[(route, 32)]['p99_ms']:.1f} ms"
        )
    print()
    for route in ("multipart", "raw"):
        print(
            f"{route:<9} onnxruntime / torch backend at c=32: "
            f"{rows['onnxruntime'][(route, 32)]['rps'] / on[(route, 32)]['rps']:5.2f}"
        )
    print("forward pass of 32 images, ms (one thread):")
    for name, by_backend in backend_forward_ms(runs=20 if args.smoke else 200).items():
        print(
            f"  {name:<15} torch {by_backend['torch']:7.3f}  onnxruntime {by_backend['onnxruntime']:7.3f}  "
            f"ratio {by_backend['torch'] / by_backend['onnxruntime']:5.2f}"
        )
    return 1 if failures and not args.report_only else 0


if __name__ == "__main__":
    sys.exit(main())

"""trainyard's predict beside TorchServe and LitServe, in one run of the peer harness.

The harness (`peerbench`, kept outside this repository; its README says how it works) starts each
server by PID, sends the same 28x28 PNGs to the same LeNet weights and checks every answer against
an in-process reference. This script gives trainyard those exact weights (a LeNet job trained for
an epoch, its checkpoint's tensors replaced by the peers' state_dict, its metadata kept) and runs
the harness with trainyard's multipart and raw-body routes as two more targets.

With `--model resnet18` the peers serve torchvision's ResNet-18 on 224x224 RGB JPEGs; trainyard
serves the same weights, imported (POST /v1/models/import: the peers' state_dict as safetensors,
arch resnet18, input [3, 224, 224], ImageNet's mean and std), and every answer is checked against
the same reference.

Usage: .venv/bin/python -m bench.peers [--model lenet|resnet18] [--peerbench DIR] [--reps 3]
                                      [--api-workers N] [--quick]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from service.core.settings import Settings
from tests.support.datagen import make_idx_dataset
from tests.support.servers import Stack, free_port

REPO = Path(__file__).resolve().parent.parent

PEERS = "^(ts-w1|ts-w1-b16|ts-w2-b16|ls-w1|ls-w1-b16|ty-.*)$"
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def serve_peer_weights(home: Path, peer_state: Path) -> str:
    """Register a LeNet whose weights are the peers'; returns its model reference."""
    import torch

    from models.checkpoint import read_checkpoint, write_checkpoint

    data = home / "data"
    make_idx_dataset(data, "FashionMNIST", n_train=512, n_test=64)
    stack = Stack(home=home / "state", data_dir=data).start()
    try:
        with stack.client() as client:
            job = client.post(
                "/v1/jobs",
                json={
                    "model": {"arch": "lenet", "activation": "sigmoid", "pool": "avg"},
                    "data": {"dataset": "fashion-mnist"},
                    "epochs": 1,
                    "batch_size": 64,
                    "optimizer": {"lr": 0.9},
                },
            ).json()["id"]
            assert stack.wait_for_job(client, job)["status"] == "succeeded"
            version = client.post("/v1/models", json={"name": "lenet", "job_id": job}).json()["version"]
    finally:
        stack.stop()
    path = stack.home / "registry" / "lenet" / f"v{version}.safetensors"
    ours, meta = read_checkpoint(path)
    peers = {k.removeprefix("net."): v for k, v in torch.load(peer_state, weights_only=True).items()}
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in peers.items()}, "not the same LeNet"
    write_checkpoint(path, peers, meta)
    return stack.home


def serve_peer_resnet18(home: Path, peer_state: Path) -> Path:
    """Import the peers' ResNet-18 weights as model `resnet18`; returns the service's home."""
    import json

    import torch
    from safetensors.torch import save

    state = torch.load(peer_state, weights_only=True)
    stack = Stack(home=home / "state", data_dir=home / "data", with_worker=False).start()
    try:
        with stack.client() as client:
            answer = client.post(
                "/v1/models/import",
                data={
                    "name": "resnet18",
                    "model": json.dumps({"arch": "resnet18"}),
                    "classes": json.dumps([str(c) for c in range(10)]),
                    "input_shape": "[3, 224, 224]",
                    "normalize": json.dumps(IMAGENET),
                },
                files={"file": ("resnet18.safetensors", save(state))},
            )
            assert answer.status_code == 201, answer.text
    finally:
        stack.stop()
    return stack.home


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("lenet", "resnet18"), default="lenet")
    parser.add_argument("--peerbench", type=Path, default=REPO.parent / "shared" / "peerbench")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--api-workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--quick", action="store_true", help="the harness's smoke run (numbers not comparable)")
    parser.add_argument("--only", default=PEERS, help="which configurations (a regular expression)")
    args = parser.parse_args()
    scratch = Path(os.environ.get("PEERBENCH", "/tmp/peerbench"))
    subprocess.run(["bash", str(args.peerbench / "setup.sh")], check=True)
    if args.model == "resnet18":
        home = serve_peer_resnet18(scratch / "trainyard-resnet18", scratch / "model" / "resnet18_state_dict.pt")
    else:
        home = serve_peer_weights(scratch / "trainyard", scratch / "model" / "lenet_state_dict.pt")
    port = free_port()
    serve = (
        f"env TRAINYARD_HOME={home} TRAINYARD_PORT={port} TRAINYARD_API_WORKERS={args.api_workers} "
        f"TRAINYARD_INFERENCE_THREADS=1 {REPO / '.venv' / 'bin' / 'trainyard'} api"
    )
    batch = Settings.model_fields["max_batch_size"].default  # batches take whatever waits, up to this
    base = f"server=trainyard,workers={args.api_workers},batch={batch},cmd={serve}"
    command = [
        str(scratch / "venv-client" / "bin" / "python"),
        str(args.peerbench / "run_all.py"),
        "--model",
        args.model,
        "--reps",
        str(args.reps),
        "--only",
        args.only,
        "--target",
        f"name=ty-multipart,url=http://127.0.0.1:{port}/v1/predict,style=trainyard,field={args.model},{base}",
        "--target",
        f"name=ty-raw,url=http://127.0.0.1:{port}/v1/models/{args.model}/predict?top_k=10,style=raw,{base}",
    ]
    if args.quick:
        command.append("--quick")
    return subprocess.run(command).returncode


if __name__ == "__main__":
    sys.exit(main())

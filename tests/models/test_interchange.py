"""Every architecture of the curriculum leaves in every format with the same answers, and weights
from elsewhere are checked tensor by tensor."""

from __future__ import annotations

import ctypes
import gc
import io
import json
import warnings
import weakref
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from safetensors.torch import load

from models.data.contract import InputContract
from models.inference.formats import FORMATS
from models.inference.interchange import (
    WRITERS,
    ExportError,
    export,
    header,
    imported_meta,
    weights_problems,
)
from models.inference.onnx_runtime import OnnxRuntimePredictor
from models.inference.predictor import Predictor
from models.nets.archs import build_model
from models.spec.job import MODEL_SPEC, JobSpec

ARCHITECTURES = {
    "linear-regression": ({"arch": "linear_regression"}, [2], None, {"dataset": "synthetic-linear"}),
    "polynomial": ({"arch": "polynomial", "degree": 4}, [1], None, {"dataset": "synthetic-polynomial"}),
    "softmax": ({"arch": "softmax_regression"}, [1, 28, 28], 10, {"dataset": "fashion-mnist"}),
    "mlp-dropout": (
        {"arch": "mlp", "hidden": [32, 16], "dropout": 0.5, "init": "xavier"},
        [1, 28, 28],
        10,
        {"dataset": "fashion-mnist"},
    ),
    "lenet-sigmoid-avg": ({"arch": "lenet"}, [1, 28, 28], 10, {"dataset": "fashion-mnist"}),
    "lenet-relu-max": (
        {"arch": "lenet", "activation": "relu", "pool": "max"},
        [1, 28, 28],
        10,
        {"dataset": "fashion-mnist"},
    ),
    "resnet18": ({"arch": "resnet18"}, [1, 28, 28], 10, {"dataset": "fashion-mnist"}),
    "sequential-batchnorm": (
        {
            "arch": "sequential",
            "layers": [
                {"type": "conv2d", "out_channels": 4, "kernel_size": 3},
                {"type": "batchnorm"},
                {"type": "relu"},
                {"type": "flatten"},
                {"type": "linear", "out_features": 10},
            ],
        },
        [1, 28, 28],
        10,
        {"dataset": "fashion-mnist"},
    ),
    "resized-lenet": ({"arch": "lenet"}, [1, 28, 28], 10, {"dataset": "fashion-mnist", "resize": 32}),
}


def predictor_for(model: dict, shape: list[int], classes: int | None, data: dict) -> Predictor:
    spec = JobSpec.model_validate({"model": model, "data": data})
    torch.manual_seed(0)
    net = build_model(spec.model, shape, classes or 1, resize=spec.resize)
    for module in net.modules():  # batch-norm statistics that are not the identity
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    names = [f"c{i}" for i in range(classes)] if classes else None
    meta = {
        "spec": spec.model_dump(mode="json"),
        "task": "classification" if classes else "regression",
        "classes": names,
        "input_shape": shape,
        "input": (
            InputContract.image(*shape[:1], 28, 28, names)
            if len(shape) == 3
            else InputContract.tabular(shape[0], names)
        ).to_json(),
    }
    return Predictor(net, meta)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_format_answers_as_the_service_does(name):
    predictor = predictor_for(*ARCHITECTURES[name])
    x = torch.rand(3, *predictor.meta["input_shape"])  # a batch size the export never saw
    want = predictor.probabilities(x)
    state = load(export(predictor, "safetensors"))
    fresh = predictor_for(*ARCHITECTURES[name]).model
    fresh.load_state_dict(state)
    torch.testing.assert_close(Predictor(fresh, predictor.meta).probabilities(x), want)
    scripted = torch.jit.load(io.BytesIO(export(predictor, "torchscript")))
    torch.testing.assert_close(scripted(x), want, atol=1e-6, rtol=1e-5)
    program = torch.export.load(io.BytesIO(export(predictor, "pt2"))).module()
    torch.testing.assert_close(program(x), want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(program(x[:1]), want[:1], atol=1e-6, rtol=1e-5)  # a batch of one too
    raw = export(predictor, "onnx")
    onnx.checker.check_model(onnx.load_from_string(raw))
    session = onnxruntime.InferenceSession(raw)
    (got,) = session.run(None, {"input": x.numpy()})
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=1e-4)


def test_the_safetensors_header_says_how_to_use_the_weights():
    predictor = predictor_for(*ARCHITECTURES["lenet-sigmoid-avg"])
    meta = header(predictor.meta)
    assert meta["task"] == "classification" and meta["input_shape"] == "[1, 28, 28]"
    assert '"arch": "lenet"' in meta["model"]
    assert json.loads(meta["input"]) == {
        "kind": "image",
        "classes": [f"c{i}" for i in range(10)],
        "channels": 1,
        "height": 28,
        "width": 28,
        "resize": "bilinear",
    }
    assert set(FORMATS) == set(WRITERS) == {"safetensors", "pt2", "torchscript", "onnx"}
    table = predictor_for(*ARCHITECTURES["linear-regression"])
    assert json.loads(header(table.meta)["input"]) == {"kind": "tabular", "features": 2}  # not resized


def test_weights_that_do_not_fit_are_named_tensor_by_tensor():
    net = build_model(MODEL_SPEC.validate_python({"arch": "mlp", "hidden": [8]}), [1, 28, 28], 10)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    assert weights_problems(net, state) == []
    del state["1.weight"]
    state["9.weight"] = torch.zeros(2)
    state["3.bias"] = torch.zeros(11)
    problems = dict(weights_problems(net, state))
    assert problems["1.weight"].startswith("missing: the architecture needs 1.weight of shape [8, 784]")
    assert problems["9.weight"] == "not a tensor of this architecture"
    assert problems["3.bias"] == "has shape [11]; the architecture needs [10]"
    state = {k: v.to(torch.int64) for k, v in net.state_dict().items()}
    assert "floating-point" in dict(weights_problems(net, state))["1.weight"]


def test_imported_weights_describe_their_inputs():
    images = imported_meta({"arch": "lenet"}, ["a", "b"], [1, 32, 32])
    assert InputContract.from_meta(images) == InputContract.image(1, 32, 32, ["a", "b"])
    assert images["task"] == "classification"
    colour = InputContract.from_meta(imported_meta({"arch": "lenet"}, ["a", "b"], [3, 32, 32], [0.5] * 3, [0.25] * 3))
    assert colour.channels == 3 and colour.mean == [0.5] * 3 and colour.std == [0.25] * 3
    rows = imported_meta({"arch": "linear_regression"}, None, [3])
    assert rows["task"] == "regression" and InputContract.from_meta(rows) == InputContract.tabular(3)


def colour_predictor() -> Predictor:
    spec = JobSpec.model_validate({"model": {"arch": "lenet", "activation": "relu"}, "data": {"dataset": "cifar10"}})
    torch.manual_seed(0)
    net = build_model(spec.model, [3, 32, 32], 10)
    contract = InputContract.image(3, 32, 32, [f"c{i}" for i in range(10)]).with_normalisation(
        [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    )
    meta = {
        "spec": spec.model_dump(mode="json"),
        "task": "classification",
        "classes": contract.classes,
        "input_shape": [3, 32, 32],
        "input": contract.to_json(),
    }
    return Predictor(net, meta)


def test_every_export_states_the_input_contract(tmp_path):
    from safetensors import safe_open

    predictor = colour_predictor()
    want = predictor.contract.to_json()
    path = tmp_path / "m.safetensors"
    path.write_bytes(export(predictor, "safetensors"))
    with safe_open(str(path), framework="pt") as fh:
        assert json.loads(fh.metadata()["input"]) == want
    graph = onnx.load_from_string(export(predictor, "onnx"))
    props = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(props["input"]) == want and props["inputs"] == "float"
    extra = {"trainyard.json": ""}
    torch.jit.load(io.BytesIO(export(predictor, "torchscript", "pixels")), _extra_files=extra)
    assert json.loads(json.loads(extra["trainyard.json"])["input"]) == want
    extra = {"trainyard.json": ""}
    torch.export.load(io.BytesIO(export(predictor, "pt2", "pixels")), extra_files=extra)
    told = json.loads(extra["trainyard.json"])
    assert json.loads(told["input"]) == want and told["inputs"] == "pixels"


def test_graph_exports_from_several_threads_at_once_all_succeed():
    """The API exports in a thread pool; torch's exporters keep global state (dispatch modes)."""
    from concurrent.futures import ThreadPoolExecutor

    predictor = predictor_for(*ARCHITECTURES["lenet-sigmoid-avg"])
    formats = ["pt2", "torchscript", "onnx"] * 3
    with ThreadPoolExecutor(max_workers=len(formats)) as pool:
        files = list(pool.map(lambda fmt: export(predictor, fmt), formats))
    x = torch.rand(2, *predictor.meta["input_shape"])
    want = predictor.probabilities(x)
    for fmt, raw in zip(formats, files, strict=True):
        if fmt == "pt2":
            torch.testing.assert_close(torch.export.load(io.BytesIO(raw)).module()(x), want, atol=1e-6, rtol=1e-5)


def test_torchscript_exports_quietly():
    """TorchScript is deprecated upstream; its FutureWarnings are not logged at every download."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export(predictor_for(*ARCHITECTURES["lenet-sigmoid-avg"]), "torchscript")
    assert not [w for w in caught if "torch.jit" in str(w.message)], [str(w.message) for w in caught]


PIXEL_CLIENT = r"""
import io, json, sys
import numpy as np, onnxruntime
from PIL import Image
graph, images = sys.argv[1], json.loads(sys.argv[2])
session = onnxruntime.InferenceSession(graph)
meta = session.get_modelmeta().custom_metadata_map
contract = json.loads(meta["input"])
batch = []
for path in images:
    image = Image.open(path).convert("RGB").resize((contract["width"], contract["height"]), Image.Resampling.BILINEAR)
    batch.append(np.asarray(image).transpose(2, 0, 1))
(probs,) = session.run(None, {"pixels": np.stack(batch).astype(np.uint8)})
assert not any(name.split(".")[0] in ("models", "service", "workers") for name in sys.modules)
print(json.dumps(probs.tolist()))
"""


def test_an_onnx_export_with_pixels_in_predicts_what_predict_does_without_trainyard(tmp_path):
    import subprocess
    import sys

    from PIL import Image

    predictor = colour_predictor()
    graph = tmp_path / "model.onnx"
    graph.write_bytes(export(predictor, "onnx", "pixels"))
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(32, 32), (50, 40), (20, 64)]):
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    done = subprocess.run(
        [sys.executable, "-I", "-c", PIXEL_CLIENT, str(graph), json.dumps([str(p) for p in paths])],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    got = np.array(json.loads(done.stdout))
    pixels = torch.from_numpy(
        np.stack([predictor.decode_pixels(p.read_bytes(), p.name, max_pixels=10**6) for p in paths])
    )
    np.testing.assert_allclose(got, predictor.probabilities(pixels).numpy(), atol=1e-4, rtol=0)
    with pytest.raises(ExportError, match="image models"):
        export(predictor_for(*ARCHITECTURES["linear-regression"]), "onnx", "pixels")


def test_onnxruntime_holds_the_weights_once():
    """The session's copy is the only one: neither the torch module nor the graph's bytes stay beside it."""
    built = predictor_for(*ARCHITECTURES["lenet-relu-max"])
    module = weakref.ref(built.model)
    served = OnnxRuntimePredictor(built.model, built.meta)
    del built
    gc.collect()
    assert module() is None
    assert not [value for value in vars(served.session).values() if isinstance(value, bytes)]


def anonymous_mb() -> float:
    """This process's anonymous resident memory, after glibc hands back what it holds free."""
    ctypes.CDLL(None).malloc_trim(0)
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("RssAnon:")) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_an_evaluation_hands_back_what_its_large_batches_took():
    """ONNX Runtime keeps the activations of a batch for the next one; after an evaluation's batches
    of 1024 images (about 80 MB of LeNet's) that would be held for the life of the model."""
    built = predictor_for(*ARCHITECTURES["lenet-relu-max"])
    served = OnnxRuntimePredictor(built.model, built.meta)
    x, y = torch.rand(3000, 1, 28, 28), torch.randint(0, 10, (3000,))
    served.warm_up()
    before = anonymous_mb()
    served.evaluate(x, y)
    assert anonymous_mb() - before < 25

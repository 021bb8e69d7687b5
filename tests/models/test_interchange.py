"""Every architecture of the curriculum leaves in every format with the same answers, and weights
from elsewhere are checked tensor by tensor."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from safetensors.torch import load

from models.archs import build_model
from models.interchange import FORMATS, export, header, imported_meta, weights_problems
from models.predictor import Predictor
from models.spec import MODEL_SPEC, JobSpec

ARCHITECTURES = {
    "linear-regression": ({"arch": "linear_regression"}, [2], None, {"dataset": "synthetic-linear"}),
    "polynomial": ({"arch": "polynomial", "degree": 4}, [1], None, {"dataset": "synthetic-polynomial"}),
    "softmax": ({"arch": "softmax_regression"}, [1, 28, 28], 10, {"dataset": "fashion-mnist"}),
    "mlp-dropout": ({"arch": "mlp", "hidden": [32, 16], "dropout": 0.5, "init": "xavier"}, [1, 28, 28], 10,
                    {"dataset": "fashion-mnist"}),
    "lenet-sigmoid-avg": ({"arch": "lenet"}, [1, 28, 28], 10, {"dataset": "fashion-mnist"}),
    "lenet-relu-max": ({"arch": "lenet", "activation": "relu", "pool": "max"}, [1, 28, 28], 10,
                       {"dataset": "fashion-mnist"}),
    "resnet18": ({"arch": "resnet18"}, [1, 28, 28], 10, {"dataset": "fashion-mnist"}),
    "sequential-batchnorm": ({"arch": "sequential", "layers": [
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3}, {"type": "batchnorm"}, {"type": "relu"},
        {"type": "flatten"}, {"type": "linear", "out_features": 10}]}, [1, 28, 28], 10, {"dataset": "fashion-mnist"}),
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
    meta = {"spec": spec.model_dump(mode="json"), "task": "classification" if classes else "regression",
            "classes": [f"c{i}" for i in range(classes)] if classes else None, "input_shape": shape,
            "preprocess": {"kind": "image", "channels": 1, "height": 28, "width": 28, "scale": 1 / 255}
            if len(shape) == 3 else {"kind": "tabular", "features": shape[0]}}
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
    raw = export(predictor, "onnx")
    onnx.checker.check_model(onnx.load_from_string(raw))
    session = onnxruntime.InferenceSession(raw)
    (got,) = session.run(None, {"input": x.numpy()})
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=1e-4)


def test_the_safetensors_header_says_how_to_use_the_weights():
    predictor = predictor_for(*ARCHITECTURES["lenet-sigmoid-avg"])
    meta = header(predictor.meta)
    assert meta["task"] == "classification" and meta["input_shape"] == "[1, 28, 28]"
    assert '"arch": "lenet"' in meta["model"] and '"scale": 0.00392' in meta["preprocess"]
    assert set(FORMATS) == {"safetensors", "torchscript", "onnx"}


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
    assert images["preprocess"] == {"kind": "image", "channels": 1, "height": 32, "width": 32, "scale": 1 / 255}
    assert images["task"] == "classification"
    rows = imported_meta({"arch": "linear_regression"}, None, [3])
    assert rows["task"] == "regression" and rows["preprocess"] == {"kind": "tabular", "features": 3}

"""Trained networks out of trainyard, for code that has never heard of it, and weights trained
elsewhere back in.

- safetensors: the plain state_dict (the keys `nn.Sequential` gives, e.g. `0.weight`), with the
  architecture, classes, input shape and preprocessing as JSON strings in the file's header;
- TorchScript and ONNX: a module from the float input the network was trained on
  ([N, *input_shape]; images grayscale, pixel / 255, so in [0, 1]) to probabilities for a
  classifier (softmax applied) or predicted values for a regression, any batch size.
"""

from __future__ import annotations

import copy
import io
import json
import threading
import warnings

import numpy as np
import torch
from safetensors.torch import save
from torch import nn

from models.predictor import Predictor

FORMAT = "trainyard-export/1"
_ONNX_EXPORT = threading.Lock()  # torch.onnx.export keeps global state: one export at a time
ONNX_OPSET = 17
FORMATS = ("safetensors", "torchscript", "onnx")


class ExportError(Exception):
    """This format cannot hold this model; the message says why."""


class WithOutputs(nn.Module):
    """The network followed by what predict applies to its outputs: softmax for a classifier."""

    def __init__(self, net: nn.Module, classify: bool):
        super().__init__()
        self.net = net
        self.classify = classify

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return torch.softmax(y, dim=1) if self.classify else y


def model_spec(meta: dict) -> dict:
    """The architecture part of a checkpoint's metadata (a job's spec, or an imported model's)."""
    return meta["model"] if "model" in meta else meta["spec"]["model"]


def header(meta: dict) -> dict[str, str]:
    """Readable metadata for an exported file: each entry a JSON string."""
    return {
        "format": FORMAT,
        "model": json.dumps(model_spec(meta)),
        "task": meta["task"],
        "classes": json.dumps(meta.get("classes")),
        "input_shape": json.dumps(meta["input_shape"]),
        "preprocess": json.dumps(meta["preprocess"]),
        "trainyard": json.dumps(meta),  # everything, for importing it back
    }


def _module(predictor: Predictor) -> tuple[WithOutputs, torch.Tensor]:
    net = copy.deepcopy(predictor.model).to("cpu").eval()
    module = WithOutputs(net, predictor.task == "classification").eval()
    return module, torch.rand(2, *predictor.meta["input_shape"])


def safetensors_bytes(predictor: Predictor) -> bytes:
    state = {name: t.detach().to("cpu").contiguous() for name, t in predictor.model.state_dict().items()}
    return save(state, metadata=header(predictor.meta))


def torchscript_bytes(predictor: Predictor) -> bytes:
    module, example = _module(predictor)
    try:
        with torch.no_grad():
            traced = torch.jit.trace(module, example, check_inputs=[(torch.rand(3, *example.shape[1:]),)])
    except Exception as exc:
        raise ExportError(f"TorchScript cannot trace this model: {str(exc).splitlines()[0]}") from None
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    return buffer.getvalue()


def onnx_bytes(predictor: Predictor) -> bytes:
    module, example = _module(predictor)
    output = "probabilities" if predictor.task == "classification" else "predictions"
    buffer = io.BytesIO()
    try:
        with _ONNX_EXPORT, warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), buffer, input_names=["input"], output_names=[output],
                              dynamic_axes={"input": {0: "batch"}, output: {0: "batch"}},
                              opset_version=ONNX_OPSET, dynamo=False)
    except Exception as exc:
        raise ExportError(f"ONNX (opset {ONNX_OPSET}) cannot express this model: {str(exc).splitlines()[0]}") from None
    return buffer.getvalue()


EXPORTERS = {"safetensors": safetensors_bytes, "torchscript": torchscript_bytes, "onnx": onnx_bytes}


def export(predictor: Predictor, fmt: str) -> bytes:
    """The model in one of FORMATS."""
    return EXPORTERS[fmt](predictor)


class OnnxRuntimePredictor(Predictor):
    """The same predictor with its forward pass run by ONNX Runtime on the exported graph (CPU).

    Inputs are prepared exactly as for the torch backend; the graph applies the softmax itself."""

    def __init__(self, model: nn.Module, meta: dict, device: torch.device = torch.device("cpu")):
        import onnxruntime

        if device.type != "cpu":
            raise ExportError(f"the onnxruntime backend runs on the CPU here, not {device}")
        super().__init__(model, meta, device)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(onnx_bytes(self), options, providers=["CPUExecutionProvider"])

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.dtype == torch.uint8:
            batch = self.to_input(batch)
        (outputs,) = self.session.run(None, {"input": np.ascontiguousarray(batch.numpy(), dtype=np.float32)})
        return torch.from_numpy(outputs)


PREDICTORS = {"torch": Predictor, "onnxruntime": OnnxRuntimePredictor}


def weights_problems(net: nn.Module, state: dict[str, torch.Tensor]) -> list[tuple[str, str]]:
    """(tensor name, what is wrong) for weights that do not fit a network: missing, extra or
    mis-shaped tensors, or integers where the network holds floats."""
    expected = net.state_dict()
    problems = [(name, f"missing: the architecture needs {name} of shape {list(expected[name].shape)}")
                for name in sorted(expected.keys() - state.keys())]
    problems += [(name, "not a tensor of this architecture") for name in sorted(state.keys() - expected.keys())]
    for name in sorted(expected.keys() & state.keys()):
        want, got = expected[name], state[name]
        if got.shape != want.shape:
            problems.append((name, f"has shape {list(got.shape)}; the architecture needs {list(want.shape)}"))
        elif want.is_floating_point() and not got.is_floating_point():
            problems.append((name, f"holds {got.dtype}; the architecture needs floating-point values"))
    return problems


def imported_meta(model: dict, classes: list[str] | None, input_shape: list[int]) -> dict:
    """A checkpoint's metadata for weights trained elsewhere: inputs prepared as trainyard's own
    (images grayscale, pixel / 255)."""
    if len(input_shape) == 3:
        channels, height, width = input_shape
        preprocess = {"kind": "image", "channels": channels, "height": height, "width": width, "scale": 1 / 255}
    else:
        preprocess = {"kind": "tabular", "features": input_shape[0]}
    return {"model": model, "task": "classification" if classes else "regression", "classes": classes,
            "input_shape": input_shape, "preprocess": preprocess, "epoch": 0, "imported": True}

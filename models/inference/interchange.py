"""Trained networks out of trainyard, for code that has never heard of it, and weights trained
elsewhere back in.

- safetensors: the plain state_dict (the keys `nn.Sequential` gives, e.g. `0.weight`), with the
  architecture, classes, input shape, input contract (and a registered version's confidence
  threshold, when it has one) as JSON strings in the file's header;
- pt2 (torch.export's ExportedProgram, TorchScript's successor), TorchScript and ONNX: a module
  from the float input the network was trained on ([N, *input_shape]; images normalised by the
  contract) to probabilities for a classifier (softmax applied) or predicted values for a
  regression, any batch size; or, with `inputs="pixels"`, from uint8 pixels [N, C, H, W] with the
  contract's normalisation inside the graph, so that code which knows nothing of trainyard
  predicts what the service predicts from an image decoded and resized to H x W. All three carry
  the same header (ONNX as metadata properties, pt2 and TorchScript as the extra file
  `trainyard.json`).
"""

from __future__ import annotations

import copy
import json
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import nn

from models.checkpoint import write_safetensors
from models.data.contract import InputContract
from models.inference.predictor import Predictor

FORMAT = "trainyard-export/1"
# torch.onnx.export, torch.export and torch.jit.trace keep global state (dispatch modes, warning
# filters): one graph export at a time in a process, whichever the format.
_GRAPH_EXPORT = threading.Lock()
ONNX_OPSET = 17


class ExportError(Exception):
    """This format cannot hold this model; the message says why."""


class WithOutputs(nn.Module):
    """The network followed by what predict applies to its outputs: softmax for a classifier, the
    target's own units for a regression that learnt its target standardised."""

    def __init__(self, net: nn.Module, classify: bool, contract: InputContract):
        super().__init__()
        self.net = net
        self.classify = classify
        self.scaled = not classify and contract.target_scaled
        if self.scaled:
            self.register_buffer("target_mean", torch.tensor(contract.target_mean, dtype=torch.float32))
            self.register_buffer("target_std", torch.tensor(contract.target_std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        if self.classify:
            return torch.softmax(y, dim=1)
        return y * self.target_std + self.target_mean if self.scaled else y


class FromPixels(nn.Module):
    """uint8 pixels [N, C, H, W] normalised by the input contract, then the network with its outputs."""

    def __init__(self, net: nn.Module, contract: InputContract):
        super().__init__()
        self.net = net
        scale, shift = contract.affine()
        self.register_buffer("scale", torch.from_numpy(scale).view(1, -1, 1, 1))
        self.register_buffer("shift", torch.from_numpy(shift).view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels.float() * self.scale + self.shift)


class FromColumns(nn.Module):
    """A tabular model's raw columns standardised as it was trained, then the network with its outputs."""

    def __init__(self, net: nn.Module, contract: InputContract):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(contract.mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(contract.std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def model_spec(meta: dict) -> dict:
    """The architecture part of a checkpoint's metadata (a job's spec, or an imported model's)."""
    return meta["model"] if "model" in meta else meta["spec"]["model"]


def header(meta: dict) -> dict[str, str]:
    """Readable metadata for an exported file, every value a string (as safetensors and ONNX headers
    hold them): `format` and `task` as they are, the rest JSON."""
    return {
        "format": FORMAT,
        "model": json.dumps(model_spec(meta)),
        "task": meta["task"],
        "classes": json.dumps(meta.get("classes")),
        "input_shape": json.dumps(meta["input_shape"]),
        "input": InputContract.from_meta(meta).dumps(),
        **({"threshold": json.dumps(meta["threshold"])} if meta.get("threshold") is not None else {}),
        "trainyard": json.dumps(meta),  # everything, for importing it back
    }


def _module(predictor: Predictor, inputs: str = "float") -> tuple[nn.Module, torch.Tensor]:
    net = copy.deepcopy(predictor.model).to("cpu").eval()
    module = WithOutputs(net, predictor.task == "classification", predictor.contract).eval()
    shape = predictor.meta["input_shape"]
    if inputs == "float":
        if not predictor.contract.images and predictor.contract.normalised:  # it takes its raw columns
            return FromColumns(module, predictor.contract).eval(), torch.rand(2, *shape)
        return module, torch.rand(2, *shape)
    if not predictor.contract.images:
        raise ExportError("inputs=pixels is for image models; this one takes numeric inputs")
    return FromPixels(module, predictor.contract).eval(), torch.randint(0, 256, (2, *shape), dtype=torch.uint8)


def write_safetensors_export(predictor: Predictor, path: Path, inputs: str = "float") -> None:
    if inputs != "float":
        raise ExportError("safetensors holds weights only; inputs=pixels applies to pt2, torchscript and onnx")
    write_safetensors(path, predictor.model.state_dict(), header(predictor.meta))


def write_pt2(predictor: Predictor, path: Path, inputs: str = "float") -> None:
    """torch.export's ExportedProgram, any batch size: torch.export.load(f).module()(x)."""
    module, example = _module(predictor, inputs)
    with _GRAPH_EXPORT:
        try:
            with torch.no_grad():
                program = torch.export.export(
                    module, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), strict=False
                )
        except Exception as exc:
            raise ExportError(f"torch.export cannot express this model: {_first_line(exc)}") from None
        torch.export.save(program, str(path), extra_files=_extra_files(predictor, inputs))


def write_torchscript(predictor: Predictor, path: Path, inputs: str = "float") -> None:
    module, example = _module(predictor, inputs)
    again = (
        torch.randint(0, 256, (3, *example.shape[1:]), dtype=torch.uint8)
        if inputs == "pixels"
        else torch.rand(3, *example.shape[1:])
    )
    # TorchScript is deprecated upstream (pt2 is its successor); it still answers as the service
    # does, and its warnings would only fill the service's log on every download.
    with _GRAPH_EXPORT, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r"`torch\.jit\.")
        try:
            with torch.no_grad():
                traced = torch.jit.trace(module, example, check_inputs=[(again,)])
        except Exception as exc:
            raise ExportError(f"TorchScript cannot trace this model: {_first_line(exc)}") from None
        torch.jit.save(traced, str(path), _extra_files=_extra_files(predictor, inputs))


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _extra_files(predictor: Predictor, inputs: str) -> dict[str, str]:
    return {"trainyard.json": json.dumps({**header(predictor.meta), "inputs": inputs})}


def write_onnx(predictor: Predictor, path: Path, inputs: str = "float") -> None:
    import onnx

    module, example = _module(predictor, inputs)
    name = "input" if inputs == "float" else "pixels"
    output = "probabilities" if predictor.task == "classification" else "predictions"
    try:
        with _GRAPH_EXPORT, warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=[name],
                output_names=[output],
                dynamic_axes={name: {0: "batch"}, output: {0: "batch"}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
    except Exception as exc:
        raise ExportError(f"ONNX (opset {ONNX_OPSET}) cannot express this model: {_first_line(exc)}") from None
    graph = onnx.load(str(path))
    for key, value in {**header(predictor.meta), "inputs": inputs}.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))


WRITERS = {
    "safetensors": write_safetensors_export,
    "pt2": write_pt2,
    "torchscript": write_torchscript,
    "onnx": write_onnx,
}


def write_export(predictor: Predictor, fmt: str, path: Path, inputs: str = "float") -> None:
    """Write the model as a file in one of FORMATS, taking `inputs` (float, or uint8 pixels for
    image models). The file is written where it goes, not built in memory first."""
    WRITERS[fmt](predictor, path, inputs)


def export(predictor: Predictor, fmt: str, inputs: str = "float") -> bytes:
    """The exported file's bytes (write_export, for a caller that wants them in hand)."""
    with tempfile.TemporaryDirectory(prefix="trainyard-export-") as folder:
        path = Path(folder) / f"model.{fmt}"
        write_export(predictor, fmt, path, inputs)
        return path.read_bytes()


def weights_problems(net: nn.Module, state: dict[str, torch.Tensor]) -> list[tuple[str, str]]:
    """(tensor name, what is wrong) for weights that do not fit a network: missing, extra or
    mis-shaped tensors, or integers where the network holds floats."""
    expected = net.state_dict()
    problems = [
        (name, f"missing: the architecture needs {name} of shape {list(expected[name].shape)}")
        for name in sorted(expected.keys() - state.keys())
    ]
    problems += [(name, "not a tensor of this architecture") for name in sorted(state.keys() - expected.keys())]
    for name in sorted(expected.keys() & state.keys()):
        want, got = expected[name], state[name]
        if got.shape != want.shape:
            problems.append((name, f"has shape {list(got.shape)}; the architecture needs {list(want.shape)}"))
        elif want.is_floating_point() and not got.is_floating_point():
            problems.append((name, f"holds {got.dtype}; the architecture needs floating-point values"))
    return problems


def imported_meta(
    model: dict,
    classes: list[str] | None,
    input_shape: list[int],
    mean: list[float] | None = None,
    std: list[float] | None = None,
    *,
    resize: int | None = None,
    columns: list[str] | None = None,
    target: tuple[float, float] | None = None,
) -> dict:
    """A checkpoint's metadata for weights trained elsewhere: images decoded as trainyard's own
    (grey or RGB by the channels, resized to the input shape), pixel / 255 normalised by mean/std,
    or numeric columns (named `columns`) standardised by mean/std; `resize`: the side the network
    resizes its inputs to, and `target`: the (mean, std) a regression's outputs are scaled back by
    (a trainyard export's, kept)."""
    if len(input_shape) == 3:
        contract = InputContract.image(*input_shape, classes=classes)
        if mean is not None or std is not None:
            channels = input_shape[0]
            contract = contract.with_normalisation(mean or [0.0] * channels, std or [1.0] * channels)
    else:
        contract = InputContract.tabular(
            input_shape[0], classes, columns if len(columns or []) == input_shape[0] else None
        )
        if mean is not None and std is not None:
            contract = contract.with_normalisation(mean, std)
        if target is not None and not classes:
            contract = contract.with_target_scale(*target)
    return {
        "model": model,
        "task": "classification" if classes else "regression",
        "classes": classes,
        "input_shape": input_shape,
        "input": contract.to_json(),
        "epoch": 0,
        "imported": True,
        **({"resize": resize} if resize is not None else {}),
    }

"""The Open Inference Protocol (v2, as spoken by Triton and KServe): decoding requests into tensors
and encoding outputs, in JSON or with the binary tensor data extension. No HTTP and no model here:
the v2 router reads the body, serves the model, and calls these.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import numpy as np
import torch
from fastapi.responses import JSONResponse, Response

from models.inference.predictor import Predictor
from service.core.references import ResolvedCheckpoint


class ProtocolError(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON request header and the binary tensor data after it (binary extension)."""
    try:
        if header_length is None:
            return json.loads(body), b""
        size = int(header_length)
        if not 0 < size <= len(body):
            raise ProtocolError("Inference-Header-Content-Length does not fit the body")
        return json.loads(body[:size]), body[size:]
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"the request is not valid JSON: {exc}") from None


INPUT_NAMES = {"FP32": "input", "BYTES": "images"}  # what the metadata calls each kind of input


def single_input(header) -> dict:
    """The request's one input spec (this server's models take exactly one), named as the
    metadata names an input of its datatype."""
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list) or len(header["inputs"]) != 1:
        raise ProtocolError("the request needs exactly one input")
    spec = header["inputs"][0]
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ProtocolError("each input needs a name, shape, datatype and data")
    wanted = INPUT_NAMES.get(spec.get("datatype"))
    if wanted is not None and spec["name"] != wanted:
        raise ProtocolError(
            f"input {spec['name']!r}: this model's {spec['datatype']} input is named {wanted!r} (see its metadata)"
        )
    return spec


def version_label(target: ResolvedCheckpoint) -> str:
    """The version a v2 answer names: a registered model's version, or for a job the epoch it
    serves, which is what /versions/{n} names for `job:<id>` (its epoch n)."""
    return str(target.version if target.name is not None else target.epoch)


def metadata(
    name: str, version: str, predictor: Predictor, job_id: str | None, epoch: int | None, threshold: float | None = None
) -> dict:
    """A model's metadata: its inputs, outputs, classes and default threshold; `version` as
    version_label gives it."""
    shape = predictor.meta["input_shape"]
    width = len(predictor.classes) if predictor.classes else 1
    inputs = [{"name": INPUT_NAMES["FP32"], "datatype": "FP32", "shape": [-1, *shape]}]
    if predictor.contract.images:
        inputs.append({"name": INPUT_NAMES["BYTES"], "datatype": "BYTES", "shape": [-1]})
    output = "probabilities" if predictor.task == "classification" else "predictions"
    return {
        "name": name,
        "versions": [version],
        "platform": "pytorch",
        "inputs": inputs,
        "outputs": [{"name": output, "datatype": "FP32", "shape": [-1, width]}],
        "parameters": {
            "classes": predictor.classes,
            "job_id": job_id,
            "epoch": epoch,
            "input": predictor.contract.to_json(),
            "threshold": threshold,
        },
    }


def tensor_data(spec: dict, binary: bytes, offset: int) -> tuple[Any, int]:
    """An input's data: from JSON, or its slice of the binary section (then bytes)."""
    size = (spec.get("parameters") or {}).get("binary_data_size")
    if size is None:
        if "data" not in spec:
            raise ProtocolError(f"input {spec.get('name')!r} has no data")
        return spec["data"], offset
    if not isinstance(size, int) or size < 0 or offset + size > len(binary):
        raise ProtocolError(f"input {spec.get('name')!r}: binary_data_size does not fit the body")
    return binary[offset : offset + size], offset + size


def deserialize_bytes(raw: bytes) -> list[bytes]:
    """Triton's BYTES encoding: each element is a 4-byte little-endian length, then the bytes."""
    items, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise ProtocolError("truncated BYTES tensor")
        (length,) = struct.unpack_from("<I", raw, i)
        i += 4
        if i + length > len(raw):
            raise ProtocolError("truncated BYTES tensor")
        items.append(raw[i : i + length])
        i += length
    return items


def fp32_input(spec: dict, data, predictor, max_batch: int) -> torch.Tensor:
    shape = spec.get("shape")
    expected = predictor.meta["input_shape"]
    if (
        not isinstance(shape, list)
        or len(shape) != len(expected) + 1
        or list(shape[1:]) != list(expected)
        or not isinstance(shape[0], int)
        or not 1 <= shape[0] <= max_batch
    ):
        raise ProtocolError(
            f"input {spec['name']!r} must have shape [N, {', '.join(map(str, expected))}] "
            f"with 1 <= N <= {max_batch}; got {shape}"
        )
    try:
        array = (
            np.frombuffer(data, dtype="<f4")
            if isinstance(data, bytes)
            else np.asarray(data, dtype=np.float32).reshape(-1)
        )
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"input {spec['name']!r}: data must be numbers ({exc})") from None
    if array.size != int(np.prod(shape)):
        raise ProtocolError(
            f"input {spec['name']!r}: {array.size} values for shape {shape}, which holds {int(np.prod(shape))}"
        )
    if not np.isfinite(array).all():
        raise ProtocolError(f"input {spec['name']!r}: NaN or infinite values")
    return torch.from_numpy(array.astype(np.float32).reshape(shape))


def encoded_images(spec: dict, data, max_images: int) -> list[tuple[str, bytes]]:
    """A BYTES input of encoded images (binary, or base64 strings in JSON), each named input[i]."""
    if isinstance(data, bytes):
        images = deserialize_bytes(data)
    else:
        try:
            images = [base64.b64decode(item, validate=True) for item in np.asarray(data, dtype=object).reshape(-1)]
        except (ValueError, TypeError):
            raise ProtocolError(f"input {spec['name']!r}: BYTES data in JSON must be base64 strings") from None
    if not 1 <= len(images) <= max_images:
        raise ProtocolError(f"input {spec['name']!r}: 1 to {max_images} images per request")
    shape = spec.get("shape")
    if not (isinstance(shape, list) and shape and all(isinstance(d, int) and d >= 1 for d in shape)) or int(
        np.prod(shape)
    ) != len(images):
        raise ProtocolError(
            f"input {spec['name']!r}: shape {shape} does not hold its {len(images)} image(s); give [{len(images)}]"
        )
    return [(f"{spec['name']}[{i}]", image) for i, image in enumerate(images)]


WITHHELD_INDEX = -1  # a classification entry `P:-1:`: no class, the top probability P is below the threshold


def requested_threshold(header: dict, predictor: Predictor) -> float | None:
    """The request's `threshold` parameter (a number from 0 to 1, for a classifier), or None."""
    value = (header.get("parameters") or {}).get("threshold")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ProtocolError(f"parameter 'threshold' must be a number from 0 to 1, not {value!r}")
    if predictor.task != "classification":
        raise ProtocolError("parameter 'threshold' applies to classification models")
    return float(value)


def _classification(predictor: Predictor, probs: torch.Tensor, k: int, threshold: float | None) -> list[str]:
    """Top-k `value:index:label` strings, row by row; a row whose top probability is below the
    threshold starts with `P:-1:` (withheld: no index, empty label), then its k - 1 most likely classes."""
    strings = []
    for row in predictor.label(probs, k, threshold):
        entries = [f"{c['probability']:f}:{c['index']}:{c['label']}" for c in row.top_k]
        if row.below_threshold:
            entries = [f"{row.probability:f}:{WITHHELD_INDEX}:", *entries[:-1]]
        strings.extend(entries)
    return strings


def outputs(
    request_outputs: list,
    probs: torch.Tensor,
    predictor: Predictor,
    binary_default: bool,
    threshold: float | None = None,
) -> list[dict]:
    """Output tensors with their values in `data`; `binary` marks those to send as binary data.
    `threshold` applies to the classification output (raw probabilities are sent as they are)."""
    output_name = "probabilities" if predictor.task == "classification" else "predictions"
    wanted = request_outputs or [{"name": output_name, "parameters": {"binary_data": binary_default}}]
    results = []
    for out in wanted:
        if not isinstance(out, dict) or out.get("name") != output_name:
            raise ProtocolError(
                f"unknown output {out.get('name') if isinstance(out, dict) else out!r}; this model has {output_name!r}"
            )
        parameters = out.get("parameters") or {}
        binary = bool(parameters.get("binary_data", binary_default))
        k = parameters.get("classification")
        if k is None:
            results.append(
                {
                    "name": output_name,
                    "datatype": "FP32",
                    "shape": list(probs.shape),
                    "data": probs.reshape(-1).tolist(),
                    "binary": binary,
                }
            )
            continue
        if predictor.task != "classification" or not isinstance(k, int) or k < 1:
            raise ProtocolError("classification needs a positive integer on a classification model")
        k = min(k, probs.shape[1])
        strings = _classification(predictor, probs, k, threshold)
        results.append(
            {"name": output_name, "datatype": "BYTES", "shape": [probs.shape[0], k], "data": strings, "binary": binary}
        )
    return results


def _serialize(output: dict) -> bytes:
    if output["datatype"] == "BYTES":
        return b"".join(struct.pack("<I", len(e)) + e for e in (item.encode() for item in output["data"]))
    return np.asarray(output["data"], dtype="<f4").tobytes()


def response(body: dict, outputs: list[dict]) -> Response:
    """JSON, or JSON followed by binary tensor data when any output asked for it."""
    chunks = []
    for output in outputs:
        if output.pop("binary"):
            raw = _serialize(output)
            del output["data"]
            output["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
    body["outputs"] = outputs
    if not chunks:
        return JSONResponse(body)
    header = json.dumps(body).encode()
    return Response(
        header + b"".join(chunks),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )

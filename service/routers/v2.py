"""The Open Inference Protocol (v2, as spoken by Triton and KServe) over HTTP.

Models are registry references (`name`, or `job:ID`), versions are registry versions. Inputs are
an FP32 tensor [N, *input_shape] or a BYTES tensor [N] of encoded images (PNG, JPEG, ...), in
JSON or in the binary tensor data extension. The output `probabilities` (FP32 [N, classes]) can
be asked for as top-k `value:index:label` strings with the `classification` parameter.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from models.predictor import InputError
from service.db import ping
from service.deps import ModelServerDep, SettingsDep
from service.routers.predict import load_model

router = APIRouter(prefix="/v2", tags=["open inference protocol"])
SERVER_VERSION = "0.1.0"


class ProtocolError(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _reference(name: str, version: str | None) -> str:
    return f"{name}:{version}" if version else name


@router.get("/health/live")
def live() -> dict:
    """The server is up."""
    return {"live": True}


@router.get("/health/ready", responses={503: {"description": "Not ready"}})
async def ready(request: Request) -> JSONResponse:
    """Ready when the database answers and preloaded models can serve."""
    try:
        await run_in_threadpool(ping)
    except Exception as exc:
        return JSONResponse({"ready": False, "error": str(exc)}, status_code=503)
    if request.app.state.preload.status() != "ok":
        return JSONResponse({"ready": False, "error": request.app.state.preload.status()}, status_code=503)
    return JSONResponse({"ready": True})


@router.get("")
def server_metadata() -> dict:
    """Name, version and supported protocol extensions."""
    return {"name": "trainyard", "version": SERVER_VERSION, "extensions": ["classification", "binary_tensor_data"]}


async def _metadata(name: str, version: str | None, settings, server) -> JSONResponse:
    try:
        target, loaded = await load_model(settings, server, _reference(name, version))
    except HTTPException as exc:
        return _error(exc.detail, exc.status_code)
    predictor = loaded.predictor
    shape = predictor.meta["input_shape"]
    outputs = len(predictor.classes) if predictor.classes else 1
    inputs = [{"name": "input", "datatype": "FP32", "shape": [-1, *shape]}]
    if predictor.preprocess.get("kind") == "image":
        inputs.append({"name": "images", "datatype": "BYTES", "shape": [-1]})
    output = "probabilities" if predictor.task == "classification" else "predictions"
    return JSONResponse({
        "name": name, "versions": [str(target.version)] if target.version else ["1"], "platform": "pytorch",
        "inputs": inputs, "outputs": [{"name": output, "datatype": "FP32", "shape": [-1, outputs]}],
        "parameters": {"classes": predictor.classes, "job_id": target.job_id, "epoch": target.epoch},
    })


@router.get("/models/{name}", responses={404: {"description": "Unknown model"}})
async def model_metadata(name: str, settings: SettingsDep, server: ModelServerDep) -> JSONResponse:
    """Inputs and outputs of a model."""
    return await _metadata(name, None, settings, server)


@router.get("/models/{name}/versions/{version}", responses={404: {"description": "Unknown model"}})
async def model_version_metadata(name: str, version: str, settings: SettingsDep,
                                 server: ModelServerDep) -> JSONResponse:
    """Inputs and outputs of one version of a model."""
    return await _metadata(name, version, settings, server)


async def _ready(name, version, settings, server) -> JSONResponse:
    try:
        await load_model(settings, server, _reference(name, version))
    except HTTPException as exc:
        return _error(exc.detail, exc.status_code)
    return JSONResponse({"name": name, "ready": True})


@router.get("/models/{name}/ready", responses={404: {"description": "Unknown model"}})
async def model_ready(name: str, settings: SettingsDep, server: ModelServerDep) -> JSONResponse:
    """Loads the model (once) and says whether it can serve."""
    return await _ready(name, None, settings, server)


@router.get("/models/{name}/versions/{version}/ready", responses={404: {"description": "Unknown model"}})
async def model_version_ready(name: str, version: str, settings: SettingsDep,
                              server: ModelServerDep) -> JSONResponse:
    """Loads one version of the model (once) and says whether it can serve."""
    return await _ready(name, version, settings, server)


def _split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
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


def _tensor_data(spec: dict, binary: bytes, offset: int) -> tuple[Any, int]:
    """An input's data: from JSON, or its slice of the binary section (then bytes)."""
    size = (spec.get("parameters") or {}).get("binary_data_size")
    if size is None:
        if "data" not in spec:
            raise ProtocolError(f"input {spec.get('name')!r} has no data")
        return spec["data"], offset
    if not isinstance(size, int) or size < 0 or offset + size > len(binary):
        raise ProtocolError(f"input {spec.get('name')!r}: binary_data_size does not fit the body")
    return binary[offset:offset + size], offset + size


def _deserialize_bytes(raw: bytes) -> list[bytes]:
    """Triton's BYTES encoding: each element is a 4-byte little-endian length, then the bytes."""
    items, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise ProtocolError("truncated BYTES tensor")
        (length,) = struct.unpack_from("<I", raw, i)
        i += 4
        if i + length > len(raw):
            raise ProtocolError("truncated BYTES tensor")
        items.append(raw[i:i + length])
        i += length
    return items


def _fp32_input(spec: dict, data, predictor, max_batch: int) -> torch.Tensor:
    shape = spec.get("shape")
    expected = predictor.meta["input_shape"]
    if (not isinstance(shape, list) or len(shape) != len(expected) + 1 or list(shape[1:]) != list(expected)
            or not isinstance(shape[0], int) or not 1 <= shape[0] <= max_batch):
        raise ProtocolError(f"input {spec['name']!r} must have shape [N, {', '.join(map(str, expected))}] "
                            f"with 1 <= N <= {max_batch}; got {shape}")
    try:
        array = (np.frombuffer(data, dtype="<f4") if isinstance(data, bytes)
                 else np.asarray(data, dtype=np.float32).reshape(-1))
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"input {spec['name']!r}: data must be numbers ({exc})") from None
    if array.size != int(np.prod(shape)):
        raise ProtocolError(f"input {spec['name']!r}: {array.size} values for shape {shape}")
    if not np.isfinite(array).all():
        raise ProtocolError(f"input {spec['name']!r}: NaN or infinite values")
    return torch.from_numpy(array.astype(np.float32).reshape(shape))


def _bytes_input(spec: dict, data, predictor, settings) -> torch.Tensor:
    if isinstance(data, bytes):
        images = _deserialize_bytes(data)
    else:
        try:
            images = [base64.b64decode(item, validate=True) for item in np.asarray(data, dtype=object).reshape(-1)]
        except (ValueError, TypeError):
            raise ProtocolError(f"input {spec['name']!r}: BYTES data in JSON must be base64 strings") from None
    if not 1 <= len(images) <= settings.max_files_per_request:
        raise ProtocolError(f"input {spec['name']!r}: 1 to {settings.max_files_per_request} images per request")
    try:
        decoded = [predictor.decode_image(image, f"{spec['name']}[{i}]", max_pixels=settings.max_image_pixels)
                   for i, image in enumerate(images)]
    except InputError as exc:
        raise ProtocolError(str(exc)) from None
    return torch.stack(decoded)


def _outputs(request_outputs: list, probs: torch.Tensor, predictor, binary_default: bool) -> list[dict]:
    """Output tensors with their values in `data`; `binary` marks those to send as binary data."""
    output_name = "probabilities" if predictor.task == "classification" else "predictions"
    wanted = request_outputs or [{"name": output_name, "parameters": {"binary_data": binary_default}}]
    results = []
    for out in wanted:
        if not isinstance(out, dict) or out.get("name") != output_name:
            raise ProtocolError(f"unknown output {out.get('name') if isinstance(out, dict) else out!r}; "
                                f"this model has {output_name!r}")
        parameters = out.get("parameters") or {}
        binary = bool(parameters.get("binary_data", binary_default))
        k = parameters.get("classification")
        if k is None:
            results.append({"name": output_name, "datatype": "FP32", "shape": list(probs.shape),
                            "data": probs.reshape(-1).tolist(), "binary": binary})
            continue
        if predictor.task != "classification" or not isinstance(k, int) or k < 1:
            raise ProtocolError("classification needs a positive integer on a classification model")
        k = min(k, probs.shape[1])
        values, indices = probs.topk(k, dim=1)
        strings = [f"{v:f}:{i}:{predictor.classes[i]}" for row_v, row_i in zip(values.tolist(), indices.tolist())
                   for v, i in zip(row_v, row_i)]
        results.append({"name": output_name, "datatype": "BYTES", "shape": [probs.shape[0], k], "data": strings,
                        "binary": binary})
    return results


def _serialize(output: dict) -> bytes:
    if output["datatype"] == "BYTES":
        return b"".join(struct.pack("<I", len(e)) + e for e in (item.encode() for item in output["data"]))
    return np.asarray(output["data"], dtype="<f4").tobytes()


def _response(body: dict, outputs: list[dict]) -> Response:
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
    return Response(header + b"".join(chunks), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(header))})


async def _infer(name, version, request: Request, settings, server) -> Response:
    try:
        target, loaded = await load_model(settings, server, _reference(name, version))
    except HTTPException as exc:
        return _error(exc.detail, exc.status_code)
    predictor = loaded.predictor
    try:
        header, binary = _split_body(await request.body(), request.headers.get("inference-header-content-length"))
        if not isinstance(header, dict) or not isinstance(header.get("inputs"), list) or len(header["inputs"]) != 1:
            raise ProtocolError("the request needs exactly one input")
        spec = header["inputs"][0]
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ProtocolError("each input needs a name, shape, datatype and data")
        data, _ = _tensor_data(spec, binary, 0)
        if spec.get("datatype") == "FP32":
            inputs = _fp32_input(spec, data, predictor, settings.max_batch_size)
        elif spec.get("datatype") == "BYTES" and predictor.preprocess.get("kind") == "image":
            inputs = await run_in_threadpool(_bytes_input, spec, data, predictor, settings)
        else:
            raise ProtocolError(f"input datatype {spec.get('datatype')!r} is not supported by this model; "
                                "use FP32 (or BYTES images for image models)")
        probs = await server.probabilities(loaded, inputs)
        binary_default = bool((header.get("parameters") or {}).get("binary_data_output", False))
        outputs = _outputs(header.get("outputs") or [], probs, predictor, binary_default)
    except ProtocolError as exc:
        return _error(str(exc), exc.status)
    response = {"model_name": name, "model_version": str(target.version or 1)}
    if isinstance(header.get("id"), str):
        response["id"] = header["id"]
    return _response(response, outputs)


INFER_DOC = {"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}},
                                                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
INFER_ERRORS = {400: {"description": "The request does not fit the protocol or the model"},
                404: {"description": "Unknown model"}, 409: {"description": "The job has no checkpoint yet"}}


@router.post("/models/{name}/infer", responses=INFER_ERRORS, openapi_extra=INFER_DOC)
async def infer(name: str, request: Request, settings: SettingsDep,
                server: ModelServerDep) -> Response:
    """Run inference (Open Inference Protocol v2)."""
    return await _infer(name, None, request, settings, server)


@router.post("/models/{name}/versions/{version}/infer", responses=INFER_ERRORS, openapi_extra=INFER_DOC)
async def infer_version(name: str, version: str, request: Request, settings: SettingsDep,
                        server: ModelServerDep) -> Response:
    """Run inference on one version of a model (Open Inference Protocol v2)."""
    return await _infer(name, version, request, settings, server)

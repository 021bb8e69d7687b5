"""The Open Inference Protocol (v2) over HTTP; the encoding lives in service/api/v2.py.

Models are registry references (`name`, or `job:ID`), versions are registry versions. Inputs are
an FP32 tensor [N, *input_shape] or a BYTES tensor [N] of encoded images (PNG, JPEG, ...), in
JSON or in the binary tensor data extension. The output `probabilities` (FP32 [N, classes]) can
be asked for as top-k `value:index:label` strings with the `classification` parameter; there a
row whose top probability is below the threshold (the request's `threshold` parameter, else the
version's default) starts with `P:-1:`: no class, P the top probability.
"""

from __future__ import annotations

import torch
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from models.checkpoint import CheckpointError
from models.inference.predictor import InputError
from service.api import v2
from service.api.auth import READS_ONLY
from service.api.deps import ModelServerDep, SettingsDep
from service.api.errors import headers_for, status_for
from service.api.serving import LoadedModel, ModelServer
from service.core.errors import CoreError
from service.core.migrate import schema_problem
from service.core.references import ModelNotFound, ResolvedCheckpoint
from service.core.storage import get_storage

router = APIRouter(prefix="/v2", tags=["open inference protocol"])
# Liveness and readiness stay open, as /healthz and /readyz do: orchestrators' probes send no token.
probes = APIRouter(prefix="/v2", tags=["open inference protocol"])
SERVER_VERSION = "0.1.0"


def _error(message: str, status: int, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _reference(name: str, version: str | None) -> str:
    if version is not None and not (version.isascii() and version.isdigit()):
        raise ModelNotFound(
            f"model {name!r} has no version {version!r}: a version is a number (a registered model's "
            "version, or for job:<id> one of its epochs)"
        )
    return f"{name}:{version}" if version else name


async def _serve(
    server: ModelServer, name: str, version: str | None
) -> tuple[ResolvedCheckpoint, LoadedModel] | JSONResponse:
    """The model a v2 name and version name, or the protocol's error answer."""
    try:
        return await server.get(_reference(name, version))
    except (CoreError, CheckpointError) as exc:
        return _error(str(exc), status_for(exc), headers_for(exc))


@probes.get("/health/live")
def live() -> dict:
    """The server is up."""
    return {"live": True}


@probes.get("/health/ready", responses={503: {"description": "Not ready"}})
async def ready(request: Request) -> JSONResponse:
    """Ready when the database answers (migrated to this version's schema), preloaded models can
    serve and the store is the service's."""
    try:
        problem = await run_in_threadpool(schema_problem)
    except Exception as exc:
        problem = str(exc)
    if problem:
        return JSONResponse({"ready": False, "error": problem}, status_code=503)
    if request.app.state.preload.status() != "ok":
        return JSONResponse({"ready": False, "error": request.app.state.preload.status()}, status_code=503)
    problem = await run_in_threadpool(request.app.state.store_readiness.problem, get_storage().store)
    if problem:
        return JSONResponse({"ready": False, "error": f"error: {problem}"}, status_code=503)
    return JSONResponse({"ready": True})


@router.get("")
def server_metadata() -> dict:
    """Name, version and supported protocol extensions."""
    return {"name": "trainyard", "version": SERVER_VERSION, "extensions": ["classification", "binary_tensor_data"]}


async def _metadata(server: ModelServer, name: str, version: str | None) -> JSONResponse:
    served = await _serve(server, name, version)
    if isinstance(served, JSONResponse):
        return served
    target, loaded = served
    return JSONResponse(
        v2.metadata(name, v2.version_label(target), loaded.predictor, target.job_id, target.epoch, target.threshold)
    )


@router.get("/models/{name}", responses={404: {"description": "Unknown model"}})
async def model_metadata(name: str, server: ModelServerDep) -> JSONResponse:
    """Inputs and outputs of a model."""
    return await _metadata(server, name, None)


@router.get("/models/{name}/versions/{version}", responses={404: {"description": "Unknown model"}})
async def model_version_metadata(name: str, version: str, server: ModelServerDep) -> JSONResponse:
    """Inputs and outputs of one version of a model."""
    return await _metadata(server, name, version)


async def _ready(server: ModelServer, name: str, version: str | None) -> JSONResponse:
    served = await _serve(server, name, version)
    if isinstance(served, JSONResponse):
        return served
    return JSONResponse({"name": name, "ready": True})


@router.get("/models/{name}/ready", responses={404: {"description": "Unknown model"}})
async def model_ready(name: str, server: ModelServerDep) -> JSONResponse:
    """Loads the model (once) and says whether it can serve."""
    return await _ready(server, name, None)


@router.get("/models/{name}/versions/{version}/ready", responses={404: {"description": "Unknown model"}})
async def model_version_ready(name: str, version: str, server: ModelServerDep) -> JSONResponse:
    """Loads one version of the model (once) and says whether it can serve."""
    return await _ready(server, name, version)


async def _infer(name: str, version: str | None, request: Request, settings, server: ModelServer) -> Response:
    try:
        async with server.deadline():
            target, loaded = await server.get(_reference(name, version))
            header, binary = v2.split_body(await request.body(), request.headers.get("inference-header-content-length"))
            probs = await _run(server, loaded, header, binary, settings)
            binary_default = bool((header.get("parameters") or {}).get("binary_data_output", False))
            threshold = target.threshold_for(v2.requested_threshold(header, loaded.predictor))
            outputs = v2.outputs(header.get("outputs") or [], probs, loaded.predictor, binary_default, threshold)
    except (CoreError, CheckpointError) as exc:
        return _error(str(exc), status_for(exc), headers_for(exc))
    except v2.ProtocolError as exc:
        return _error(str(exc), exc.status)
    answer = {"model_name": name, "model_version": v2.version_label(target)}
    if isinstance(header.get("id"), str):
        answer["id"] = header["id"]
    return v2.response(answer, outputs)


async def _run(server: ModelServer, loaded: LoadedModel, header, binary: bytes, settings) -> torch.Tensor:
    """The model's outputs for the request's one input."""
    predictor = loaded.predictor
    spec = v2.single_input(header)
    data, _ = v2.tensor_data(spec, binary, 0)
    if spec.get("datatype") == "FP32":
        return await server.probabilities(loaded, v2.fp32_input(spec, data, predictor, settings.max_batch_size))
    if spec.get("datatype") == "BYTES" and predictor.contract.images:
        images = v2.encoded_images(spec, data, settings.max_files_per_request)
        try:
            return await server.image_probabilities(loaded, images)
        except InputError as exc:
            raise v2.ProtocolError(str(exc)) from None
    raise v2.ProtocolError(
        f"input datatype {spec.get('datatype')!r} is not supported by this model; "
        "use FP32 (or BYTES images for image models)"
    )


INFER_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
INFER_ERRORS = {
    400: {"description": "The request does not fit the protocol or the model"},
    404: {"description": "Unknown model"},
    409: {"description": "The job has no checkpoint yet"},
}


@router.post("/models/{name}/infer", responses=INFER_ERRORS, openapi_extra={**INFER_DOC, **READS_ONLY})
async def infer(name: str, request: Request, settings: SettingsDep, server: ModelServerDep) -> Response:
    """Run inference (Open Inference Protocol v2)."""
    return await _infer(name, None, request, settings, server)


@router.post(
    "/models/{name}/versions/{version}/infer", responses=INFER_ERRORS, openapi_extra={**INFER_DOC, **READS_ONLY}
)
async def infer_version(
    name: str, version: str, request: Request, settings: SettingsDep, server: ModelServerDep
) -> Response:
    """Run inference on one version of a model (Open Inference Protocol v2)."""
    return await _infer(name, version, request, settings, server)

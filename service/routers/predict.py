"""Predict with a trained model: uploaded images (multipart or a raw image body) or numeric rows (JSON)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile

from models.checkpoint import CheckpointError
from models.predictor import InputError
from service.db import session_scope
from service.inference import LoadedModel, ModelServer
from service.model_store import ModelNotFound, ModelNotReady, ResolvedCheckpoint, resolve
from service.schemas import ImagePrediction, PredictResponse, ResolvedModel, ValuesPrediction
from service.settings import Settings, get_settings

router = APIRouter(prefix="/v1", tags=["predict"])

ERRORS = {
    404: {"description": "No model answers to this reference"},
    409: {"description": "The job has no checkpoint yet"},
    413: {"description": "The upload is larger than the limit"},
    415: {"description": "Unsupported content type"},
    422: {"description": "An input is not usable, or a parameter is out of range"},
}


class PredictValues(BaseModel):
    """Numeric inputs for a model trained on tabular data (regression or classification)."""

    model: Annotated[str, Field(min_length=1, max_length=200)]
    inputs: Annotated[list[list[float]], Field(min_length=1, max_length=10_000)]
    top_k: Annotated[int, Field(ge=1, le=1000)] = 1


MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["model", "files"],
    "properties": {
        "model": {"type": "string", "minLength": 1, "maxLength": 200,
                  "description": "name, name:VERSION, name@ALIAS, job:ID or job:ID:best|last|EPOCH"},
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1},
        "top_k": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 1},
    },
}
PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": MULTIPART_SCHEMA},
    "application/json": {"schema": PredictValues.model_json_schema()},
}}}


def _serving(request: Request) -> tuple[Settings, ModelServer]:
    """What SettingsDep and ModelServerDep give, read directly: a dependency costs the predict
    routes, which must stay close to the cost of bare HTTP, about 10 us a request each."""
    return get_settings(), request.app.state.models


def _json(answer: PredictResponse) -> Response:
    """The answer serialised once, in pydantic's core: a built model needs no second validation."""
    return Response(answer.model_dump_json(), media_type="application/json")


def _invalid(loc: tuple, msg: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("body", *loc), "msg": msg, "input": None}])


def _resolve(settings: Settings, reference: str) -> ResolvedCheckpoint:
    """Resolve a reference in a read session of its own (call in a thread: it queries the database)."""
    with session_scope(write=False) as session:
        return resolve(session, reference=reference, settings=settings)


async def load_model(settings: Settings, server: ModelServer, reference: str) -> tuple[ResolvedCheckpoint, LoadedModel]:
    """Resolve a reference and get its loaded model, mapping failures to HTTP errors.

    A hot model is served without leaving the event loop or touching the database: its
    reference was resolved within the last reference_cache_seconds and its predictor is in
    the cache.
    """
    try:
        target, refresh = server.references.lookup(reference)
        if target is None:
            target = await run_in_threadpool(_resolve, settings, reference)
            server.references.put(reference, target)
        elif refresh:
            asyncio.get_running_loop().create_task(_refresh(server, settings, reference))
        loaded = server.loaded(target.path) or await run_in_threadpool(server.load, target.path)
    except ModelNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except ModelNotReady as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except CheckpointError as exc:
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, f"model {reference!r} cannot be loaded: {exc}") from exc
    return target, loaded


async def _refresh(server: ModelServer, settings: Settings, reference: str) -> None:
    """Re-resolve a reference in the background (its stale resolution is served meanwhile)."""
    try:
        server.references.put(reference, await run_in_threadpool(_resolve, settings, reference))
    except Exception:  # gone or broken: the next request resolves it afresh and reports why
        server.references.forget(reference)


def resolved_model(target: ResolvedCheckpoint, loaded: LoadedModel) -> ResolvedModel:
    predictor = loaded.predictor
    return ResolvedModel(reference=target.reference, job_id=target.job_id, epoch=target.epoch, name=target.name,
                         version=target.version, task=predictor.task, classes=predictor.classes,
                         input_shape=predictor.meta["input_shape"])


async def classify_uploads(settings: Settings, server: ModelServer, reference: str,
                           uploads: list[tuple[str, bytes]], top_k: int) -> PredictResponse:
    """Decode the uploaded images off the event loop and classify them in one (shared) batch."""
    target, loaded = await load_model(settings, server, reference)
    predictor = loaded.predictor
    if predictor.task != "classification" or predictor.preprocess.get("kind") != "image":
        raise _invalid(("model",), f"model {reference!r} does not classify images; send JSON inputs instead")
    if top_k > len(predictor.classes):
        raise _invalid(("top_k",), f"top_k is {top_k} but model {reference!r} has {len(predictor.classes)} classes")

    try:
        results = await server.classify_images(loaded, uploads, settings.max_image_pixels, top_k)
    except InputError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    return PredictResponse(
        model=resolved_model(target, loaded),
        predictions=[ImagePrediction(filename=name, label=r.label, index=r.index, probability=r.probability,
                                     top_k=r.top_k) for (name, _), r in zip(uploads, results)])


async def predict_values(settings: Settings, server: ModelServer, body: PredictValues) -> PredictResponse:
    target, loaded = await load_model(settings, server, body.model)
    predictor = loaded.predictor
    try:
        inputs = predictor.decode_values(body.inputs)
    except InputError as exc:
        raise _invalid(("inputs",), f"model {body.model!r}: {exc}") from exc
    outputs = await server.probabilities(loaded, inputs)
    if predictor.task == "regression":
        values = outputs.tolist()
        predictions = [ValuesPrediction(value=row[0] if len(row) == 1 else row) for row in values]
    else:
        predictions = [ValuesPrediction(label=r.label, index=r.index, probability=r.probability, top_k=r.top_k)
                       for r in predictor.label(outputs, body.top_k)]
    return PredictResponse(model=resolved_model(target, loaded), predictions=predictions)


async def _form_uploads(request: Request, settings: Settings) -> tuple[str, list[tuple[str, bytes]], int]:
    limit = settings.max_files_per_request
    form = await request.form(max_files=limit + 1, max_fields=20)
    model = form.get("model")
    if not isinstance(model, str) or not 1 <= len(model) <= 200:
        raise _invalid(("model",), "model is required: name, name:VERSION, name@ALIAS or job:ID")
    files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
    if not files:
        raise _invalid(("files",), "at least one image is required in the files field")
    if len(files) > limit:
        raise _invalid(("files",), f"{len(files)} files sent; at most {limit} per request")
    raw_k = form.get("top_k", "1")
    if not isinstance(raw_k, str) or not raw_k.strip().isdigit() or not 1 <= int(raw_k) <= 1000:
        raise _invalid(("top_k",), "top_k must be an integer from 1 to 1000")
    uploads = [(f.filename or f"file{i}", await f.read()) for i, f in enumerate(files)]
    return model, uploads, int(raw_k)


@router.post("/predict", response_model=PredictResponse, responses=ERRORS, openapi_extra=PREDICT_BODY)
async def predict(request: Request) -> Response:
    """Classify uploaded images (multipart `model`, `files`, `top_k`), or predict from numeric
    rows (JSON `{"model", "inputs": [[...], ...]}`)."""
    settings, server = _serving(request)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        try:
            body = PredictValues.model_validate_json(await request.body())
        except ValidationError as exc:
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc
        return _json(await predict_values(settings, server, body))
    if content_type.startswith("multipart/form-data"):
        model, uploads, top_k = await _form_uploads(request, settings)
        return _json(await classify_uploads(settings, server, model, uploads, top_k))
    raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                        "send multipart/form-data with model and files, or application/json with model and inputs")


@router.post("/models/{reference}/predict", response_model=PredictResponse, responses=ERRORS, openapi_extra={
    "requestBody": {"required": True, "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}}}})
async def predict_raw_image(reference: str, request: Request,
                            top_k: Annotated[int, Query(ge=1, le=1000)] = 1) -> Response:
    """Classify one image sent as the raw request body (Content-Type image/*)."""
    settings, server = _serving(request)
    if not request.headers.get("content-type", "").startswith("image/"):
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "send the image as the body with Content-Type image/*")
    return _json(await classify_uploads(settings, server, reference, [("body", await request.body())], top_k))

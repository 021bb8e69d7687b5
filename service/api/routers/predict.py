"""Predict: classify uploaded images (multipart or a raw body), or predict from numeric rows."""

from __future__ import annotations

from collections.abc import Container, Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import Response
from pydantic import ValidationError

from service.api.auth import READS_ONLY
from service.api.errors import unknown_fields_error, validation_error
from service.api.multipart import FormError, TooManyParts, parse_form
from service.api.schemas.predict import (
    MAX_TOP_K,
    THRESHOLD_DOC,
    PredictResponse,
    PredictValues,
    image_answer,
    values_answer,
)
from service.api.serving import IMAGES_HINT, ModelServer
from service.core.errors import Invalid
from service.core.settings import get_settings

router = APIRouter(prefix="/v1", tags=["predict"])

ERRORS = {
    404: {"description": "No model answers to this reference"},
    409: {"description": "The job has no checkpoint yet"},
    413: {"description": "The upload is larger than the limit"},
    415: {"description": "Unsupported content type"},
    422: {"description": "An input is not usable, or a parameter is out of range"},
}


MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["model", "files"],
    "properties": {
        "model": {
            "type": "string",
            "minLength": 1,
            "maxLength": 200,
            "description": "name, name:VERSION, name@ALIAS, job:ID or job:ID:best|last|EPOCH",
        },
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1},
        "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K, "default": 1},
        "threshold": {"type": "number", "minimum": 0, "maximum": 1, "description": THRESHOLD_DOC},
    },
}
FORM_FIELDS = frozenset(MULTIPART_SCHEMA["properties"])
OPTIONS = ("top_k", "threshold")  # in the body or the query string, as the raw-image route takes them
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": MULTIPART_SCHEMA},
            "application/json": {"schema": PredictValues.model_json_schema()},
        },
    },
    "parameters": [
        {
            "name": name,
            "in": "query",
            "required": False,
            "schema": MULTIPART_SCHEMA["properties"][name],
            "description": f"{name} here instead of in the body (giving it in both is a 422)",
        }
        for name in OPTIONS
    ],
}


def _server(request: Request) -> ModelServer:
    """What ModelServerDep gives, read directly: a dependency costs the predict routes, which
    must stay close to the cost of bare HTTP, about 10 us a request each."""
    return request.app.state.models


def _json(answer: PredictResponse) -> Response:
    """The answer serialised once, in pydantic's core: a built model needs no second validation."""
    return Response(answer.model_dump_json(), media_type="application/json")


def _json_refused(exc: ValidationError) -> Exception:
    """Why a JSON predict body was refused; images sent as JSON (`files`, or no `inputs`) are told
    how images are sent."""
    errors = exc.errors()
    if any(e["loc"] == ("inputs",) and isinstance(e.get("input"), dict) and "files" in e["input"] for e in errors):
        return HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, f"JSON carries numeric `inputs` only; {IMAGES_HINT}"
        )
    return validation_error(
        [
            (
                ("body", *e["loc"]),
                f"{e['msg']}: numeric rows go in `inputs`; {IMAGES_HINT}"
                if e["loc"] == ("inputs",) and e["type"] == "missing"
                else e["msg"],
            )
            for e in errors
        ]
    )


def _invalid(loc: tuple, msg: str):
    return validation_error([(("body", *loc), msg)])


async def classify(
    server: ModelServer, reference: str, uploads: list[tuple[str, bytes]], top_k: int, threshold: float | None = None
) -> Response:
    target, loaded, results = await server.classify_uploads(reference, uploads, top_k, threshold)
    return _json(image_answer(target, loaded.predictor, [name for name, _ in uploads], results, threshold))


def _top_k(raw: str, where: str) -> int:
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4 and 1 <= int(raw) <= MAX_TOP_K):  # "²".isdigit()
        raise validation_error([((where, "top_k"), f"top_k must be an integer from 1 to {MAX_TOP_K}")])
    return int(raw)


def _threshold(raw: str | None, where: str) -> float | None:
    """A threshold given as text: a number from 0 to 1, or None when it is not given."""
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1:  # NaN too
        raise validation_error([((where, "threshold"), f"threshold must be a number from 0 to 1, not {raw[:50]!r}")])
    return value


def _query_options(request: Request, in_body: Container[str]) -> dict[str, int | float]:
    """top_k and threshold given in the query string, where POST /v1/models/{model}/predict takes
    them, read as the body's are: honoured here too rather than ignored, and refused when the body
    gives them as well."""
    given = {name: request.query_params[name] for name in OPTIONS if name in request.query_params}
    twice = [name for name in given if name in in_body]
    if twice:
        raise validation_error(
            [(("query", name), f"{name} is given in the query and in the body; give it once") for name in twice]
        )
    read = {"top_k": _top_k, "threshold": _threshold}
    return {name: read[name](raw, "query") for name, raw in given.items()}


@contextmanager
def _located(query: Container[str]) -> Iterator[None]:
    """A model's refusal of an option the query gave (top_k past its classes) is reported at the query."""
    try:
        yield
    except Invalid as exc:
        if not any(loc and loc[0] in query for loc, _ in exc.problems):
            raise
        raise validation_error(
            [(("query" if loc and loc[0] in query else "body", *loc), msg) for loc, msg in exc.problems]
        ) from exc


async def _form_uploads(request: Request) -> tuple[str, list[tuple[str, bytes]], int, float | None, dict]:
    limit = get_settings().max_files_per_request
    try:
        parts = parse_form(await request.body(), request.headers["content-type"], max_parts=limit + 20)
    except TooManyParts as exc:  # images past the limit, most likely: say it as a count of files does
        raise _invalid(("files",), f"{exc}; at most {limit} per request (TRAINYARD_MAX_FILES_PER_REQUEST)") from None
    except FormError as exc:
        raise validation_error([(("body",), str(exc))]) from None
    unknown = unknown_fields_error((part.name for part in parts), FORM_FIELDS)
    if unknown is not None:
        raise unknown
    fields = {part.name: part.text for part in parts if part.filename is None}
    model = fields.get("model")
    if model is None or not 1 <= len(model) <= 200:
        raise _invalid(("model",), "model is required: name, name:VERSION, name@ALIAS or job:ID")
    files = [part for part in parts if part.name == "files" and part.filename is not None]
    if not files:
        raise _invalid(("files",), "at least one image is required in the files field")
    if len(files) > limit:
        raise _invalid(
            ("files",), f"{len(files)} files sent; at most {limit} per request (TRAINYARD_MAX_FILES_PER_REQUEST)"
        )
    query = _query_options(request, fields)
    return (
        model,
        [(f.filename or f"file{i}", bytes(f.data)) for i, f in enumerate(files)],
        query["top_k"] if "top_k" in query else _top_k(fields.get("top_k", "1"), "body"),
        query["threshold"] if "threshold" in query else _threshold(fields.get("threshold"), "body"),
        query,
    )


@router.post("/predict", response_model=PredictResponse, responses=ERRORS, openapi_extra={**PREDICT_BODY, **READS_ONLY})
async def predict(request: Request) -> Response:
    """Classify uploaded images (multipart `model`, `files`, `top_k`, `threshold`), or predict from
    numeric rows (JSON `{"model", "inputs": [[...], ...], "top_k", "threshold"}`)."""
    server = _server(request)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        try:
            body = PredictValues.model_validate_json(await request.body())
        except ValidationError as exc:
            raise _json_refused(exc) from exc
        query = _query_options(request, body.model_fields_set)
        body = body.model_copy(update=query) if query else body
        with _located(query):
            target, loaded, outputs = await server.predict_values(body.model, body.inputs, body.threshold, body.top_k)
        return _json(values_answer(target, loaded.predictor, outputs, body.top_k, body.threshold))
    if content_type.startswith("multipart/form-data"):
        *form, query = await _form_uploads(request)
        with _located(query):
            return await classify(server, *form)
    raise HTTPException(
        status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
        "send multipart/form-data with model and files, or application/json with model and inputs",
    )


@router.post(
    "/models/{reference}/predict",
    response_model=PredictResponse,
    responses=ERRORS,
    openapi_extra={
        "requestBody": {"required": True, "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}}},
        **READS_ONLY,
    },
)
async def predict_raw_image(
    reference: str,
    request: Request,
    top_k: Annotated[int, Query(ge=1, le=MAX_TOP_K)] = 1,
    threshold: Annotated[float | None, Query(ge=0, le=1, description=THRESHOLD_DOC)] = None,
) -> Response:
    """Classify one image sent as the raw request body (Content-Type image/*)."""
    if not request.headers.get("content-type", "").startswith("image/"):
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "send the image as the body with Content-Type image/*"
        )
    with _located(OPTIONS):  # this route takes them from the query only
        return await classify(_server(request), reference, [("body", await request.body())], top_k, threshold)

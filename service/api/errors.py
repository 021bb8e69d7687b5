"""One place that turns core's errors (and a model's refusal of an input) into HTTP answers."""

from __future__ import annotations

import difflib
import math

from fastapi import FastAPI, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.params import File as FileParam
from fastapi.responses import JSONResponse, Response
from fastapi.routing import RouteContext, iter_route_contexts
from pydantic import BaseModel
from sqlalchemy.exc import ProgrammingError
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.routing import Match

from models.checkpoint import CheckpointError
from models.inference.predictor import InputError
from models.spec.explain import error_loc, explain, plain_message
from models.spec.job import JobSpec
from models.spec.sweeps import SweepSpec
from service.core.db import MIGRATE_HINT, UNAVAILABLE, unmigrated
from service.core.errors import Conflict, CoreError, Invalid, NotFound, Unavailable, Unprocessable, Unusable
from service.core.storage import ObjectMissing, StorageUnavailable, get_storage

DATABASE_RETRY_AFTER_S = 5

STATUS = (
    (NotFound, status.HTTP_404_NOT_FOUND),
    (Conflict, status.HTTP_409_CONFLICT),  # NotReady included
    (Invalid, status.HTTP_422_UNPROCESSABLE_CONTENT),
    (Unprocessable, status.HTTP_422_UNPROCESSABLE_CONTENT),
    (InputError, status.HTTP_422_UNPROCESSABLE_CONTENT),
    (Unavailable, status.HTTP_503_SERVICE_UNAVAILABLE),
    (Unusable, status.HTTP_500_INTERNAL_SERVER_ERROR),
    (CheckpointError, status.HTTP_500_INTERNAL_SERVER_ERROR),
)


def status_for(exc: Exception) -> int:
    """The HTTP status of a core error."""
    return next(code for kind, code in STATUS if isinstance(exc, kind))


def headers_for(exc: Exception) -> dict[str, str]:
    """Headers an error's answer carries: when to retry a 503."""
    return {"Retry-After": str(exc.retry_after)} if isinstance(exc, Unavailable) else {}


def validation_error(problems: list[tuple[tuple, str]], inputs: list | None = None) -> RequestValidationError:
    """A 422 in FastAPI's own shape: one entry per (location, message), with its input where given."""
    inputs = inputs or [None] * len(problems)
    return RequestValidationError(
        [
            {"type": "value_error", "loc": loc, "msg": msg, "input": given}
            for (loc, msg), given in zip(problems, inputs, strict=True)
        ]
    )


def unknown_fields_error(sent, allowed: frozenset[str]) -> RequestValidationError | None:
    """A 422 naming the first form field an upload does not take (as unknown spec keys are); None if all are known."""
    unknown = sorted(set(sent) - allowed)
    if not unknown:
        return None
    close = difflib.get_close_matches(unknown[0], sorted(allowed), n=1, cutoff=0.6)
    meant = f"did you mean {close[0]!r}? " if close else ""
    return validation_error(
        [(("body", unknown[0]), f"unknown field {unknown[0]!r}: {meant}this upload takes {', '.join(sorted(allowed))}")]
    )


async def refuse_unknown_fields(request: Request, allowed: frozenset[str]) -> None:
    """Raise unknown_fields_error for a form FastAPI parsed."""
    error = unknown_fields_error((await request.form()).keys(), allowed)
    if error is not None:
        raise error


def _printable(value):
    """A request's own input made fit to echo in an error: bytes that are not UTF-8, strings
    holding lone surrogates (valid JSON escapes, e.g. "\\udc80") and numbers JSON cannot hold
    (1e400 parses as infinity) would otherwise fail the answer; and a validator's exception in an
    error's ctx, which would otherwise be encoded as an empty object, is its message."""
    if isinstance(value, BaseException):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return f"<{len(value)} bytes that are not UTF-8 text>"
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode()
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable(v) for v in value]
    return value


def _body_model(request: Request) -> type[BaseModel] | None:
    """The pydantic model that is a route's whole JSON body (a job spec, ...), if it has one."""
    route = request.scope.get("route")
    field = getattr(route, "body_field", None)
    model = getattr(getattr(field, "field_info", None), "annotation", None)
    if getattr(route, "_embed_body_fields", True) or not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    return model


# A body of the other route's kind, and where it goes: a sweep sent as a job (`base`, `grid`), or a
# job spec sent as a sweep (`model`, `epochs`).
_OTHER_KIND = {
    JobSpec: (SweepSpec, "a sweep's fields", "send sweeps to POST /v1/sweeps (trainyard sweep FILE)"),
    SweepSpec: (JobSpec, "a job spec's fields", "a sweep takes the job spec it varies as its base (docs/sweeps.md)"),
}


def _sent_to_the_other_route(errors: list[dict], body: dict, model: type[BaseModel] | None) -> list[dict]:
    """A sweep sent to POST /v1/jobs (or a job spec to /v1/sweeps) told once, at the body, instead
    of once per field it has and per required field it then lacks."""
    if model not in _OTHER_KIND:
        return errors
    other, whose, where = _OTHER_KIND[model]
    theirs = [
        e
        for e in errors
        if e.get("type") == "extra_forbidden"
        and len(e.get("loc", ())) == 2
        and e["loc"][1] in other.model_fields
        and e["loc"][1] not in model.model_fields
    ]
    if not theirs:
        return errors
    whole = all(name in body for name, field in other.model_fields.items() if field.is_required())
    lacking = [e for e in errors if whole and e.get("type") == "missing" and len(e.get("loc", ())) == 2]
    told = {
        "type": "extra_forbidden",
        "loc": ("body",),
        "msg": f"{whose} ({', '.join(e['loc'][1] for e in theirs)}): {where}",
        "input": None,
    }
    return [told, *(e for e in errors if e not in theirs and e not in lacking)]


def _located(errors: list[dict], body, model: type[BaseModel] | None = None) -> list[dict]:
    """Body locations as paths into what was sent (body.model.activation, not pydantic's
    body.model.mlp.activation with the union's tag), and, where the body is `model`, messages
    with "did you mean" for unknown keys and unknown or missing tags such as model.arch."""
    if not isinstance(body, dict):
        return errors
    located = [
        {
            **e,
            "loc": ("body", *error_loc(body, {**e, "loc": tuple(e["loc"][1:])})),
            "msg": explain({**e, "loc": tuple(e["loc"][1:])}, model, body) if model else plain_message(e),
        }
        if tuple(e.get("loc", ()))[:1] == ("body",)
        else e
        for e in errors
    ]
    return _sent_to_the_other_route(located, body, model)


def _file_fields(request: Request) -> frozenset[str]:
    """The form fields of a route that take a file (an upload's `file`, predict's `files`)."""
    route = request.scope.get("route")
    fields = getattr(getattr(route, "dependant", None), "body_params", ())
    return frozenset(f.alias for f in fields if isinstance(f.field_info, FileParam))


def _file_problem(e: dict, content_type: str, body) -> dict:
    """A file field that is missing (sent under another name?), or arrived as text, said with how
    to send the file."""
    name = e["loc"][1]
    how = (
        f"with curl, -F {name}=@path/to/file (the @ sends the file); "
        f"with requests, files={{'{name}': open(path, 'rb')}}"
    )
    if not content_type.startswith("multipart/form-data"):
        msg = (
            f"send the file as a multipart/form-data field named {name!r}, not as the body itself "
            f"(Content-Type: {content_type}): {how}"
        )
    elif e.get("type") == "missing":
        sent = [key for key, value in body.multi_items() if not isinstance(value, str)] if _is_form(body) else []
        elsewhere = f"; the file came as {sent[0]!r}: name it {name!r}" if sent else ""
        msg = f"field {name!r} is required: the file to upload{elsewhere}; {how}"
    elif "UploadFile" in str((e.get("ctx") or {}).get("error")):
        msg = f"field {name!r} arrived as text, not as a file: {how}"
    else:
        return e  # the service's own word on the file it was sent (not a safetensors file, ...)
    return {**e, "msg": msg}


def _is_form(body) -> bool:
    return hasattr(body, "multi_items")


def _body_problems(errors: list[dict], request: Request, model: type[BaseModel] | None, body=None) -> list[dict]:
    """Say what is wrong with a JSON body that is not JSON, in the message: where it stops
    parsing, or that it came with another Content-Type (curl -d sends a form's); and a file not
    sent, or sent under another name (`body`: the form as FastAPI parsed it)."""
    content_type = request.headers.get("content-type") or "none"
    files = _file_fields(request)
    said = []
    for e in errors:
        loc = tuple(e.get("loc", ()))
        if len(loc) == 2 and loc[0] == "body" and loc[1] in files:
            e = _file_problem(e, content_type, body)
        elif e.get("type") == "json_invalid":
            at = f" at character {e['loc'][1]}" if len(e.get("loc", ())) > 1 else ""
            e = {
                **e,
                "loc": ("body",),  # where FastAPI puts the character it stopped at; the message says it
                "input": None,
                "msg": f"the body is not JSON: {(e.get('ctx') or {}).get('error', 'it does not parse')}{at}",
            }
        elif e.get("type") == "missing" and loc == ("body",) and model is not None:
            e = {**e, "msg": "the body is empty: send a JSON object (Content-Type: application/json)"}
        elif (
            model is not None
            and tuple(e.get("loc", ())) == ("body",)
            and isinstance(e.get("input"), (bytes, str))
            and "json" not in content_type
        ):
            e = {
                **e,
                "msg": f"the body must be a JSON object sent with Content-Type: application/json, not "
                f"{content_type} (with curl: -H 'Content-Type: application/json')",
            }
        said.append(e)
    return said


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each problem's location; never fails on what the client sent."""
    model = _body_model(request)
    body = getattr(exc, "body", None)
    errors = _located(_body_problems(list(exc.errors()), request, model, body), body, model)
    # A pattern in words, and a query's or a header's own check without pydantic's "Value error, ".
    worded = ("string_pattern_mismatch", "value_error")
    errors = [{**e, "msg": plain_message(e)} if e.get("type") in worded else e for e in errors]
    return JSONResponse({"detail": jsonable_encoder(_printable(errors))}, status_code=422)


def _concreteness(route: RouteContext) -> tuple[bool, ...]:
    """Which segments of a route's path are literal: OpenAPI matches /v1/models/import before /v1/models/{name}."""
    return tuple(not part.startswith("{") for part in route.path.split("/"))


def _allowed_methods(request: Request) -> list[str]:
    """The methods the resource at a request's path takes: those of every route whose path matches
    it, of the most concrete such paths."""
    matching = [
        route
        for route in iter_route_contexts(request.app.router.routes)
        if route.methods and route.matches(request.scope)[0] != Match.NONE
    ]
    most = max(map(_concreteness, matching), default=())
    return sorted({method for route in matching if _concreteness(route) == most for method in route.methods})


async def _method_not_allowed(request: Request, exc: HTTPException) -> JSONResponse:
    """405 whose Allow lists every method of the path, not only those of the first route that
    matched it (Starlette's route answers for itself alone)."""
    allow = ", ".join(_allowed_methods(request))
    return JSONResponse(
        {_message_key(request): f"{request.method} is not allowed here; this path takes {allow}"},
        status_code=status.HTTP_405_METHOD_NOT_ALLOWED,
        headers={**(exc.headers or {}), "Allow": allow},
    )


def _unreadable(exc: HTTPException) -> dict | None:
    """The 422 entry for a body that cannot be read as its Content-Type says, from the error behind
    FastAPI's or Starlette's bare 400 (JSON that is not UTF-8 or nests too deeply, a malformed
    multipart form); None when that 400 is about something else."""
    cause, context = exc.__cause__, exc.__context__
    if isinstance(cause, UnicodeDecodeError):
        why = f"it is not UTF-8 text (byte {cause.start}: {cause.reason})"
    elif isinstance(cause, RecursionError):
        why = "it nests arrays or objects too deeply"
    elif isinstance(context, MultiPartException):  # with python-multipart's reason, where Starlette kept it
        return {
            "type": "value_error",
            "loc": ("body",),
            "input": None,
            "msg": f"malformed multipart body: {context.__cause__ or context.message}",
        }
    else:
        return None
    return {"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error", "input": {}, "ctx": {"error": why}}


async def _bad_request(request: Request, exc: HTTPException) -> JSONResponse:
    """A body that cannot be read as its Content-Type is a 422 that says why, as one whose JSON
    does not parse is, not a bare 400 "There was an error parsing the body"."""
    problem = _unreadable(exc)
    if problem is None:
        return await http_exception_handler(request, exc)
    return await _invalid_request(request, RequestValidationError([problem]))


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """The Open Inference Protocol's clients read an error from `error`, not `detail` (tritonclient
    fails to decode an answer without it): a /v2 path's 401, 403 or unknown route says it there."""
    if 300 <= exc.status_code < 400:  # a redirect (a page to the login form) says all in its Location
        return Response(status_code=exc.status_code, headers=exc.headers)
    if _message_key(request) == "error":
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)
    return await http_exception_handler(request, exc)


def _message_key(request: Request) -> str:
    """Where an error's message goes: `error` on the Open Inference Protocol's paths, else `detail`."""
    path = request.url.path
    return "error" if path == "/v2" or path.startswith("/v2/") else "detail"


async def _core_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, Invalid):  # core's locations are paths into the submitted document: the body
        refused = validation_error(
            [(("body", *loc), msg) for loc, msg in exc.problems], [exc.input_at(loc) for loc, _ in exc.problems]
        )
        return await _invalid_request(request, refused)
    if isinstance(exc, ObjectMissing) and (why := await _store_not_the_services(request)):
        return JSONResponse({_message_key(request): f"{exc}: {why}"}, status_code=503, headers={"Retry-After": "10"})
    said = f"{exc}; try again once it is back" if isinstance(exc, StorageUnavailable) else str(exc)
    return JSONResponse({_message_key(request): said}, status_code=status_for(exc), headers=headers_for(exc))


async def _store_not_the_services(request: Request) -> str | None:
    """Why this API's store is not the service's (a file missing there is no fault of the file's),
    or None."""
    readiness = getattr(request.app.state, "store_readiness", None)
    if readiness is None:
        return None
    return await run_in_threadpool(readiness.problem, get_storage().store)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """503: the database is away, or answers without the tables this version needs."""
    said = MIGRATE_HINT if unmigrated(exc) else "the database is unavailable; try again shortly"
    return JSONResponse(
        {_message_key(request): f"{said} (GET /readyz says more)"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
    )


async def _database_refused(request: Request, exc: Exception) -> JSONResponse:
    """A statement the database refused: its schema is not this version's (503, as above), or a
    fault of the code's, answered as FastAPI answers any other."""
    if unmigrated(exc):
        return await _database_unavailable(request, exc)
    raise exc


def install(app: FastAPI) -> None:
    """Answer every core error with its status and message, every invalid request (a body that
    cannot be read as its Content-Type included) with a 422, a method a path does not take with a
    405 listing those it does, and anything that needed the database while it was unavailable with a 503."""
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(status.HTTP_400_BAD_REQUEST, _bad_request)
    app.add_exception_handler(status.HTTP_405_METHOD_NOT_ALLOWED, _method_not_allowed)
    app.add_exception_handler(HTTPException, _http_error)
    for kind in UNAVAILABLE:
        app.add_exception_handler(kind, _database_unavailable)
    app.add_exception_handler(ProgrammingError, _database_refused)  # PostgreSQL's missing table
    for kind in (CoreError, InputError, CheckpointError):
        app.add_exception_handler(kind, _core_error)

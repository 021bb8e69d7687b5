"""The web dashboard: server-rendered pages over the same service functions as the API.

When API tokens are set, the pages ask for one once (/ui/login) and keep it in a cookie (service/api/auth.py).
"""

from __future__ import annotations

import base64
import json
import math
import re
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from starlette.datastructures import UploadFile as FormFile  # what request.form() holds (FastAPI's subclasses it)
from starlette.routing import Match

from models.checkpoint import CheckpointError
from models.inference.formats import FORMATS, INPUTS
from models.inference.predictor import InputError
from models.spec.explain import error_loc, explain, plain_message
from models.spec.job import JobSpec
from models.spec.sweeps import SweepSpec, differences, short_value
from models.units import human_bytes
from service.api import plots
from service.api.auth import (
    COOKIE,
    SESSION_SECONDS,
    live_session,
    page_editor,
    page_viewer,
    session_cookie,
    token_table,
)
from service.api.deps import (
    DeletesFiles,
    EvaluationsDep,
    ModelServerDep,
    SessionDep,
    SettingsDep,
    WriteSessionDep,
    WritesFiles,
    live_workers,
    read,
)
from service.api.downloads import exported_file
from service.api.errors import headers_for, refuse_unknown_fields, status_for
from service.api.routes import GuardedRoute
from service.api.schemas.datasets import DatasetPublic
from service.api.schemas.evaluation import evaluation_public
from service.api.schemas.jobs import job_public, jobs_public, metric_rows
from service.api.schemas.predict import MAX_ROWS, MAX_TOP_K, image_answer, values_answer
from service.api.schemas.registry import ModelCreate, model_public
from service.api.schemas.sweeps import sweep_public
from service.core import (
    datasets,
    job_logs,
    job_pages,
    jobs,
    model_registry,
    retention,
    sessions,
    submission,
    sweeps,
)
from service.core.errors import CoreError, Invalid
from service.core.model_parameters import model_parameters
from service.core.references import MODEL_NAME, model_name_for
from service.core.settings import get_settings
from service.core.studies import IMPORTANCE_TRIALS
from service.core.tables import DatasetStatus, Job, StoredDataset

EXAMPLES = resources.files("service") / "examples"  # package data: found in a checkout and once installed
templates = Jinja2Templates(directory=Path(__file__).resolve().parents[1] / "templates")
templates.env.filters["short_value"] = short_value
templates.env.filters["size"] = human_bytes  # 24.2 KiB, 1.3 MiB: not "0.0 MB"
templates.env.globals["tokens_required"] = lambda: token_table().enabled


def error_page(request: Request, status_code: int, message: str, headers: dict | None = None) -> HTMLResponse:
    """The dashboard's page for what it cannot show or do: an unknown page, job, dataset or model, a refused action."""
    return templates.TemplateResponse(
        request,
        "error.html",
        {"status_code": status_code, "phrase": HTTPStatus(status_code).phrase, "message": message},
        status_code=status_code,
        headers=headers,
    )


class PageRoute(GuardedRoute):
    """A dashboard route whose core errors, and a read-only session's refused action, answer
    error_page rather than JSON (fragments, which a page's script reads, keep JSON)."""

    token_guarded = False  # the page session is

    def get_route_handler(self):
        handle = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await handle(request)
            except CoreError as exc:
                return error_page(request, status_for(exc), _describe(exc), headers_for(exc))
            except HTTPException as exc:
                if exc.status_code != 403:
                    raise  # the way to the login form
                return error_page(request, 403, READ_ONLY_SESSION)

        return handler


READ_ONLY_SESSION = (
    "this session's token may only read: it shows every page and predicts; sign out and sign in with a "
    "read-write token to submit, upload or change anything"
)
router = APIRouter(include_in_schema=False)
pages = APIRouter(dependencies=[Depends(page_viewer)], include_in_schema=False, route_class=PageRoute)
fragments = APIRouter(dependencies=[Depends(page_viewer)], include_in_schema=False)
actions = APIRouter(dependencies=[Depends(page_editor)], include_in_schema=False, route_class=PageRoute)


@router.get("/ui/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str = "/", ended: bool = False) -> Response:
    """The form asking for a token; with none to ask for (no tokens set, or signed in), on to `next`.
    `ended`: the browser's session is one no longer (expired, signed out, or its token taken away)."""
    if not token_table().enabled or await live_session(request) is not None:
        return RedirectResponse(_local(next), status_code=303)
    said = "your session has ended (it expired, was signed out, or its token was removed): sign in again"
    return _login_page(request, next=next, message=said if ended else "")


@router.post("/ui/login")
def login(
    request: Request,
    token: Annotated[str, Form(max_length=500)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    """A valid token gives a session cookie (service/api/auth.py) and goes on to `next`; a wrong or
    empty one is the form again, saying so."""
    if not token_table().enabled:
        return RedirectResponse(_local(next), status_code=303)
    token = token.strip()
    if not token:
        return _login_page(request, next=next, message="enter an API token", status_code=400)
    if token_table().lookup(token) is None:
        message = "that is not one of this service's API tokens (TRAINYARD_API_TOKENS)"
        return _login_page(request, next=next, message=message, status_code=401)
    response = RedirectResponse(_local(next), status_code=303)
    response.set_cookie(
        COOKIE,
        session_cookie(token),
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=get_settings().secure_cookies or request.url.scheme == "https",
    )
    return response


@router.get("/ui/logout")  # typed in; another site's link brings no SameSite=strict cookie, so it ends nothing
@router.post("/ui/logout")
def logout(request: Request, session: WriteSessionDep) -> RedirectResponse:
    """End the session: its cookie is cleared here, and a copy of it opens nothing either."""
    response = RedirectResponse("/ui/login", status_code=303)
    signed_in = token_table().session(request.cookies.get(COOKIE, ""))
    if signed_in is not None:  # a request that brought no session (another site's link) clears nothing
        sessions.sign_out(session, session_id=signed_in.id, expires=signed_in.expires)
        response.delete_cookie(COOKIE, httponly=True, samesite="strict")
    return response


def _login_page(request: Request, *, next: str, message: str = "", status_code: int = 200) -> HTMLResponse:
    context = {"next": _local(next), "message": message}
    return templates.TemplateResponse(request, "login.html", context, status_code=status_code)


def _local(path: str) -> str:
    """`path` if it is a page of this service, else the job list: the login form sends no one elsewhere."""
    plain = path.isprintable() and not any(c.isspace() for c in path)  # no tab or newline for a browser to drop
    return path if plain and path.startswith("/") and not path.startswith(("//", "/\\")) else "/"


def _jobs(session, limit: int = 100) -> dict:
    """The job list's context: the newest jobs, how many there are, and their uploaded datasets' names."""
    views, count = job_pages.page(session, status=None, limit=limit, offset=0, settings=get_settings())
    references = [(view.job.spec.get("data") or {}).get("dataset", "") for view in views]
    return {"jobs": jobs_public(views), "count": count, "dataset_names": datasets.names(session, references=references)}


@pages.get("/", response_class=HTMLResponse)
def jobs_page(request: Request, session: SessionDep) -> HTMLResponse:
    return templates.TemplateResponse(request, "jobs.html", _jobs(session))


@fragments.get("/ui/fragments/jobs", response_class=HTMLResponse)
def jobs_rows(request: Request, session: SessionDep) -> HTMLResponse:
    return templates.TemplateResponse(request, "jobs_rows.html", _jobs(session))


LOG_LINES_SHOWN = 5000
# The (format, inputs) pairs a job's and a version's export links offer: every format, and ONNX taking uint8 pixels.
EXPORTS = tuple((fmt, "float") for fmt in FORMATS) + (("onnx", "pixels"),)


METRIC_COLUMNS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")


JobsParam = Annotated[list[str] | None, Query(alias="jobs")]
EPOCH_ROWS_SHOWN = 50  # a page lists about this many of a job's epochs unless asked for all


def epoch_rows_shown(rows: list[dict], best_epoch: int | None, most: int = EPOCH_ROWS_SHOWN) -> list[dict]:
    """At most about `most` epoch rows, evenly spread; the first, the best and the last always among them."""
    if len(rows) <= most:
        return rows
    step = -(-len(rows) // most)
    return [row for i, row in enumerate(rows) if i % step == 0 or i == len(rows) - 1 or row["epoch"] == best_epoch]


def _job_page(
    request: Request,
    session,
    job_id: str,
    tab: str = "overview",
    status_code: int = 200,
    all_epochs: bool = False,
    **extra,
) -> HTMLResponse:
    """A job's page (its overview or its logs), with `extra` in its context (a form's error)."""
    job = job_public(job_pages.view(session, job_id=job_id, settings=get_settings()))
    info = datasets.dataset_info(session, JobSpec.model_validate(job.spec))
    context = {
        "job": job,
        "tab": tab,
        "exports": EXPORTS,
        "images": info is not None and info.images,
        "rows": info is not None and not info.images,  # a model of numeric rows: the predict page takes images
        "model_name": model_name_for(job.name),  # offered in the register form
        # a trial of an adaptive sweep is resumed with its sweep: the button is the sweep page's
        "sweep_resumes_it": submission.resumed_by_its_sweep(session, session.get(Job, job.id)) is not None,
        **extra,
    }
    if tab == "logs":
        context["logs"] = job_logs.read(session, job_id=job.id, limit=LOG_LINES_SHOWN)
    else:
        metrics = metric_rows(jobs.get_metrics(session, job_id=job.id))
        best = job.best_checkpoint.epoch if job.best_checkpoint else None
        context.update(
            metrics=metrics if all_epochs else epoch_rows_shown(metrics, best),
            epochs_recorded=len(metrics),
            # a regression has no accuracy, a job without validation no val columns
            metric_columns=[key for key in METRIC_COLUMNS if any(row[key] is not None for row in metrics)],
            spec_json=json.dumps(job.spec, indent=2),
        )
    return templates.TemplateResponse(request, "job.html", context, status_code=status_code)


@pages.get("/ui/jobs/{job_id}", response_class=HTMLResponse)
def job_page(
    job_id: str,
    request: Request,
    session: SessionDep,
    tab: Literal["overview", "logs"] = "overview",
    epochs: Literal["all"] | None = None,
) -> HTMLResponse:
    return _job_page(request, session, job_id, tab, all_epochs=epochs == "all")


@pages.get("/ui/jobs/{job_id}/plot.png")
async def job_plot(
    job_id: str,
    epochs: Annotated[int | None, Query(ge=0, description="draw the first this many (as the page listed)")] = None,
    best: Annotated[int | None, Query(ge=1, description="the best epoch the page named")] = None,
) -> Response:
    if epochs is None:
        return await plots.curves_response(plots.job_series, [job_id])
    return await plots.curves_response(plots.job_series_as_shown, job_id, epochs, best)


MISTAKES_SHOWN = 24


@fragments.get("/ui/fragments/jobs/{job_id}/evaluation", response_class=HTMLResponse)
async def job_evaluation(job_id: str, request: Request, evaluations: EvaluationsDep) -> HTMLResponse:
    """The evaluation report's section of a job's page (loaded after the page: it may take a test-set pass)."""
    evaluated = await evaluations.report(job_id)
    target = evaluated.target
    shown = evaluation_public(target.job_id, target, evaluated.report, limit=MISTAKES_SHOWN, images=evaluated.images)
    return templates.TemplateResponse(request, "evaluation.html", {"job_id": target.job_id, "report": shown})


def _compared(jobs_param: list[str]) -> list[str]:
    try:
        return plots.compared_jobs(jobs_param)
    except ValueError as exc:
        raise Invalid([(("query", "jobs"), str(exc))]) from None


@pages.get("/ui/compare", response_class=HTMLResponse)
def compare_page(request: Request, session: SessionDep, jobs_param: JobsParam = None) -> HTMLResponse:
    """Several jobs side by side: their curves on one figure, and what tells their specs apart."""
    found = [
        job_public(view)
        for view in job_pages.views(session, plots.compared(session, _compared(jobs_param or [])), get_settings())
    ]
    told_apart = differences([job.spec for job in found])
    references = [(job.spec.get("data") or {}).get("dataset", "") for job in found]
    context = {
        "jobs": found,
        "differing": list(told_apart[0]),
        "told_apart": told_apart,
        "ids": [job.id for job in found],
        "colours": [plots.colour_of(index) for index in range(len(found))],  # the figure draws them in this order
        "dataset_names": datasets.names(session, references=references),  # uploaded:<id> as people call it
    }
    return templates.TemplateResponse(request, "compare.html", context)


@pages.get("/ui/compare.png")
async def compare_plot(jobs_param: JobsParam = None) -> Response:
    return await plots.curves_response(plots.job_series, _compared(jobs_param or []))


PARAMETER_VALUES_SHOWN = 20  # a page gives a tensor's numbers up to this many, else its statistics


@fragments.get("/ui/fragments/jobs/{job_id}/parameters", response_class=HTMLResponse)
async def job_parameters(job_id: str, request: Request, settings: SettingsDep) -> HTMLResponse:
    """The learned parameters of the checkpoint a job serves (loaded when its section is opened)."""
    found = await run_in_threadpool(
        model_parameters, reference=f"job:{job_id}", settings=settings, max_values=PARAMETER_VALUES_SHOWN
    )
    return templates.TemplateResponse(request, "parameters.html", {"found": found})


@pages.get("/ui/jobs/{job_id}/test-images/{index}.png")
async def job_test_image(job_id: str, index: int, settings: SettingsDep) -> Response:
    """A test image for the report's thumbnails (the /v1 twin wants a bearer token, a page has a cookie)."""
    pixels = await read(lambda session: datasets.test_image(session, job_id=job_id, index=index, settings=settings))
    return await plots.png_response(plots.pixels_png, pixels)


SWEEP_EXAMPLES = "sweeps/"  # the prefix of the sweep examples' names on the submit form


def _examples() -> list[str]:
    """The example job specs' names, then the example sweeps' (`sweeps/weight-decay`)."""

    def names(folder, prefix: str = "") -> list[str]:
        return sorted(prefix + p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))

    return names(EXAMPLES) + names(EXAMPLES / "sweeps", SWEEP_EXAMPLES)


def _example_text(name: str) -> str:
    folder, _, stem = name.rpartition("/")
    return (EXAMPLES / folder / f"{stem}.json" if folder else EXAMPLES / f"{stem}.json").read_text()


def _first_example(session) -> str:
    """The README quickstart's once its dataset is uploaded, else one on synthetic data, which
    trains on any worker (most of the course's want Fashion-MNIST's files)."""
    ready = StoredDataset.status == DatasetStatus.READY
    named = session.scalars(select(StoredDataset.id).where(StoredDataset.name == "shapes", ready).limit(2)).all()
    return "quickstart" if len(named) == 1 else "linear-regression"  # two would make uploaded:shapes ambiguous


@pages.get("/ui/submit", response_class=HTMLResponse)
def submit_form(request: Request, session: SessionDep, example: str | None = None) -> HTMLResponse:
    names = _examples()
    example = example or _first_example(session)
    chosen = example if example in names else (names[0] if names else "")
    spec = _example_text(chosen) if chosen else "{}"
    error = None if example == chosen else f"there is no example {example!r}: showing {chosen}"
    return templates.TemplateResponse(
        request, "submit.html", {"examples": names, "example": chosen, "spec": spec, "error": error}
    )


def _describe(exc: Exception, sent=None, root: type[BaseModel] | None = None) -> str:
    """One problem a line, each at its path in what was sent (`sent`, when there is a document),
    told as the API tells it: in the terms of `root`, the model the document is ("did you mean")."""
    if isinstance(exc, ValidationError):

        def where(e) -> tuple:
            return e["loc"] if sent is None else error_loc(sent, e)

        def said(e) -> str:
            return explain(e, root, sent) if root is not None else plain_message(e)

        return "\n".join(f"{'.'.join(str(p) for p in where(e))}: {said(e)}" for e in exc.errors())
    if isinstance(exc, Invalid):
        return "\n".join(f"{'.'.join(str(p) for p in loc)}: {msg}" for loc, msg in exc.problems)
    return str(exc)


@actions.post("/ui/submit", response_class=HTMLResponse)
def submit(
    request: Request,
    session: WriteSessionDep,
    settings: SettingsDep,
    spec: Annotated[str, Form(max_length=1_000_000)] = "",
) -> Response:
    """A job spec, or a sweep (a document with a `base` spec), as POST /v1/jobs or /v1/sweeps takes it."""
    try:
        sent = json.loads(spec)
    except RecursionError:
        error = "not JSON this service reads: it nests arrays or objects too deeply"
    except ValueError as exc:
        error = f"not JSON: {exc}" if spec.strip() else "the spec is empty: start from an example above"
    else:
        is_sweep = isinstance(sent, dict) and "base" in sent
        try:
            if is_sweep:
                created = sweeps.create(session, sweep=SweepSpec.model_validate(sent), settings=settings)
                return RedirectResponse(f"/ui/sweeps/{created.sweep.id}", status_code=303)
            submitted = submission.submit_job(session, spec=JobSpec.model_validate(sent), settings=settings)
            return RedirectResponse(f"/ui/jobs/{submitted.job_id}", status_code=303)
        except (ValidationError, CoreError) as exc:
            error = _describe(exc, sent, SweepSpec if is_sweep else JobSpec)
    return templates.TemplateResponse(
        request,
        "submit.html",
        {"examples": _examples(), "example": None, "spec": spec, "error": error},
        status_code=422,
    )


@actions.post("/ui/jobs/{job_id}/cancel")
def cancel_job(job_id: str, session: WriteSessionDep) -> RedirectResponse:
    submission.cancel_job(session, job_id=job_id)
    return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)


@actions.post("/ui/jobs/{job_id}/resume")
def resume_job(job_id: str, session: WriteSessionDep, settings: SettingsDep) -> RedirectResponse:
    submission.resume_job(session, job_id=job_id, settings=settings)
    return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)


@actions.post("/ui/jobs/{job_id}/delete", dependencies=[DeletesFiles])
def delete_job(job_id: str, session: WriteSessionDep, settings: SettingsDep) -> RedirectResponse:
    retention.delete_job(session, job_id=job_id, settings=settings)
    return RedirectResponse("/", status_code=303)


def _number(text: str) -> float | str | None:
    """A form's number: None when left empty, the text itself when it is none (for the error to show)."""
    try:
        return float(text) if text.strip() else None
    except ValueError:
        return text


@actions.post("/ui/jobs/{job_id}/register", response_class=HTMLResponse, dependencies=[WritesFiles])
def register_version(
    job_id: str,
    request: Request,
    session: WriteSessionDep,
    settings: SettingsDep,
    server: ModelServerDep,
    name: Annotated[str, Form(max_length=200)],
    checkpoint: Annotated[str, Form(max_length=20)] = "best",
    threshold: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    """Register the job's best or last checkpoint as the next version of a model, then show the
    model; a field that does not fit is said on the job's page, as the model's name is."""
    sent = {"name": name.strip(), "job_id": job_id, "checkpoint": checkpoint, "threshold": _number(threshold)}
    try:
        body = ModelCreate.model_validate(sent)
        version = model_registry.register(
            session,
            name=body.name,
            job_id=body.job_id.lower(),
            checkpoint=body.checkpoint,
            settings=settings,
            threshold=body.threshold,
        )
    except (ValidationError, CoreError) as exc:
        return _job_page(
            request,
            session,
            job_id,
            status_code=status_for(exc) if isinstance(exc, CoreError) else 422,
            register_error=_describe(exc, sent),
            sent=sent,
        )
    server.references.clear()  # `name` may now mean the new version
    return RedirectResponse(f"/ui/models/{version.name}#version-{version.version}", status_code=303)


@pages.get("/ui/export/{reference}")
async def export_model(
    reference: Annotated[str, PathParam(max_length=200)],
    settings: SettingsDep,
    fmt: Annotated[Literal[FORMATS], Query(alias="format")] = "safetensors",
    inputs: Literal[INPUTS] = "float",
) -> Response:
    """A model file, as GET /v1/models/{reference}/export answers it (the /v1 route wants a bearer
    token, a page has a cookie)."""
    return await exported_file(settings, reference=reference, fmt=fmt, inputs=inputs)


@pages.get("/ui/sweeps", response_class=HTMLResponse)
def sweeps_page(request: Request, session: SessionDep) -> HTMLResponse:
    rows, count = sweeps.page(session, limit=50, offset=0)
    ranked = sweeps.trials_of(session, rows)
    return templates.TemplateResponse(
        request, "sweeps.html", {"sweeps": [sweep_public(s, ranked[s.id]) for s in rows], "count": count}
    )


@pages.get("/ui/sweeps/{sweep_id}", response_class=HTMLResponse)
def sweep_page(sweep_id: str, request: Request, session: SessionDep) -> HTMLResponse:
    sweep = sweeps.require(session, sweep_id=sweep_id)
    ranked = sweeps.trials(session, sweep)
    public = sweep_public(sweep, ranked)
    params = next((list(t.params) for t in public.jobs if t.params), [])
    compared = [t.job_id for t in public.jobs if t.job_id and t.epochs][: plots.COMPARED[1]]  # the best first
    context = {
        "sweep": public,
        "resumable": sweeps.resumable(sweep, ranked),
        "params": params,
        "compare_link": ("/ui/compare?" + "&".join(f"jobs={i}" for i in compared)) if len(compared) > 1 else None,
        "importances": public.trials >= IMPORTANCE_TRIALS,  # a smaller sweep never has enough trials for them
    }
    return templates.TemplateResponse(request, "sweep.html", context)


@pages.get("/ui/sweeps/{sweep_id}/compare.png")
async def sweep_plot(sweep_id: str) -> Response:
    return await plots.png_response(plots.sweep_curves_png, *await read(plots.sweep_curves, sweep_id))


@pages.get("/ui/sweeps/{sweep_id}/history.png")
async def sweep_history_plot(sweep_id: str) -> Response:
    return await plots.png_response(plots.history_png, *await read(plots.sweep_history, sweep_id))


@pages.get("/ui/sweeps/{sweep_id}/importances.png")
async def sweep_importances_plot(sweep_id: str) -> Response:
    return await plots.png_response(plots.importances_png, *await read(plots.sweep_importances, sweep_id))


@actions.post("/ui/sweeps/{sweep_id}/cancel")
def cancel_sweep(sweep_id: str, session: WriteSessionDep, settings: SettingsDep) -> RedirectResponse:
    sweeps.cancel(session, sweep_id=sweep_id, settings=settings)
    return RedirectResponse(f"/ui/sweeps/{sweep_id}", status_code=303)


@actions.post("/ui/sweeps/{sweep_id}/resume")
def resume_sweep(sweep_id: str, session: WriteSessionDep, settings: SettingsDep) -> RedirectResponse:
    sweeps.resume(session, sweep_id=sweep_id, settings=settings)
    return RedirectResponse(f"/ui/sweeps/{sweep_id}", status_code=303)


def _models_page(
    request: Request, session, names: list[str], *, single: bool, status_code: int = 200, **extra
) -> HTMLResponse:
    """The models page showing these models (NotFound for an unknown one), with `extra` in its context."""
    models = [
        model_public(
            name, model_registry.require_versions(session, name=name), model_registry.aliases(session, name=name)
        )
        for name in names
    ]
    sources = {v.job_id for model in models for v in model.versions if v.job_id}
    kept = set(session.scalars(select(Job.id).where(Job.id.in_(sources)))) if sources else set()
    return templates.TemplateResponse(
        request,
        "models.html",
        {"models": models, "single": single, "exports": EXPORTS, "jobs_kept": kept, **extra},
        status_code=status_code,
    )


@pages.get("/ui/models", response_class=HTMLResponse)
def models_page(request: Request, session: SessionDep) -> HTMLResponse:
    return _models_page(request, session, model_registry.names(session), single=False)


@pages.get("/ui/models/{name}", response_class=HTMLResponse)
def model_page(name: str, request: Request, session: SessionDep) -> HTMLResponse:
    return _models_page(request, session, [name], single=True)


@actions.post("/ui/models/{name}/aliases", response_class=HTMLResponse)
def set_alias(
    name: str,
    request: Request,
    session: WriteSessionDep,
    server: ModelServerDep,
    alias: Annotated[str, Form(max_length=200)],
    version: Annotated[int, Form(ge=1)],
) -> Response:
    """Point an alias of a model at one of its versions."""
    alias = alias.strip()
    try:
        if not re.fullmatch(MODEL_NAME, alias):
            raise Invalid(
                [(("alias",), f"{alias!r} is not a name: lower-case letters, digits, . _ - (e.g. production)")]
            )
        warnings = model_registry.set_alias(session, name=name, alias=alias, version=version)
    except CoreError as exc:
        return _models_page(request, session, [name], single=True, status_code=status_for(exc), error=_describe(exc))
    server.references.clear()  # `name@alias` now means this version
    if warnings:  # shown once, on the page the move answers with
        return _models_page(request, session, [name], single=True, warnings=warnings)
    return RedirectResponse(f"/ui/models/{name}#version-{version}", status_code=303)


THUMBNAILS = 6  # example images per dataset in the list; its own page shows up to DATASET_THUMBNAILS
DATASET_THUMBNAILS = 40


def _datasets_page(request: Request, session, settings, status_code: int = 200, **extra) -> HTMLResponse:
    """The uploaded datasets with the upload form, with `extra` in the context (an error)."""
    return templates.TemplateResponse(
        request,
        "datasets.html",
        {
            "datasets": [DatasetPublic.model_validate(r) for r in datasets.list_datasets(session)],
            "thumbnails": THUMBNAILS,
            "max_bytes": settings.max_dataset_upload_bytes,
            **extra,
        },
        status_code=status_code,
    )


@pages.get("/ui/datasets", response_class=HTMLResponse)
def datasets_page(request: Request, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    return _datasets_page(request, session, settings)


@pages.get("/ui/datasets/{dataset_id}", response_class=HTMLResponse)
def dataset_page(dataset_id: str, request: Request, session: SessionDep) -> HTMLResponse:
    dataset = DatasetPublic.model_validate(datasets.require_dataset(session, dataset_id=dataset_id))
    return templates.TemplateResponse(
        request,
        "dataset.html",
        {"dataset": dataset, "thumbnails": min(DATASET_THUMBNAILS, 4 * len(dataset.classes or []))},
    )


@pages.get("/ui/datasets/{dataset_id}/examples/{number}.png")
async def dataset_example(
    dataset_id: str, number: Annotated[int, PathParam(ge=0, le=10_000)], settings: SettingsDep
) -> Response:
    """A training image for a dataset's thumbnails, taking its classes in turn (see core.datasets.example_image)."""
    pixels = await read(
        lambda session: datasets.example_image(session, dataset_id=dataset_id, number=number, settings=settings)
    )
    return await plots.png_response(plots.pixels_png, pixels)


PAGE_UPLOAD_FIELDS = frozenset({"file", "name", "color", "image_size", "classes"})


@actions.post("/ui/datasets", dependencies=[WritesFiles])
async def upload_dataset(
    request: Request,
    session: WriteSessionDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File()],
    name: Annotated[str, Form(max_length=200)] = "",
    color: Annotated[Literal["auto", "rgb", "grayscale"], Form()] = "auto",
    image_size: Annotated[int | None, Form(ge=8, le=512)] = None,
    classes: Annotated[str | None, Form(max_length=100_000)] = None,
) -> JSONResponse:
    """The datasets page's upload (sent by its script, which shows the progress): the dataset as
    POST /v1/datasets answers it, or {"detail": why not} with that route's status. A field the
    page does not send is refused, as the API refuses one (POST /v1/datasets takes every option)."""
    await refuse_unknown_fields(request, PAGE_UPLOAD_FIELDS)
    label = name.strip() or datasets.default_name(file.filename)
    try:
        options = datasets.UploadOptions(image_size=image_size, color=color, classes=datasets.class_names(classes))
        record, new = await run_in_threadpool(
            datasets.receive_upload, session, data=file.file, name=label, options=options, settings=settings
        )
    except CoreError as exc:
        return JSONResponse({"detail": _describe(exc)}, status_code=status_for(exc))
    code = 202 if record.status == DatasetStatus.PROCESSING else 201 if new else 200
    return JSONResponse(DatasetPublic.model_validate(record).model_dump(mode="json"), status_code=code)


@actions.post("/ui/datasets/{dataset_id}/delete", response_class=HTMLResponse, dependencies=[DeletesFiles])
def delete_dataset(dataset_id: str, request: Request, session: WriteSessionDep, settings: SettingsDep) -> Response:
    """Delete a dataset; the datasets page says which unfinished jobs keep one that is in use."""
    try:
        datasets.delete_dataset(session, dataset_id=dataset_id, settings=settings)
    except datasets.DatasetInUse as exc:
        return _datasets_page(request, session, settings, status_code=409, error=str(exc))
    return RedirectResponse("/ui/datasets", status_code=303)


@pages.get("/ui/workers", response_class=HTMLResponse)
def workers_page(request: Request, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    return templates.TemplateResponse(request, "workers.html", {"answer": live_workers(request, session, settings)})


def _model_choices(session) -> list[str]:
    """Every registered model as a reference: its name, each alias, each version."""
    choices = []
    for name in model_registry.names(session):
        choices.append(name)
        choices += [f"{name}@{alias}" for alias in model_registry.aliases(session, name=name)]
        choices += [f"{name}:{version.version}" for version in model_registry.require_versions(session, name=name)]
    return choices


def _data_url(data: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def _seen(predictor, data: bytes, name: str, max_pixels: int) -> str:
    """The image as the model receives it (decoded by its input contract), as a PNG data URL."""
    return _data_url(plots.pixels_png(predictor.decode_pixels(data, name, max_pixels=max_pixels)), "image/png")


@pages.get("/ui/predict", response_class=HTMLResponse)
def predict_form(request: Request, session: SessionDep, model: str | None = None) -> HTMLResponse:
    return templates.TemplateResponse(
        request, "predict.html", {"model": model, "top_k": 3, "choices": _model_choices(session)}
    )


@pages.post("/ui/predict", response_class=HTMLResponse)  # a read-only token may predict
async def predict(
    request: Request,
    server: ModelServerDep,
    settings: SettingsDep,
    model: Annotated[str, Form(max_length=200)] = "",
    top_k_text: Annotated[str, Form(alias="top_k", max_length=40)] = "3",
    threshold_text: Annotated[str, Form(alias="threshold", max_length=40)] = "",
    rows_text: Annotated[str, Form(alias="rows", max_length=1_000_000)] = "",
) -> Response:
    threshold, top_k = _number(threshold_text), _number(top_k_text)
    top_k = 3.0 if top_k is None else top_k  # left empty: the default
    whole_k = isinstance(top_k, float) and top_k.is_integer() and 1 <= top_k <= MAX_TOP_K
    context = {
        "model": model,
        "top_k": int(top_k) if whole_k else top_k_text,  # a wrong one is shown as typed, with why
        "threshold": threshold,
        "rows": rows_text,
        "choices": await read(_model_choices),
    }
    # Read from the form itself: a browser sends a file input with nothing chosen as an empty part,
    # which a declared list of files would refuse before the page could say so.
    files = [f for f in (await request.form()).getlist("files") if isinstance(f, FormFile) and (f.filename or f.size)]
    error = None
    if not model.strip():
        error = "choose a model: a registered one from the list, or type name, name@alias, name:version or job:ID"
    elif not files and not rows_text.strip():
        error = "choose one or more images to classify, or type a numeric model's rows"
    elif files and rows_text.strip():
        error = "give images or rows, not both"
    elif not whole_k:
        error = f"top k: give a whole number from 1 to {MAX_TOP_K}; got {top_k_text!r}"
    elif isinstance(threshold, str) or (threshold is not None and not 0 <= threshold <= 1):
        error = (
            f"threshold: give a number from 0 to 1, or leave it empty for the model's default; got {threshold_text!r}"
        )
    if error:
        return templates.TemplateResponse(request, "predict.html", {**context, "error": error}, status_code=422)
    if not files:
        return await _predict_rows(request, server, context, rows_text)
    if len(files) > settings.max_files_per_request:
        error = f"{len(files)} images chosen; at most {settings.max_files_per_request} at a time"
        return templates.TemplateResponse(request, "predict.html", {**context, "error": error}, status_code=422)
    uploads = [(f.filename or f"image{i}", await f.read()) for i, f in enumerate(files)]
    types = [f.content_type if (f.content_type or "").startswith("image/") else "image/png" for f in files]
    try:
        target, loaded, results = await server.classify_uploads(model, uploads, int(top_k), threshold)
        answer = image_answer(target, loaded.predictor, [name for name, _ in uploads], results, threshold)
        seen = await run_in_threadpool(
            lambda: [_seen(loaded.predictor, data, name, settings.max_image_pixels) for name, data in uploads]
        )
        shown = [
            {"prediction": prediction, "preview": _data_url(data, media_type), "seen": view}
            for prediction, (_, data), media_type, view in zip(answer.predictions, uploads, types, seen, strict=False)
        ]
    except (CoreError, InputError, CheckpointError) as exc:
        return _predict_refused(request, context, exc)
    return templates.TemplateResponse(
        request,
        "predict.html",
        {
            **context,
            "results": shown,
            "model_info": answer.model,
            "contract": loaded.predictor.contract,
            "applied_threshold": answer.threshold,
        },
    )


def _predict_refused(request: Request, context: dict, exc: Exception, said: str | None = None) -> HTMLResponse:
    """The predict page with why it has no answer (`said`, else the error's own words), under the
    status the API gives the same error (a 503 with Retry-After for a predict past its deadline)."""
    return templates.TemplateResponse(
        request,
        "predict.html",
        {**context, "error": said or _describe(exc)},
        status_code=status_for(exc),
        headers=headers_for(exc),
    )


def _typed_rows(text: str) -> tuple[list[list[float]], list[int]]:
    """A numeric model's rows as typed on the predict page, a row a line, its values comma-separated;
    and the line each is on (blank lines are skipped)."""
    rows, lines = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = [float(value) for value in line.split(",")]
        except ValueError:
            said = f"line {number} ({line.strip()!r}) is not numbers separated by commas"
            raise Invalid([(("rows",), said)]) from None
        if not all(math.isfinite(value) for value in row):
            raise Invalid([(("rows",), f"line {number} holds a value that is not a finite number")])
        rows.append(row)
        lines.append(number)
    if len(rows) > MAX_ROWS:
        raise Invalid([(("rows",), f"{len(rows):,} rows; at most {MAX_ROWS:,} at a time")])
    return rows, lines


async def _predict_rows(request: Request, server, context: dict, text: str) -> HTMLResponse:
    """The predict page's answer for typed rows (a regression's values, or a tabular classifier's labels)."""
    try:
        rows, lines = _typed_rows(text)
        async with server.deadline():  # the lookup as well as the answer
            _, loaded = await server.get(context["model"])
            # The page's top k and threshold are for a classifier; a regression's answer is its value.
            classifies = loaded.predictor.task == "classification"
            top_k, threshold = (context["top_k"], context["threshold"]) if classifies else (1, None)
            typed = [f"line {number}" for number in lines]  # as the page's user counts rows, not inputs[0]
            target, loaded, outputs = await server.predict_values(
                context["model"], rows, threshold, top_k, typed, images_hint="choose its images above instead"
            )
        answer = values_answer(target, loaded.predictor, outputs, top_k, threshold)
    except (CoreError, InputError, CheckpointError) as exc:
        return _predict_refused(request, context, exc)
    shown = {
        "row_results": list(zip(rows, answer.predictions, strict=True)),
        "model_info": answer.model,
        "applied_threshold": answer.threshold,
    }
    return templates.TemplateResponse(request, "predict.html", {**context, **shown})


router.include_router(pages)
router.include_router(fragments)
router.include_router(actions)


@router.get("/ui/{path:path}", response_class=HTMLResponse)
def unknown_page(path: str, request: Request) -> Response:
    """/ui/ itself and /ui/jobs: the dashboard's first page, the jobs, at /; an action's address
    (it takes only POST, from its page's button): 405; any other /ui/ address: its 404 page
    (matched last)."""
    if path.rstrip("/") in ("", "jobs"):
        return RedirectResponse("/", status_code=303)
    allowed = sorted(
        method
        for route in (*router.routes, *pages.routes, *fragments.routes, *actions.routes)
        if isinstance(route, APIRoute) and route.matches(request.scope)[0] == Match.PARTIAL
        for method in route.methods
    )
    if allowed:
        return error_page(
            request,
            405,
            f"/ui/{path} is an action: it takes {', '.join(allowed)} from the button on its page, not a visit",
            headers={"Allow": ", ".join(allowed)},
        )
    return error_page(request, 404, f"there is no page at /ui/{path}")

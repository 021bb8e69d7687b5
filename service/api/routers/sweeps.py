"""Sweeps: many jobs from one base spec, ranked by a metric, drawn together, cancelled together."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status
from pydantic import AfterValidator

from models.spec.sweeps import SweepSpec
from service.api import plots
from service.api.deps import SessionDep, SettingsDep, WriteSessionDep, read
from service.api.routes import GuardedRoute
from service.api.schemas.sweeps import (
    EndedPublic,
    HistoryPublic,
    ImportancesPublic,
    SweepPublic,
    SweepsPublic,
    sweep_public,
)
from service.core import sweeps
from service.core.idempotency import IDEMPOTENCY_KEY_RULE, checked_idempotency_key

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"], route_class=GuardedRoute)
NOT_FOUND = {404: {"description": "No such sweep"}}


def _public(session, sweep_id: str) -> SweepPublic:
    sweep = sweeps.require(session, sweep_id=sweep_id)
    return sweep_public(sweep, sweeps.trials(session, sweep))


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SweepPublic,
    responses={
        409: {"description": "Idempotency-Key reused with another request"},
        422: {"description": "A generated spec is invalid; nothing was created"},
    },
)
def create_sweep(
    body: SweepSpec,
    session: WriteSessionDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: Annotated[
        str | None, Header(description=IDEMPOTENCY_KEY_RULE), AfterValidator(checked_idempotency_key)
    ] = None,
) -> SweepPublic:
    """Check every trial's spec (a 422 names the path and value of any that is invalid, and
    nothing is created), then queue the trials' jobs, at most max_parallel unfinished at a time."""
    created = sweeps.create(session, sweep=body, settings=settings, idempotency_key=idempotency_key)
    response.headers["Location"] = f"/v1/sweeps/{created.sweep.id}"
    if created.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return _public(session, created.sweep.id)


@router.get("", response_model=SweepsPublic)
def list_sweeps(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> SweepsPublic:
    """Sweeps, newest first."""
    rows, count = sweeps.page(session, limit=limit, offset=offset)
    ranked = sweeps.trials_of(session, rows)
    return SweepsPublic(data=[sweep_public(s, ranked[s.id]) for s in rows], count=count)


@router.get("/{sweep_id}", response_model=SweepPublic, responses=NOT_FOUND)
def read_sweep(sweep_id: str, session: SessionDep) -> SweepPublic:
    """The sweep and its trials, best first by its metric."""
    return _public(session, sweep_id)


@router.post(
    "/{sweep_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=SweepPublic, responses=NOT_FOUND
)
def cancel_sweep(sweep_id: str, session: WriteSessionDep, settings: SettingsDep) -> SweepPublic:
    """Launch no more trials and cancel the unfinished jobs."""
    sweeps.cancel(session, sweep_id=sweep_id, settings=settings)
    return _public(session, sweep_id)


@router.post(
    "/{sweep_id}/resume",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SweepPublic,
    responses={**NOT_FOUND, 409: {"description": "The sweep is still running, or nothing is left to run"}},
)
def resume_sweep(sweep_id: str, session: WriteSessionDep, settings: SettingsDep) -> SweepPublic:
    """Go on with a sweep that stopped, failed or was cancelled: its failed and cancelled trials run
    again (each resumed from its last epoch; an adaptive sweep's study is asked for each anew), then
    those it never launched, at most max_parallel unfinished at a time."""
    sweeps.resume(session, sweep_id=sweep_id, settings=settings)
    return _public(session, sweep_id)


@router.get("/{sweep_id}/compare.png", response_class=Response, responses={**plots.PNG_RESPONSE, **NOT_FOUND})
async def compare_sweep(sweep_id: str) -> Response:
    """The sweep's metric per epoch of its best trials (up to 12), labelled by their values; a pruned
    trial's line is dashed and ends in a cross."""
    return await plots.png_response(plots.sweep_curves_png, *await read(plots.sweep_curves, sweep_id))


@router.get("/{sweep_id}/history", response_model=HistoryPublic, responses=NOT_FOUND)
def sweep_history_json(sweep_id: str, session: SessionDep) -> HistoryPublic:
    """The ended trials in the order they ended: the epochs each trained, the epochs spent by then
    and the best value found by then."""
    sweep = sweeps.require(session, sweep_id=sweep_id)
    ended = [EndedPublic.model_validate(e, from_attributes=True) for e in sweeps.history(session, sweep)]
    return HistoryPublic(metric=sweep.metric, mode=sweep.mode, ended=ended)


@router.get("/{sweep_id}/history.png", response_class=Response, responses={**plots.PNG_RESPONSE, **NOT_FOUND})
async def sweep_history(sweep_id: str) -> Response:
    """The best value found so far against the epochs all trials had spent, each ended trial marked
    (pruned ones apart)."""
    return await plots.png_response(plots.history_png, *await read(plots.sweep_history, sweep_id))


@router.get("/{sweep_id}/importances", response_model=ImportancesPublic, responses=NOT_FOUND)
def sweep_importances(sweep_id: str, session: SessionDep) -> ImportancesPublic:
    """How much each varied value mattered for the sweep's metric (Optuna's PED-ANOVA), from the
    trials that ran to the end; empty until enough have."""
    sweep = sweeps.require(session, sweep_id=sweep_id)
    found, used = sweeps.importances(session, sweep)
    return ImportancesPublic(metric=sweep.metric, trials=used, importances=found)


@router.get("/{sweep_id}/importances.png", response_class=Response, responses={**plots.PNG_RESPONSE, **NOT_FOUND})
async def sweep_importances_png(sweep_id: str) -> Response:
    """The importances as bars."""
    return await plots.png_response(plots.importances_png, *await read(plots.sweep_importances, sweep_id))

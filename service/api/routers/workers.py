"""The worker registry: which training workers are live, what they serve and what they run."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.api.deps import SessionDep, SettingsDep, live_workers
from service.api.schemas.workers import WorkersPublic

router = APIRouter(prefix="/v1/workers", tags=["workers"])


@router.get("", response_model=WorkersPublic)
def list_workers(request: Request, session: SessionDep, settings: SettingsDep) -> WorkersPublic:
    """Live workers (heard from within three heartbeats), with their queues, devices, store and
    current job, and the store of the API process that answered (with why it is not the
    service's, if it is not)."""
    return live_workers(request, session, settings)

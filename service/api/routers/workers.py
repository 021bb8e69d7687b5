"""The worker registry: which training workers are live, what they serve and what they run."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import SessionDep, SettingsDep
from service.api.schemas.workers import WorkerPublic, WorkersPublic
from service.core import worker_registry
from service.core.storage import get_storage

router = APIRouter(prefix="/v1/workers", tags=["workers"])


@router.get("", response_model=WorkersPublic)
def list_workers(session: SessionDep, settings: SettingsDep) -> WorkersPublic:
    """Live workers (heard from within three heartbeats), with their queues, devices, store and
    current job, and the store of the API process that answered."""
    live = [WorkerPublic.model_validate(w) for w in worker_registry.live(session, settings=settings)]
    return WorkersPublic(workers=live, count=len(live), store=get_storage(settings).url)

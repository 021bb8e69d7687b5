"""The model registry: register job checkpoints as versions, list them, move aliases, delete."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, status
from pydantic import BaseModel, ConfigDict, Field

from service import registry
from service.deps import ModelServerDep, SessionDep, SettingsDep, WriteSessionDep
from service.model_store import MODEL_NAME, ModelNotFound, ModelNotReady

router = APIRouter(prefix="/v1/models", tags=["models"])
NOT_FOUND = {404: {"description": "No such model, version or job"}}
MAX_INT = 2**31 - 1  # what every database's INTEGER holds
NameParam = Annotated[str, Path(pattern=f"^{MODEL_NAME}$")]


class ModelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=f"^{MODEL_NAME}$", description="lower-case letters, digits, . _ -")]
    job_id: Annotated[str, Field(pattern=r"^[0-9a-fA-F-]{36}$")]
    checkpoint: Literal["best", "last"] | Annotated[int, Field(ge=1, le=MAX_INT)] = "best"


class AliasUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Annotated[int, Field(ge=1, le=MAX_INT)]


class ModelVersionPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    version: int
    job_id: str
    epoch: int
    selector: str
    task: str
    classes: list[str] | None
    input_shape: list[int]
    metrics: dict | None
    created_at: datetime


class ModelPublic(BaseModel):
    name: str
    versions: list[ModelVersionPublic]
    aliases: dict[str, int]
    latest_version: int


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int


def model_public(session, name: str) -> ModelPublic:
    """A model's versions and aliases; 404 if it has no version."""
    versions = registry.versions(session, name=name)
    if not versions:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"model {name!r} not found")
    return ModelPublic(name=name, versions=[ModelVersionPublic.model_validate(v) for v in versions],
                       aliases=registry.aliases(session, name=name), latest_version=versions[-1].version)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ModelVersionPublic,
             responses={**NOT_FOUND, 409: {"description": "The job has no checkpoint yet"}})
def register_model(body: ModelCreate, session: WriteSessionDep, settings: SettingsDep,
                   server: ModelServerDep) -> ModelVersionPublic:
    """Register a job's best, last or given epoch's checkpoint as the next version of a model."""
    try:
        version = registry.register(session, name=body.name, job_id=body.job_id.lower(),
                                    checkpoint=body.checkpoint, settings=settings)
    except ModelNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except ModelNotReady as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    session.commit()
    server.references.clear()  # `name` may now mean the new version
    return ModelVersionPublic.model_validate(version)


@router.get("", response_model=ModelsPublic)
def list_models(session: SessionDep) -> ModelsPublic:
    """Every registered model with its versions and aliases."""
    models = [model_public(session, name) for name in registry.names(session)]
    return ModelsPublic(data=models, count=len(models))


@router.get("/{name}", response_model=ModelPublic, responses=NOT_FOUND)
def read_model(name: NameParam, session: SessionDep) -> ModelPublic:
    """One model's versions and aliases."""
    return model_public(session, name)


@router.put("/{name}/aliases/{alias}", response_model=ModelPublic, responses=NOT_FOUND)
def set_alias(name: NameParam, alias: NameParam, body: AliasUpdate, session: WriteSessionDep,
              server: ModelServerDep) -> ModelPublic:
    """Point an alias (e.g. `production`) at a version; references `name@alias` follow it."""
    try:
        registry.set_alias(session, name=name, alias=alias, version=body.version)
    except ModelNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    session.commit()
    server.references.clear()  # other API processes follow within reference_cache_seconds
    model = model_public(session, name)
    session.commit()
    return model


@router.delete("/{name}/versions/{version}", status_code=status.HTTP_204_NO_CONTENT,
               responses={**NOT_FOUND, 409: {"description": "An alias points to this version"}})
def delete_version(name: NameParam, version: Annotated[int, Path(ge=1, le=MAX_INT)], session: WriteSessionDep,
                   settings: SettingsDep, server: ModelServerDep) -> None:
    """Delete a version that no alias points to."""
    try:
        registry.delete_version(session, name=name, version=version, settings=settings)
    except ModelNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except registry.AliasInUse as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    session.commit()
    server.references.clear()

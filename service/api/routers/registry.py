"""The model registry: register job checkpoints as versions, list them, move aliases, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from service.api.deps import ModelServerDep, SessionDep, SettingsDep, WriteSessionDep
from service.api.schemas.registry import (
    MAX_INT,
    AliasUpdate,
    ModelCreate,
    ModelPublic,
    ModelsPublic,
    ModelVersionPublic,
    model_public,
)
from service.core import registry
from service.core.references import MODEL_NAME

router = APIRouter(prefix="/v1/models", tags=["models"])
NOT_FOUND = {404: {"description": "No such model, version or job"}}
NameParam = Annotated[str, Path(pattern=f"^{MODEL_NAME}$")]


def _model(session, name: str) -> ModelPublic:
    return model_public(name, registry.require_versions(session, name=name), registry.aliases(session, name=name))


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ModelVersionPublic,
             responses={**NOT_FOUND, 409: {"description": "The job has no checkpoint yet"}})
def register_model(body: ModelCreate, session: WriteSessionDep, settings: SettingsDep,
                   server: ModelServerDep) -> ModelVersionPublic:
    """Register a job's best, last or given epoch's checkpoint as the next version of a model."""
    version = registry.register(session, name=body.name, job_id=body.job_id.lower(),
                                checkpoint=body.checkpoint, settings=settings)
    session.commit()
    server.references.clear()  # `name` may now mean the new version
    return ModelVersionPublic.model_validate(version)


@router.get("", response_model=ModelsPublic)
def list_models(session: SessionDep) -> ModelsPublic:
    """Every registered model with its versions and aliases."""
    models = [_model(session, name) for name in registry.names(session)]
    return ModelsPublic(data=models, count=len(models))


@router.get("/{name}", response_model=ModelPublic, responses=NOT_FOUND)
def read_model(name: NameParam, session: SessionDep) -> ModelPublic:
    """One model's versions and aliases."""
    return _model(session, name)


@router.put("/{name}/aliases/{alias}", response_model=ModelPublic, responses=NOT_FOUND)
def set_alias(name: NameParam, alias: NameParam, body: AliasUpdate, session: WriteSessionDep,
              server: ModelServerDep) -> ModelPublic:
    """Point an alias (e.g. `production`) at a version; references `name@alias` follow it."""
    registry.set_alias(session, name=name, alias=alias, version=body.version)
    session.commit()
    server.references.clear()  # other API processes follow within reference_cache_seconds
    model = _model(session, name)
    session.commit()
    return model


@router.delete("/{name}/versions/{version}", status_code=status.HTTP_204_NO_CONTENT,
               responses={**NOT_FOUND, 409: {"description": "An alias points to this version"}})
def delete_version(name: NameParam, version: Annotated[int, Path(ge=1, le=MAX_INT)], session: WriteSessionDep,
                   settings: SettingsDep, server: ModelServerDep) -> None:
    """Delete a version that no alias points to."""
    registry.delete_version(session, name=name, version=version, settings=settings)
    session.commit()
    server.references.clear()

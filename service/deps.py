"""Shared FastAPI dependencies."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.db import get_sessionmaker
from service.model_store import PredictorCache
from service.settings import Settings, get_settings


def get_session() -> Iterator[Session]:
    with get_sessionmaker()() as session:
        yield session


def get_predictor_cache(request: Request) -> PredictorCache:
    return request.app.state.predictors


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
PredictorCacheDep = Annotated[PredictorCache, Depends(get_predictor_cache)]

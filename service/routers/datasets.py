"""Uploaded datasets: upload a zip, list, read, delete."""

from __future__ import annotations

from datetime import datetime
from pathlib import PurePath
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict

from models.data import DatasetError
from service import datasets
from service.deps import SessionDep, SettingsDep, WriteSessionDep

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
NOT_FOUND = {404: {"description": "No such dataset"}}


class DatasetPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    kind: str
    task: str
    classes: list[str] | None
    input_shape: list[int]
    num_train: int
    num_test: int
    checksum: str
    size_bytes: int
    created_at: datetime


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    count: int


def _get_or_404(session, dataset_id: str):
    record = datasets.get_dataset(session, dataset_id=dataset_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"dataset {dataset_id} not found")
    return record


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DatasetPublic, responses={
    413: {"description": "The upload is larger than the limit"},
    422: {"description": "The archive is unsafe, damaged or not a dataset layout"},
})
async def upload_dataset(
    session: WriteSessionDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="a zip: train/<class>/*.png (+ test/...), <class>/*.png, "
                                                  "the four IDX files, or a CSV with a label or target column")],
    name: Annotated[str | None, Form(max_length=200)] = None,
    test_fraction: Annotated[float, Form(gt=0, lt=1, description="test share when the archive has no test split")] = 0.2,
    image_size: Annotated[int | None, Form(ge=8, le=512, description="resize every image to this square")] = None,
    seed: Annotated[int, Form(ge=0, le=2**31)] = 0,
) -> DatasetPublic:
    """Validate, decode and store a dataset; specs then use it as `uploaded:<id>`."""
    data = await file.read()
    label = name or PurePath(file.filename or "dataset").stem or "dataset"
    try:
        record = await run_in_threadpool(
            datasets.store_upload, session, data=data, name=label, test_fraction=test_fraction,
            image_size=image_size, seed=seed, datasets_dir=settings.datasets_dir,
            max_image_pixels=settings.max_image_pixels)
    except DatasetError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    session.commit()
    return DatasetPublic.model_validate(record)


@router.get("", response_model=DatasetsPublic)
def list_datasets(session: SessionDep) -> DatasetsPublic:
    """All uploaded datasets, newest first."""
    records = datasets.list_datasets(session)
    return DatasetsPublic(data=[DatasetPublic.model_validate(r) for r in records], count=len(records))


@router.get("/{dataset_id}", response_model=DatasetPublic, responses=NOT_FOUND)
def read_dataset(dataset_id: str, session: SessionDep) -> DatasetPublic:
    """One uploaded dataset."""
    return DatasetPublic.model_validate(_get_or_404(session, dataset_id))


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT,
               responses={**NOT_FOUND, 409: {"description": "An unfinished job uses the dataset"}})
def delete_dataset(dataset_id: str, session: WriteSessionDep, settings: SettingsDep) -> None:
    """Delete an uploaded dataset that no queued or running job uses."""
    _get_or_404(session, dataset_id)
    try:
        datasets.delete_dataset(session, dataset_id=dataset_id, datasets_dir=settings.datasets_dir)
    except datasets.DatasetInUse as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    session.commit()

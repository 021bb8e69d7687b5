"""Uploaded datasets: upload a zip, list, read, delete."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile, status
from fastapi.concurrency import run_in_threadpool

from service.api.deps import DeletesFiles, SessionDep, SettingsDep, WriteSessionDep, WritesFiles
from service.api.errors import refuse_unknown_fields
from service.api.routes import GuardedRoute
from service.api.schemas.datasets import DatasetPublic, DatasetsPublic
from service.core import datasets
from service.core.tables import DatasetStatus

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], route_class=GuardedRoute)
UPLOAD_FIELDS = frozenset(
    {
        "file",
        "name",
        "test_fraction",
        "image_size",
        "seed",
        "color",
        "min_per_class",
        "label_column",
        "target_column",
        "classes",
    }
)
NOT_FOUND = {404: {"description": "No such dataset"}}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetPublic,
    dependencies=[WritesFiles],
    responses={
        200: {
            "description": "The same archive was uploaded before with the same name and options: that dataset",
            "model": DatasetPublic,
        },
        202: {
            "description": "A large upload, kept and being decoded: poll the dataset until its status is ready",
            "model": DatasetPublic,
        },
        409: {"description": "Another dataset has this name: upload under another, or delete that one first"},
        413: {"description": "The upload is larger than the limit"},
        422: {"description": "The archive is unsafe, damaged or not a dataset layout"},
    },
)
async def upload_dataset(
    request: Request,
    response: Response,
    session: WriteSessionDep,
    settings: SettingsDep,
    file: Annotated[
        UploadFile,
        File(
            description="a zip: train/<class>/*.png (+ test/...), <class>/*.png, "
            "the four IDX files, or a CSV with a label or target column"
        ),
    ],
    name: Annotated[str | None, Form(max_length=200)] = None,
    test_fraction: Annotated[
        float | None,
        Form(gt=0, lt=1, description="test share when the archive has no test split (default 0.2); refused if it has"),
    ] = None,
    image_size: Annotated[int | None, Form(ge=8, le=512, description="resize every image to this square")] = None,
    seed: Annotated[int, Form(ge=0, le=2**31)] = 0,
    color: Annotated[
        Literal["auto", "rgb", "grayscale"],
        Form(description="auto: RGB if any image has colour, else grey; rgb; grayscale"),
    ] = "auto",
    min_per_class: Annotated[int, Form(ge=1, le=100_000, description="refuse classes with fewer training images")] = 5,
    label_column: Annotated[
        str | None, Form(min_length=1, max_length=200, description="a CSV's column of classes, if not called label")
    ] = None,
    target_column: Annotated[
        str | None,
        Form(min_length=1, max_length=200, description="a CSV's column of values to regress, if not called target"),
    ] = None,
    classes: Annotated[
        str | None,
        Form(
            max_length=100_000,
            description="IDX files' class names, label 0 first: comma-separated (cat,dog) or a JSON list "
            '(["T-shirt/top", "Trouser", ...]); without it they are named "0", "1", ...',
        ),
    ] = None,
) -> DatasetPublic:
    """Validate, decode and store a dataset; specs then use it as `uploaded:<id>`. A large upload
    is answered at once (202, status processing) and decoded after the answer. The same archive
    sent again with the same form answers the dataset it made (200, or 202 while it is decoded)."""
    await refuse_unknown_fields(request, UPLOAD_FIELDS)
    label = name or datasets.default_name(file.filename)
    options = datasets.UploadOptions(
        test_fraction=test_fraction,
        image_size=image_size,
        seed=seed,
        color=color,
        min_per_class=min_per_class,
        label_column=label_column,
        target_column=target_column,
        classes=datasets.class_names(classes),
    )
    # The upload is already spooled to a temporary file: it is read member by member from there.
    record, new = await run_in_threadpool(
        datasets.receive_upload, session, data=file.file, name=label, options=options, settings=settings
    )
    if record.status == DatasetStatus.PROCESSING:
        response.status_code = status.HTTP_202_ACCEPTED
    elif not new:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"/v1/datasets/{record.id}"
    return DatasetPublic.model_validate(record)


@router.get("", response_model=DatasetsPublic)
def list_datasets(session: SessionDep) -> DatasetsPublic:
    """All uploaded datasets, newest first."""
    records = datasets.list_datasets(session)
    return DatasetsPublic(data=[DatasetPublic.model_validate(r) for r in records], count=len(records))


@router.get("/{dataset_id}", response_model=DatasetPublic, responses=NOT_FOUND)
def read_dataset(dataset_id: str, session: SessionDep) -> DatasetPublic:
    """One uploaded dataset, by its id, a unique prefix of it, or its name."""
    return DatasetPublic.model_validate(datasets.require_dataset(session, dataset_id=dataset_id))


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        **NOT_FOUND,
        409: {"description": "An unfinished job or sweep, or a job that can still be resumed, uses it"},
    },
    dependencies=[DeletesFiles],
)
def delete_dataset(
    dataset_id: str,
    session: WriteSessionDep,
    settings: SettingsDep,
    force: Annotated[
        bool, Query(description="delete it even though stopped jobs that could resume use it (they then cannot)")
    ] = False,
) -> None:
    """Delete an uploaded dataset that no queued or running job or unfinished sweep uses, nor
    (without force) a stopped job that can still be resumed; by its id, a unique prefix of it, or
    its name."""
    datasets.delete_dataset(session, dataset_id=dataset_id, settings=settings, force=force)

"""Pictures of a job: learning curves, several jobs compared, the confusion matrix."""

from __future__ import annotations

from collections import OrderedDict
from typing import Annotated

import torch
from fastapi import APIRouter, HTTPException, Query, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel

from models.data import load_dataset
from models.spec import JobSpec
from service import jobs, plots
from service.deps import ModelServerDep, SessionDep, SettingsDep
from service.routers.predict import load_model
from service.schemas import EpochMetricPublic

router = APIRouter(prefix="/v1", tags=["plots"])
PNG = {200: {"content": {"image/png": {}}, "description": "A PNG image"}, 404: {"description": "No such job"}}


class ConfusionPublic(BaseModel):
    job_id: str
    epoch: int
    classes: list[str]
    matrix: list[list[int]]  # matrix[true][predicted]
    accuracy: float


def metric_rows(session, job_id: str) -> list[dict]:
    """A job's per-epoch metrics as plain rows for plotting; 404 for an unknown job."""
    if jobs.get_job(session, job_id=job_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    return [EpochMetricPublic.model_validate(m).model_dump() for m in jobs.get_metrics(session, job_id=job_id)]


async def learning_curves_png(session, job_id: str) -> Response:
    """The learning-curve image of one job (also served by the dashboard)."""
    rows = await run_in_threadpool(metric_rows, session, job_id)
    session.close()
    return Response(await run_in_threadpool(plots.learning_curves, [(job_id[:8], rows)]), media_type="image/png")


@router.get("/jobs/{job_id}/plot.png", response_class=Response, responses=PNG)
async def learning_curves(job_id: str, session: SessionDep) -> Response:
    """Loss and accuracy per epoch, train and test."""
    return await learning_curves_png(session, job_id)


@router.get("/plots/compare.png", response_class=Response, responses=PNG)
async def compare(session: SessionDep,
                  job_ids: Annotated[str, Query(alias="jobs", description="comma-separated job ids (2 to 8)",
                                                pattern=r"^[0-9a-fA-F-]{1,36}(,[0-9a-fA-F-]{1,36}){1,7}$")]) -> Response:
    """Several jobs' curves on one figure (e.g. the under- and over-fitting experiment)."""

    def series():
        out = []
        for job_id in job_ids.split(","):
            job = jobs.get_job(session, job_id=job_id)
            out.append(((job.name if job and job.name else job_id[:8]), metric_rows(session, job_id)))
        return out

    data = await run_in_threadpool(series)
    session.close()
    return Response(await run_in_threadpool(plots.learning_curves, data), media_type="image/png")


_CONFUSIONS: OrderedDict[tuple, tuple[list[list[int]], float]] = OrderedDict()


def _confusion(key: tuple, spec: JobSpec, settings, predictor) -> tuple[list[list[int]], float]:
    """Counts of (true, predicted) classes over the test set, remembered per checkpoint file."""
    if key in _CONFUSIONS:
        return _CONFUSIONS[key]
    dataset = load_dataset(spec.data, data_dir=settings.data_dir, datasets_dir=settings.datasets_dir,
                           cache_dir=settings.cache_dir, seed=spec.seed)
    classes = len(dataset.classes)
    matrix = torch.zeros(classes, classes, dtype=torch.long)
    for start in range(0, len(dataset.x_test), 1024):
        x = dataset.to_float(dataset.x_test[start:start + 1024])
        predicted = predictor.probabilities(x).argmax(dim=1)
        truth = dataset.y_test[start:start + 1024]
        matrix.index_put_((truth, predicted), torch.ones_like(truth), accumulate=True)
    accuracy = float(matrix.diagonal().sum()) / max(1, int(matrix.sum()))
    _CONFUSIONS[key] = result = (matrix.tolist(), accuracy)
    while len(_CONFUSIONS) > 32:
        _CONFUSIONS.popitem(last=False)
    return result


async def confusion_of(job_id: str, session, settings, server) -> ConfusionPublic:
    job = await run_in_threadpool(jobs.get_job, session, job_id=job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    if job.task != "classification":
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "a confusion matrix needs a classification job")
    target, loaded = await load_model(settings, server, f"job:{job_id}")
    spec = JobSpec.model_validate(job.spec)
    session.close()
    key = (str(target.path), target.path.stat().st_mtime_ns)
    matrix, accuracy = await run_in_threadpool(_confusion, key, spec, settings, loaded.predictor)
    return ConfusionPublic(job_id=job_id, epoch=target.epoch, classes=loaded.predictor.classes, matrix=matrix,
                           accuracy=accuracy)


@router.get("/jobs/{job_id}/confusion", response_model=ConfusionPublic,
            responses={404: {"description": "No such job"}, 409: {"description": "No checkpoint yet"},
                       422: {"description": "Not a classification job"}})
async def confusion(job_id: str, session: SessionDep, settings: SettingsDep, server: ModelServerDep) -> ConfusionPublic:
    """The best checkpoint's confusion matrix on the job's test set, as data."""
    return await confusion_of(job_id, session, settings, server)


@router.get("/jobs/{job_id}/confusion.png", response_class=Response,
            responses={**PNG, 409: {"description": "No checkpoint yet"}, 422: {"description": "Not a classification job"}})
async def confusion_png(job_id: str, session: SessionDep, settings: SettingsDep, server: ModelServerDep) -> Response:
    """The best checkpoint's confusion matrix on the job's test set, drawn."""
    result = await confusion_of(job_id, session, settings, server)
    return Response(await run_in_threadpool(plots.confusion_matrix, result.matrix, result.classes),
                    media_type="image/png")

"""Pictures of a job: learning curves, several jobs compared, the confusion matrix."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import AfterValidator

from service.api import plots
from service.api.deps import EvaluationsDep
from service.api.evaluations import Evaluations
from service.api.schemas.plots import ConfusionPublic

router = APIRouter(prefix="/v1", tags=["plots"])
PNG = {**plots.PNG_RESPONSE, 404: {"description": "No such job"}}


@router.get("/jobs/{job_id}/plot.png", response_class=Response, responses=PNG)
async def learning_curves(job_id: str) -> Response:
    """Loss and accuracy per epoch, train and test."""
    return await plots.curves_response(plots.job_series, [job_id])


@router.get("/plots/compare.png", response_class=Response, responses=PNG)
async def compare(
    job_ids: Annotated[
        list[str],
        Query(
            alias="jobs",
            description="job ids or prefixes (2 to 8): comma-separated (jobs=A,B), or the parameter repeated",
        ),
        AfterValidator(plots.compared_jobs),
    ],
) -> Response:
    """Several jobs' curves on one figure (e.g. the under- and over-fitting experiment)."""
    return await plots.curves_response(plots.job_series, job_ids)


async def _confusion(job_id: str, evaluations: Evaluations) -> ConfusionPublic:
    target, loaded, report, _ = await evaluations.report(job_id)
    return ConfusionPublic(
        job_id=target.job_id,
        epoch=target.epoch,
        classes=loaded.predictor.classes,
        matrix=report.confusion_matrix,
        accuracy=report.accuracy,
    )


@router.get(
    "/jobs/{job_id}/confusion",
    response_model=ConfusionPublic,
    responses={
        404: {"description": "No such job"},
        409: {"description": "No checkpoint yet"},
        422: {"description": "Not a classification job"},
    },
)
async def confusion(job_id: str, evaluations: EvaluationsDep) -> ConfusionPublic:
    """The best checkpoint's confusion matrix on the job's test set, as data."""
    return await _confusion(job_id, evaluations)


@router.get(
    "/jobs/{job_id}/confusion.png",
    response_class=Response,
    responses={**PNG, 409: {"description": "No checkpoint yet"}, 422: {"description": "Not a classification job"}},
)
async def confusion_png(job_id: str, evaluations: EvaluationsDep) -> Response:
    """The best checkpoint's confusion matrix on the job's test set, drawn."""
    result = await _confusion(job_id, evaluations)
    return await plots.png_response(plots.confusion_matrix, result.matrix, result.classes)

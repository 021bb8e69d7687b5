"""A job's evaluation report on its test set, and the test images it points at."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from service.api import plots
from service.api.deps import EvaluationsDep, SettingsDep, read
from service.api.evaluations import MAX_MISTAKES
from service.api.schemas.evaluation import EvaluationPublic, evaluation_public
from service.core import datasets

router = APIRouter(prefix="/v1", tags=["evaluation"])


@router.get(
    "/jobs/{job_id}/evaluation",
    response_model=EvaluationPublic,
    responses={
        404: {"description": "No such job"},
        409: {"description": "No checkpoint yet"},
        422: {"description": "Not a classification job"},
    },
)
async def evaluation(
    job_id: str,
    evaluations: EvaluationsDep,
    limit: Annotated[int, Query(ge=0, le=MAX_MISTAKES, description="mistakes listed")] = 24,
) -> EvaluationPublic:
    """Accuracy, top-k accuracy, per-class precision, recall and F1, the confusion matrix, the most
    confident mistakes and a confidence-threshold table for the checkpoint `job:<id>` names."""
    evaluated = await evaluations.report(job_id)
    target = evaluated.target
    return evaluation_public(target.job_id, target, evaluated.report, limit=limit, images=evaluated.images)


@router.get(
    "/jobs/{job_id}/test-images/{index}.png",
    response_class=Response,
    responses={
        **plots.PNG_RESPONSE,
        404: {"description": "No such job, or no such image in its test set"},
        422: {"description": "The job does not train on images"},
    },
)
async def test_image(job_id: str, index: int, settings: SettingsDep) -> Response:
    """One image of the job's test set (numbered from 0), its pixels as stored."""
    pixels = await read(lambda session: datasets.test_image(session, job_id=job_id, index=index, settings=settings))
    return await plots.png_response(plots.pixels_png, pixels)

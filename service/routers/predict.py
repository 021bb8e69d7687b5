"""Classify uploaded images with a trained model."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, UploadFile, status
from fastapi.concurrency import run_in_threadpool

from models.checkpoint import CheckpointError
from models.predictor import InputError
from service.deps import PredictorCacheDep, SessionDep, SettingsDep
from service.model_store import ModelNotFound, ModelNotReady, resolve
from service.schemas import ImagePrediction, PredictResponse, ResolvedModel

router = APIRouter(prefix="/v1", tags=["predict"])


@router.post("/predict", response_model=PredictResponse, responses={
    404: {"description": "No model answers to this reference"},
    409: {"description": "The job has no checkpoint yet"},
    413: {"description": "The upload is larger than the limit"},
    422: {"description": "A file is not a usable image, or a parameter is out of range"},
})
async def predict(
    session: SessionDep,
    settings: SettingsDep,
    cache: PredictorCacheDep,
    model: Annotated[str, Form(min_length=1, max_length=200, description="job:ID, job:ID:best or job:ID:last")],
    files: Annotated[list[UploadFile], File(description="one or more images")],
    top_k: Annotated[int, Form(ge=1, le=1000)] = 1,
) -> PredictResponse:
    """Label each uploaded image with the model's most likely classes."""
    if len(files) > settings.max_files_per_request:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"{len(files)} files sent; at most {settings.max_files_per_request} per request")
    uploads = [(f.filename or f"file{i}", await f.read()) for i, f in enumerate(files)]
    try:
        target = await run_in_threadpool(resolve, session, reference=model, checkpoint_dir=settings.checkpoint_dir)
        predictor = await run_in_threadpool(cache.get, target.path)
    except ModelNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except ModelNotReady as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except CheckpointError as exc:
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, f"model {model!r} cannot be loaded: {exc}") from exc
    if predictor.task != "classification":
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"model {model!r} is a regression model; it does not classify images")
    if top_k > len(predictor.classes):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"top_k is {top_k} but model {model!r} has {len(predictor.classes)} classes")

    def run() -> list[ImagePrediction]:
        inputs = [predictor.decode_image(data, name, max_pixels=settings.max_image_pixels) for name, data in uploads]
        results = predictor.classify(inputs, top_k=top_k)
        return [ImagePrediction(filename=name, label=r.label, index=r.index, probability=r.probability, top_k=r.top_k)
                for (name, _), r in zip(uploads, results)]

    try:
        predictions = await run_in_threadpool(run)
    except InputError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    meta = predictor.meta
    return PredictResponse(
        model=ResolvedModel(reference=model, job_id=target.job.id, epoch=target.checkpoint.epoch,
                            classes=predictor.classes, input_shape=meta["input_shape"]),
        predictions=predictions,
    )

"""A baseline route for bench/predict.py: the HTTP and multipart cost of a predict, without the model."""

from fastapi import APIRouter, Depends, Request

from service.api.auth import require_token

router = APIRouter(prefix="/v1/_bench", include_in_schema=False, dependencies=[Depends(require_token)])


@router.post("/floor")
async def floor(request: Request) -> dict:
    """Parse the upload exactly as /v1/predict does, then answer a constant."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        for item in form.getlist("files"):
            await item.read()
    else:
        await request.body()
    return {"predictions": [{"label": "constant", "index": 0, "probability": 1.0}]}

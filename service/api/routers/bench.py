"""A baseline route for bench/predict.py: the HTTP and multipart cost of a predict, without the model."""

from fastapi import APIRouter, Request

from service.api.multipart import parse_form

router = APIRouter(prefix="/v1/_bench", include_in_schema=False)


@router.post("/floor")
async def floor(request: Request) -> dict:
    """Parse the upload exactly as /v1/predict does, then answer a constant."""
    body = await request.body()
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        parse_form(body, request.headers["content-type"], max_parts=84)
    return {"predictions": [{"label": "constant", "index": 0, "probability": 1.0}]}

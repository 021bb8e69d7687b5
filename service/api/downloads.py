"""Model files sent to a downloader: written to a temporary file and sent from it in chunks, so the
answer does not hold the file in memory (a safetensors export is streamed to that file too; the
graph formats are built by their exporters, which hold the graph while they write it)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from service.core import exports
from service.core.settings import Settings


async def exported_file(settings: Settings, *, reference: str, fmt: str, inputs: str) -> FileResponse:
    """The model a reference names as a download in format `fmt`; its temporary file is removed
    once sent, or at once when the export fails."""
    folder = Path(tempfile.mkdtemp(prefix="trainyard-export-"))
    removed = BackgroundTask(shutil.rmtree, folder, ignore_errors=True)
    path = folder / f"model.{fmt}"
    try:
        filename = await run_in_threadpool(
            exports.export_model, reference=reference, fmt=fmt, settings=settings, path=path, inputs=inputs
        )
    except BaseException:
        await removed()
        raise
    return FileResponse(path, media_type="application/octet-stream", filename=filename, background=removed)

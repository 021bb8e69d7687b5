"""Model files sent to a downloader: written to a temporary file and sent from it in chunks, so the
answer does not hold the file in memory (a safetensors export is streamed to that file too; the
graph formats are built by their exporters, which hold the graph while they write it)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from starlette.types import Receive, Scope, Send

from service.core import exports
from service.core.settings import Settings

FOLDER_PREFIX = "trainyard-export-"


class SentOnceFile(FileResponse):
    """A file response whose folder is removed once the answer ends, however it ends (sent, or
    the client gone; a background task would run only after a complete send)."""

    def __init__(self, folder: Path, path: Path, filename: str):
        super().__init__(path, media_type="application/octet-stream", filename=filename)
        self.folder = folder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


async def exported_file(settings: Settings, *, reference: str, fmt: str, inputs: str) -> FileResponse:
    """The model a reference names as a download in format `fmt`; its temporary folder is removed
    once the answer ends, or at once when the export fails."""
    folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX))
    path = folder / f"model.{fmt}"
    try:
        filename = await run_in_threadpool(
            exports.export_model, reference=reference, fmt=fmt, settings=settings, path=path, inputs=inputs
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return SentOnceFile(folder, path, filename)

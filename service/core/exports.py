"""Models leaving the service: a registered version or a job's checkpoint as a file in one of the
interchange formats (models/inference/interchange.py)."""

from __future__ import annotations

from pathlib import Path

from models.inference.formats import SUFFIXES
from models.inference.interchange import ExportError, write_export
from models.inference.predictor import Predictor
from service.core.db import read_scope
from service.core.errors import Unprocessable
from service.core.references import resolve
from service.core.settings import Settings
from service.core.storage import get_storage


def export_model(*, reference: str, fmt: str, settings: Settings, path: Path, inputs: str = "float") -> str:
    """Write the model a reference names to `path`, in format `fmt` taking `inputs`, and return the
    file's name for its downloader; Unprocessable if the format cannot hold it. The reference is
    looked up in a read session of its own, which ends before the (slow) export."""
    with read_scope() as session:
        target = resolve(session, reference=reference, settings=settings)
    with get_storage(settings).opened(target.file, what=target.what) as checkpoint:
        predictor = Predictor.from_checkpoint(checkpoint)
    if target.threshold is not None:  # a registered version's default travels in the file's header
        predictor.meta = {**predictor.meta, "threshold": target.threshold}
    try:
        write_export(predictor, fmt, path, inputs)
    except ExportError as exc:
        raise Unprocessable(f"{fmt}: {exc}") from exc
    stem = f"{target.name}-v{target.version}" if target.name else f"job-{target.job_id}-epoch-{target.epoch}"
    # Each kind of input its own name, so that downloading both into one folder keeps both.
    kind = "" if inputs == "float" else f"-{inputs}"
    return f"{stem}{kind}.{SUFFIXES[fmt]}"

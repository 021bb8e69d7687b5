"""The learned parameters of the model a reference names, for people to read (models/inference/parameters.py)."""

from __future__ import annotations

from dataclasses import dataclass

from models.inference.parameters import EstimationError, ParameterView, estimation_error, parameter_views
from models.inference.predictor import Predictor
from models.spec.job import JobSpec
from service.core.db import read_scope
from service.core.references import resolve
from service.core.settings import Settings
from service.core.storage import get_storage


@dataclass
class ModelParameters:
    reference: str
    model: str  # which file, for people: a version, or a job's epoch
    job_id: str | None
    epoch: int | None
    total: int  # learned numbers in all
    parameters: list[ParameterView]
    estimation_error: EstimationError | None


def model_parameters(*, reference: str, settings: Settings, max_values: int) -> ModelParameters:
    """The parameters of the model `reference` names, each given whole up to `max_values` numbers; with
    the error against the weights that generated its data where a synthetic dataset's were learned.
    The reference is looked up in a read session of its own, which ends before the file is read."""
    with read_scope() as session:
        target = resolve(session, reference=reference, settings=settings)
    with get_storage(settings).opened(target.file, what=target.what) as checkpoint:
        predictor = Predictor.from_checkpoint(checkpoint)
    spec = predictor.meta.get("spec")  # trained here; an imported model has no data to compare with
    views = parameter_views(predictor.model, max_values=max_values)
    return ModelParameters(
        reference=target.reference,
        model=target.what,
        job_id=target.job_id,
        epoch=target.epoch,
        total=sum(view.count for view in views),
        parameters=views,
        estimation_error=(
            estimation_error(JobSpec.model_validate(spec), predictor.model, max_values=max_values) if spec else None
        ),
    )

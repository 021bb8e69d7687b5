"""The model registry: register job checkpoints as versions, list them, move aliases, delete."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Path, Query, Request, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from models.inference.formats import FORMATS, INPUTS
from models.inference.parameters import MAX_VALUES_SHOWN, VALUES_SHOWN
from service.api.deps import DeletesFiles, ModelServerDep, SessionDep, SettingsDep, WriteSessionDep, WritesFiles
from service.api.downloads import exported_file
from service.api.errors import refuse_unknown_fields, validation_error
from service.api.routes import GuardedRoute
from service.api.schemas.registry import (
    MAX_INT,
    AliasMoved,
    AliasUpdate,
    ModelCreate,
    ModelParametersPublic,
    ModelPublic,
    ModelsPublic,
    ModelVersionPublic,
    ModelVersionRegistered,
    ModelVersionUpdate,
    model_public,
)
from service.core import model_parameters as parameters
from service.core import model_registry
from service.core.errors import Invalid, json_field
from service.core.references import MODEL_NAME_PATTERN

router = APIRouter(prefix="/v1/models", tags=["models"], route_class=GuardedRoute)
NOT_FOUND = {404: {"description": "No such model, version or job"}}
NameParam = Annotated[str, Path(pattern=MODEL_NAME_PATTERN)]


def _model(session, name: str) -> ModelPublic:
    return model_public(
        name, model_registry.require_versions(session, name=name), model_registry.aliases(session, name=name)
    )


def _registered(session, version) -> ModelVersionRegistered:
    """A new version as registered, with what its callers will see change."""
    registered = ModelVersionRegistered.model_validate(version)
    registered.warnings = model_registry.registration_warnings(session, version)
    return registered


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ModelVersionRegistered,
    dependencies=[WritesFiles],
    responses={**NOT_FOUND, 409: {"description": "The job has no checkpoint yet"}},
)
def register_model(
    body: ModelCreate, session: WriteSessionDep, settings: SettingsDep, server: ModelServerDep
) -> ModelVersionRegistered:
    """Register a job's best, last or given epoch's checkpoint as the next version of a model."""
    version = model_registry.register(
        session,
        name=body.name,
        job_id=body.job_id.lower(),
        checkpoint=body.checkpoint,
        settings=settings,
        threshold=body.threshold,
    )
    server.references.clear()  # `name` may now mean the new version
    return _registered(session, version)


@router.get("", response_model=ModelsPublic)
def list_models(session: SessionDep) -> ModelsPublic:
    """Every registered model with its versions and aliases."""
    models = [_model(session, name) for name in model_registry.names(session)]
    return ModelsPublic(data=models, count=len(models))


@router.get("/{name}", response_model=ModelPublic, responses=NOT_FOUND)
def read_model(name: NameParam, session: SessionDep) -> ModelPublic:
    """One model's versions and aliases."""
    return _model(session, name)


@router.put("/{name}/aliases/{alias}", response_model=AliasMoved, responses=NOT_FOUND)
def set_alias(
    name: NameParam, alias: NameParam, body: AliasUpdate, session: WriteSessionDep, server: ModelServerDep
) -> AliasMoved:
    """Point an alias (e.g. `production`) at a version; references `name@alias` follow it (not
    all digits: name@3 would read like version 3). The answer's warnings say what changes for its
    callers, when the version answers otherwise."""
    if problem := model_registry.alias_problem(name, alias):  # a path's 422, in the validation shape
        raise validation_error([(("path", "alias"), problem)])
    warnings = model_registry.set_alias(session, name=name, alias=alias, version=body.version)
    server.references.clear()  # other API processes follow within reference_cache_seconds
    return AliasMoved(**_model(session, name).model_dump(), warnings=warnings)


@router.delete("/{name}/aliases/{alias}", response_model=AliasMoved, responses=NOT_FOUND)
def remove_alias(name: NameParam, alias: NameParam, session: WriteSessionDep, server: ModelServerDep) -> AliasMoved:
    """Remove an alias; `name@alias` then names nothing. Without `production`, the bare name means
    the newest version: the answer's warnings say what changes for its callers."""
    warnings = model_registry.remove_alias(session, name=name, alias=alias)
    server.references.clear()  # other API processes follow within reference_cache_seconds
    return AliasMoved(**_model(session, name).model_dump(), warnings=warnings)


@router.patch("/{name}/versions/{version}", response_model=ModelVersionPublic, responses=NOT_FOUND)
def update_version(
    name: NameParam,
    version: Annotated[int, Path(ge=1, le=MAX_INT)],
    body: ModelVersionUpdate,
    session: WriteSessionDep,
    server: ModelServerDep,
) -> ModelVersionPublic:
    """Set or clear (null) a version's default threshold; a field left out is left as it is."""
    if "threshold" in body.model_fields_set:
        record = model_registry.set_threshold(session, name=name, version=version, threshold=body.threshold)
    else:
        record = model_registry.require_version(session, name=name, version=version)
    server.references.clear()  # other API processes follow within reference_cache_seconds
    return ModelVersionPublic.model_validate(record)


@router.delete(
    "/{name}/versions/{version}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**NOT_FOUND, 409: {"description": "An alias points to this version"}},
    dependencies=[DeletesFiles],
)
def delete_version(
    name: NameParam,
    version: Annotated[int, Path(ge=1, le=MAX_INT)],
    session: WriteSessionDep,
    settings: SettingsDep,
    server: ModelServerDep,
) -> None:
    """Delete a version that no alias points to."""
    model_registry.delete_version(session, name=name, version=version, settings=settings)
    server.references.clear()


FormatParam = Annotated[
    Literal[FORMATS],
    Query(
        alias="format",
        description="safetensors: the plain state_dict with the metadata in its header; "
        "pt2 (torch.export), torchscript and onnx (opset 17): float inputs in, probabilities out",
    ),
]
InputsParam = Annotated[
    Literal[INPUTS],
    Query(
        description="float: the network's normalised float inputs; pixels (pt2, torchscript and onnx, image "
        "models): uint8 [N, C, H, W] at the model's size, normalisation inside the graph"
    ),
]
EXPORTED = {
    200: {"content": {"application/octet-stream": {}}, "description": "The model file"},
    **NOT_FOUND,
    409: {"description": "The job has no checkpoint yet"},
    422: {"description": "The format cannot hold this model"},
}


@router.get("/{name}/versions/{version}/export", response_class=Response, responses=EXPORTED)
async def export_version(
    name: NameParam,
    version: Annotated[int, Path(ge=1, le=MAX_INT)],
    settings: SettingsDep,
    fmt: FormatParam = "safetensors",
    inputs: InputsParam = "float",
) -> Response:
    """Download one version of a model as safetensors, pt2 (torch.export), TorchScript or ONNX."""
    return await exported_file(settings, reference=f"{name}:{version}", fmt=fmt, inputs=inputs)


ReferenceParam = Annotated[
    str,
    Path(
        max_length=200,
        description=(
            "name (its production alias, else the latest version), name:VERSION, name@ALIAS, "
            "job:ID or job:ID:best|last|EPOCH"
        ),
    ),
]


@router.get("/{reference}/export", response_class=Response, responses=EXPORTED)
async def export_reference(
    reference: ReferenceParam,
    settings: SettingsDep,
    fmt: FormatParam = "safetensors",
    inputs: InputsParam = "float",
) -> Response:
    """Download the model any reference names, a job's checkpoint included."""
    return await exported_file(settings, reference=reference, fmt=fmt, inputs=inputs)


@router.get(
    "/{reference}/parameters",
    response_model=ModelParametersPublic,
    responses={**NOT_FOUND, 409: {"description": "The job has no checkpoint yet"}},
)
async def model_parameters(
    reference: ReferenceParam,
    settings: SettingsDep,
    max_values: Annotated[
        int, Query(ge=0, le=MAX_VALUES_SHOWN, description="a tensor of up to this many numbers is given whole")
    ] = VALUES_SHOWN,
) -> ModelParametersPublic:
    """The learned weights of the model any reference names: each tensor's statistics, and its values while
    it is small. On synthetic data learned by one linear layer, also the error against the weights that
    generated it (true - learned), as the linear-regression chapter prints it."""
    found = await run_in_threadpool(
        parameters.model_parameters, reference=reference, settings=settings, max_values=max_values
    )
    return ModelParametersPublic.model_validate(found)


IMPORT_FIELDS = frozenset({"file", "name", "model", "classes", "input_shape", "normalize", "threshold"})


@router.post(
    "/import",
    status_code=status.HTTP_201_CREATED,
    response_model=ModelVersionRegistered,
    dependencies=[WritesFiles],
    responses={
        413: {"description": "The upload is larger than the limit"},
        422: {"description": "The weights do not fit the architecture, or a field is invalid"},
    },
)
async def import_model(
    request: Request,
    session: WriteSessionDep,
    settings: SettingsDep,
    server: ModelServerDep,
    file: Annotated[UploadFile, File(description="a safetensors state_dict (nothing is unpickled)")],
    name: Annotated[str, Form(pattern=MODEL_NAME_PATTERN)],
    model: Annotated[
        str | None,
        Form(
            max_length=100_000,
            description='the model part of a job spec, as JSON, e.g. {"arch": "lenet"}; '
            "left out, the file's own (a trainyard export says it)",
        ),
    ] = None,
    classes: Annotated[
        str | None, Form(max_length=100_000, description="JSON list of class names; none for a regression model")
    ] = None,
    input_shape: Annotated[
        str | None,
        Form(
            max_length=200,
            description="JSON list, e.g. [1, 28, 28] or [3, 224, 224]; left out, the file's own, else [1, 28, 28]",
        ),
    ] = None,
    normalize: Annotated[
        str | None,
        Form(
            max_length=1000,
            description='how images were normalised, as JSON {"mean": [...], "std": [...]} per channel of pixel / 255',
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        Form(ge=0, le=1, description="predict's default threshold (classifiers): labels below it are withheld"),
    ] = None,
) -> ModelVersionRegistered:
    """Register weights trained elsewhere as the next version of a model; predict serves it like any other."""
    await refuse_unknown_fields(request, IMPORT_FIELDS)
    spec = json_field("model", model)
    names = json_field("classes", classes)
    shape = json_field("input_shape", input_shape)
    if spec is not None and not isinstance(spec, dict):
        raise Invalid([(("model",), 'model must be a JSON object such as {"arch": "mlp"}')])
    weights = await file.read()
    version = await run_in_threadpool(
        model_registry.import_version,
        session,
        name=name,
        weights=weights,
        model=spec,
        classes=names,
        input_shape=shape,
        settings=settings,
        normalize=json_field("normalize", normalize),
        threshold=threshold,
    )
    server.references.clear()
    return _registered(session, version)

"""The model registry: immutable versions (of job checkpoints, or of weights imported from
elsewhere), and movable aliases. Each function that changes the registry commits its change."""

from __future__ import annotations

import json
import math

import torch
from pydantic import ValidationError
from safetensors.torch import load as load_safetensors
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.checkpoint import meta_in, read_meta, write_checkpoint
from models.data.contract import class_names_problem
from models.inference.interchange import imported_meta, weights_problems
from models.nets.archs import build_model
from models.spec.job import MODEL_SPEC, JobSpec, NormalizeSpec
from service.core import jobs, retention
from service.core.errors import Conflict, Invalid, Unprocessable
from service.core.references import DEFAULT_ALIAS, ModelNotFound, no_alias, no_version, resolve
from service.core.settings import Settings
from service.core.storage import StoredFile, get_storage
from service.core.tables import Job, JobStatus, ModelAlias, ModelVersion, utcnow


class AliasInUse(Conflict):
    """A version that an alias points to cannot be deleted."""


def _threshold(threshold: float | None, task: str) -> float | None:
    """A default threshold for a version of this task; Invalid on a model that does not classify."""
    if threshold is not None and task != "classification":
        raise Invalid([(("threshold",), f"threshold applies to classification; this model's task is {task}")])
    return threshold


def register(
    session: Session,
    *,
    name: str,
    job_id: str,
    checkpoint: str | int,
    settings: Settings,
    threshold: float | None = None,
) -> ModelVersion:
    """Register a job's checkpoint as the next version of `name` (predict's default `threshold` with it)."""
    target = resolve(session, reference=f"job:{job_id}:{checkpoint}", settings=settings)
    storage = get_storage(settings)
    with storage.opened(target.file, what=target.what) as path:
        meta = read_meta(path)
    threshold = _threshold(threshold, meta["task"])
    job = jobs.get_job(session, job_id=target.job_id)
    latest = jobs.latest_metric(session, job_id=job.id)
    final_metrics = (
        {
            k: getattr(latest, k)
            for k in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "val_loss", "val_acc")
        }
        if latest
        else None
    )

    def store(relative: str) -> StoredFile:
        # The version's own copy: deleting the job, or its retention, never takes a version's weights.
        return storage.copy(target.file, f"registry/{relative}")

    return _next_version(
        session,
        name,
        store,
        job_id=job.id,
        epoch=target.epoch,
        selector=str(checkpoint),
        task=meta["task"],
        classes=meta.get("classes"),
        input_shape=meta["input_shape"],
        metrics={"checkpoint": meta.get("metrics"), "final": final_metrics},
        threshold=threshold,
    )


def _next_version(session: Session, name: str, store, **columns) -> ModelVersion:
    """Record and commit the next version of `name`, and store(relative path) its file once the
    number is ours; the commit records the stored file's size and digest."""
    for _ in range(5):  # concurrent registrations of one name race for the next number
        version = (session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.name == name)) or 0) + 1
        relative = f"{name}/v{version}.safetensors"
        record = ModelVersion(name=name, version=version, path=relative, **columns)
        try:
            with session.begin_nested():
                session.add(record)
        except IntegrityError:
            continue
        stored = store(relative)
        record.size_bytes, record.sha256 = stored.size, stored.sha256
        session.commit()
        return record
    raise RuntimeError(f"could not allocate a version of {name!r}; try again")


def import_version(
    session: Session,
    *,
    name: str,
    weights: bytes,
    model: dict | None,
    classes: list[str] | None,
    input_shape: list[int] | None,
    settings: Settings,
    normalize: dict | None = None,
    threshold: float | None = None,
) -> ModelVersion:
    """Register weights trained elsewhere (a safetensors state_dict) as the next version of `name`.

    Nothing is unpickled; the architecture must take `input_shape` and every tensor must fit it,
    or Invalid names what does not. `normalize` ({"mean", "std"} per channel of pixel / 255) is
    how the images were normalised where the weights were trained; `threshold` is predict's default.
    A file that trainyard exported says its architecture, classes, input shape and normalisation:
    those left out are taken from it, and those given must agree with it."""
    given = _with_file_header(weights, model, classes, input_shape, normalize, threshold)
    model, classes, input_shape, normalize, resize, columns = (
        given["model"],
        given["classes"],
        given["input_shape"],
        given["normalize"],
        given["resize"],
        given["columns"],
    )
    _check_fields(classes, input_shape)
    threshold = _threshold(given["threshold"], "classification" if classes else "regression")
    try:
        spec = MODEL_SPEC.validate_python(model)
    except ValidationError as exc:
        raise Invalid([(("model", *e["loc"]), e["msg"]) for e in exc.errors()]) from None
    mean = std = None
    if normalize is not None and len(input_shape) == 1:
        mean, std = _column_normalisation(normalize, input_shape[0])
    elif normalize is not None:
        try:
            norm = NormalizeSpec.model_validate(normalize)
        except ValidationError as exc:
            raise Invalid([(("normalize", *e["loc"]), e["msg"]) for e in exc.errors()]) from None
        if len(norm.mean) != input_shape[0]:
            raise Invalid([(("normalize",), "normalize needs one mean and std per channel of the input_shape")])
        mean, std = norm.mean, norm.std
    outputs = len(classes) if classes else 1
    try:
        net = build_model(spec, input_shape, outputs, resize=resize)
        with torch.no_grad():
            net.eval()(torch.zeros(1, *input_shape))
    except (ValueError, RuntimeError) as exc:
        raise Invalid(
            [
                (
                    ("input_shape",),
                    f"{spec.arch} does not take inputs of shape {input_shape}: {str(exc).strip().splitlines()[0]}",
                )
            ]
        ) from None
    state = _state_in(weights)
    problems = weights_problems(net, state)
    if problems:
        raise Invalid([(("file", tensor), message) for tensor, message in problems])
    meta = imported_meta(
        spec.model_dump(mode="json"),
        classes,
        input_shape,
        mean,
        std,
        resize=resize,
        columns=columns,
        target=given["target"] if len(input_shape) == 1 else None,
    )

    def store(relative: str) -> StoredFile:
        return get_storage(settings).write(f"registry/{relative}", lambda path: write_checkpoint(path, state, meta))

    return _next_version(
        session,
        name,
        store,
        job_id=None,
        epoch=None,
        selector="import",
        task=meta["task"],
        classes=classes,
        input_shape=input_shape,
        metrics=None,
        threshold=threshold,
    )


def _listed(names: list[str] | None) -> str:
    names = names or []
    return ", ".join(names) if len(names) <= 6 else f"{len(names)} classes ({', '.join(names[:3])}, ...)"


def registration_warnings(session: Session, version: ModelVersion) -> list[str]:
    """What to know of a version just registered: that it is a checkpoint the model already has as
    another version, and what its callers see change (contract_changes)."""
    same = None
    if version.job_id is not None:
        same = session.scalar(
            select(ModelVersion.version).where(
                ModelVersion.name == version.name,
                ModelVersion.job_id == version.job_id,
                ModelVersion.epoch == version.epoch,
                ModelVersion.version != version.version,
            )
        )
    repeated = (
        [f"version {version.version} is the checkpoint version {same} is (job {version.job_id}, epoch {version.epoch})"]
        if same is not None
        else []
    )
    return repeated + contract_changes(session, version)


def contract_changes(session: Session, version: ModelVersion) -> list[str]:
    """What callers of the model see change with this new version (its task, its input, its
    classes), each a warning: compared with what the bare name served before, its production
    alias's version if it has one (which it still serves), else the newest version before."""
    name = version.name
    production = aliases(session, name=name).get(DEFAULT_ALIAS)
    if production is not None:
        served = session.scalar(
            select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == production)
        )
        now = f"{name!r} still means version {production} ({name}@{DEFAULT_ALIAS}) until that alias moves"
    else:
        served = session.scalar(
            select(ModelVersion)
            .where(ModelVersion.name == name, ModelVersion.version < version.version)
            .order_by(ModelVersion.version.desc())
            .limit(1)
        )
        now = f"{name!r} now means version {version.version}"
    return _differences(version, served, now) if served is not None else []


def _differences(version: ModelVersion, served: ModelVersion, now: str) -> list[str]:
    """How `version` answers callers otherwise than `served` (its task, its input, its classes),
    each a warning, the last ending with `now` (what the callers' reference means now)."""
    new, old = f"version {version.version}", f"version {served.version}"
    changes = []
    if version.task != served.task:
        changes.append(f"{new} is a {version.task} model where {old} is a {served.task} one")
    if list(version.input_shape) != list(served.input_shape):
        shape = "x".join(map(str, version.input_shape)), "x".join(map(str, served.input_shape))
        changes.append(f"{new} takes {shape[0]} inputs where {old} takes {shape[1]}")
    if version.task == served.task == "classification" and list(version.classes or []) != list(served.classes or []):
        changes.append(f"{new} answers {_listed(version.classes)} where {old} answers {_listed(served.classes)}")
    if changes:
        changes[-1] += f"; {now}"
    return changes


def _canonical(model: dict) -> dict | None:
    try:
        return MODEL_SPEC.validate_python(model).model_dump(mode="json")
    except ValidationError:
        return None  # import_version says what is wrong with it


def _check_fields(classes, input_shape) -> None:
    """Invalid unless classes (None: a regression model) and the input shape are ones a model can
    have, given by the request or read from the file's header."""
    problem = None if classes is None else class_names_problem(classes)
    if problem:
        raise Invalid([(("classes",), problem)])
    if (
        not isinstance(input_shape, list)
        or len(input_shape) not in (1, 3)
        or not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 4096 for d in input_shape)
    ):
        raise Invalid([(("input_shape",), "input_shape must be [features] or [channels, height, width]")])
    if len(input_shape) == 3 and input_shape[0] not in (1, 3):
        raise Invalid([(("input_shape",), f"images have 1 (grey) or 3 (RGB) channels, not {input_shape[0]}")])


def _finite(values, *, positive: bool = False) -> bool:
    """Whether every value is a finite number (not a bool), and above 0 if `positive`."""
    return all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and (not positive or v > 0)
        for v in values
    )


def _column_normalisation(normalize, features: int) -> tuple[list[float], list[float]]:
    """A numeric model's standardisation, (x - mean) / std per column: one finite mean and one
    positive std for each of its `features` columns; Invalid otherwise."""
    pairs = normalize if isinstance(normalize, dict) else {}
    mean, std = pairs.get("mean"), pairs.get("std")

    def numbers(values, positive: bool) -> bool:
        return isinstance(values, list) and len(values) == features and _finite(values, positive=positive)

    if not (numbers(mean, False) and numbers(std, True)):
        raise Invalid(
            [(("normalize",), f"a model of {features} numeric columns takes a mean and a positive std for each column")]
        )
    return [float(v) for v in mean], [float(v) for v in std]


def _header_says(meta: dict) -> dict:
    """What a trainyard checkpoint's header says of how to serve its weights; Invalid for what no
    export of trainyard's would say (the header is the client's to write)."""
    spec = meta.get("spec")
    try:
        resize = JobSpec.model_validate(spec).resize if isinstance(spec, dict) else meta.get("resize")
    except ValidationError:
        resize = None  # a spec of another version: its model part still says the architecture
    contract = meta.get("input") if isinstance(meta.get("input"), dict) else {}
    mean, std = contract.get("mean"), contract.get("std")
    threshold = meta.get("threshold")
    if not (resize is None or (isinstance(resize, int) and not isinstance(resize, bool) and 1 <= resize <= 4096)):
        raise Invalid([(("file",), f"its header's resize {resize!r} is not a side in pixels")])
    if not all(v is None or isinstance(v, list) for v in (mean, std)):
        raise Invalid([(("file",), "its header's input mean and std must be lists, one number per channel")])
    if not (threshold is None or (isinstance(threshold, float | int) and 0 <= threshold <= 1)):
        raise Invalid([(("file",), f"its header's threshold {threshold!r} is not a number from 0 to 1")])
    channels = len(mean or std or [])
    columns = contract.get("columns")
    target = contract.get("target_mean"), contract.get("target_std")
    if target == (None, None):
        target = None
    elif not (_finite(target[:1]) and _finite(target[1:], positive=True)):
        raise Invalid([(("file",), "its header's target_mean and target_std must be numbers, the std above 0")])
    return {
        "target": target,
        "columns": columns if isinstance(columns, list) and all(isinstance(c, str) for c in columns) else None,
        "model": meta.get("model") or (spec.get("model") if isinstance(spec, dict) else None),
        "classes": meta.get("classes"),
        "input_shape": meta.get("input_shape"),
        "normalize": {"mean": mean or [0.0] * channels, "std": std or [1.0] * channels} if channels else None,
        "resize": resize,
        "threshold": threshold,
    }


def _state_in(weights: bytes) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors(weights)
    except Exception as exc:  # safetensors has its own error types for a damaged header
        raise Invalid(
            [
                (
                    ("file",),
                    f"not a safetensors file: {exc}. Import takes a state_dict in safetensors, as `trainyard "
                    "models export` writes by default; pt2, TorchScript, ONNX and pickled files are not taken",
                )
            ]
        ) from None


def _with_file_header(weights: bytes, model, classes, input_shape, normalize, threshold) -> dict:
    """The import's model, classes, input shape, normalisation, resize and threshold, each taken
    from the file's trainyard header where left out; Invalid where one given disagrees with it
    (the same tensors can fit a network of other activations or pooling, which answers wrongly)."""
    meta = meta_in(weights)
    if meta is None:
        if model is None:
            _state_in(weights)  # a file of another kind (a pt2 or ONNX export, say) is told so first
            raise Invalid(
                [
                    (
                        ("model",),
                        'model is required: the architecture, as JSON such as {"arch": "lenet"} (this '
                        "file has no trainyard header that says it)",
                    )
                ]
            )
        given = {"model": model, "classes": classes, "input_shape": input_shape, "normalize": normalize}
        return {
            **given,
            "input_shape": input_shape or [1, 28, 28],
            "resize": None,
            "threshold": threshold,
            "columns": None,
            "target": None,
        }
    own = _header_says(meta)
    problems = []
    if model is not None and own["model"] is not None and _canonical(model) != _canonical(own["model"]):
        problems.append(
            (
                ("model",),
                f"the file was trained as {json.dumps(own['model'])}, not as {json.dumps(model)}: "
                "leave model out to take the file's",
            )
        )
    for field, value in (("classes", classes), ("input_shape", input_shape), ("normalize", normalize)):
        if value is not None and own[field] is not None and value != own[field]:
            said = f"the file's {field} is {json.dumps(own[field])}, not {json.dumps(value)}"
            problems.append(((field,), f"{said}: leave {field} out to take the file's"))
    if problems:
        raise Invalid(problems)
    return {
        "model": model if model is not None else own["model"],
        "classes": classes if classes is not None else own["classes"],
        "input_shape": input_shape or own["input_shape"] or [1, 28, 28],
        "normalize": normalize if normalize is not None else own["normalize"],
        "resize": own["resize"],
        "threshold": threshold if threshold is not None else own["threshold"],
        "columns": own["columns"],  # kept by imported_meta for a model of as many numeric columns
        "target": own["target"],  # the units a regression that learnt its target standardised answers in
    }


def versions(session: Session, *, name: str) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).where(ModelVersion.name == name).order_by(ModelVersion.version)))


def require_versions(session: Session, *, name: str) -> list[ModelVersion]:
    """A model's versions, oldest first; ModelNotFound if it has none."""
    found = versions(session, name=name)
    if not found:
        raise ModelNotFound(no_version(session, name, name, None))  # it says which names are close
    return found


def aliases(session: Session, *, name: str) -> dict[str, int]:
    rows = session.scalars(select(ModelAlias).where(ModelAlias.name == name).order_by(ModelAlias.alias))
    return {row.alias: row.version for row in rows}


def names(session: Session) -> list[str]:
    return list(session.scalars(select(ModelVersion.name).distinct().order_by(ModelVersion.name)))


def require_version(session: Session, *, name: str, version: int) -> ModelVersion:
    """One version of a model; ModelNotFound if there is none."""
    record = session.scalars(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
    ).first()
    if record is None:
        raise ModelNotFound(no_version(session, f"{name}:{version}", name, version))
    return record


def alias_problem(name: str, alias: str) -> str | None:
    """Why `alias` cannot name a version of `name`, or None: all digits, name@3 would read like
    version 3 (name:3)."""
    if alias.isdigit():
        return (
            f"alias {alias!r} is all digits: {name}@{alias} would read like version {alias}, which is "
            f"{name}:{alias}; give the alias a word (v{alias}, staging, ...)"
        )
    return None


def set_alias(session: Session, *, name: str, alias: str, version: int) -> list[str]:
    """Point an alias at a version (creating or moving it); warnings of what its callers see
    change, when it moves to a version that answers otherwise."""
    if problem := alias_problem(name, alias):
        raise Unprocessable(problem)
    record = require_version(session, name=name, version=version)
    row = session.get(ModelAlias, (name, alias))
    warnings = []
    if row is None:
        if alias == DEFAULT_ALIAS:  # the bare name stops meaning the newest version
            newest = versions(session, name=name)[-1]
            if newest.version != version:
                warnings = _differences(record, newest, f"{name!r} and {name}@{alias} now mean version {version}")
        session.add(ModelAlias(name=name, alias=alias, version=version))
    else:
        if row.version != version:
            before = require_version(session, name=name, version=row.version)
            callers = f"{name}@{alias} and {name!r} now mean" if alias == DEFAULT_ALIAS else f"{name}@{alias} now means"
            warnings = _differences(record, before, f"{callers} version {version}")
        row.version, row.updated_at = version, utcnow()
    session.commit()
    return warnings


def remove_alias(session: Session, *, name: str, alias: str) -> list[str]:
    """Remove an alias; ModelNotFound naming the aliases there are if it has none. Removing
    `production` makes the bare name mean the newest version again: a warning says what changes,
    when that version answers otherwise."""
    found = require_versions(session, name=name)
    row = session.get(ModelAlias, (name, alias))
    if row is None:
        raise ModelNotFound(no_alias(session, name, alias))
    warnings = []
    newest = found[-1]
    if alias == DEFAULT_ALIAS and newest.version != row.version:
        aliased = next(v for v in found if v.version == row.version)
        warnings = _differences(newest, aliased, f"{name!r} now means version {newest.version}, the newest")
    session.delete(row)
    session.commit()
    return warnings


def set_threshold(session: Session, *, name: str, version: int, threshold: float | None) -> ModelVersion:
    """Set (or, with None, clear) the default threshold predict applies to a version."""
    record = require_version(session, name=name, version=version)
    record.threshold = _threshold(threshold, record.task)
    session.commit()
    return record


def delete_version(session: Session, *, name: str, version: int, settings: Settings) -> None:
    """Delete a version no alias points to and no unfinished job starts from; its file goes after
    the commit."""
    record = require_version(session, name=name, version=version)
    pointing = [alias for alias, v in aliases(session, name=name).items() if v == version]
    if pointing:
        raise AliasInUse(
            f"version {version} of {name!r} is aliased as {', '.join(pointing)}; move or remove the alias first "
            f"(`trainyard models unalias {name} {pointing[0]}`, DELETE /v1/models/{name}/aliases/{pointing[0]})"
        )
    starting = [
        job.id
        for job in session.scalars(select(Job).where(Job.status.not_in(JobStatus.FINAL)))
        if ((job.spec or {}).get("init_from") or {}).get("model") == f"{name}:{version}"
    ]
    if starting:
        raise Conflict(
            f"version {version} of {name!r} is what unfinished job(s) {', '.join(starting[:5])} "
            "start from; cancel them or wait until they end"
        )
    session.delete(record)
    session.commit()
    get_storage(settings).delete(record.file.key)
    retention.uncache(settings, [record.file])  # not the copy of the checkpoint it came from

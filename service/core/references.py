"""Model references -> checkpoint files.

References: `job:ID` (the job's best epoch), `job:ID:best|last|EPOCH` (ID: the job's id or a unique
prefix of it), and registered models:
`name` (its `production` alias when set, else the latest version), `name:VERSION`, `name@ALIAS`.
A reference is only ever looked up in SQL; it can never name a path.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.spec.explain import worded
from service.core import jobs
from service.core.errors import NotFound, NotReady
from service.core.ids import MAX_LISTED, id_hint, matching, resolve_id
from service.core.settings import Settings
from service.core.storage import StoredFile
from service.core.tables import Job, JobStatus, ModelAlias, ModelVersion

_JOB_REF = re.compile(r"^job:(?P<id>[0-9a-fA-F-]{1,36})(?::(?P<which>best|last|[1-9][0-9]{0,6}))?$")
MODEL_NAME = r"[a-z0-9][a-z0-9._-]{0,63}"
MODEL_NAME_PATTERN = worded(
    f"^{MODEL_NAME}$", "1 to 64 lower-case letters, digits, '.', '_' or '-', the first a letter or a digit"
)
_MODEL_REF = re.compile(rf"^(?P<name>{MODEL_NAME})(?::(?P<version>[1-9][0-9]{{0,8}})|@(?P<alias>{MODEL_NAME}))?$")
DEFAULT_ALIAS = "production"


def model_name_for(text: str | None) -> str:
    """A model name made of a job's name ("activation [activation=tanh]" becomes
    "activation-activation-tanh"), to offer where a name is asked for; "" if nothing is left."""
    name = re.sub(r"[^a-z0-9._-]+", "-", (text or "").lower()).strip("-._")
    return name[:64].rstrip("-._")


class ModelNotFound(NotFound):
    """No model answers to this reference."""


class ModelNotReady(NotReady):
    """The reference names a job that has no checkpoint yet."""


@dataclass
class ResolvedCheckpoint:
    reference: str
    file: StoredFile
    job_id: str | None  # None for an imported version
    epoch: int | None  # None for an imported version: no job's epoch
    name: str | None = None
    version: int | None = None
    threshold: float | None = None  # the version's default confidence threshold; job:ID has none

    def threshold_for(self, requested: float | None) -> float | None:
        """The threshold a predict applies: the request's if given, else this model's default."""
        return self.threshold if requested is None else requested

    @property
    def what(self) -> str:
        """The file for people: which version, or which job's epoch."""
        if self.name is not None:
            return f"version {self.version} of model {self.name!r}"
        return f"the checkpoint of epoch {self.epoch} of job {self.job_id}"


def _why_none(job: Job) -> str:
    """Why a finished job that trained epochs holds no checkpoint: retention removed them."""
    if job.status not in JobStatus.FINAL or not job.epoch:
        return ""
    return (
        f": it trained {job.epoch} epoch(s), whose checkpoints retention removed (TRAINYARD_RETENTION_DAYS "
        "removes those of jobs finished that long ago that no registered version came from)"
    )


def _resolve_job(session: Session, reference: str, match) -> ResolvedCheckpoint:
    job = jobs.get_job(session, job_id=resolve_id(session, Job, match["id"], kind="job"))
    if job is None:
        raise ModelNotFound(f"model {reference!r} not found: there is no job {match['id']}{id_hint(match['id'])}")
    which = match["which"] or "best"
    if which.isdigit():
        checkpoint = next((c for c in job.checkpoints if c.epoch == int(which)), None)
        if checkpoint is None:
            kept = sorted(c.epoch for c in job.checkpoints)
            raise ModelNotFound(
                f"model {reference!r} not found: job {job.id} has no checkpoint for epoch {which}; "
                + (
                    f"it keeps epoch{'s' if len(kept) > 1 else ''} {', '.join(map(str, kept))}"
                    + ' (the spec\'s "checkpoints": {"keep": ...} says which a job keeps)'
                    if kept
                    else f"it keeps none{_why_none(job)}"
                )
            )
    else:
        checkpoint = jobs.best_checkpoint(job) if which == "best" else jobs.last_checkpoint(job)
        checkpoint = checkpoint or jobs.last_checkpoint(job)
    if checkpoint is None:
        finished = job.status in JobStatus.FINAL
        raise ModelNotReady(
            f"job {job.id} has no checkpoint{'' if finished else ' yet'} (status {job.status}){_why_none(job)}"
        )
    return ResolvedCheckpoint(
        reference=reference,
        file=checkpoint.file,
        job_id=job.id,
        epoch=checkpoint.epoch,
    )


def find_version(session: Session, *, reference: str) -> ModelVersion:
    """The registered version a `name`, `name:VERSION` or `name@ALIAS` reference names; ModelNotFound
    saying what there is instead (close names, the model's aliases or versions)."""
    match = _MODEL_REF.match(reference)
    if not match:
        raise ModelNotFound(f"model {reference!r} not found; use name, name:VERSION, name@ALIAS or job:ID")
    name = match["name"]
    version = int(match["version"]) if match["version"] else None
    if match["alias"]:
        alias = session.get(ModelAlias, (name, match["alias"]))
        if alias is None:
            raise ModelNotFound(no_alias(session, name, match["alias"]))
        version = alias.version
    elif version is None:
        production = session.get(ModelAlias, (name, DEFAULT_ALIAS))
        if production is not None:
            version = production.version
    query = select(ModelVersion).where(ModelVersion.name == name)
    query = query.where(ModelVersion.version == version) if version else query.order_by(ModelVersion.version.desc())
    found = session.scalars(query.limit(1)).first()
    if found is None:
        raise ModelNotFound(no_version(session, reference, name, version))
    return found


def no_version(session: Session, reference: str, name: str, version: int | None) -> str:
    """Why `reference` names no version: the model has other versions, or no model has that name
    (and which are close)."""
    versions = list(
        session.scalars(select(ModelVersion.version).where(ModelVersion.name == name).order_by(ModelVersion.version))
    )
    if versions:
        return f"model {name!r} has no version {version}; its versions: {', '.join(map(str, versions[-MAX_LISTED:]))}"
    names = list(session.scalars(select(ModelVersion.name).distinct().order_by(ModelVersion.name)))
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    if close:
        return f"model {reference!r} not found; did you mean {' or '.join(repr(c) for c in close)}?"
    if names:
        more = ", ..." if len(names) > MAX_LISTED else ""
        return f"model {reference!r} not found; registered models: {', '.join(names[:MAX_LISTED])}{more}"
    return (
        f"model {reference!r} not found: no model is registered yet (POST /v1/models or "
        "`trainyard models register NAME JOB_ID` registers a job's checkpoint)"
    )


def no_alias(session: Session, name: str, alias: str) -> str:
    """Why `name@alias` names nothing: the aliases the model has (and the close one), or that there is no such model."""
    aliases = {a.alias: a.version for a in session.scalars(select(ModelAlias).where(ModelAlias.name == name))}
    if not aliases:
        exists = session.scalars(select(ModelVersion.name).where(ModelVersion.name == name).limit(1)).first()
        if exists is None:
            return no_version(session, f"{name}@{alias}", name, None)
        return (
            f"model {name!r} has no alias {alias!r}; it has no aliases yet "
            f"(PUT /v1/models/{name}/aliases/{alias} sets one; `trainyard models alias {name} {alias} <version>`)"
        )
    close = difflib.get_close_matches(alias, list(aliases), n=1, cutoff=0.5)
    hint = f"did you mean {name}@{close[0]}? " if close else ""
    listed = ", ".join(f"{a}={v}" for a, v in sorted(aliases.items()))
    return f"model {name!r} has no alias {alias!r}; {hint}its aliases: {listed}"


def resolve(session: Session, *, reference: str, settings: Settings) -> ResolvedCheckpoint:
    """Find the checkpoint file a model reference names (its keys are checked by the store:
    a key never leaves its area)."""
    reference = reference.strip()
    match = _JOB_REF.match(reference)
    if match:
        return _resolve_job(session, reference, match)
    if reference.startswith("job:"):
        job_id, _, which = reference.removeprefix("job:").partition(":")
        if _JOB_REF.match(f"job:{job_id}"):
            raise ModelNotFound(
                f"model {reference!r} not found: after job:{job_id}, give best, last or an epoch from 1, not {which!r}"
            )
        raise ModelNotFound(
            f"model {reference!r} not found: job:ID takes a job's id or a prefix of 6 or more of its hex digits, "
            "then :best, :last or :EPOCH if not the best"
        )
    try:
        version = find_version(session, reference=reference)
    except ModelNotFound as exc:
        named = matching(session, Job, reference, limit=3)
        if named:  # a bare job id (or prefix) where a reference to it was meant
            raise ModelNotFound(f"{exc}; did you mean {' or '.join(f'job:{job_id}' for job_id in named)}?") from None
        raise
    return ResolvedCheckpoint(
        reference=reference,
        file=version.file,
        job_id=version.job_id,
        epoch=version.epoch,
        name=version.name,
        version=version.version,
        threshold=version.threshold,
    )


def init_from_reference(init_from) -> str:
    """The model reference for a spec's init_from."""
    return init_from.model if init_from.model is not None else f"job:{init_from.job_id}:{init_from.checkpoint}"

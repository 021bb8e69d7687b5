"""Submitting work: check a spec against the data it names, queue the job in SQL, publish it.

A job is committed as `queued` before its message is sent, so a broker outage loses nothing:
the reaper sends it later. An Idempotency-Key makes a retried submission return the first job.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.data.loading import builtin_on_disk
from models.nets.cost import admission_problems
from models.nets.pretrained import find_weights_file, missing_weights_message, weights_file_name
from models.spec.job import ImageDatasetSpec, JobSpec, UploadedDatasetSpec
from models.spec.problems import spec_problems
from service.core import datasets, job_pages, jobs, worker_registry
from service.core.broker import publish_or_defer
from service.core.errors import Conflict, Invalid
from service.core.ids import resolve_id
from service.core.job_pages import JobView
from service.core.references import ModelNotFound, ModelNotReady, find_version, init_from_reference, resolve
from service.core.settings import Settings
from service.core.tables import Job, JobStatus, Sweep


@dataclass
class Submitted:
    job_id: str
    replayed: bool  # an earlier request with the same Idempotency-Key created the job
    view: JobView | None = None  # the job as the answer shows it, read before the transaction ended


def with_full_ids(session: Session, *, spec: JobSpec) -> JobSpec:
    """The spec with its uploaded dataset and init_from job named by their full ids, where it names
    them by a unique id prefix (or the dataset by its name), and an init_from model named by its
    version (`name` or `name@alias` as they resolve now), so that the stored spec means the same
    thing forever; Invalid for a dataset it names by no id or name, AmbiguousId for a prefix that
    begins several. (An init_from job or model that does not exist is check_spec's to report.)"""
    update = {}
    if isinstance(spec.data, UploadedDatasetSpec):
        dataset_id = datasets.reference_id(session, given=spec.data.dataset_id)
        update["data"] = spec.data.model_copy(update={"dataset": f"uploaded:{dataset_id}"})
    if spec.init_from is not None and spec.init_from.job_id is not None:
        job_id = resolve_id(session, Job, spec.init_from.job_id, kind="job")
        update["init_from"] = spec.init_from.model_copy(update={"job_id": job_id})
    if spec.init_from is not None and spec.init_from.model is not None:
        update["init_from"] = spec.init_from.model_copy(update={"model": pinned(session, spec.init_from.model)})
    return spec.model_copy(update=update) if update else spec


def pinned(session: Session, reference: str) -> str:
    """`name:VERSION` for a registered model's `name` or `name@alias` as they resolve now; any other
    reference (one that does not resolve is check_spec's to report) as it is."""
    try:
        version = find_version(session, reference=reference.strip())
    except ModelNotFound:
        return reference
    return f"{version.name}:{version.version}"


def check_spec(session: Session, *, spec: JobSpec, settings: Settings) -> str:
    """The spec's task, or Invalid naming what the dataset or the starting weights rule out."""
    problems = []
    info = datasets.dataset_info(session, spec)
    if info is None:
        problems.append((("data", "dataset"), f"{spec.data.dataset} not found; upload it to /v1/datasets"))
    else:
        problems += [(tuple(p.loc), p.msg) for p in spec_problems(spec, info)]
        if not problems:
            problems += [
                (tuple(loc), msg)
                for loc, msg in admission_problems(
                    spec,
                    info.input_shape,
                    info.outputs,
                    max_parameters=settings.max_parameters,
                    max_bytes=settings.max_job_memory,
                    where="TRAINYARD_MAX_JOB_MEMORY",
                )
            ]
    if (
        spec.distributed is not None
        and spec.distributed.nnodes > 1
        and not (settings.storage_url or "").startswith("s3")
    ):
        problems.append(
            (
                ("distributed", "nnodes"),
                "a job on several machines needs an object store for its data and checkpoints, which "
                "every machine reads and writes: set TRAINYARD_STORAGE_URL (s3://...) on the API and the "
                "workers, or use nnodes 1",
            )
        )
    if spec.init_from is not None:
        try:
            resolve(session, reference=init_from_reference(spec.init_from), settings=settings)
        except (ModelNotFound, ModelNotReady) as exc:
            problems.append((("init_from",), str(exc)))
    if problems:
        raise Invalid(problems)
    return info.task


def _replay(job: Job, request_hash: str) -> Submitted:
    if job.request_hash != request_hash:
        raise Conflict(f"this Idempotency-Key was used for job {job.id} with a different spec")
    return Submitted(job.id, replayed=True)


def submit_job(
    session: Session,
    *,
    spec: JobSpec,
    settings: Settings,
    idempotency_key: str | None = None,
    sweep: tuple[str, int] | None = None,
) -> Submitted:
    """Check a spec, commit its queued job and send it to a worker (`sweep`: the sweep and trial
    the job runs)."""
    submitted = _submit(session, spec=spec, settings=settings, idempotency_key=idempotency_key, sweep=sweep)
    submitted.view = job_pages.view(session, job_id=submitted.job_id, settings=settings)
    # Ends the transaction the answer was read in (it wrote nothing): a write session's transactions
    # hold the database's write lock until they end, and the request's other writers wait for it.
    session.commit()
    return submitted


def _submit(
    session: Session, *, spec: JobSpec, settings: Settings, idempotency_key: str | None, sweep: tuple[str, int] | None
) -> Submitted:
    """submit_job without the answer's view."""
    try:
        submitted, queue = add_job(session, spec=spec, settings=settings, idempotency_key=idempotency_key, sweep=sweep)
        session.commit()
    except IntegrityError:
        # Another request with the same key committed first; answer with its job.
        session.rollback()
        existing = jobs.get_job_by_idempotency_key(session, key=idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        return _replay(existing, request_hash=spec.digest())
    if queue is not None:
        publish_or_defer(submitted.job_id, queue)
    return submitted


def add_job(
    session: Session, *, spec: JobSpec, settings: Settings, idempotency_key: str | None, sweep: tuple[str, int] | None
) -> tuple[Submitted, str | None]:
    """Check a spec and add its queued job to the session's transaction, uncommitted, and the queue
    to publish it on once it is committed (None for a replay: its job is already out)."""
    request_hash = spec.digest()  # of the request as sent: a retry matches it whatever moved since
    try:
        checked = with_full_ids(session, spec=spec)
        task = check_spec(session, spec=checked, settings=settings)
    except Invalid as exc:
        exc.document = exc.document or spec.model_dump(mode="json", by_alias=True)  # each problem's input
        raise
    spec = checked
    if idempotency_key:
        existing = jobs.get_job_by_idempotency_key(session, key=idempotency_key)
        if existing is not None:
            return _replay(existing, request_hash), None
    if settings.require_worker:
        live = worker_registry.live(session, settings=settings)
        nodes = spec.distributed.nnodes if spec.distributed else 1
        waiting = worker_registry.waiting_reason_for(spec.device, live, settings, spec.processes, nodes)
        if worker_registry.short_of_capacity(waiting):
            instead = "lower distributed.nproc_per_node or start a worker that gives more; " if nodes == 1 else ""
            queue = settings.queue_for(spec.device)
            raise Conflict(
                f"{waiting}: {worker_registry.describe_waiting(waiting)}; on queue {queue!r}, device {spec.device!r}, "
                f"with TRAINYARD_REQUIRE_WORKER set: {instead}retry then"
            )
        if waiting:
            raise Conflict(
                f"{waiting}: no live worker serves queue {settings.queue_for(spec.device)!r} for "
                f"device {spec.device!r} (TRAINYARD_REQUIRE_WORKER is set); start one and retry"
            )
    job = jobs.create_job(
        session,
        spec=spec,
        task=task,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        sweep=sweep,
        warnings=job_warnings(session, spec=spec, settings=settings),
    )
    return Submitted(job.id, replayed=False), settings.queue_for(spec.device)


def job_warnings(session: Session, *, spec: JobSpec, settings: Settings) -> list[str]:
    """What will make the job fail unless someone acts: weights or data files nowhere to be found;
    and what the spec asks that will do nothing."""
    return (
        weights_warnings(session, spec=spec, settings=settings)
        + data_warnings(session, spec=spec, settings=settings)
        + unused_warnings(spec)
    )


def unused_warnings(spec: JobSpec) -> list[str]:
    """A value the spec gives that its other values leave unused: init_std without init: normal
    (told by a value other than its default: a stored spec holds every default)."""
    model = spec.model
    field = type(model).model_fields.get("init_std")
    if field is not None and model.init_std != field.default and model.init != "normal":
        return [
            f"model.init_std {model.init_std:g} is used by init: normal only; this job's init is {model.init}, so "
            "init_std does nothing: set init: normal, or leave init_std out"
        ]
    return []


def weights_warnings(session: Session, *, spec: JobSpec, settings: Settings) -> list[str]:
    """A pretrained backbone's weights that neither this API's folders nor any live worker have, or
    a frozen backbone that has no weights to keep."""
    model = spec.model
    if model.arch == "pretrained" and model.weights is None and model.freeze == "backbone":
        unfreeze = model.unfreeze_at_epoch  # at most the last epoch (the spec's checks say so)
        if unfreeze is not None:
            return [
                f"freeze: backbone with weights: null: until epoch {unfreeze} (unfreeze_at_epoch) only the head "
                "learns, on the random features of an untrained backbone; name the weights (e.g. DEFAULT) or "
                "leave freeze out"
            ]
        return [
            "freeze: backbone with weights: null keeps a randomly initialised backbone frozen: only the "
            "head learns, on random features; name the weights (e.g. DEFAULT) or leave freeze out"
        ]
    if model.arch != "pretrained" or model.weights is None or settings.allow_download:
        return []
    if find_weights_file(model.backbone, model.weights, settings.weights_dir) is not None:
        return []
    name = weights_file_name(model.backbone, model.weights)
    if any(name in (worker.weights or []) for worker in worker_registry.live(session, settings=settings)):
        return []
    return [
        "no live worker has the weights' file either, so the job will fail with missing_weights unless one "
        f"finds it when it starts: {missing_weights_message(model.backbone, model.weights, settings.weights_dir)}"
    ]


def data_warnings(session: Session, *, spec: JobSpec, settings: Settings) -> list[str]:
    """A built-in dataset whose files are neither in this API's data folder (nor downloadable)
    nor on any live worker (the API's machine need not have them)."""
    if (
        not isinstance(spec.data, ImageDatasetSpec)
        or settings.allow_download
        or builtin_on_disk(spec.data.dataset, settings.data_dir)
    ):
        return []
    if any(spec.data.dataset in (worker.datasets or []) for worker in worker_registry.live(session, settings=settings)):
        return []
    return [
        f"dataset {spec.data.dataset} is not in this service's data folder ({settings.data_dir}, "
        "TRAINYARD_DATA_DIR) nor on any live worker, and downloads are off (TRAINYARD_ALLOW_DOWNLOAD): the "
        "job will fail with invalid_data unless its worker has the files; or train on an uploaded dataset "
        "(uploaded:<name>)"
    ]


def cancel_job(session: Session, *, job_id: str) -> None:
    """Cancel a queued job now, or ask a running one's worker to stop after its current batch."""
    jobs.request_cancel(session, job_id=jobs.require_job(session, job_id=job_id).id)
    session.commit()


class CannotResume(Conflict):
    """A job that can never resume: its uploaded dataset was deleted (a new one of its name is
    another dataset)."""


def resume_job(session: Session, *, job_id: str, settings: Settings, by_its_sweep: bool = False) -> None:
    """Queue a cancelled or failed job again and send it to a worker; Conflict if its uploaded
    dataset was deleted (it would fail at once), or if it is a trial of a sweep with a study and
    not resumed `by_its_sweep`. Its warnings are told again as they are now (the weights or data files
    may have been put in place since)."""
    job = jobs.require_job(session, job_id=job_id)
    if not by_its_sweep and (problem := resumed_by_its_sweep(session, job)):
        raise Conflict(problem)
    jobs.request_resume(session, job_id=job.id)  # InvalidTransition for a job that cannot resume
    spec = JobSpec.model_validate(job.spec)
    if (
        isinstance(spec.data, UploadedDatasetSpec)
        and datasets.get_dataset(session, dataset_id=spec.data.dataset_id) is None
    ):
        session.rollback()
        raise CannotResume(
            f"job {job.id} trained on uploaded dataset {spec.data.dataset_id}, which was deleted: it cannot resume; "
            "submit a new job on another dataset"
        )
    job.warnings = job_warnings(session, spec=spec, settings=settings) or None
    session.commit()
    publish_or_defer(job.id, settings.queue_for(worker_registry.device_of(job.spec)))


def resumed_by_its_sweep(session: Session, job: Job) -> str | None:
    """Why a failed or cancelled trial of a sweep with a study (adaptive, or pruned) is resumed
    through its sweep, or None for any other job. Its Optuna trial is closed (told it failed, or
    about to be); resumed alone, the job would report its epochs to that closed trial and its end
    to nothing. The sweep's resume asks the study for the trial anew. (A pruned trial resumes
    alone, to train on: the sweep is not told again.)"""
    sweep = session.get(Sweep, job.sweep_id) if job.sweep_id else None
    if sweep is None or sweep.study is None or job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        return None
    when = "once its other trials have ended" if sweep.finished_at is None else "instead"
    return (
        f"job {job.id} is trial {job.sweep_trial} of sweep {sweep.id}, whose Optuna study has closed its trial: "
        f"resume the sweep {when} (trainyard sweeps resume {sweep.id[:8]}), which runs it again"
    )

"""Uploaded datasets: decode and store an archive, look datasets up, delete them."""

from __future__ import annotations

import concurrent.futures
import difflib
import hashlib
import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path, PurePath
from typing import BinaryIO, Iterable

import numpy as np
import torch
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from models.data.contract import class_names_problem
from models.data.dataset import Dataset, DatasetError
from models.data.loading import load_dataset, load_stored_dataset, save_stored_dataset
from models.data.uploads import DEFAULT_TEST_FRACTION, ArchiveLimits, CsvTarget, check_archive, decode_archive
from models.spec.job import UPLOADED_NAME, JobSpec, UploadedDatasetSpec
from models.spec.problems import DatasetInfo, builtin_dataset_info
from models.spec.sweeps import SweepSpec
from service.core import jobs, retention
from service.core.background import Periodic
from service.core.db import session_scope
from service.core.errors import Conflict, CoreError, Invalid, NotFound, Unprocessable, json_field
from service.core.ids import MAX_LISTED, id_hint, not_found, resolve_id
from service.core.settings import Settings
from service.core.storage import StoredFile, get_storage
from service.core.tables import DatasetStatus, Job, JobStatus, StoredDataset, Sweep, dataset_key, new_id, utcnow

log = logging.getLogger(__name__)


class DatasetInUse(Conflict):
    """A queued or running job still needs this dataset."""


class DatasetGone(DatasetError):
    """A job's uploaded dataset was deleted (or never became ready)."""

    reason = "dataset_not_found"


class NameTaken(Conflict):
    """Another dataset (ready or being decoded) has the name an upload asks for."""


def default_name(filename: str | None) -> str:
    """What an upload that names itself nothing is called: its file's name without .zip, made one
    that a spec can say (uploaded:<name>)."""
    stem = PurePath(filename or "").stem.replace("\\", "-")[:200].strip()
    return stem if stem not in ("", ".", "..") else "dataset"


def check_name_free(session: Session, *, name: str) -> None:
    """NameTaken, naming the dataset that has `name` and what to do, if one that did not fail has it
    (specs name datasets as uploaded:<name>, which must mean one dataset)."""
    taken = session.scalars(
        select(StoredDataset)
        .where(StoredDataset.name == name, StoredDataset.status != DatasetStatus.FAILED)
        .order_by(StoredDataset.created_at)
        .limit(1)
    ).first()
    if taken is not None:
        raise NameTaken(
            f"a dataset named {name!r} exists ({taken.id}, {taken.status}, uploaded "
            f"{taken.created_at:%Y-%m-%d %H:%M} UTC): upload under another name (the form field name; "
            f"`trainyard datasets upload --name`), or delete that one first (DELETE /v1/datasets/{taken.id}; "
            f"`trainyard datasets delete {taken.id[:8]}`) to replace it"
        )


@dataclass(frozen=True)
class UploadOptions:
    """How an uploaded archive is decoded (the upload's form fields)."""

    test_fraction: float | None = None  # the decoder's default where the archive needs one
    image_size: int | None = None
    seed: int = 0
    color: str = "auto"
    min_per_class: int = 5
    label_column: str | None = None  # a CSV's column of classes, if not called label
    target_column: str | None = None  # a CSV's column of values to regress, if not called target
    classes: tuple[str, ...] | None = None  # IDX files' class names, label 0 first

    def __post_init__(self):
        if self.classes is not None:
            problem = class_names_problem(list(self.classes))
            if problem:
                raise Invalid([(("classes",), problem)])
        if self.label_column is not None and self.target_column is not None:
            both = "give label_column (classification) or target_column (regression), not both"
            raise Invalid([(("target_column",), both)])
        for field in ("label_column", "target_column"):  # as the CSV's header is read: stripped
            if getattr(self, field) is not None:
                object.__setattr__(self, field, getattr(self, field).strip())

    @property
    def csv_target(self) -> CsvTarget | None:
        if self.label_column is not None:
            return CsvTarget(self.label_column, "classification")
        if self.target_column is not None:
            return CsvTarget(self.target_column, "regression")
        return None

    def digested(self) -> dict:
        """The options an upload's digest covers (the column names only when given, so that an
        upload from before they existed has the digest it had)."""
        optional = ("label_column", "target_column", "classes")
        options = {k: v for k, v in asdict(self).items() if v is not None or k not in optional}
        if self.test_fraction is None:  # as uploads were digested when the form always sent one
            options["test_fraction"] = DEFAULT_TEST_FRACTION
        return options


def class_names(raw: str | None) -> tuple[str, ...] | None:
    """The `classes` form field of an upload: comma-separated names, or a JSON list (names with commas)."""
    if raw is None or not raw.strip():
        return None
    if not raw.lstrip().startswith("["):
        return tuple(name.strip() for name in raw.split(","))
    names = json_field("classes", raw)
    if not isinstance(names, list):
        raise Invalid([(("classes",), "classes must be comma-separated names or a JSON list of them")])
    return tuple(names)  # UploadOptions checks the names themselves


UPLOAD_DIGEST_CHUNK = 1024 * 1024


def upload_digest(data: BinaryIO, *, name: str, options: UploadOptions) -> str:
    """sha256 of an upload's bytes, its name and its options: the same archive sent again with the
    same form has the same digest. Reads the file from its start and leaves it there."""
    digest = hashlib.sha256(json.dumps({"name": name, **options.digested()}, sort_keys=True).encode())
    data.seek(0)
    while chunk := data.read(UPLOAD_DIGEST_CHUNK):
        digest.update(chunk)
    data.seek(0)
    return digest.hexdigest()


def find_upload(session: Session, *, digest: str) -> StoredDataset | None:
    """The dataset an earlier upload with this digest made (ready, or still being decoded); None if
    there is none, or it failed (then the upload is tried again)."""
    return session.scalars(
        select(StoredDataset)
        .where(StoredDataset.upload_digest == digest, StoredDataset.status != DatasetStatus.FAILED)
        .order_by(StoredDataset.created_at)
        .limit(1)
    ).first()


def _decode_into(record: StoredDataset, data: bytes | BinaryIO, options: UploadOptions, settings: Settings) -> None:
    """Decode an archive, store its tensors and fill in the record (DatasetError if the archive is
    not a usable dataset; StorageUnavailable if the store cannot take it, leaving nothing behind).
    Images are decoded one by one into files beside the datasets, so an archive of any size within
    the limits is never held whole in memory."""
    decoded = decode_archive(
        data,
        name=record.name,
        test_fraction=options.test_fraction,
        image_size=options.image_size,
        seed=options.seed,
        color=options.color,
        min_per_class=options.min_per_class,
        csv_target=options.csv_target,
        classes=options.classes,
        workdir=settings.datasets_dir,
        limits=ArchiveLimits(
            max_image_pixels=settings.max_image_pixels, max_decoded_bytes=settings.max_decoded_dataset_bytes
        ),
    )
    dataset = decoded.dataset
    try:
        stored = get_storage(settings).write(
            dataset_key(record.id), lambda path: save_stored_dataset(path, dataset, {"kind": decoded.kind})
        )
    finally:
        decoded.cleanup()
    record.status, record.error = DatasetStatus.READY, None
    record.kind, record.task, record.color = decoded.kind, dataset.task, decoded.color
    record.classes = list(dataset.classes) if dataset.classes else None
    record.columns = list(dataset.contract.columns) if dataset.contract.columns else None
    record.input_shape, record.warnings = list(dataset.input_shape), decoded.warnings or None
    record.num_train, record.num_test = len(dataset.x_train), len(dataset.x_test)
    record.checksum, record.size_bytes, record.file_sha256 = dataset.checksum, stored.size, stored.sha256


def store_upload(
    session: Session,
    *,
    data: bytes | BinaryIO,
    name: str,
    options: UploadOptions,
    settings: Settings,
    digest: str | None = None,
) -> StoredDataset:
    """Validate and decode an uploaded archive (bytes or a file, read member by member), write its
    tensors, and commit its record as ready (with its upload_digest); Unprocessable saying why the
    archive is not usable, NameTaken if another dataset has the name."""
    check_name_free(session, name=name)
    record = StoredDataset(id=new_id(), name=name, status=DatasetStatus.READY, upload_digest=digest)
    try:
        _decode_into(record, data, options, settings)
    except DatasetError as exc:
        raise Unprocessable(str(exc)) from exc
    session.add(record)
    session.commit()
    return record


def upload_key(dataset_id: str) -> str:
    """The stored file of an archive kept to be decoded after the answer."""
    return f"datasets/{dataset_id}.upload.zip"


def _kept_upload(record: StoredDataset) -> StoredFile:
    kept = record.upload_file or {}
    return StoredFile(upload_key(record.id), kept.get("size"), kept.get("sha256"))


def accept_upload(
    session: Session, *, data: BinaryIO, name: str, settings: Settings, digest: str | None = None
) -> StoredDataset:
    """Store an upload to decode later (decode_accepted), committed as processing (with its
    upload_digest and the stored archive's size and sha256); NameTaken if another dataset has the
    name, StorageUnavailable (and nothing kept) if the store cannot take it."""
    check_name_free(session, name=name)
    record = StoredDataset(
        id=new_id(), name=name, status=DatasetStatus.PROCESSING, heartbeat_at=utcnow(), upload_digest=digest
    )
    storage, key = get_storage(settings), upload_key(record.id)

    def copy(path: Path) -> None:
        data.seek(0)
        with open(path, "wb") as fh:
            shutil.copyfileobj(data, fh, length=1024 * 1024)

    stored = storage.write(key, copy)
    record.upload_file = {"size": stored.size, "sha256": stored.sha256}
    try:
        session.add(record)
        session.commit()
    except BaseException:
        storage.delete(key)
        raise
    return record


DECODED_COLUMNS = (
    "status",
    "error",
    "kind",
    "task",
    "classes",
    "input_shape",
    "color",
    "warnings",
    "num_train",
    "num_test",
    "checksum",
    "size_bytes",
    "file_sha256",
)
# Background decodes, one at a time per API process: decoding is CPU-bound and the API serves predictions.
_decoder = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="dataset-decoder")


def decode_later(*, dataset_id: str, options: UploadOptions, settings: Settings) -> None:
    """Queue decode_accepted on this process's decoder thread."""
    _decoder.submit(decode_accepted, dataset_id=dataset_id, options=options, settings=settings)


def inspect_upload(data: BinaryIO, *, settings: Settings) -> int:
    """What an upload's members add up to uncompressed; Unprocessable at once for what its zip
    directory already shows (not a zip, unsafe names, a likely bomb)."""
    try:
        return check_archive(
            data,
            ArchiveLimits(
                max_image_pixels=settings.max_image_pixels, max_decoded_bytes=settings.max_decoded_dataset_bytes
            ),
        )
    except DatasetError as exc:
        raise Unprocessable(str(exc)) from exc


class _Heartbeat(Periodic):
    """Renews a processing dataset's heartbeat_at while it is decoded, so that the housekeeper
    fails only decodes whose process has gone."""

    def __init__(self, dataset_id: str, interval: float):
        super().__init__(f"dataset-heartbeat-{dataset_id[:8]}", interval)
        self.dataset_id = dataset_id

    def tick(self) -> None:
        try:
            with session_scope() as session:
                session.execute(
                    update(StoredDataset)
                    .where(StoredDataset.id == self.dataset_id, StoredDataset.status == DatasetStatus.PROCESSING)
                    .values(heartbeat_at=utcnow())
                )
        except Exception as exc:  # a missed beat is not fatal; the next one may get through
            log.warning("heartbeat of dataset %s failed: %s", self.dataset_id, exc)


def decode_accepted(*, dataset_id: str, options: UploadOptions, settings: Settings) -> None:
    """Decode an upload accept_upload kept, off the request path: the record becomes ready, or
    failed with the reason. Owns its transactions (it runs after the request has been answered)."""
    storage = get_storage(settings)
    with session_scope() as session:
        record = session.get(StoredDataset, dataset_id)
        if record is None or record.status != DatasetStatus.PROCESSING:
            storage.delete(upload_key(dataset_id))
            return
        name, archive = record.name, _kept_upload(record)
    outcome = StoredDataset(id=dataset_id, name=name)
    try:
        with (
            _Heartbeat(dataset_id, settings.dataset_heartbeat_seconds),
            storage.opened(archive, what=f"the archive uploaded as dataset {name!r} ({dataset_id})") as path,
            open(path, "rb") as fh,
        ):
            _decode_into(outcome, fh, options, settings)
    except Exception as exc:  # a damaged archive, or a disk that filled: the record says which
        outcome.status = DatasetStatus.FAILED
        outcome.error = str(exc) if isinstance(exc, DatasetError) else f"decoding failed: {type(exc).__name__}: {exc}"
        log.warning("dataset %s failed to decode: %s", dataset_id, outcome.error)
    finally:
        storage.discard(archive)  # the upload as sent: no other record names it
    with session_scope() as session:
        # Only a record still processing takes the outcome: one deleted, or failed as abandoned
        # meanwhile, stays as it is (and its files go).
        updated = session.execute(
            update(StoredDataset)
            .where(StoredDataset.id == dataset_id, StoredDataset.status == DatasetStatus.PROCESSING)
            .values({**{column: getattr(outcome, column) for column in DECODED_COLUMNS}, "upload_file": None})
        ).rowcount
    if not updated and outcome.status == DatasetStatus.READY:
        get_storage(settings).delete(dataset_key(dataset_id))
        retention.uncache(settings, [outcome.file])


def fail_abandoned_uploads(session: Session, *, older_than_seconds: float, settings: Settings) -> list[str]:
    """Mark uploads still processing whose decoder has not been heard from for
    `older_than_seconds` as failed (the process decoding them has gone, e.g. restarted); returns
    their ids."""
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    heard = func.coalesce(StoredDataset.heartbeat_at, StoredDataset.created_at)
    stale = list(
        session.scalars(select(StoredDataset).where(StoredDataset.status == DatasetStatus.PROCESSING, heard < cutoff))
    )
    for record in stale:
        record.status = DatasetStatus.FAILED
        record.error = "decoding did not finish (the service restarted while it ran); upload the archive again"
        record.upload_file = None
    session.flush()
    if stale:
        get_storage(settings).delete(*[upload_key(record.id) for record in stale])
    datasets_dir = settings.datasets_dir
    # Decoding files and half-written datasets a killed process left behind.
    for leftover in [*datasets_dir.glob(".decoding-*"), *datasets_dir.glob(".*.safetensors.*.tmp")]:
        try:
            if leftover.stat().st_mtime < cutoff.timestamp():
                leftover.unlink()
        except OSError:
            pass
    return [record.id for record in stale]


def get_dataset(session: Session, *, dataset_id: str) -> StoredDataset | None:
    return session.get(StoredDataset, dataset_id)


def describe(record: StoredDataset) -> str:
    return f"uploaded dataset {record.name!r} ({record.id})"


def stored_file(dataset_id: str) -> tuple[StoredFile, str]:
    """The stored file of a ready uploaded dataset and what to call it; DatasetError (reason
    dataset_not_found) if it was deleted or is not ready."""
    with session_scope(write=False) as session:
        record = get_dataset(session, dataset_id=dataset_id)
        if record is None:
            raise DatasetGone(
                f"uploaded dataset {dataset_id} was deleted (GET /v1/datasets or `trainyard datasets list` lists "
                "those there are)"
            )
        if record.status != DatasetStatus.READY:
            raise DatasetGone(f"{describe(record)} is {record.status}, not ready")
        return record.file, describe(record)


def stored_dataset_file(dataset_id: str, *, settings: Settings) -> Path:
    """A local path to an uploaded dataset's verified file (fetched into the cache from an object store)."""
    stored, what = stored_file(dataset_id)
    return get_storage(settings).fetch(stored, what=what)


def require_dataset(session: Session, *, dataset_id: str) -> StoredDataset:
    """One uploaded dataset, named as `uploaded:<given>` names it in a spec (see _candidates), or
    as that whole reference (what `trainyard datasets upload` prints); NotFound if there is none,
    Conflict if several datasets have that name."""
    found = _candidates(session, dataset_id)
    if not found and dataset_id.startswith("uploaded:"):
        dataset_id = dataset_id.removeprefix("uploaded:")
        found = _candidates(session, dataset_id)
    if len(found) > 1:
        raise Conflict(_shared_name(dataset_id, found))
    if not found:
        meant = _close_names(session, dataset_id)
        guess = f"; did you mean {' or '.join(meant)}?" if meant else ""
        raise NotFound(not_found("dataset", dataset_id, named=True) + guess)
    return get_dataset(session, dataset_id=found[0])


def reference_id(session: Session, *, given: str) -> str:
    """The id of the dataset `uploaded:<given>` names (see _candidates); Invalid saying how to find
    the right one otherwise."""
    found = _candidates(session, given)
    if len(found) == 1:
        return found[0]
    if found:
        problem = _shared_name(given, found)
    else:
        close = _close_names(session, given)
        hint = f"did you mean {' or '.join(f'uploaded:{name}' for name in close)}? " if close else ""
        problem = (
            f"uploaded:{given} not found{id_hint(given, named=True)}: no dataset has that id or name; {hint}"
            "GET /v1/datasets lists them "
            "and POST /v1/datasets uploads one (`trainyard datasets list`, `trainyard datasets upload`)"
        )
    raise Invalid([(("data", "dataset"), problem)])


def _close_names(session: Session, given: str) -> list[str]:
    """The names of datasets (not failed ones) close to `given`: what it may have meant."""
    names = [
        name
        for name in session.scalars(
            select(StoredDataset.name).where(StoredDataset.status != DatasetStatus.FAILED).distinct()
        )
        if name
    ]
    cased = [name for name in names if name.lower() == given.lower()]  # names are case-sensitive
    return cased or difflib.get_close_matches(given, names, n=3, cutoff=0.6)


def _candidates(session: Session, given: str) -> list[str]:
    """The ids of the datasets `given` may name, in this order: the one with that id; else those
    with that name (a name may look like the start of another dataset's id: the name wins); else
    the one whose id it begins (AmbiguousId if several do). Failed uploads have no name here."""
    if get_dataset(session, dataset_id=given) is not None:
        return [given]
    named = list(
        session.scalars(
            select(StoredDataset.id)
            .where(StoredDataset.name == given, StoredDataset.status != DatasetStatus.FAILED)
            .order_by(StoredDataset.created_at)
            .limit(MAX_LISTED + 1)
        )
    )
    if named:
        return named
    found = resolve_id(session, StoredDataset, given, kind="dataset")
    return [found] if get_dataset(session, dataset_id=found) is not None else []


def _shared_name(name: str, ids: list[str]) -> str:
    return (
        f"{len(ids)} datasets are named {name!r} ({', '.join(ids[:MAX_LISTED])}); use the id of the one you "
        "mean (GET /v1/datasets or `trainyard datasets list` lists them)"
    )


def list_datasets(session: Session) -> list[StoredDataset]:
    return list(session.scalars(select(StoredDataset).order_by(StoredDataset.created_at.desc())))


def names(session: Session, *, references: Iterable[str]) -> dict[str, str]:
    """reference -> the dataset's name, for each `uploaded:<id>` among the references whose dataset
    still exists (what people call a dataset; the id is for machines)."""
    ids = {reference.removeprefix("uploaded:") for reference in references if reference.startswith("uploaded:")}
    if not ids:
        return {}
    rows = session.execute(select(StoredDataset.id, StoredDataset.name).where(StoredDataset.id.in_(ids)))
    return {f"uploaded:{dataset_id}": name for dataset_id, name in rows}


def delete_dataset(session: Session, *, dataset_id: str, settings: Settings, force: bool = False) -> None:
    """Delete a dataset no active job uses (its finished jobs keep their checkpoints), nor, unless
    `force`, a stopped job that can still be resumed (it would fail for want of its data); its
    files go after the commit."""
    record = require_dataset(session, dataset_id=dataset_id)
    dataset_id = record.id
    # Specs are stored with the dataset's id (uploaded:<id>), whatever name they were sent with.
    using = session.scalars(
        select(Job).where(
            Job.spec["data"]["dataset"].as_string() == f"uploaded:{dataset_id}", Job.status != JobStatus.SUCCEEDED
        )
    ).all()
    users = [job for job in using if job.status in (JobStatus.QUEUED, *JobStatus.ACTIVE)]
    if users:
        named = [job.id + (f" (a trial of sweep {job.sweep_id})" if job.sweep_id else "") for job in users]
        raise DatasetInUse(f"dataset {dataset_id} is used by unfinished job(s) {', '.join(named)}")
    sweeping = _unfinished_sweeps_using(session, dataset_id)
    if sweeping:
        raise DatasetInUse(
            f"dataset {dataset_id} is used by unfinished sweep(s) {', '.join(sweeping)}, whose trials still to "
            "launch would be refused without it: cancel them first, or wait until they end"
        )
    resumable = [
        job.id
        for job in using
        if job.status not in (JobStatus.QUEUED, *JobStatus.ACTIVE) and jobs.resume_state(job) is not None
    ]
    if resumable and not force:
        raise DatasetInUse(
            f"dataset {dataset_id} is used by job(s) that can still be resumed: {', '.join(resumable)}; "
            f"delete them first, or delete the dataset with force (`trainyard datasets delete {dataset_id} --force`, "
            f"DELETE /v1/datasets/{dataset_id}?force=true), after which they cannot resume"
        )
    stored = [record.file, _kept_upload(record)]
    session.delete(record)
    session.commit()
    get_storage(settings).delete(*(file.key for file in stored))
    retention.uncache(settings, stored)


def _unfinished_sweeps_using(session: Session, dataset_id: str) -> list[str]:
    """The sweeps not yet ended whose trials still to launch may train on the dataset, by any name a
    spec gives it (those launched have jobs, which the caller asks about)."""

    def names_it(reference: str) -> bool:
        try:
            return reference.startswith("uploaded:") and dataset_id in _candidates(
                session, reference.removeprefix("uploaded:")
            )
        except CoreError:  # a prefix several datasets begin with names none in particular
            return False

    def still_to_launch(sweep: Sweep) -> set[str]:
        pending = [t["params"] for i, t in enumerate(sweep.trials) if i >= sweep.launched or t.get("again")]
        return SweepSpec.model_validate(sweep.request).datasets(pending, undrawn=sweep.size - len(sweep.trials))

    return [
        sweep.id
        for sweep in session.scalars(select(Sweep).where(Sweep.finished_at.is_(None)))
        if any(names_it(reference) for reference in still_to_launch(sweep))
    ]


def dataset_info(session: Session, spec: JobSpec) -> DatasetInfo | None:
    """What the spec checks need to know of the spec's dataset; None if it is an unknown upload."""
    if isinstance(spec.data, UploadedDatasetSpec):
        record = get_dataset(session, dataset_id=spec.data.dataset_id)
        if record is None:
            return None
        if record.status == DatasetStatus.PROCESSING:
            raise Invalid(
                [
                    (
                        ("data", "dataset"),
                        f"dataset {record.id} is still being decoded; poll GET /v1/datasets/{record.id} "
                        "(or `trainyard datasets list`) until its status is ready",
                    )
                ]
            )
        if record.status == DatasetStatus.FAILED:
            raise Invalid([(("data", "dataset"), f"dataset {record.id} failed to decode: {record.error}")])
        return DatasetInfo(
            task=record.task,
            input_shape=tuple(record.input_shape),
            outputs=len(record.classes) if record.classes else 1,
            images=len(record.input_shape) == 3,
            train_examples=record.num_train,
        )
    return builtin_dataset_info(spec.data)


def receive_upload(
    session: Session, *, data: BinaryIO, name: str, options: UploadOptions, settings: Settings
) -> tuple[StoredDataset, bool]:
    """The dataset an upload makes and whether it is new: the one the same archive and form made
    before, else one decoded now, or (from dataset_background_bytes up) kept and decoded after the
    answer, its status processing; Invalid if the name cannot name it in a spec, Unprocessable
    saying why an archive is not usable, NameTaken if another dataset has the name."""
    digest = upload_digest(data, name=name, options=options)
    existing = find_upload(session, digest=digest)
    if existing is not None:  # under a name it may have been given before names were checked
        return existing, False
    if not re.fullmatch(UPLOADED_NAME, name) or name in (".", ".."):
        raise Invalid(
            [
                (
                    ("name",),
                    f"{name!r} cannot name a dataset: specs call it uploaded:<name>, which takes 1 to 200 "
                    "characters, no / or \\ and no space at either end (and it may not be . or ..)",
                )
            ]
        )
    if inspect_upload(data, settings=settings) >= settings.dataset_background_bytes:
        record = accept_upload(session, data=data, name=name, settings=settings, digest=digest)
        decode_later(dataset_id=record.id, options=options, settings=settings)
        return record, True
    return store_upload(session, data=data, name=name, options=options, settings=settings, digest=digest), True


def example_image(session: Session, *, dataset_id: str, number: int, settings: Settings) -> np.ndarray:
    """A training image of a ready image dataset, taking its classes in turn (number 0 is the first
    image of class 0, number 1 the first of class 1, ...): uint8 pixels [C, H, W]; NotFound past a
    class's last image."""
    record = require_dataset(session, dataset_id=dataset_id)
    if record.status != DatasetStatus.READY or len(record.input_shape or ()) != 3 or not record.classes:
        raise Unprocessable(f"dataset {record.id} holds no decoded images")
    try:
        with get_storage(settings).opened(record.file, what=describe(record)) as path:
            dataset = load_stored_dataset(path)  # memory-mapped: it outlives the file's eviction
    except DatasetError as exc:
        raise NotFound(f"dataset {record.id} cannot be read here: {exc}") from None
    rows = (dataset.y_train == number % len(record.classes)).nonzero().flatten()
    rank = number // len(record.classes)
    if not 0 <= rank < len(rows):
        raise NotFound(f"dataset {record.id} has no example image {number}")
    return dataset.x_train[int(rows[rank])].numpy().copy()


def require_test_set(job: Job) -> None:
    """NotFound, as test_set says it, when the job trained on an upload since deleted (one row
    read): what was computed from its test set before is not served after."""
    spec = JobSpec.model_validate(job.spec)
    if isinstance(spec.data, UploadedDatasetSpec):
        try:
            stored_file(spec.data.dataset_id)
        except DatasetError as exc:
            raise NotFound(f"the test set of job {job.id} cannot be read here: {exc}") from None


def test_set(job: Job, *, settings: Settings) -> Dataset:
    """A job's dataset as far as its test set goes. The validation split and normalisation change
    only the training rows and the input contract, so they are left out: reading a test image never
    costs a pass over the training images. The set is read afresh each time (memory-mapped, so that
    is cheap) rather than kept in the process-wide cache: an API process needs it once per
    checkpoint, and kept, its pages would stay; NotFound if it cannot be read here."""
    spec = JobSpec.model_validate(job.spec)
    data = spec.data.model_copy(
        update={"val_fraction": 0.0, **({"normalize": "none"} if "normalize" in type(spec.data).model_fields else {})}
    )
    try:
        return load_dataset(
            data,
            data_dir=settings.data_dir,
            stored_dataset=lambda dataset_id: stored_dataset_file(dataset_id, settings=settings),
            cache_dir=settings.cache_dir,
            seed=spec.seed,
            remember=False,
        )
    except DatasetError as exc:
        raise NotFound(f"the test set of job {job.id} cannot be read here: {exc}") from None


def test_image(session: Session, *, job_id: str, index: int, settings: Settings) -> np.ndarray:
    """One test image of a job as stored, uint8 pixels [C, H, W]; NotFound outside its test set,
    Unprocessable for a job that does not train on images."""
    job = jobs.require_job(session, job_id=job_id)
    if job.task != "classification" or str((job.spec.get("data") or {}).get("dataset")).startswith("synthetic"):
        raise Unprocessable(f"job {job.id} does not train on images")  # known without building its data
    images = test_set(job, settings=settings).x_test
    if images.dtype != torch.uint8:
        raise Unprocessable(f"job {job.id} does not train on images")
    if not 0 <= index < len(images):
        raise NotFound(f"job {job.id}'s test set has {len(images)} images, numbered from 0; there is no image {index}")
    return images[index].numpy().copy()

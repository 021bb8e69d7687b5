"""Uploaded datasets: decode and store an archive, look datasets up, delete them."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.data import DatasetError, save_stored_dataset, stored_dataset_path
from models.spec import DatasetInfo, JobSpec, UploadedDatasetSpec, builtin_dataset_info
from models.uploads import ArchiveLimits, decode_archive
from service.core.errors import Conflict, NotFound, Unprocessable
from service.core.tables import Job, JobStatus, StoredDataset, new_id


class DatasetInUse(Conflict):
    """A queued or running job still needs this dataset."""


def store_upload(session: Session, *, data: bytes | BinaryIO, name: str, test_fraction: float,
                 image_size: int | None, seed: int, datasets_dir: Path, max_image_pixels: int, color: str = "auto",
                 min_per_class: int = 5) -> StoredDataset:
    """Validate and decode an uploaded archive (bytes or a file, read member by member), write its
    tensors, and record it. Images are decoded one by one into files beside the datasets, so an
    archive of any size within the limits is never held whole in memory."""
    try:
        decoded = decode_archive(data, name=name, test_fraction=test_fraction, image_size=image_size, seed=seed,
                                 color=color, min_per_class=min_per_class, workdir=datasets_dir,
                                 limits=ArchiveLimits(max_image_pixels=max_image_pixels))
    except DatasetError as exc:
        raise Unprocessable(str(exc)) from exc
    dataset = decoded.dataset
    dataset_id = new_id()
    try:
        size = save_stored_dataset(stored_dataset_path(datasets_dir, dataset_id), dataset, {"kind": decoded.kind})
    finally:
        decoded.cleanup()
    record = StoredDataset(
        id=dataset_id, name=name, kind=decoded.kind, task=dataset.task,
        classes=list(dataset.classes) if dataset.classes else None, input_shape=list(dataset.input_shape),
        color=decoded.color, warnings=decoded.warnings or None, num_train=len(dataset.x_train), num_test=len(dataset.x_test), checksum=dataset.checksum, size_bytes=size,
    )
    session.add(record)
    session.flush()
    return record


def get_dataset(session: Session, *, dataset_id: str) -> StoredDataset | None:
    return session.get(StoredDataset, dataset_id)


def require_dataset(session: Session, *, dataset_id: str) -> StoredDataset:
    """One uploaded dataset; NotFound if there is none."""
    record = get_dataset(session, dataset_id=dataset_id)
    if record is None:
        raise NotFound(f"dataset {dataset_id} not found")
    return record


def list_datasets(session: Session) -> list[StoredDataset]:
    return list(session.scalars(select(StoredDataset).order_by(StoredDataset.created_at.desc())))


def delete_dataset(session: Session, *, dataset_id: str, datasets_dir: Path) -> None:
    """Delete a dataset no active job uses (its finished jobs keep their checkpoints)."""
    record = require_dataset(session, dataset_id=dataset_id)
    reference = f"uploaded:{dataset_id}"
    active = session.scalars(select(Job).where(Job.status.in_((JobStatus.QUEUED, *JobStatus.ACTIVE))))
    users = [job.id for job in active if job.spec.get("data", {}).get("dataset") == reference]
    if users:
        raise DatasetInUse(f"dataset {dataset_id} is used by unfinished job(s) {', '.join(users)}")
    session.delete(record)
    session.flush()
    stored_dataset_path(datasets_dir, dataset_id).unlink(missing_ok=True)


def dataset_info(session: Session, spec: JobSpec) -> DatasetInfo | None:
    """What the spec checks need to know of the spec's dataset; None if it is an unknown upload."""
    if isinstance(spec.data, UploadedDatasetSpec):
        record = get_dataset(session, dataset_id=spec.data.dataset_id)
        if record is None:
            return None
        return DatasetInfo(task=record.task, input_shape=tuple(record.input_shape),
                           outputs=len(record.classes) if record.classes else 1, images=len(record.input_shape) == 3)
    return builtin_dataset_info(spec.data)

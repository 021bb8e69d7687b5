"""Uploads kept and decoded off the request path: processing, then ready or failed with the reason,
never trained on before they are ready, and failed when their decoding was abandoned."""

from __future__ import annotations

import io

import pytest

from models.spec.job import JobSpec
from service.core import datasets, db, submission
from service.core.errors import Invalid, NotFound
from service.core.storage import StorageUnavailable
from service.core.storage.cache import file_sha256
from service.core.tables import DatasetStatus, Job, JobStatus, StoredDataset
from tests.support.datagen import image_folder_zip


def accept(settings, data: bytes) -> str:
    with db.session_scope() as session:
        return datasets.accept_upload(session, data=io.BytesIO(data), name="kept", settings=settings).id


def record(dataset_id: str) -> StoredDataset:
    with db.session_scope(write=False) as session:
        found = session.get(StoredDataset, dataset_id)
        if found is not None:
            session.expunge(found)
        return found


def spec_on(dataset_id: str) -> JobSpec:
    return JobSpec.model_validate(
        {"model": {"arch": "softmax_regression"}, "data": {"dataset": f"uploaded:{dataset_id}"}, "epochs": 1}
    )


def test_a_kept_upload_is_processing_then_ready(service_env):
    dataset_id = accept(service_env, image_folder_zip(["a", "b"], per_class=6, test_per_class=2))
    kept = record(dataset_id)
    assert kept.status == DatasetStatus.PROCESSING and kept.input_shape is None
    with db.session_scope() as session, pytest.raises(Invalid, match="still being decoded; poll GET /v1/datasets/"):
        submission.check_spec(session, spec=spec_on(dataset_id), settings=service_env)
    datasets.decode_accepted(dataset_id=dataset_id, options=datasets.UploadOptions(), settings=service_env)
    ready = record(dataset_id)
    assert ready.status == DatasetStatus.READY and ready.error is None
    assert (ready.classes, ready.input_shape, ready.num_train, ready.num_test) == (["a", "b"], [1, 28, 28], 12, 4)
    stored = service_env.datasets_dir / f"{dataset_id}.safetensors"
    assert (ready.size_bytes, ready.file_sha256) == (stored.stat().st_size, file_sha256(stored))  # readers check it
    assert not list(service_env.datasets_dir.glob("*.upload.zip")) and not list(service_env.datasets_dir.glob(".*"))
    with db.session_scope() as session:
        assert submission.check_spec(session, spec=spec_on(dataset_id), settings=service_env) == "classification"
        # Its 12 training examples, known from the record, are checked against the split at submission.
        split = JobSpec.model_validate(
            {**spec_on(dataset_id).model_dump(), "data": {**spec_on(dataset_id).data.model_dump(), "val_fraction": 0.5}}
        )
        assert submission.check_spec(session, spec=split, settings=service_env) == "classification"
        for change, where, message in (
            (
                {"data": {**split.data.model_dump(), "val_fraction": 0.96}},
                ("data", "val_fraction"),
                "holds out all 12 training examples",
            ),
            (
                {"cross_validation": {"folds": 13}},
                ("cross_validation", "folds"),
                "13 folds need at least 13 training examples",
            ),
            (
                {"data": split.data.model_dump(), "cross_validation": {"folds": 10}},
                ("cross_validation", "folds"),
                "10 folds need at least 10 training examples; uploaded:",
            ),
        ):
            with pytest.raises(Invalid) as refused:
                submission.check_spec(
                    session,
                    spec=JobSpec.model_validate({**spec_on(dataset_id).model_dump(), **change}),
                    settings=service_env,
                )
            ((loc, said),) = refused.value.problems
            assert loc == where and message in said, said
        assert said.endswith("has 6 that val_fraction 0.5 leaves"), said  # the folds split what validation leaves


def test_a_kept_upload_that_is_not_a_dataset_fails_with_the_reason(service_env):
    dataset_id = accept(service_env, image_folder_zip(["a", "b"], per_class=2, test_per_class=1))
    datasets.decode_accepted(dataset_id=dataset_id, options=datasets.UploadOptions(), settings=service_env)
    failed = record(dataset_id)
    assert failed.status == DatasetStatus.FAILED and "fewer than min_per_class=5" in failed.error
    with db.session_scope() as session, pytest.raises(Invalid, match="failed to decode: classes with fewer"):
        submission.check_spec(session, spec=spec_on(dataset_id), settings=service_env)
    assert not list(service_env.datasets_dir.iterdir())


def test_abandoned_decoding_is_failed_by_the_housekeeper(service_env):
    dataset_id = accept(service_env, image_folder_zip(["a", "b"], per_class=6, test_per_class=2))
    with db.session_scope() as session:
        assert datasets.fail_abandoned_uploads(session, older_than_seconds=3600, settings=service_env) == []
        assert datasets.fail_abandoned_uploads(session, older_than_seconds=0, settings=service_env) == [dataset_id]
    assert record(dataset_id).status == DatasetStatus.FAILED and "upload the archive again" in record(dataset_id).error
    datasets.decode_accepted(dataset_id=dataset_id, options=datasets.UploadOptions(), settings=service_env)
    assert record(dataset_id).status == DatasetStatus.FAILED  # a late decoder changes nothing


def test_a_decode_that_outlives_its_timeout_does_not_revive_its_record(service_env, monkeypatch):
    dataset_id = accept(service_env, image_folder_zip(["a", "b"], per_class=6, test_per_class=2))
    real = datasets._decode_into

    def slow(record, data, options, settings):  # the housekeeper gives up on it while it decodes
        with db.session_scope() as session:
            datasets.fail_abandoned_uploads(session, older_than_seconds=0, settings=settings)
        real(record, data, options, settings)

    monkeypatch.setattr(datasets, "_decode_into", slow)
    datasets.decode_accepted(dataset_id=dataset_id, options=datasets.UploadOptions(), settings=service_env)
    assert record(dataset_id).status == DatasetStatus.FAILED
    assert not list(service_env.datasets_dir.glob("*.safetensors"))  # its decoded file went too


@pytest.mark.slow
def test_a_decode_in_progress_renews_its_heartbeat(service_env, monkeypatch):
    """The housekeeper fails uploads whose decoder went silent, not those that merely take long."""
    import time

    dataset_id = accept(service_env, image_folder_zip(["a", "b"], per_class=6, test_per_class=2))
    real = datasets._decode_into
    verdicts = []

    def slow(record, data, options, settings):
        time.sleep(1.5)  # far longer than the timeout below, with beats every 0.1 s
        with db.session_scope() as session:
            verdicts.append(datasets.fail_abandoned_uploads(session, older_than_seconds=0.5, settings=settings))
        real(record, data, options, settings)

    monkeypatch.setattr(datasets, "_decode_into", slow)
    monkeypatch.setattr(service_env, "dataset_heartbeat_seconds", 0.1)
    datasets.decode_accepted(dataset_id=dataset_id, options=datasets.UploadOptions(), settings=service_env)
    assert verdicts == [[]] and record(dataset_id).status == DatasetStatus.READY


def test_the_same_upload_again_finds_the_dataset_it_made(service_env):
    archive = image_folder_zip(["a", "b"], per_class=6, test_per_class=2)
    options = datasets.UploadOptions()

    def digest(data: bytes = archive, name: str = "shapes", **changed) -> str:
        file = io.BytesIO(data)
        file.seek(5)
        found = datasets.upload_digest(file, name=name, options=datasets.UploadOptions(**changed))
        assert file.tell() == 0  # left at its start, for decoding
        return found

    first = digest()
    assert digest() == first and len(first) == 64
    assert digest(test_fraction=0.2) == first  # as an upload digested when the form always sent it
    assert (
        len(
            {
                first,
                digest(name="other"),
                digest(color="rgb"),
                digest(test_fraction=0.3),
                digest(image_size=32),
                digest(seed=1),
                digest(min_per_class=3),
                digest(image_folder_zip(["a", "c"], per_class=6, test_per_class=2)),
            }
        )
        == 8
    )
    with db.session_scope() as session:
        assert datasets.find_upload(session, digest=first) is None
        made = datasets.store_upload(
            session, data=io.BytesIO(archive), name="shapes", options=options, settings=service_env, digest=first
        ).id
    with db.session_scope() as session:
        assert datasets.find_upload(session, digest=first).id == made
        assert datasets.find_upload(session, digest=digest(name="other")) is None
        kept = datasets.accept_upload(
            session,
            data=io.BytesIO(archive),
            name="kept",
            settings=service_env,
            digest=digest(name="kept"),
        ).id
    with db.session_scope() as session:  # still being decoded: the same again waits for that one
        assert datasets.find_upload(session, digest=digest(name="kept")).id == kept
        session.get(StoredDataset, kept).status = DatasetStatus.FAILED
    with db.session_scope() as session:  # one that failed is tried again
        assert datasets.find_upload(session, digest=digest(name="kept")) is None


def test_uploaded_datasets_are_named_by_their_names(service_env):
    with db.session_scope() as session:
        shapes = datasets.accept_upload(session, data=io.BytesIO(b"zip"), name="shapes", settings=service_env).id
    with db.session_scope(write=False) as session:
        assert datasets.names(
            session, references=[f"uploaded:{shapes}", "uploaded:00000000-gone", "fashion-mnist", f"uploaded:{shapes}"]
        ) == {f"uploaded:{shapes}": "shapes"}
        assert datasets.names(session, references=["mnist"]) == {}
        for given in ("shapes", "uploaded:shapes", shapes[:8], f"uploaded:{shapes[:8]}"):  # as the CLI prints it
            assert datasets.require_dataset(session, dataset_id=given).id == shapes
        with pytest.raises(NotFound, match="did you mean shapes"):
            datasets.require_dataset(session, dataset_id="uploaded:shapez")
        for given, hint in (("SHAPES", "did you mean uploaded:shapes?"), (shapes[:4], "needs at least 6 characters")):
            with pytest.raises(Invalid, match=hint):
                datasets.reference_id(session, given=given)


def test_a_name_another_dataset_has_is_refused_naming_it_unless_that_one_failed(service_env):
    with db.session_scope() as session:
        first = datasets.store_upload(
            session,
            data=io.BytesIO(image_folder_zip(["a", "b"], per_class=6)),
            name="shapes",
            options=datasets.UploadOptions(),
            settings=service_env,
        ).id
    other = image_folder_zip(["a", "c"], per_class=6)
    for upload in (datasets.store_upload, datasets.accept_upload):
        with db.session_scope() as session, pytest.raises(datasets.NameTaken) as taken:
            if upload is datasets.store_upload:
                upload(
                    session,
                    data=io.BytesIO(other),
                    name="shapes",
                    options=datasets.UploadOptions(),
                    settings=service_env,
                )
            else:
                upload(session, data=io.BytesIO(other), name="shapes", settings=service_env)
        assert first in str(taken.value) and f"DELETE /v1/datasets/{first}" in str(taken.value)
        assert "another name" in str(taken.value)
    with db.session_scope() as session:
        session.get(StoredDataset, first).status = DatasetStatus.FAILED
    with db.session_scope() as session:  # a failed upload's name can be used again, and means the new one
        second = datasets.store_upload(
            session, data=io.BytesIO(other), name="shapes", options=datasets.UploadOptions(), settings=service_env
        ).id
    with db.session_scope(write=False) as session:
        assert datasets.reference_id(session, given="shapes") == second
        assert len(datasets.list_datasets(session)) == 2


@pytest.fixture
def s3_home(service_env, object_store, monkeypatch):
    """service_env's home with its files in the test's own S3 server."""
    from service.core import settings as settings_module

    for key, value in object_store.env().items():
        monkeypatch.setenv(key, value)
    settings_module.get_settings.cache_clear()
    return settings_module.get_settings()


def test_a_kept_upload_waits_in_the_store_and_a_stopped_store_keeps_nothing(s3_home, object_store):
    def listed():
        contents = object_store.client().list_objects_v2(Bucket=object_store.bucket).get("Contents", [])
        return sorted(item["Key"] for item in contents)

    dataset_id = accept(s3_home, image_folder_zip(["a", "b"], per_class=6, test_per_class=2))
    assert listed() == [f"trainyard/datasets/{dataset_id}.upload.zip"] and record(dataset_id).upload_file["sha256"]
    datasets.decode_accepted(dataset_id=dataset_id, options=datasets.UploadOptions(), settings=s3_home)
    assert record(dataset_id).status == DatasetStatus.READY and record(dataset_id).upload_file is None
    assert listed() == [f"trainyard/datasets/{dataset_id}.safetensors"]  # the archive went once decoded
    assert not list(s3_home.datasets_dir.glob("*"))  # nothing of it in the home's folder

    object_store.stop()
    with db.session_scope() as session, pytest.raises(StorageUnavailable):
        archive = io.BytesIO(image_folder_zip(["a", "b"], per_class=6, test_per_class=2))
        datasets.accept_upload(session, data=archive, name="another", settings=s3_home)
    with db.session_scope(write=False) as session:
        assert [d.id for d in datasets.list_datasets(session)] == [dataset_id]
    assert not list((s3_home.object_cache_dir / "tmp").iterdir())


def test_a_dataset_in_use_is_found_by_its_jobs_specs_on_either_database(service_env_on):
    """The jobs that use a dataset are found in SQL, by the path data.dataset of their stored spec."""
    archive = image_folder_zip(["a", "b"], per_class=6, test_per_class=2)
    with db.session_scope() as session:
        kept = datasets.store_upload(
            session, data=archive, name="used", options=datasets.UploadOptions(), settings=service_env_on
        ).id
        other = datasets.store_upload(
            session, data=archive, name="other", options=datasets.UploadOptions(), settings=service_env_on
        ).id

    def job(status: str, dataset_id: str, resume_state: dict | None = None) -> str:
        with db.session_scope() as session:
            row = Job(
                spec={"data": {"dataset": f"uploaded:{dataset_id}"}, "epochs": 1},
                task="classification",
                epochs=1,
                status=status,
                resume_state=resume_state,
            )
            session.add(row)
            session.flush()
            return row.id

    def delete(dataset_id: str, force: bool = False) -> None:
        with db.session_scope() as session:
            datasets.delete_dataset(session, dataset_id=dataset_id, settings=service_env_on, force=force)

    job(JobStatus.SUCCEEDED, kept)  # finished: keeps its checkpoints, needs no data
    job(JobStatus.CANCELLED, kept)  # nothing to resume from
    queued = job(JobStatus.QUEUED, kept)
    job(JobStatus.RUNNING, other)
    with pytest.raises(datasets.DatasetInUse, match=f"unfinished job\\(s\\) {queued}$"):
        delete(kept)
    with db.session_scope() as session:
        session.get(Job, queued).status = JobStatus.FAILED
        session.get(Job, queued).resume_state = {"key": "state/x.safetensors"}
    with pytest.raises(datasets.DatasetInUse, match=f"can still be resumed: {queued};"):
        delete(kept)
    delete(kept, force=True)
    assert record(kept) is None and record(other).name == "other"

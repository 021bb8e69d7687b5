"""`trainyard storage migrate`'s core: a home whose files were recorded before digests were (sha256
NULL, files in its folders) is copied into a real S3 server (SeaweedFS) under the same keys, SQL
gets the digests, a second run copies nothing, and with TRAINYARD_STORAGE_URL pointing there every
record is read from the store, the home's folders gone. A file whose bytes are not the recorded
ones is reported corrupt and not copied, a missing one missing; a run that finds the store down
stops, changes nothing, and the next one goes on, also after an upload whose record was never
written."""

from __future__ import annotations

import hashlib
import io
import shutil

import pytest
from sqlalchemy import delete, update

from models.data.loading import load_stored_dataset
from models.spec.job import JobSpec
from service.core import datasets, db, jobs, model_registry
from service.core import settings as settings_module
from service.core.references import resolve
from service.core.storage import get_storage
from service.core.storage.migrate import migrate
from service.core.tables import Checkpoint, Job, JobStatus, ModelVersion, StoredDataset
from tests.support.datagen import image_folder_zip


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def failed_job_with_a_legacy_state(settings) -> tuple[str, bytes]:
    """A failed job whose training state is the file an attempt left in its checkpoint folder
    before states were recorded in SQL (its resume_state NULL)."""
    spec = JobSpec.model_validate({"model": {"arch": "softmax_regression"}, "data": {"dataset": "fashion-mnist"}})
    with db.session_scope() as session:
        job_id = jobs.create_job(session, spec=spec, task="classification").id
    with db.session_scope() as session:
        attempt = jobs.claim_job(session, job_id=job_id, worker="test", lease_seconds=30, max_attempts=3).attempt
    with db.session_scope() as session:
        jobs.finish_job(session, job_id=job_id, attempt=attempt, status=JobStatus.FAILED, reason="crashed", error="x")
    state = b"training state of an old attempt " * 100
    (settings.checkpoint_dir / job_id).mkdir(parents=True)
    (settings.checkpoint_dir / job_id / "training-state.safetensors").write_bytes(state)
    return job_id, state


@pytest.fixture
def legacy_home(service_env, trained_job) -> dict:
    """A home as it was before digests: trained_job's three checkpoints (recorded with sha256
    NULL), a registered version and an uploaded dataset whose digests are NULL, and a failed
    job's training state in its folder. Returns what the store should hold: key -> bytes."""
    settings = service_env
    with db.session_scope() as session:
        model_registry.register(session, name="legacy", job_id=trained_job, checkpoint="best", settings=settings)
        dataset = datasets.store_upload(
            session,
            data=io.BytesIO(image_folder_zip(["a", "b"], per_class=6, test_per_class=2)),
            name="legacy-set",
            options=datasets.UploadOptions(),
            settings=settings,
        )
    with db.session_scope() as session:  # as migration 0016 left the rows of an older home
        session.execute(update(ModelVersion).values(sha256=None, size_bytes=None))
        session.execute(update(StoredDataset).values(file_sha256=None))
    state_job, state = failed_job_with_a_legacy_state(settings)
    expected = {
        f"checkpoints/{path.relative_to(settings.checkpoint_dir)}": path.read_bytes()
        for path in settings.checkpoint_dir.rglob("epoch-*.safetensors")
    }
    expected["registry/legacy/v1.safetensors"] = (settings.registry_dir / "legacy/v1.safetensors").read_bytes()
    expected[f"datasets/{dataset.id}.safetensors"] = (settings.datasets_dir / f"{dataset.id}.safetensors").read_bytes()
    expected[f"checkpoints/{state_job}/training-state.safetensors"] = state
    assert len(expected) == 6
    return {"files": expected, "job": trained_job, "state_job": state_job, "dataset": dataset.id}


def s3_target(object_store, monkeypatch) -> str:
    """The server's credentials in this process's environment (as boto3 reads them); its URL."""
    env = object_store.env()
    for name, value in env.items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    return env["TRAINYARD_STORAGE_URL"]


def objects(object_store, *, marks: bool = False) -> dict[str, tuple[bytes, str | None]]:
    """key -> (bytes, sha256 metadata) of every object the server holds under its prefix, the
    service's marks only if asked (tests/service/core/test_storage.py has theirs)."""
    client, found = object_store.client(), {}
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=object_store.bucket, Prefix=object_store.prefix)
    for item in (item for page in pages for item in page.get("Contents", [])):
        if "/.trainyard-mark/" in item["Key"] and not marks:
            continue
        answer = client.get_object(Bucket=object_store.bucket, Key=item["Key"])
        found[item["Key"].removeprefix(object_store.prefix + "/")] = (
            answer["Body"].read(),
            answer["Metadata"].get("sha256"),
        )
    return found


def recorded_digests() -> dict[str, tuple[int | None, str | None]]:
    """key -> (size, sha256) of every file SQL records."""
    with db.session_scope(write=False) as session:
        rows = [
            *session.query(Checkpoint).all(),
            *session.query(ModelVersion).all(),
            *session.query(StoredDataset).all(),
        ]
        found = {row.file.key: (row.file.size, row.file.sha256) for row in rows}
        for job in session.query(Job).all():
            state = jobs.resume_state(job)
            if state is not None:
                found[state.key] = (state.size, state.sha256)
    return found


def switch_to(url: str, monkeypatch):
    """Every process's settings after the switch: TRAINYARD_STORAGE_URL set, read afresh."""
    monkeypatch.setenv("TRAINYARD_STORAGE_URL", url)
    settings_module.get_settings.cache_clear()
    return settings_module.get_settings()


def test_a_legacy_home_is_copied_into_s3_once_and_then_read_from_there(legacy_home, object_store, monkeypatch):
    settings, files = settings_module.get_settings(), legacy_home["files"]
    url = s3_target(object_store, monkeypatch)
    total = sum(len(data) for data in files.values())

    report = migrate(settings, url)
    assert report.complete and report.stopped is None
    assert (report.copied.files, report.copied.bytes, report.skipped.files) == (6, total, 0)
    assert (report.digests_recorded, report.states_recorded) == (5, 1)
    assert objects(object_store) == {key: (data, sha256(data)) for key, data in files.items()}
    assert recorded_digests() == {key: (len(data), sha256(data)) for key, data in files.items()}
    with db.session_scope(write=False) as session:
        state = session.get(Job, legacy_home["state_job"]).resume_state
    key = f"checkpoints/{legacy_home['state_job']}/training-state.safetensors"
    assert state == {"key": key, "size": len(files[key]), "sha256": sha256(files[key])}
    assert "the files in file://" in report.summary()[-1]  # the source stays, and the report says so
    assert (settings.checkpoint_dir / legacy_home["job"] / "epoch-0001.safetensors").exists()

    again = migrate(settings, url)
    assert again.complete and again.as_dict()["copied"] == {"files": 0, "bytes": 0}
    assert (again.skipped.files, again.skipped.bytes, again.digests_recorded, again.states_recorded) == (6, total, 0, 0)
    assert again.summary()[0].startswith("nothing copied: 6 file(s), ") and again.summary()[0].endswith(f" in {url}")

    # Every process switches to the store, and the home's folders go: what SQL records reads from S3.
    for folder in (settings.checkpoint_dir, settings.datasets_dir, settings.registry_dir):
        shutil.rmtree(folder)
    switched = switch_to(url, monkeypatch)
    storage = get_storage(switched)
    assert storage.url == url and not storage.store.local and storage.cache.entries() == []
    with db.session_scope(write=False) as session:
        for checkpoint in session.query(Checkpoint).all():
            assert storage.fetch(checkpoint.file, what="checkpoint").read_bytes() == files[checkpoint.file.key]
        best = resolve(session, reference=f"job:{legacy_home['job']}", settings=switched)
        version = resolve(session, reference="legacy:1", settings=switched)
        state = jobs.resume_state(session.get(Job, legacy_home["state_job"]))
    assert best.epoch == 2 and storage.fetch(best.file, what=best.what).read_bytes() == files[best.file.key]
    assert storage.fetch(version.file, what=version.what).read_bytes() == files["registry/legacy/v1.safetensors"]
    assert storage.fetch(state, what="state").read_bytes() == files[key]
    dataset = load_stored_dataset(datasets.stored_dataset_file(legacy_home["dataset"], settings=switched))
    assert (len(dataset.x_train), len(dataset.x_test), dataset.classes) == (12, 4, ("a", "b"))
    # Fetched into this machine's cache, verified: 5 files, the version being a copy of epoch 2.
    assert {path.name for _, _, path in storage.cache.entries()} == {sha256(data) for data in files.values()}
    assert len(storage.cache.entries()) == 5


def test_corrupt_and_missing_files_are_reported_not_copied_and_a_stopped_run_goes_on(
    service_env, trained_job, object_store, monkeypatch
):
    settings = service_env
    url = s3_target(object_store, monkeypatch)
    folder = settings.checkpoint_dir / trained_job
    first, second, third = (folder / f"epoch-000{epoch}.safetensors" for epoch in (1, 2, 3))
    # Epoch 1 has a recorded digest and its bytes were changed since; epoch 2's file is gone.
    good = first.read_bytes()
    with db.session_scope() as session:
        session.execute(update(Checkpoint).where(Checkpoint.epoch == 1).values(sha256=sha256(good)))
    first.write_bytes(bytes([good[0] ^ 1]) + good[1:])
    second.unlink()
    third_bytes = third.read_bytes()

    object_store.stop()
    stopped = migrate(settings, url)
    assert stopped.stopped and "cannot be reached" in stopped.stopped and not stopped.complete
    assert stopped.copied.files == 0 and "run the command again" in stopped.summary()[-2]
    object_store.start()
    assert objects(object_store) == {}
    assert recorded_digests()[f"checkpoints/{trained_job}/epoch-0003.safetensors"][1] is None

    # A run that uploaded epoch 3 and stopped before recording its digest: the next one records it.
    object_store.client().put_object(
        Bucket=object_store.bucket,
        Key=f"{object_store.prefix}/checkpoints/{trained_job}/epoch-0003.safetensors",
        Body=third_bytes,
        Metadata={"sha256": sha256(third_bytes)},
    )
    for _ in range(2):
        report = migrate(settings, url)
        assert not report.complete and report.stopped is None
        assert [step.key for step in report.corrupt] == [f"checkpoints/{trained_job}/epoch-0001.safetensors"]
        assert "is corrupt" in report.corrupt[0].error and report.corrupt[0].size == len(good)
        assert [step.key for step in report.missing] == [f"checkpoints/{trained_job}/epoch-0002.safetensors"]
        assert "does not exist" in report.missing[0].error
        assert report.copied.files == 0 and report.skipped.files == 1
        assert report.as_dict()["corrupt"]["files"] == 1 and report.as_dict()["missing"]["files"] == 1
        # No mark either: an API started on a store that lacks files would fail on them.
        assert list(objects(object_store, marks=True)) == [f"checkpoints/{trained_job}/epoch-0003.safetensors"]
    digests = recorded_digests()
    assert digests[f"checkpoints/{trained_job}/epoch-0001.safetensors"][1] == sha256(good)  # as recorded
    assert digests[f"checkpoints/{trained_job}/epoch-0002.safetensors"][1] is None
    assert digests[f"checkpoints/{trained_job}/epoch-0003.safetensors"] == (len(third_bytes), sha256(third_bytes))


def test_a_home_is_copied_into_folders_and_read_from_there(legacy_home, tmp_path, monkeypatch):
    settings, files = settings_module.get_settings(), legacy_home["files"]
    target = tmp_path / "store"
    report = migrate(settings, f"file://{target}")
    assert report.complete and (report.copied.files, report.digests_recorded, report.states_recorded) == (6, 5, 1)
    copied = {str(p.relative_to(target)): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert {key: data for key, data in copied.items() if "/.trainyard-mark/" not in key} == files
    again = migrate(settings, f"file://{target}")
    assert (again.copied.files, again.skipped.files) == (0, 6)

    # The target's copy of a file rewritten since is not the recorded one: it is copied again.
    key = "registry/legacy/v1.safetensors"
    (target / key).unlink()
    (target / key).write_bytes(bytes(len(files[key])))
    third = migrate(settings, f"file://{target}")
    assert (third.copied.files, third.skipped.files) == (1, 5)
    assert (target / key).read_bytes() == files[key]

    for folder in (settings.checkpoint_dir, settings.datasets_dir, settings.registry_dir):
        shutil.rmtree(folder)
    storage = get_storage(switch_to(f"file://{target}", monkeypatch))
    with db.session_scope(write=False) as session:
        for checkpoint in session.query(Checkpoint).all():
            assert storage.fetch(checkpoint.file, what="checkpoint").read_bytes() == files[checkpoint.file.key]


def test_files_deleted_or_rewritten_while_it_runs_are_left_to_the_next_run(trained_job, service_env, tmp_path):
    """The service runs meanwhile: after the first file, epoch 2 is dropped (its row and file go,
    as the checkpoint policy drops them) and epoch 3 is written again (a resumed attempt)."""
    folder = service_env.checkpoint_dir / trained_job
    rewritten = b"epoch 3 trained again" * 50

    def meanwhile(step):
        if step.key.endswith("epoch-0001.safetensors"):
            with db.session_scope() as session:
                session.execute(delete(Checkpoint).where(Checkpoint.epoch == 2))
                session.execute(
                    update(Checkpoint)
                    .where(Checkpoint.epoch == 3)
                    .values(size_bytes=len(rewritten), sha256=sha256(rewritten))
                )
            (folder / "epoch-0002.safetensors").unlink()
            (folder / "epoch-0003.safetensors").write_bytes(rewritten)

    url = f"file://{tmp_path / 'store'}"
    report = migrate(service_env, url, progress=meanwhile)
    assert (report.copied.files, report.gone.files, report.missing, report.corrupt) == (1, 1, [], [])
    assert [(s.key, s.error) for s in report.changed] == [
        (
            f"checkpoints/{trained_job}/epoch-0003.safetensors",
            f"job {trained_job}'s checkpoint of epoch 3 was recorded anew while it was copied",
        )
    ]
    assert not report.complete and "no longer recorded" in "\n".join(report.summary())
    again = migrate(service_env, url)
    assert again.complete and again.copied.files + again.skipped.files == 2
    assert (tmp_path / "store" / "checkpoints" / trained_job / "epoch-0003.safetensors").read_bytes() == rewritten


def test_the_target_must_be_a_store_url(service_env):
    for url in ("http://bucket/x", "s3://", "/var/store", "file://relative"):
        with pytest.raises(ValueError, match="file:///path or s3://bucket/prefix"):
            migrate(service_env, url)


def test_a_target_bucket_that_does_not_exist_gets_nothing(legacy_home, object_store, monkeypatch):
    """A mistyped bucket: the store may make it at the first write (SeaweedFS does, for its admin),
    and the copy would then be recorded as the service's next store."""
    s3_target(object_store, monkeypatch)
    with pytest.raises(ValueError, match="'no-such-bucket' does not exist there: create it first"):
        migrate(settings_module.get_settings(), "s3://no-such-bucket/prod")
    assert "no-such-bucket" not in [b["Name"] for b in object_store.client().list_buckets()["Buckets"]]


def test_the_target_gets_a_mark_of_its_own_and_the_source_the_services(service_env, tmp_path):
    """Workers switched to the target before the API are refused, saying why (their jobs' weights
    would go where the API does not read yet)."""
    from service.core.storage.check import ask_store, leave_mark, mark_keys, recorded_marks
    from service.core.storage.stores import open_store

    migrate(service_env, f"file://{tmp_path / 'before'}")  # a home whose API never started: marks for both
    with db.read_scope() as session:
        token = recorded_marks(session).current.token
    assert all((service_env.home / key).is_file() for key in mark_keys(token))
    assert leave_mark(get_storage(service_env).store) == token
    report = migrate(service_env, f"file://{tmp_path / 'store'}")
    assert report.complete and report.stopped is None
    with db.read_scope() as session:
        marks = recorded_marks(session)
    assert marks.current.token == token and len(marks.next) == 2 and token not in [m.token for m in marks.next]
    assert all((tmp_path / "store" / key).is_file() for key in mark_keys(marks.next[1].token))
    early = ask_store(open_store(f"file://{tmp_path / 'store'}", {}))  # a worker switched before the API
    assert "is the one `storage migrate` copied the service's files to on " in early
    assert "but the service has not moved there yet" in early and "the first API started on it" in early


def test_an_api_started_on_the_target_moves_the_service_and_the_old_store_is_refused(
    service_env, trained_job, tmp_path, caplog, monkeypatch
):
    """The old store keeps the mark it had and every file: only the move, made when an API starts
    on the target, tells a worker left on it that the service is elsewhere now."""
    from service.core.storage.check import ask_store, leave_mark, mark_keys, readiness, recorded_marks
    from service.core.storage.stores import open_store

    old = get_storage(service_env).store
    token = leave_mark(old, move=True)
    url = f"file://{tmp_path / 'store'}"
    assert migrate(service_env, url).complete
    target = open_store(url, {})
    assert ask_store(old) is None and "has not moved there yet" in ask_store(target)
    assert leave_mark(target) == token  # an API's housekeeping does not move the service: its start does
    moved_to = leave_mark(target, move=True)  # an API started with TRAINYARD_STORAGE_URL set to the target
    with db.read_scope() as session:
        marks = recorded_marks(session)
    assert marks.current.token == moved_to != token and [mark.token for mark in marks.left] == [token]
    assert marks.current.store_url == url and f"the service's store is now {url}" in caplog.text

    problem = ask_store(old)
    assert problem.startswith(f"this worker's store ({old.url}) is one the service moved away from on ")
    assert f"(the service's store is {url})" in problem
    assert leave_mark(old, move=True) == moved_to  # an API left on the old store puts no mark there, and is not ready
    assert not any(old.path(key).exists() for key in mark_keys(moved_to))
    assert readiness(old).startswith(f"error: this API's store ({old.url}) is one the service moved away from")
    assert ask_store(target) is None and readiness(target) == "ok"
    with pytest.raises(ValueError, match="is one the service moved away from .* where the service's API runs"):
        migrate(service_env, f"file://{tmp_path / 'third'}")  # from this machine's stale settings
    assert not (tmp_path / "third").exists()

    # Back to the first store: an API forgotten there does not move the service with its housekeeping.
    back = migrate(switch_to(url, monkeypatch), old.url)
    assert back.complete and "has not moved there yet" in ask_store(old)
    assert leave_mark(old) == moved_to and ask_store(target) is None
    assert leave_mark(old, move=True) not in (token, moved_to)
    assert ask_store(old) is None and "is one the service moved away from" in ask_store(target)


def test_of_two_apis_moving_the_service_at_once_one_does(service_env, tmp_path):
    """Two targets of `storage migrate`, an API started on each: one store is the service's after."""
    from service.core.storage.check import _move_to, ask_store, leave_mark, recorded_marks
    from service.core.storage.stores import open_store

    leave_mark(get_storage(service_env).store, move=True)
    first, second = (open_store(f"file://{tmp_path / name}", {}) for name in ("first", "second"))
    migrate(service_env, first.url)
    migrate(service_env, second.url)
    with db.read_scope() as session:
        before = recorded_marks(session)  # what both APIs read before either moved the service
    first_mark, second_mark = before.next
    assert _move_to(first, first_mark, before.current) == first_mark.token
    assert _move_to(second, second_mark, before.current) == first_mark.token  # the other one moved it first
    with db.read_scope() as session:
        after = recorded_marks(session)
    assert after.current.token == first_mark.token and after.next == ()
    assert ask_store(first) is None
    assert "and the service did not move there" in ask_store(second)


def test_a_copy_that_holds_the_current_mark_is_still_marked_as_the_target(service_env, tmp_path):
    """A store copied by hand with its marks folder (or by storage migrate before it left a mark of
    the target's own) holds the service's mark: the move must still be told."""
    import shutil

    from service.core.storage.check import MARK_FOLDER, ask_store, leave_mark, leave_next_mark
    from service.core.storage.stores import open_store

    old = get_storage(service_env).store
    token = leave_mark(old, move=True)
    for area in ("checkpoints", "datasets", "registry"):
        shutil.copytree(service_env.home / area / MARK_FOLDER, tmp_path / "copy" / area / MARK_FOLDER)
    copy = open_store(f"file://{tmp_path / 'copy'}", {})
    assert leave_next_mark(old) == token  # the service's own store needs no other mark
    moving = leave_next_mark(copy)
    assert moving != token and leave_mark(copy, move=True) == moving
    assert "moved away from" in ask_store(old) and ask_store(copy) is None


def test_a_target_left_incomplete_is_no_store_of_the_services_whatever_files_it_holds(
    service_env, trained_job, tmp_path
):
    """A run that could not copy every file leaves no mark there, and the files it did copy do not
    make the target the service's: a worker or API started on it is refused, not trusted."""
    from service.core.storage.check import ask_store, leave_mark, mark_keys
    from service.core.storage.stores import open_store

    token = leave_mark(get_storage(service_env).store, move=True)
    (service_env.checkpoint_dir / trained_job / "epoch-0001.safetensors").unlink()
    url = f"file://{tmp_path / 'store'}"
    report = migrate(service_env, url)
    assert not report.complete and report.copied.files == 2
    assert report.summary()[-1] == f"{url} lacks files: no API or worker should use it before a run copies them all"
    target = open_store(url, {})
    assert (tmp_path / "store" / "checkpoints" / trained_job / "epoch-0003.safetensors").is_file()
    assert "lacks the mark the API left" in ask_store(target)
    assert leave_mark(target, move=True) == token  # an API started on it does not vouch for it either
    assert not any((tmp_path / "store" / key).exists() for key in mark_keys(token))

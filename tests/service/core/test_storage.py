"""The store and this machine's cache: verified reads, nothing half-written, one download per
machine, a bound that never evicts a file in use. Against the home's folders and a real S3 server."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

import pytest

from service.core.settings import Settings
from service.core.storage import (
    ObjectCorrupt,
    ObjectMissing,
    Storage,
    StorageError,
    StorageUnavailable,
    StoredFile,
)
from service.core.storage.cache import ObjectCache, file_sha256
from tests.support.servers import wait_until


def settings_for(home, **extra) -> Settings:
    return Settings(home=home, **extra)


@pytest.fixture
def s3_storage(object_store, tmp_path, monkeypatch):
    """Storage on the test's own S3 server, from a home of its own."""
    for key, value in object_store.env().items():
        monkeypatch.setenv(key, value)
    return Storage(settings_for(tmp_path / "home", storage_url=object_store.env()["TRAINYARD_STORAGE_URL"]))


def written(storage: Storage, key: str, content: bytes) -> StoredFile:
    path = storage.staging(key)
    path.write_bytes(content)
    return storage.put(key, path)


def test_folders_read_in_place_and_refuse_changed_bytes(tmp_path):
    storage = Storage(settings_for(tmp_path))
    stored = written(storage, "checkpoints/job/epoch-0001.safetensors", b"weights")
    path = storage.fetch(stored, what="epoch 1")
    assert path == tmp_path / "checkpoints" / "job" / "epoch-0001.safetensors" and path.read_bytes() == b"weights"
    path.write_bytes(b"weightz")
    with pytest.raises(ObjectCorrupt, match="epoch 1 is corrupt"):
        Storage(settings_for(tmp_path)).fetch(stored, what="epoch 1")
    path.unlink()
    with pytest.raises(ObjectMissing, match="epoch 1 is missing"):
        storage.fetch(stored, what="epoch 1")
    legacy = StoredFile("registry/m/v1.safetensors")  # recorded before digests: read where it is
    (tmp_path / "registry" / "m").mkdir(parents=True)
    (tmp_path / "registry" / "m" / "v1.safetensors").write_bytes(b"old")
    assert storage.fetch(legacy, what="v1").read_bytes() == b"old"


def test_s3_round_trip_verified_and_cached(s3_storage, object_store):
    content = os.urandom(3 * 1024 * 1024)
    stored = written(s3_storage, "datasets/d.safetensors", content)
    assert (stored.size, stored.sha256) == (len(content), file_sha256_of(content))
    assert s3_storage.cached(stored)  # the writer's file became this machine's copy
    head = object_store.client().head_object(Bucket=object_store.bucket, Key="trainyard/datasets/d.safetensors")
    assert head["ContentLength"] == len(content) and head["Metadata"]["sha256"] == stored.sha256

    other = Storage(settings_for(s3_storage.cache.root.parents[2] / "other", storage_url=s3_storage.url))
    assert not other.cached(stored)
    assert other.fetch(stored, what="dataset d").read_bytes() == content
    object_store.stop()  # a second read needs no byte from the store
    assert other.fetch(stored, what="dataset d").read_bytes() == content
    with pytest.raises(StorageUnavailable):
        other.fetch(StoredFile("datasets/e.safetensors", 1, "0" * 64), what="dataset e")


def test_a_corrupt_or_missing_object_is_refused_by_name(s3_storage, object_store, tmp_path):
    stored = written(s3_storage, "registry/m/v1.safetensors", b"the real weights")
    object_store.client().put_object(
        Bucket=object_store.bucket, Key="trainyard/registry/m/v1.safetensors", Body=b"other weights!!!"
    )
    fresh = Storage(settings_for(tmp_path / "fresh", storage_url=s3_storage.url))
    with pytest.raises(ObjectCorrupt, match="version 1 of model 'm' in s3://.* is corrupt"):
        fresh.fetch(stored, what="version 1 of model 'm'")
    assert not fresh.cached(stored) and not list((fresh.cache.root / "tmp").iterdir())  # nothing kept
    with pytest.raises(ObjectMissing, match="is missing from s3://"):
        fresh.fetch(StoredFile("registry/m/v2.safetensors", 3, "1" * 64), what="version 2 of model 'm'")


def test_an_upload_to_a_stopped_store_leaves_nothing(s3_storage, object_store):
    object_store.stop()
    path = s3_storage.staging("checkpoints/j/epoch-0001.safetensors")
    path.write_bytes(b"x" * 1000)
    with pytest.raises(StorageUnavailable, match="cannot be reached"):
        s3_storage.put("checkpoints/j/epoch-0001.safetensors", path)
    object_store.start()
    assert object_store.client().list_objects_v2(Bucket=object_store.bucket).get("KeyCount", 0) == 0


def test_patiently_waits_for_the_store_to_come_back(s3_storage, object_store):
    import threading

    object_store.stop()
    seen = []

    def restart_once_waiting_is_said():  # what a running job's heartbeat reads meanwhile
        seen.append(wait_until(s3_storage.waiting, timeout=30, what="patiently() to say it waits"))
        object_store.start()

    restarter = threading.Thread(target=restart_once_waiting_is_said)
    restarter.start()
    try:
        stored = s3_storage.patiently(
            "store a file",
            lambda: written(s3_storage, "checkpoints/j/epoch-0002.safetensors", b"y" * 10),
            give_up_after=60,
        )
    finally:
        restarter.join()
    assert stored.size == 10 and s3_storage.waiting() is None
    (waiting,) = seen
    assert waiting.what == "store a file" and (waiting.until - waiting.since).total_seconds() == 60
    assert "cannot be reached" in waiting.error, waiting.error
    object_store.stop()
    began = time.monotonic()
    with pytest.raises(StorageUnavailable, match="gave up after"):
        s3_storage.patiently("fetch", lambda: s3_storage.store.list("checkpoints/"), give_up_after=2)
    assert time.monotonic() - began >= 2  # the whole time: its back-off gave up at half of it


def file_sha256_of(content: bytes) -> str:
    import hashlib

    return hashlib.sha256(content).hexdigest()


def _fetch_in_child(cache_root, sha256, size, counter, barrier):
    cache = ObjectCache(cache_root, 10**9)

    def fill(fh):
        with counter.get_lock():
            counter.value += 1
        fh.write(b"z" * size)

    barrier.wait()
    with cache.opened(sha256, size, fill) as path:
        assert path.read_bytes() == b"z" * size


def test_processes_of_one_machine_download_an_object_once(tmp_path):
    size = 4 * 1024 * 1024
    sha256 = file_sha256_of(b"z" * size)
    context = multiprocessing.get_context("spawn")
    counter, barrier = context.Value("i", 0), context.Barrier(3)
    children = [
        context.Process(target=_fetch_in_child, args=(tmp_path, sha256, size, counter, barrier)) for _ in range(3)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    assert [child.exitcode for child in children] == [0, 0, 0]
    assert counter.value == 1


def test_the_bound_evicts_the_least_recently_used_never_a_file_in_use(tmp_path):
    cache = ObjectCache(tmp_path, max_bytes=2500)
    blobs = {name: name.encode() * 1000 for name in "abc"}  # 1000 bytes each
    digests = {name: file_sha256_of(blob) for name, blob in blobs.items()}

    def fetch(name):
        return cache.opened(digests[name], 1000, lambda fh: fh.write(blobs[name]))

    with fetch("a"):
        pass
    with fetch("b"):
        pass
    os.utime(cache.path(digests["a"]), (1, 1))  # a is the least recently used
    with fetch("a") as held:  # ... until used again, and held while c comes in
        os.utime(cache.path(digests["b"]), (2, 2))
        with fetch("c"):
            pass
        assert held.read_bytes() == blobs["a"]
    assert cache.contains(digests["a"]) and cache.contains(digests["c"]) and not cache.contains(digests["b"])
    assert cache.used_bytes() <= 2500
    with fetch("a"):  # held: a fourth object evicts c rather than a, even though a is older
        os.utime(cache.path(digests["a"]), (1, 1))
        with cache.opened(file_sha256_of(b"d" * 1000), 1000, lambda fh: fh.write(b"d" * 1000)):
            pass
        assert cache.contains(digests["a"]) and not cache.contains(digests["c"])
    assert cache.used_bytes() <= 2500


def test_a_file_written_here_verifies_against_itself(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert file_sha256(path) == file_sha256_of(b"abc")


def test_a_bucket_that_does_not_exist_is_no_missing_object(object_store, tmp_path, monkeypatch):
    for key, value in object_store.env().items():
        monkeypatch.setenv(key, value)
    wrong = Storage(settings_for(tmp_path, storage_url="s3://no-such-bucket/trainyard"))
    with pytest.raises(StorageError) as refused:
        wrong.fetch(StoredFile("registry/m/v1.safetensors", 3, "1" * 64), what="version 1 of model 'm'")
    assert not isinstance(refused.value, (ObjectMissing, StorageUnavailable)), refused.value


def test_adopting_bytes_the_cache_has_keeps_the_copy_a_reader_holds(tmp_path):
    cache = ObjectCache(tmp_path / "cache", max_bytes=10**6)
    digest = file_sha256_of(b"same")
    with cache.opened(digest, 4, lambda fh: fh.write(b"same")) as held:
        before = held.stat().st_ino
        staged = cache.staging()
        staged.write_bytes(b"same")
        cache.adopt(staged, digest)
        assert held.stat().st_ino == before and not staged.exists()


def current(token: str):
    """The marks SQL records when `token` is the service's."""
    from service.core.storage.check import Marks
    from service.core.tables import StoreMark

    return Marks(current=StoreMark(token=token))


def test_a_store_without_the_mark_the_api_left_is_not_the_services(tmp_path, s3_storage, object_store, service_env):
    from service.core.storage.check import Marks, leave_mark, mark_keys, store_problem
    from service.core.tables import StoreMark

    assert store_problem(s3_storage.store, Marks(), []) is None  # no mark left yet: no answer
    token = leave_mark(s3_storage.store)
    assert store_problem(s3_storage.store, current(token), []) is None
    own_folders = Storage(settings_for(tmp_path / "another-machine", storage_url=None))  # names no store
    problem = store_problem(own_folders.store, current(token), [])
    assert problem.startswith(f"this worker's store (file://{tmp_path / 'another-machine'}) lacks the mark ")
    assert f"({mark_keys(token)[0]})" in problem and "the database records no file yet" in problem
    named = Marks(current=StoreMark(token=token, store_url=s3_storage.url))
    assert f"it is not that store (the service's store is {s3_storage.url})" in store_problem(
        own_folders.store, named, []
    )
    assert problem.endswith(
        "set TRAINYARD_STORAGE_URL as the service's API and workers have it "
        f"({tmp_path / 'another-machine' / 'checkpoints'} is empty or "
        "missing: is its file system mounted?) (docs/storage.md)"
    )
    other_prefix = Storage(settings_for(tmp_path / "third", storage_url=s3_storage.url.rstrip("/") + "-other"))
    assert "lacks the mark" in store_problem(other_prefix.store, current(token), [])

    # The mark went from one area (an expiry rule on it, say): the files SQL records say it is the store.
    recorded = [written(s3_storage, f"datasets/set-{i}.safetensors", b"w%d" % i) for i in (1, 2)]
    s3_storage.store.delete([mark_keys(token)[1]])
    assert store_problem(s3_storage.store, current(token), recorded) is None
    problem = store_problem(own_folders.store, current(token), recorded)
    assert f"none of the 2 newest files the database records (such as {recorded[0].key})" in problem


def test_the_mark_is_chosen_once_and_written_before_sql_records_it(tmp_path, s3_storage, object_store, service_env):
    from service.core import db
    from service.core.storage.check import MARK_FOLDER, leave_mark, leave_next_mark, mark_keys, recorded_marks

    object_store.stop()
    with pytest.raises(StorageUnavailable):
        leave_mark(s3_storage.store)
    with db.read_scope() as session:
        assert recorded_marks(session).current is None  # no worker is asked for a mark its store could not hold
    object_store.start()
    token = leave_mark(s3_storage.store)
    assert leave_mark(s3_storage.store) == token
    listed = [key for area in ("checkpoints", "datasets", "registry") for key, _ in s3_storage.store.list(area)]
    assert sorted(listed) == sorted(mark_keys(token)) and all(f"/{MARK_FOLDER}/" in key for key in listed)
    s3_storage.store.delete(mark_keys(token)[:2])  # the store emptied: it is put back
    assert leave_mark(s3_storage.store) == token and all(s3_storage.store.head(key) for key in mark_keys(token))
    folders = Storage(settings_for(tmp_path / "folders", storage_url=None))  # what `storage migrate` copied to
    moving_to = leave_next_mark(folders.store)
    assert moving_to != token and leave_next_mark(folders.store) == moving_to
    assert all(folders.store.path(key).is_file() for key in mark_keys(moving_to))
    assert leave_next_mark(s3_storage.store) == token  # the service's own store needs no other mark


def test_a_mark_is_not_put_back_in_a_store_without_the_services_files(tmp_path, s3_storage, object_store, service_env):
    """A process whose settings name another store (`trainyard run` on a worker's machine, its
    store unset) does not vouch for it: its worker is refused."""
    from service.core import db
    from service.core.storage.check import leave_mark, mark_keys, newest_recorded, store_problem
    from service.core.tables import StoredDataset

    token = leave_mark(s3_storage.store)
    stored = written(s3_storage, "datasets/00000000-0000-4000-8000-000000000001.safetensors", b"set")
    with db.session_scope() as session:
        session.add(
            StoredDataset(
                id="00000000-0000-4000-8000-000000000001", name="set", file_sha256=stored.sha256, size_bytes=3
            )
        )
    elsewhere = Storage(settings_for(tmp_path / "another-machine", storage_url=None))
    assert leave_mark(elsewhere.store) == token
    assert not any(elsewhere.store.path(key).exists() for key in mark_keys(token))
    with db.read_scope() as session:
        recorded = newest_recorded(session)
    assert [f.key for f in recorded] == [stored.key]
    assert "lacks the mark" in store_problem(elsewhere.store, current(token), recorded)


def test_the_probes_ask_the_store_one_at_a_time_and_reuse_a_fresh_answer(monkeypatch):
    """A store that hangs holds one thread, not one per probe (the API's threads serve requests)."""
    from service.core.storage import check

    asked, answered, release = [], [], threading.Event()

    def slow(store):
        asked.append(store)
        release.wait(10)
        return "ok"

    monkeypatch.setattr(check, "readiness", slow)
    probes = check.StoreReadiness(ttl=60)
    first = threading.Thread(target=lambda: answered.append(probes.status("the store")))
    first.start()
    wait_until(lambda: asked, timeout=10, what="the first probe to ask")
    assert probes.status("the store") == "unchecked: being asked"
    release.set()
    first.join(10)
    assert answered == ["ok"] and probes.status("the store") == "ok" and len(asked) == 1


def test_one_store_under_two_urls_is_told_apart_from_another(tmp_path, s3_storage, object_store, service_env):
    from service.core.storage.check import PROBE_PREFIX, same_store

    slash = Storage(settings_for(tmp_path / "slash", storage_url=s3_storage.url.rstrip("/") + "/"))
    other = Storage(settings_for(tmp_path / "other", storage_url=s3_storage.url.rstrip("/") + "-other"))
    assert same_store(s3_storage.store, slash.store) and not same_store(s3_storage.store, other.store)
    assert s3_storage.store.list(PROBE_PREFIX) == [] and other.store.list(PROBE_PREFIX) == []  # no probe left
    folders = Storage(settings_for(tmp_path / "folders", storage_url=None))
    assert not same_store(s3_storage.store, folders.store) and same_store(folders.store, folders.store)


def test_an_api_starting_while_the_store_is_away_leaves_its_mark_once_it_is_back(s3_storage, object_store, service_env):
    from service.core.storage.check import mark_keys, settle

    object_store.stop()
    settled: list[str] = []
    starting = threading.Thread(target=lambda: settled.append(settle(s3_storage.store, first_delay=0.05)))
    starting.start()
    object_store.start()
    starting.join(60)
    assert len(settled) == 1 and all(s3_storage.store.head(key) for key in mark_keys(settled[0]))


def test_a_store_that_refuses_the_key_pair_or_lacks_the_bucket_says_so(
    tmp_path, object_store, monkeypatch, service_env
):
    from service.core.storage.check import Marks, leave_mark, store_problem

    for key, value in object_store.env().items():
        monkeypatch.setenv(key, value)
    no_bucket = Storage(settings_for(tmp_path, storage_url="s3://no-such-bucket/trainyard"))
    problem = store_problem(no_bucket.store, Marks(), [])
    assert (
        "this worker's store refuses it: " in problem and "'no-such-bucket' does not exist there: create it" in problem
    )
    # An API does not take a bucket that is not there for a store without the service's mark.
    leave_mark(Storage(settings_for(tmp_path, storage_url=object_store.env()["TRAINYARD_STORAGE_URL"])).store)
    with pytest.raises(StorageError, match="'no-such-bucket' does not exist there: create it first$"):
        leave_mark(no_bucket.store)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    wrong_secret = Storage(settings_for(tmp_path, storage_url=object_store.env()["TRAINYARD_STORAGE_URL"]))
    problem = store_problem(wrong_secret.store, Marks(), [])
    assert problem.startswith("this worker's store refuses it: ") and "AWS_*" in problem, problem
    object_store.stop()
    with pytest.raises(StorageUnavailable):  # no answer either way: the worker goes on
        store_problem(wrong_secret.store, Marks(), [])


def test_a_discarded_file_goes_from_the_store_and_from_this_machines_cache(s3_storage):
    """A worker's superseded training states and dropped checkpoints: each was this machine's
    cached copy as it was stored; discarded, neither the object nor the copy stays (a copy a
    reader holds stays for the bound's trim)."""
    old, held, kept = (written(s3_storage, f"checkpoints/job/{name}.safetensors", name.encode()) for name in "abc")
    cache = s3_storage.cache
    assert all(cache.contains(stored.sha256) for stored in (old, held, kept))
    with s3_storage.opened(held, what="held"):
        s3_storage.discard(old, held)
    assert s3_storage.store.head(old.key) is None and s3_storage.store.head(held.key) is None
    assert not cache.contains(old.sha256) and cache.contains(held.sha256) and cache.contains(kept.sha256)
    s3_storage.discard(held)  # no longer held: its copy goes; an object already gone is no error
    assert not cache.contains(held.sha256) and s3_storage.store.head(kept.key) is not None

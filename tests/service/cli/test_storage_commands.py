"""`trainyard storage info` and `trainyard storage migrate`, in this process on a private home: what
they print (lines, or JSON with --json) and their exit statuses (0 all there, 1 files not copied,
2 a bad URL, 3 a store that cannot be reached)."""

from __future__ import annotations

import json
import subprocess
import sys

from sqlalchemy import update
from typer.testing import CliRunner

from service.cli import main as cli_main
from service.core import db
from service.core.tables import Checkpoint
from tests.support.servers import REPO, free_port


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli_main.app, ["storage", *args], env=env)


def storage_info_in_a_process(env: dict, *options: str) -> subprocess.CompletedProcess:
    """`trainyard storage info` in a process of its own, with only `env` (settings read afresh)."""
    return subprocess.run(
        [sys.executable, "-m", "service.cli.main", "storage", "info", *options],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_info_says_where_files_are_and_what_the_cache_holds(service_env):
    result = invoke("info", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["url"] == f"file://{service_env.home}" and info["configured"] is None and info["kind"] == "folders"
    assert info["folders"]["checkpoints"] == str(service_env.checkpoint_dir)
    no_cache = (info["cache_dir"], info["cache_files"], info["cache_bytes_used"], info["cache_bytes_max"])
    assert no_cache == (None, None, None, None)  # files in folders are read where they are
    lines = invoke("info").stdout.splitlines()
    assert lines[0] == f"as this machine's settings say (TRAINYARD_HOME {service_env.home}):"
    assert lines[1].startswith(f"store: file://{service_env.home} (folders: checkpoints {service_env.checkpoint_dir}")
    assert lines[1].endswith("files are read where they are, no cache)")  # folders: no cache
    assert lines[2:] == ["no API has left its mark yet"]
    elsewhere = storage_info_in_a_process(
        {"PATH": "/usr/bin:/bin", "TRAINYARD_HOME": str(service_env.home / "not-here")}
    )
    said = elsewhere.stdout.splitlines()[-1]
    assert said.startswith(f"note: {service_env.home / 'not-here'} does not exist here: run this where"), said
    assert not (service_env.home / "not-here").exists()


def test_info_says_which_store_is_the_services_where_it_moves_and_whether_this_one_is_it(service_env, tmp_path):
    from service.core.storage import get_storage
    from service.core.storage.check import leave_mark, leave_next_mark, mark_keys, readiness
    from service.core.storage.stores import open_store

    token = leave_mark(get_storage().store)
    leave_next_mark(open_store(f"file://{tmp_path / 'next'}", {}))
    info = json.loads(invoke("info", "--json").stdout)
    assert (info["service_store"], info["moving_to"], info["this_store"]) == (
        f"file://{service_env.home}",
        [f"file://{tmp_path / 'next'}"],
        "ok",
    )
    assert invoke("info").stdout.splitlines()[2:] == [
        f"the service's store, as its API left its mark: file://{service_env.home}",
        f"moving to: file://{tmp_path / 'next'} (storage migrate copied there; the first API started on it makes "
        f"it the service's store; `trainyard storage withdraw file://{tmp_path / 'next'}` calls the move off)",
        "this machine's store is the service's",
    ]
    # A mistyped target, say: the move is called off, and an API started on it is refused
    withdrawn = invoke("withdraw", f"file://{tmp_path / 'next'}/")  # its last slash or not, as typed
    assert withdrawn.exit_code == 0 and "the move to file://" in withdrawn.stdout, withdrawn.output
    assert json.loads(invoke("info", "--json").stdout)["moving_to"] == []
    wrong = open_store(f"file://{tmp_path / 'next'}", {})
    assert leave_mark(wrong, move=True) == token  # it did not move the service
    said = readiness(wrong)
    assert "is one `storage migrate` copied the service's files to on " in said, said
    assert "and the service did not move there" in said
    again = invoke("withdraw", f"file://{tmp_path / 'next'}")
    assert again.exit_code == 2 and "no move to file://" in again.output
    get_storage().store.delete(mark_keys(token))  # this machine's folders are not the ones the API marked
    warned = invoke("info")
    assert warned.exit_code == 1 and invoke("info", "--json").exit_code == 1  # a worker here would be refused
    assert warned.stdout.splitlines()[-1].startswith(
        f"warning: this machine's store (file://{service_env.home}) lacks the mark the API left"
    )


def test_migrate_copies_once_then_says_there_is_nothing_to_copy(trained_job, tmp_path):
    url = f"file://{tmp_path / 'store'}"
    first = invoke("migrate", "--to", url, "--json")
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert report["complete"] and report["target"] == url and report["copied"]["files"] == 3
    assert report["digests_recorded"] == 3 and report["sources_deleted"] is False
    assert sorted(p.name for p in (tmp_path / "store" / "checkpoints" / trained_job).iterdir()) == [
        "epoch-0001.safetensors",
        "epoch-0002.safetensors",
        "epoch-0003.safetensors",
    ]

    second = invoke("migrate", "--to", url)
    assert second.exit_code == 0, second.output
    assert second.stdout.startswith("nothing copied: 3 file(s), ")
    assert f"next: set TRAINYARD_STORAGE_URL={url} on every process, start the API first" in second.stdout
    assert "stay there: delete them once every process uses the new store" in second.stdout


def test_migrate_exits_1_when_files_are_not_copied(trained_job, service_env, tmp_path):
    with db.session_scope() as session:
        session.execute(update(Checkpoint).where(Checkpoint.epoch == 1).values(sha256="0" * 64))
    (service_env.checkpoint_dir / trained_job / "epoch-0002.safetensors").unlink()
    result = invoke("migrate", "--to", f"file://{tmp_path / 'store'}")
    assert result.exit_code == 1, result.output
    assert f"copied checkpoints/{trained_job}/epoch-0003.safetensors (" in result.stdout
    assert "1 file(s) corrupt" in result.stdout and "1 file(s) missing" in result.stdout
    not_copied = result.stderr.splitlines()
    assert len(not_copied) == 2 and all(line.startswith("not copied: job ") for line in not_copied)
    assert "epoch 1 is corrupt: " in not_copied[0] and "epoch 2 is missing: " in not_copied[1]
    assert "next: set" not in result.stdout


def test_migrate_exits_2_on_a_bad_url_and_3_when_the_store_cannot_be_reached(trained_job, service_env):
    bad = invoke("migrate", "--to", "http://example.com/bucket")
    assert bad.exit_code == 2 and "file:///path or s3://bucket/prefix" in bad.stderr
    itself = invoke("migrate", "--to", f"file://{service_env.home}/./")  # the store it uses, named otherwise
    assert itself.exit_code == 2, itself.output
    assert (
        itself.stderr
        == f"error: file://{service_env.home}/./ is the store this machine uses already (file://{service_env.home})\n"
    )
    nowhere = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "AWS_ACCESS_KEY_ID": "nobody",
        "AWS_SECRET_ACCESS_KEY": "nothing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    down = invoke("migrate", "--to", "s3://nowhere/prefix", "--json", env=nowhere)
    assert down.exit_code == 3, down.output
    report = json.loads(down.stdout)
    assert "cannot be reached" in report["stopped"] and report["copied"]["files"] == 0 and not report["complete"]
    with db.session_scope(write=False) as session:
        assert [c.sha256 for c in session.query(Checkpoint).all()] == [None, None, None]


def test_a_setting_that_is_not_valid_is_one_line_naming_it(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "TRAINYARD_HOME": str(tmp_path),
        "TRAINYARD_STORAGE_URL": "s3:/no-bucket",
    }
    run = storage_info_in_a_process(env)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.startswith("error: TRAINYARD_STORAGE_URL='s3:/no-bucket': "), run.stderr


def test_migrate_brings_a_new_home_to_the_newest_schema_first(tmp_path, monkeypatch):
    from service.core import settings as settings_module

    monkeypatch.setenv("TRAINYARD_HOME", str(tmp_path / "fresh"))
    settings_module.get_settings.cache_clear()
    db.get_engine.cache_clear()
    db.get_sessionmaker.cache_clear()
    try:
        result = invoke("migrate", "--to", f"file://{tmp_path / 'store'}")
        assert result.exit_code == 0, result.output
        assert "nothing copied" in result.stdout
    finally:
        db.get_engine().dispose()
        settings_module.get_settings.cache_clear()
        db.get_engine.cache_clear()
        db.get_sessionmaker.cache_clear()


def test_info_on_an_object_store_says_what_this_machine_caches(object_store, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "TRAINYARD_HOME": str(tmp_path), **object_store.env()}
    run = storage_info_in_a_process(env)
    lines = run.stdout.splitlines()
    assert run.returncode == 0 and lines[1].startswith(f"store: {env['TRAINYARD_STORAGE_URL']} (an object store"), run
    assert lines[2] == f"cache: {tmp_path / 'cache' / 'objects'}, 0 B in 0 file(s) of 20.0 GiB (TRAINYARD_CACHE_BYTES)"
    info = json.loads(storage_info_in_a_process(env, "--json").stdout)
    assert info["kind"] == "object store" and info["folders"] is None
    assert (info["cache_dir"], info["cache_files"], info["cache_bytes_max"]) == (
        str(tmp_path / "cache" / "objects"),
        0,
        20 * 2**30,
    )

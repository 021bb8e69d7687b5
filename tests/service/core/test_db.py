"""Migrations and engines on a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from service.core.db import make_engine
from service.core.migrate import alembic_config, upgrade
from service.core.tables import Base
from tests.support.servers import PostgresSchema, postgres_available, require


def test_migrations_match_the_orm_tables(engine):
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    assert {"jobs", "epoch_metrics", "checkpoints", "alembic_version"} <= set(inspect(engine).get_table_names())


def migrate(engine, step, revision: str) -> None:
    """Run an alembic command (command.upgrade, command.downgrade) to `revision` on the engine."""
    with engine.begin() as connection:
        config = alembic_config()
        config.attributes["connection"] = connection
        step(config, revision)


@pytest.mark.parametrize(
    "table, column, before, kept",
    [
        ("model_versions", "threshold", "0010", {"name", "version", "metrics"}),
        ("datasets", "upload_digest", "0013", {"name", "status", "checksum"}),
    ],
    ids=["threshold", "upload_digest"],
)
def test_a_migration_downgrades_and_upgrades_again(engine, table, column, before, kept):
    from alembic import command

    def columns() -> set[str]:
        return {c["name"] for c in inspect(engine).get_columns(table)}

    assert column in columns()
    migrate(engine, command.downgrade, before)
    assert column not in columns() and kept <= columns()
    migrate(engine, command.upgrade, "head")
    assert column in columns()


def test_sweeps_that_had_ended_before_0017_are_marked_finished(engine):
    """The reaper visits only unfinished sweeps: those with nothing left to do are marked so."""
    from alembic import command
    from sqlalchemy import text

    migrate(engine, command.downgrade, "0016")
    rows = [("done", 2, 2, None), ("cancelled", 1, 3, "2026-12-01"), ("waiting", 1, 3, None), ("running", 1, 1, None)]
    with engine.begin() as connection:
        for name, launched, size, cancelled in rows:
            connection.execute(
                text(
                    "INSERT INTO sweeps (id, name, request, trials, size, launched, metric, mode, created_at,"
                    " cancelled_at) VALUES (:id, :id, '{}', '[]', :size, :launched, 'test_acc', 'max',"
                    " '2026-12-01', :cancelled)"
                ),
                {"id": name, "size": size, "launched": launched, "cancelled": cancelled},
            )
        connection.execute(
            text(
                "INSERT INTO jobs (id, status, spec, task, attempt, epoch, epochs, created_at, sweep_id)"
                " VALUES ('j', 'running', '{}', 'classification', 1, 0, 1, '2026-12-01', 'running')"
            )
        )
    migrate(engine, command.upgrade, "head")
    with engine.connect() as connection:
        finished = dict(connection.execute(text("SELECT id, finished_at IS NOT NULL FROM sweeps")).all())
    assert finished == {"done": True, "cancelled": True, "waiting": False, "running": False}


def test_imported_versions_epoch_0_becomes_null_with_0024_and_back(engine):
    from alembic import command
    from sqlalchemy import text

    migrate(engine, command.downgrade, "0023")
    with engine.begin() as connection:
        for version, selector, epoch in ((1, "best", 3), (2, "import", 0)):
            connection.execute(
                text(
                    "INSERT INTO model_versions (name, version, epoch, selector, path, task, input_shape, created_at)"
                    " VALUES ('m', :version, :epoch, :selector, 'm/v.safetensors', 'classification', '[1]',"
                    " '2026-12-01')"
                ),
                {"version": version, "selector": selector, "epoch": epoch},
            )

    def epochs() -> dict:
        with engine.connect() as connection:
            return dict(connection.execute(text("SELECT version, epoch FROM model_versions")).all())

    migrate(engine, command.upgrade, "head")
    assert epochs() == {1: 3, 2: None}
    migrate(engine, command.downgrade, "0023")
    assert epochs() == {1: 3, 2: 0}
    migrate(engine, command.upgrade, "head")


def test_sqlite_runs_in_wal_mode(tmp_path):
    url = f"sqlite:///{tmp_path / 'wal.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000


@pytest.mark.postgres
def test_concurrent_migrations_apply_once(tmp_path):
    require(postgres_available(), "PostgreSQL is not reachable on 127.0.0.1:5432")
    with PostgresSchema() as schema:
        errors = []

        def migrate():
            try:
                upgrade(schema.url)
            except Exception as exc:  # collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=migrate) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        engine = make_engine(schema.url)
        with engine.connect() as conn:
            head = ScriptDirectory.from_config(alembic_config()).get_current_head()
            assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all() == [head]
        engine.dispose()


def test_a_forked_child_opens_its_own_connections(service_env):
    """A worker's pool processes are forked from a main process that uses the database too."""
    import os

    from sqlalchemy import text

    from service.core import db

    with db.session_scope() as session:
        session.execute(text("SELECT 1"))
    inherited = db.get_engine().pool
    child = os.fork()
    if child == 0:
        try:
            db.forget_inherited_connections()
            with db.session_scope() as session:
                session.execute(text("SELECT 1"))
            os._exit(0 if db.get_engine().pool is not inherited else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert db.get_engine().pool is inherited  # the parent keeps its own
    with db.session_scope() as session:
        assert session.execute(text("SELECT 1")).scalar() == 1


def test_a_child_forked_while_another_thread_writes_can_write(service_env):
    """SQLite keeps its locks in process memory that a forked child inherits: a child forked while
    another thread was inside a write transaction found the database locked for as long as it lived
    (a worker's pool process, forked again after one was killed, while the main process renewed its
    registry entry). The fork now waits for that transaction to end."""
    import os
    import signal
    import time

    from sqlalchemy import text

    from service.core import db

    with db.session_scope() as session:
        session.execute(text("CREATE TABLE beats (by TEXT)"))
    inside = threading.Event()

    def registry_beat():
        with db.session_scope() as session:
            session.execute(text("INSERT INTO beats VALUES ('parent')"))
            inside.set()
            time.sleep(0.5)

    beat = threading.Thread(target=registry_beat)
    beat.start()
    inside.wait(5)
    child = os.fork()
    if child == 0:
        try:
            db.forget_inherited_connections()
            with db.session_scope() as session:
                session.execute(text("INSERT INTO beats VALUES ('child')"))
                written = session.execute(text("SELECT by FROM beats ORDER BY rowid")).scalars().all()
            os._exit(0 if written == ["parent", "child"] else 1)
        except BaseException:
            os._exit(2)
    beat.join()
    deadline = time.monotonic() + 10  # a locked database answers after its 30 s busy timeout
    while (ended := os.waitpid(child, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if ended[0] == 0:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        pytest.fail("the forked child could not write in 10 s")
    assert os.waitstatus_to_exitcode(ended[1]) == 0


def test_writes_are_retried_while_the_database_is_unavailable_and_not_past_the_limit():
    from sqlalchemy import exc

    from service.core.db import retry_while_unavailable

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))
        return "written"

    assert retry_while_unavailable(flaky, what="write", give_up_after=10, first_delay=0.01) == "written"
    assert len(calls) == 3

    def down():
        raise exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))

    with pytest.raises(exc.OperationalError):
        retry_while_unavailable(down, what="write", give_up_after=0.05, first_delay=0.01)

    def bug():
        calls.append(1)
        raise ValueError("not the database's fault")

    calls.clear()
    with pytest.raises(ValueError):
        retry_while_unavailable(bug, what="write", give_up_after=10, first_delay=0.01)
    assert len(calls) == 1  # only unavailability is retried


@pytest.mark.postgres
def test_times_read_back_in_utc_whatever_the_servers_time_zone(service_env_on):
    """PostgreSQL answers a timestamptz in its session's time zone: a job page said "12:00:00 UTC"
    of a time that was 17:30 in UTC where the server ran in Asia/Kolkata."""
    from datetime import timezone

    from sqlalchemy import text

    from models.spec.job import JobSpec
    from service.core import db, jobs
    from service.core.tables import Job, utcnow
    from tests.support.specs import SOFTMAX_SPEC

    with db.session_scope() as session:
        if session.bind.dialect.name == "postgresql":
            session.execute(text("SET TIME ZONE 'Asia/Kolkata'"))
        created = jobs.create_job(session, spec=JobSpec.model_validate(SOFTMAX_SPEC), task="classification")
        job_id, before = created.id, utcnow()
        session.commit()
        session.expire_all()
        if session.bind.dialect.name == "postgresql":
            session.execute(text("SET TIME ZONE 'Asia/Kolkata'"))  # a new transaction's session settings
        read = session.get(Job, job_id).created_at
    assert read.utcoffset() == timezone.utc.utcoffset(None) and abs((before - read).total_seconds()) < 60, read


def test_a_missing_table_reads_as_unmigrated_in_any_language():
    """PostgreSQL words its errors in the server's lc_messages: a missing table or column is known by
    its SQLSTATE, so /readyz and the 503 say to migrate whatever the language."""
    import psycopg.errors
    from sqlalchemy import exc

    from service.core.db import unmigrated

    french = exc.ProgrammingError(
        "SELECT 1 FROM jobs", {}, psycopg.errors.UndefinedTable("la relation « jobs » n'existe pas")
    )
    german = exc.ProgrammingError(
        "SELECT x FROM jobs", {}, psycopg.errors.UndefinedColumn("Spalte »x« existiert nicht")
    )
    away = exc.OperationalError("SELECT 1", {}, psycopg.errors.AdminShutdown("Beendigung der Verbindung"))
    assert unmigrated(french) and unmigrated(german) and not unmigrated(away)
    assert unmigrated(exc.OperationalError("SELECT 1 FROM jobs", {}, Exception("no such table: jobs")))


def test_migrating_a_database_a_newer_version_migrated_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    """A rollback's `trainyard migrate` printed 250 lines of Alembic's traceback."""
    from sqlalchemy import text

    from service.cli.main import main
    from service.core import settings as settings_module
    from service.core.migrate import NewerSchema, current_revision, head_revision

    url = f"sqlite:///{tmp_path / 'newer.sqlite'}"
    upgrade(url)
    assert current_revision(url) == head_revision()
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    with pytest.raises(NewerSchema, match="is at revision 0099, which this version does not know"):
        upgrade(url)
    monkeypatch.setenv("TRAINYARD_HOME", str(tmp_path))
    monkeypatch.setenv("TRAINYARD_DATABASE_URL", url)
    monkeypatch.setattr("sys.argv", ["trainyard", "migrate"])
    settings_module.get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as stopped:
            main()
    finally:
        settings_module.get_settings.cache_clear()
    told = capsys.readouterr().err
    assert stopped.value.code == 1 and told.count("\n") == 1
    assert told.startswith("error: the database is at revision 0099, which this version does not know: a newer ")

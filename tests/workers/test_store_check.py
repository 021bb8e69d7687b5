"""The worker's start-up check of its store, in-process: a definite problem exits 78; a store or
database it cannot ask, or a check that fails on its own, refuses nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import delete
from sqlalchemy.exc import OperationalError

from service.core import db
from service.core.background import EXIT_MISCONFIGURED
from service.core.storage import StorageUnavailable, get_storage
from service.core.storage.check import leave_mark, mark_keys
from service.core.tables import StoreMark
from workers import store_check


def test_a_worker_whose_store_lacks_the_apis_mark_exits_78_and_says_why(service_env, caplog):
    store_check.refuse_another_store()  # a fresh service: no mark left yet to tell a store by
    leave_mark(get_storage().store)
    store_check.refuse_another_store()  # this home's folders are the API's store
    with db.session_scope() as session:  # a mark the API left in a store elsewhere
        session.execute(delete(StoreMark))
        session.add(StoreMark(token="ab" * 16))
    with pytest.raises(SystemExit) as exited:
        store_check.refuse_another_store()
    assert exited.value.code == EXIT_MISCONFIGURED
    assert f"lacks the mark the API left ({mark_keys('ab' * 16)[0]})" in caplog.text


@pytest.mark.parametrize(
    "failure",
    [
        OperationalError("SELECT 1", {}, Exception("connection refused")),
        StorageUnavailable("the store cannot be reached"),
        RuntimeError("no such table: datasets"),
    ],
    ids=["database away", "store away", "the check itself fails"],
)
def test_what_cannot_be_asked_refuses_nothing(service_env, monkeypatch, caplog, failure):
    def fail(*_args, **_kwargs):
        raise failure

    monkeypatch.setattr(store_check, "ask_store", fail)
    store_check.refuse_another_store()
    assert "could not check this worker's store" in caplog.text


def test_a_home_whose_folders_were_emptied_gets_its_mark_back_before_its_worker_looks(service_env):
    """`trainyard run` and `trainyard api` put the mark back before they start anything: a worker
    started beside them is not refused for a mark someone deleted with the checkpoints folder."""
    import shutil

    from service.cli.main import leave_store_mark

    token = leave_mark(get_storage().store)
    shutil.rmtree(service_env.checkpoint_dir)
    with pytest.raises(SystemExit):
        store_check.refuse_another_store()
    leave_store_mark(service_env)
    assert all(get_storage().store.path(key).is_file() for key in mark_keys(token))
    store_check.refuse_another_store()


def test_the_apis_housekeeping_leaves_the_mark_and_puts_it_back(service_env):
    from service.core.reaper import housekeeping
    from service.core.storage.check import recorded_marks

    housekeeping(service_env)
    with db.read_scope() as session:
        token = recorded_marks(session).current.token
    keys = mark_keys(token)
    assert all(get_storage().store.path(key).is_file() for key in keys)
    get_storage().store.delete(keys[1:])  # an expiry rule on the datasets and registry areas, say
    housekeeping(service_env)
    assert all(get_storage().store.path(key).is_file() for key in keys)

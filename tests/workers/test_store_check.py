"""The worker's start-up check of its store, in-process: a definite problem exits 78; a store or
database it cannot ask, or a check that fails on its own, refuses nothing."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from service.core import db
from service.core.background import EXIT_MISCONFIGURED
from service.core.storage import StorageUnavailable
from service.core.tables import StoredDataset
from workers import store_check


def test_a_worker_whose_store_lacks_the_apis_files_exits_78_and_says_why(service_env, caplog):
    store_check.refuse_another_store()  # a fresh service: nothing to tell a store from another by
    with db.session_scope() as session:  # an upload whose file this home's folders do not have
        session.add(StoredDataset(name="elsewhere", file_sha256="ab" * 32, size_bytes=1))
    with pytest.raises(SystemExit) as exited:
        store_check.refuse_another_store()
    assert exited.value.code == EXIT_MISCONFIGURED
    assert "holds none of the 1 newest files the API recorded" in caplog.text


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

    monkeypatch.setattr(store_check, "store_problem", fail)
    store_check.refuse_another_store()
    assert "could not check this worker's store" in caplog.text

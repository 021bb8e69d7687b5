"""The worker's registry entry, renewed from its main process: a beat that fails says so once,
not every few seconds."""

from __future__ import annotations

import logging

from psycopg.errors import UndefinedTable
from sqlalchemy import exc

from workers import presence


def test_a_failing_beat_is_said_once_with_a_hint_for_a_database_never_migrated(service_env, monkeypatch, caplog):
    never_migrated = exc.ProgrammingError("INSERT", {}, UndefinedTable('relation "workers" does not exist'))

    def fail(*_args, **_kwargs):
        raise never_migrated

    monkeypatch.setattr(presence.worker_registry, "register", fail)
    beat = presence.Presence("test@host", ["trainyard"])
    beat.description = {"devices": [], "torch": "2", "cuda": None}
    with caplog.at_level(logging.WARNING, logger=presence.__name__):
        for _ in range(3):
            beat.tick()
    said = [r for r in caplog.records if "could not renew" in r.getMessage()]
    assert len(said) == 1 and "is the database migrated (`trainyard migrate`)?" in said[0].getMessage()
    assert not said[0].exc_info  # no traceback for it

    monkeypatch.undo()
    beat.tick()  # renewed: a later failure is said again
    assert beat._last_problem is None

"""The registry in-process: immutable versions with their own files, aliases, guarded deletion."""

from __future__ import annotations

import pytest

from models.checkpoint import read_checkpoint
from service.core import db, registry
from service.core.errors import Conflict, NotFound


def register(settings, job_id, checkpoint="best", name="fashion"):
    with db.session_scope() as session:
        return registry.register(session, name=name, job_id=job_id, checkpoint=checkpoint, settings=settings)


def test_versions_count_up_and_keep_their_own_copy(service_env, trained_job):
    first, second = register(service_env, trained_job), register(service_env, trained_job, "last")
    assert (first.version, first.epoch, first.selector) == (1, 2, "best")
    assert (second.version, second.epoch, second.selector) == (2, 3, "last")
    assert first.task == "classification" and first.classes == [str(i) for i in range(10)]
    assert first.metrics["checkpoint"] == {"test_acc": 0.9} and first.metrics["final"]["epoch"] == 3
    source = service_env.checkpoint_dir / trained_job / "epoch-0002.safetensors"
    frozen = service_env.registry_dir / "fashion" / "v1.safetensors"
    weights, _ = read_checkpoint(frozen)
    source.unlink()  # the job's folder may change; the version does not
    assert set(weights) == set(read_checkpoint(frozen)[0])
    with db.session_scope(write=False) as session:
        assert [v.version for v in registry.require_versions(session, name="fashion")] == [1, 2]
        assert registry.names(session) == ["fashion"]


def test_aliases_move_and_guard_deletion(service_env, trained_job):
    register(service_env, trained_job)
    register(service_env, trained_job, 1)
    with db.session_scope() as session:
        registry.set_alias(session, name="fashion", alias="production", version=1)
        registry.set_alias(session, name="fashion", alias="production", version=2)
        assert registry.aliases(session, name="fashion") == {"production": 2}
        with pytest.raises(NotFound, match="has no version 7"):
            registry.set_alias(session, name="fashion", alias="staging", version=7)
    with db.session_scope() as session, pytest.raises(Conflict, match="aliased as production"):
        registry.delete_version(session, name="fashion", version=2, settings=service_env)
    with db.session_scope() as session:
        registry.delete_version(session, name="fashion", version=1, settings=service_env)
    assert not (service_env.registry_dir / "fashion" / "v1.safetensors").exists()
    with db.session_scope(write=False) as session:
        assert [v.version for v in registry.versions(session, name="fashion")] == [2]
        with pytest.raises(NotFound, match="model 'other' not found"):
            registry.require_versions(session, name="other")

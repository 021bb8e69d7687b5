"""The registry in-process: immutable versions with their own files, aliases, guarded deletion."""

from __future__ import annotations

import pytest

from models.checkpoint import read_checkpoint
from service.core import db, model_registry
from service.core.errors import Conflict, NotFound, Unprocessable


def register(settings, job_id, checkpoint="best", name="fashion"):
    with db.session_scope() as session:
        return model_registry.register(session, name=name, job_id=job_id, checkpoint=checkpoint, settings=settings)


def test_versions_count_up_and_keep_their_own_copy(service_env, trained_job):
    first, second = register(service_env, trained_job), register(service_env, trained_job, "last")
    assert (first.version, first.epoch, first.selector) == (1, 2, "best")
    assert (second.version, second.epoch, second.selector) == (2, 3, "last")
    assert first.task == "classification" and first.classes == [str(i) for i in range(10)]
    assert first.metrics["checkpoint"] == {"val_acc": 0.9, "test_acc": 0.5} and first.metrics["final"]["epoch"] == 3
    source = service_env.checkpoint_dir / trained_job / "epoch-0002.safetensors"
    frozen = service_env.registry_dir / "fashion" / "v1.safetensors"
    weights, _ = read_checkpoint(frozen)
    source.unlink()  # the job's folder may change; the version does not
    assert set(weights) == set(read_checkpoint(frozen)[0])
    with db.session_scope(write=False) as session:
        assert [v.version for v in model_registry.require_versions(session, name="fashion")] == [1, 2]
        assert model_registry.names(session) == ["fashion"]


def test_aliases_move_and_guard_deletion(service_env, trained_job):
    register(service_env, trained_job)
    register(service_env, trained_job, 1)
    with db.session_scope() as session:
        model_registry.set_alias(session, name="fashion", alias="production", version=1)
        model_registry.set_alias(session, name="fashion", alias="production", version=2)
        assert model_registry.aliases(session, name="fashion") == {"production": 2}
        with pytest.raises(NotFound, match="has no version 7; its versions: 1, 2$"):
            model_registry.set_alias(session, name="fashion", alias="staging", version=7)
        with pytest.raises(Unprocessable, match="all digits: fashion@3 would read like version 3, which is fashion:3"):
            model_registry.set_alias(session, name="fashion", alias="3", version=1)
        model_registry.set_alias(session, name="fashion", alias="v3", version=1)  # digits with a word are fine
        model_registry.remove_alias(session, name="fashion", alias="v3")
    with db.session_scope() as session, pytest.raises(Conflict, match="aliased as production"):
        model_registry.delete_version(session, name="fashion", version=2, settings=service_env)
    with db.session_scope() as session:
        model_registry.delete_version(session, name="fashion", version=1, settings=service_env)
    assert not (service_env.registry_dir / "fashion" / "v1.safetensors").exists()
    with db.session_scope(write=False) as session:
        assert [v.version for v in model_registry.versions(session, name="fashion")] == [2]
        with pytest.raises(NotFound, match="model 'other' not found"):
            model_registry.require_versions(session, name="other")


def test_a_default_threshold_is_kept_set_and_cleared_and_refused_on_regression(service_env, trained_job):
    from service.core.errors import Invalid
    from service.core.references import resolve

    with db.session_scope() as session:
        version = model_registry.register(
            session, name="fashion", job_id=trained_job, checkpoint="best", settings=service_env, threshold=0.6
        )
        assert version.threshold == 0.6
    with db.session_scope(write=False) as session:
        assert resolve(session, reference="fashion", settings=service_env).threshold == 0.6
        assert resolve(session, reference=f"job:{trained_job}", settings=service_env).threshold is None
    with db.session_scope() as session:
        assert model_registry.set_threshold(session, name="fashion", version=1, threshold=0.9).threshold == 0.9
    with db.session_scope() as session:
        assert model_registry.require_version(session, name="fashion", version=1).threshold == 0.9
        assert model_registry.set_threshold(session, name="fashion", version=1, threshold=None).threshold is None
    with db.session_scope(write=False) as session:
        target = resolve(session, reference="fashion:1", settings=service_env)
        assert target.threshold is None and target.threshold_for(0.3) == 0.3
    with db.session_scope() as session, pytest.raises(NotFound, match="has no version 4"):
        model_registry.set_threshold(session, name="fashion", version=4, threshold=0.5)
    with db.session_scope() as session:
        session.get(model_registry.ModelVersion, version.id).task = "regression"
    with db.session_scope() as session, pytest.raises(Invalid) as refused:
        model_registry.set_threshold(session, name="fashion", version=1, threshold=0.5)
    assert refused.value.problems[0][0] == ("threshold",)


def test_init_from_is_pinned_at_submit_and_kept_while_unfinished_jobs_start_from_it(service_env, trained_job):
    from models.spec.job import JobSpec
    from models.spec.sweeps import SweepSpec
    from service.core import jobs, submission, sweeps

    register(service_env, trained_job)
    register(service_env, trained_job, "last")
    with db.session_scope() as session:
        model_registry.set_alias(session, name="fashion", alias="production", version=1)
    spec = {
        "model": {"arch": "softmax_regression"},
        "data": {"dataset": "fashion-mnist"},
        "epochs": 1,
        "init_from": {"model": "fashion@production"},
    }

    def submit():
        with db.session_scope() as session:
            return submission.submit_job(
                session, spec=JobSpec.model_validate(spec), settings=service_env, idempotency_key="pinned"
            )

    def init_from(job_id):
        with db.session_scope(write=False) as session:
            return jobs.require_job(session, job_id=job_id).spec["init_from"]["model"]

    first = submit()
    assert init_from(first.job_id) == "fashion:1"
    with db.session_scope() as session:
        model_registry.set_alias(session, name="fashion", alias="production", version=2)
    again = submit()  # the same request retried after the alias moved: the same job
    assert again.replayed and again.job_id == first.job_id and init_from(first.job_id) == "fashion:1"
    with db.session_scope() as session, pytest.raises(Conflict, match=f"unfinished job.*{first.job_id}"):
        model_registry.delete_version(session, name="fashion", version=1, settings=service_env)

    grid = SweepSpec.model_validate(
        {"name": "from-production", "base": spec, "grid": {"optimizer.lr": [0.1, 0.2]}, "max_parallel": 1}
    )
    with db.session_scope() as session:
        sweep_id = sweeps.create(session, sweep=grid, settings=service_env).sweep.id
    with db.session_scope() as session:
        model_registry.set_alias(session, name="fashion", alias="production", version=1)
        sweep = sweeps.require(session, sweep_id=sweep_id)
        assert sweep.request["base"]["init_from"]["model"] == "fashion:2"  # every trial, launched now or later

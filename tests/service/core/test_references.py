"""Model references resolved to checkpoint files, in SQL only: jobs, versions, aliases, refusals."""

from __future__ import annotations

import re

import pytest

from service.core import db, model_registry
from service.core.references import ModelNotFound, ModelNotReady, resolve
from service.core.storage import StorageError, get_storage


def resolve_now(settings, reference):
    with db.session_scope(write=False) as session:
        return resolve(session, reference=reference, settings=settings)


def test_job_references_pick_best_last_or_an_epoch(service_env, trained_job):
    best = resolve_now(service_env, f"job:{trained_job}")
    assert (best.epoch, best.job_id, best.name) == (2, trained_job, None)
    assert best.file.key == f"checkpoints/{trained_job}/epoch-0002.safetensors"
    assert get_storage(service_env).fetch(best.file, what="best") == (
        service_env.checkpoint_dir / trained_job / "epoch-0002.safetensors"
    )
    assert resolve_now(service_env, f"job:{trained_job}:best").epoch == 2
    assert resolve_now(service_env, f"job:{trained_job}:last").epoch == 3
    assert resolve_now(service_env, f"job:{trained_job.upper()}:1").epoch == 1
    assert resolve_now(service_env, f"  job:{trained_job}  ").epoch == 2


def test_registered_names_follow_versions_and_aliases(service_env, trained_job):
    with db.session_scope() as session:
        model_registry.register(session, name="digits", job_id=trained_job, checkpoint="best", settings=service_env)
        model_registry.register(session, name="digits", job_id=trained_job, checkpoint=1, settings=service_env)
    assert (resolve_now(service_env, "digits").version, resolve_now(service_env, "digits").epoch) == (2, 1)
    assert resolve_now(service_env, "digits:1").epoch == 2
    with db.session_scope() as session:
        model_registry.set_alias(session, name="digits", alias="production", version=1)
    assert resolve_now(service_env, "digits").version == 1  # production wins over the newest
    production = resolve_now(service_env, "digits@production")
    assert production.file.key == "registry/digits/v1.safetensors" and production.file.sha256 is not None
    assert (
        get_storage(service_env).fetch(production.file, what="v1")
        == service_env.registry_dir / "digits" / "v1.safetensors"
    )


@pytest.mark.parametrize(
    "reference, message",
    [
        ("job:0b0b0b0b-0000-0000-0000-000000000000", "there is no job 0b0b0b0b-0000-0000-0000-000000000000$"),
        ("job:0b0b0", "there is no job 0b0b0; an id's prefix needs at least 6 characters"),
        ("job:{job}:9", "has no checkpoint for epoch 9; it keeps epochs 1, 2, 3 "),
        ("nobody", "model 'nobody' not found"),
        ("nobody:3", "not found"),
        ("nobody@staging", "model 'nobody@staging' not found: no model is registered yet .*`trainyard models register"),
        ("job:zzzzzz", "'job:zzzzzz' not found: job:ID takes a job's id or a prefix of 6 or more of its hex digits"),
        ("job:{job}:worst", "after job:.*, give best, last or an epoch from 1, not 'worst'"),
        ("job:{job}:0", "not '0'"),
        ("job:{job}:2:", "not '2:'"),
        ("../../etc/passwd", "use name, name:VERSION, name@ALIAS or job:ID"),
        ("/tmp/model.safetensors", "use name"),
    ],
)
def test_unknown_references_are_not_found(service_env, trained_job, reference, message):
    with pytest.raises(ModelNotFound, match=message):
        resolve_now(service_env, reference.format(job=trained_job))


def test_a_near_miss_says_what_there_is(service_env, trained_job):
    with db.session_scope() as session:
        for name in ("photos", "digits"):
            model_registry.register(session, name=name, job_id=trained_job, checkpoint="best", settings=service_env)
        model_registry.register(session, name="photos", job_id=trained_job, checkpoint="last", settings=service_env)
        model_registry.set_alias(session, name="photos", alias="production", version=2)
        model_registry.set_alias(session, name="photos", alias="staging", version=1)
    for reference, message in (
        ("photo", "model 'photo' not found; did you mean 'photos'?"),
        ("photo@production", "did you mean 'photos'?"),
        ("cats", "model 'cats' not found; registered models: digits, photos"),
        (
            "photos@prod",
            "model 'photos' has no alias 'prod'; did you mean photos@production\\? "
            "its aliases: production=2, staging=1",
        ),
        ("photos@canary", "has no alias 'canary'; its aliases: production=2, staging=1"),
        ("digits@production", "model 'digits' has no alias 'production'; it has no aliases yet"),
        ("digits@production", "`trainyard models alias digits production <version>`"),
        ("photos:9", "model 'photos' has no version 9; its versions: 1, 2"),
    ):
        with pytest.raises(ModelNotFound, match=message):
            resolve_now(service_env, reference)


def test_a_job_without_checkpoints_is_not_ready(service_env):
    from models.spec.job import JobSpec
    from service.core import jobs

    spec = JobSpec.model_validate({"model": {"arch": "mlp"}, "data": {"dataset": "fashion-mnist"}})
    with db.session_scope() as session:
        job_id = jobs.create_job(session, spec=spec, task="classification").id
    with pytest.raises(ModelNotReady, match="has no checkpoint yet"):
        resolve_now(service_env, f"job:{job_id}")


def test_a_stored_path_cannot_escape_its_folder(service_env, trained_job):
    from sqlalchemy import update

    from service.core.tables import Checkpoint

    with db.session_scope() as session:
        session.execute(
            update(Checkpoint)
            .where(Checkpoint.job_id == trained_job, Checkpoint.epoch == 2)
            .values(path="../../outside.safetensors")
        )
    target = resolve_now(service_env, f"job:{trained_job}:2")
    with pytest.raises(StorageError, match="not a storage key"):
        get_storage(service_env).fetch(target.file, what="epoch 2")


def test_a_job_reference_takes_a_unique_prefix_of_the_id(service_env, trained_job):
    assert resolve_now(service_env, f"job:{trained_job[:6]}").job_id == trained_job
    assert resolve_now(service_env, f"job:{trained_job[:8].upper()}:last").epoch == 3
    assert resolve_now(service_env, f"job:{trained_job[:13]}:1").epoch == 1


def test_an_ambiguous_job_prefix_lists_the_jobs(service_env, trained_job, trained_job_twin):
    from service.core.ids import AmbiguousId

    twin = trained_job_twin
    with pytest.raises(AmbiguousId, match=f"{min(twin, trained_job)}, {max(twin, trained_job)}"):
        resolve_now(service_env, f"job:{trained_job[:8]}")
    assert resolve_now(service_env, f"job:{trained_job[:13]}").job_id == trained_job


@pytest.mark.parametrize(
    "given", [lambda job: job, lambda job: job[:8], lambda job: job.upper()], ids=["full", "prefix", "upper-case"]
)
def test_a_bare_job_id_as_a_model_asks_whether_job_colon_was_meant(service_env, trained_job, given):
    with pytest.raises(ModelNotFound, match=f"did you mean job:{trained_job}\\?"):
        resolve_now(service_env, given(trained_job))


def test_a_job_that_keeps_one_checkpoint_says_which(service_env, trained_job):
    from service.core import db
    from service.core.tables import Checkpoint

    with db.session_scope() as session:
        session.query(Checkpoint).filter(Checkpoint.job_id == trained_job, Checkpoint.epoch < 3).delete()
    with pytest.raises(ModelNotFound, match="has no checkpoint for epoch 1; it keeps epoch 3 "):
        resolve_now(service_env, f"job:{trained_job}:1")


@pytest.mark.parametrize(
    ("job_name", "offered"),
    [
        ("activation [activation=tanh]", "activation-activation-tanh"),
        ("Fashion MNIST, LeNet", "fashion-mnist-lenet"),
        ("softmax-e2e", "softmax-e2e"),
        ("__[]__", ""),
        (None, ""),
        ("x" * 80, "x" * 64),
    ],
)
def test_a_job_name_is_offered_as_a_model_name_the_registry_takes(job_name, offered):
    """The dashboard's register form offered a sweep trial's name, which it then refused."""
    from service.core.references import MODEL_NAME, model_name_for

    assert model_name_for(job_name) == offered
    assert offered == "" or re.fullmatch(MODEL_NAME, offered)

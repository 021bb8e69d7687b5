"""Submitting a job in-process: checked, committed before it is published, idempotent, and safe
when the broker is down."""

from __future__ import annotations

import pytest
from celery import Celery

from models.spec.job import JobSpec
from service.core import broker, db, jobs, submission
from service.core.errors import Conflict, Invalid
from service.core.tables import JobStatus

SPEC = {"model": {"arch": "softmax_regression"}, "data": {"dataset": "fashion-mnist"}, "epochs": 2}


def submit(settings, spec=SPEC, key=None):
    with db.session_scope() as session:
        return submission.submit_job(session, spec=JobSpec.model_validate(spec), settings=settings, idempotency_key=key)


def warnings_of(settings, spec=SPEC) -> list[str]:
    """The warnings a submitted job's record keeps."""
    job_id = submit(settings, spec).job_id
    with db.session_scope(write=False) as session:
        return jobs.require_job(session, job_id=job_id).warnings or []


def status_of(job_id):
    with db.session_scope(write=False) as session:
        return jobs.require_job(session, job_id=job_id).status


def test_a_job_is_queued_in_sql_and_sent_to_its_queue(service_env):
    submitted = submit(service_env)
    assert not submitted.replayed and status_of(submitted.job_id) == JobStatus.QUEUED
    assert broker.queue_depth(service_env.queue) == 1
    assert broker.queue_depth(service_env.gpu_queue) == 0
    submit(service_env, {**SPEC, "device": "cuda"})
    assert broker.queue_depth(service_env.gpu_queue) == 1


def test_an_idempotency_key_replays_the_same_spec_and_refuses_another(service_env):
    first = submit(service_env, key="k-1")
    again = submit(service_env, key="k-1")
    assert again.replayed and again.job_id == first.job_id
    assert broker.queue_depth(service_env.queue) == 1  # a replay sends nothing
    with pytest.raises(Conflict, match=f"used for job {first.job_id} with a different spec"):
        submit(service_env, {**SPEC, "epochs": 3}, key="k-1")


def test_what_only_the_data_can_rule_out_is_invalid_with_its_location(service_env):
    with pytest.raises(Invalid) as missing:
        submit(service_env, {**SPEC, "data": {"dataset": "uploaded:0b0b0b0b-0000-0000-0000-000000000000"}})
    assert missing.value.problems[0][0] == ("data", "dataset")
    with pytest.raises(Invalid) as unfit:
        submit(service_env, {**SPEC, "model": {"arch": "linear_regression"}})
    assert unfit.value.problems[0][0][:1] == ("model",)
    with db.session_scope(write=False) as session:
        assert jobs.list_jobs(session, status=None, limit=10, offset=0)[1] == 0  # nothing was created


@pytest.mark.slow
def test_with_the_broker_down_the_job_waits_in_sql_for_the_reaper(service_env, monkeypatch):
    unreachable = Celery("down", broker="redis://127.0.0.1:1/0")
    unreachable.conf.update(task_publish_retry=False, broker_connection_timeout=0.5, broker_connection_max_retries=0)
    monkeypatch.setattr(broker, "app", unreachable)
    submitted = submit(service_env)
    assert status_of(submitted.job_id) == JobStatus.QUEUED
    assert broker.publish_or_defer(submitted.job_id, service_env.queue) is False


def test_a_builtin_dataset_missing_from_the_data_folder_is_warned_of(service_env, tmp_path):
    empty = service_env.model_copy(update={"data_dir": tmp_path / "no-data"})
    missing = warnings_of(empty)
    assert any("dataset fashion-mnist is not in this service's data folder" in w for w in missing)
    assert warnings_of(empty.model_copy(update={"allow_download": True})) == []  # it may fetch them
    assert warnings_of(service_env) == []  # the tests' data folder has fashion-mnist
    synthetic = {"model": {"arch": "linear_regression"}, "data": {"dataset": "synthetic-linear"}, "epochs": 1}
    assert warnings_of(empty, synthetic) == []


def test_a_builtin_dataset_a_live_worker_has_needs_no_copy_beside_the_api(service_env, tmp_path):
    from service.core import worker_registry
    from service.core.worker_registry import probe_devices

    empty = service_env.model_copy(update={"data_dir": tmp_path / "no-data"})
    with db.session_scope() as session:
        worker_registry.register(
            session,
            worker_id="w@elsewhere",
            host="elsewhere",
            pid=1,
            queues=[service_env.queue],
            description=probe_devices(),
            datasets=["mnist"],
        )
    assert any("nor on any live worker" in w for w in warnings_of(empty))  # fashion-mnist: nowhere
    mnist = {"model": {"arch": "softmax_regression"}, "data": {"dataset": "mnist"}, "epochs": 1}
    assert warnings_of(empty, mnist) == []


def test_a_frozen_backbone_without_weights_is_warned_of(service_env):
    spec = {
        "model": {"arch": "pretrained", "backbone": "resnet18", "weights": None, "freeze": "backbone"},
        "data": {"dataset": "cifar10"},
        "epochs": 1,
    }
    [warning] = warnings_of(service_env, spec)
    assert "randomly initialised backbone frozen" in warning
    assert warnings_of(service_env, {**spec, "model": {**spec["model"], "freeze": "none"}}) == []
    [unfrozen_later] = warnings_of(
        service_env, {**spec, "epochs": 3, "model": {**spec["model"], "unfreeze_at_epoch": 2}}
    )
    assert "until epoch 2 (unfreeze_at_epoch) only the head learns" in unfrozen_later


def test_an_init_std_that_its_init_leaves_unused_is_warned_of(service_env):
    """init_std only sizes init: normal; given with the default init it did nothing, silently."""
    spec = {"model": {"arch": "linear_regression", "init_std": 0.5}, "data": {"dataset": "synthetic-linear"}}
    [warning] = warnings_of(service_env, spec)
    assert warning.startswith("model.init_std 0.5 is used by init: normal only; this job's init is default")
    assert warnings_of(service_env, {**spec, "model": {**spec["model"], "init": "normal"}}) == []
    assert warnings_of(service_env, {**spec, "model": {"arch": "linear_regression"}}) == []

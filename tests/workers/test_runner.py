"""The job runner in-process, against a real SQLite database: failures end jobs with clear reasons."""

from __future__ import annotations

import pytest

from models.spec.job import JobSpec
from service.core import db, jobs
from service.core.tables import JobStatus
from workers.runner import run_job

SPEC = JobSpec.model_validate(
    {
        "model": {"arch": "softmax_regression"},
        "epochs": 2,
        "batch_size": 64,
        "data": {"dataset": "fashion-mnist", "limit_train": 256, "limit_test": 64},
    }
)


def new_job() -> str:
    with db.session_scope() as session:
        return jobs.create_job(session, spec=SPEC, task="classification").id


def read_job(job_id):
    with db.session_scope() as session:
        return jobs.get_job(session, job_id=job_id)


def test_a_job_runs_to_success_and_a_second_delivery_is_dropped(service_env):
    job_id = new_job()
    assert run_job(job_id) == JobStatus.SUCCEEDED
    assert run_job(job_id) is None
    job = read_job(job_id)
    assert job.attempt == 1 and job.epoch == 2
    assert (service_env.checkpoint_dir / job_id / "epoch-0002.safetensors").is_file()
    assert not (service_env.checkpoint_dir / job_id / "training-state.safetensors").exists()  # nothing to resume


def test_a_worker_without_a_gpu_leaves_a_cuda_job_queued(service_env, caplog):
    """A CPU worker told to serve the GPU queue (--queues) took cuda jobs and failed them for good."""
    from service.core import worker_registry

    with db.session_scope() as session:
        job_id = jobs.create_job(session, spec=SPEC.model_copy(update={"device": "cuda"}), task="classification").id
        cpu = {"devices": [{"name": "cpu", "kind": "cpu", "memory_bytes": None}], "torch": "2", "cuda": None}
        worker_registry.register(
            session, worker_id="w@h", host="h", pid=1, queues=[service_env.gpu_queue], description=cpu
        )
    assert run_job(job_id, node="w@h") is None
    assert read_job(job_id).status == JobStatus.QUEUED and read_job(job_id).attempt == 0
    assert "it asks for device 'cuda', and this worker has no GPU" in caplog.text


def test_unwritable_checkpoint_folder_fails_the_job_with_a_clear_reason(service_env):
    job_id = new_job()
    blocker = service_env.checkpoint_dir / job_id
    blocker.write_text("a file where the job's checkpoint folder should be")
    assert run_job(job_id) == JobStatus.FAILED
    job = read_job(job_id)
    assert job.reason == "storage_error" and str(blocker) in job.error
    with db.session_scope() as session:
        assert jobs.get_metrics(session, job_id=job_id) == []
    assert blocker.read_text().startswith("a file")  # nothing was overwritten


def test_only_a_failure_its_message_says_in_full_logs_no_traceback(service_env, monkeypatch, caplog):
    """A job's own fault (here its checkpoint folder is a file) is said in words; a fault of
    trainyard's, or an error of the system that names nothing, keeps its traceback for whoever
    reports it."""
    caplog.set_level("ERROR", logger="workers.runner")
    job_id = new_job()
    (service_env.checkpoint_dir / job_id).write_text("in the way")
    assert run_job(job_id) == JobStatus.FAILED
    (own_fault,) = [record for record in caplog.records if "failed (storage_error)" in record.getMessage()]
    assert not own_fault.exc_info

    def broken_fit(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("workers.runner.fit", broken_fit)
    job_id = new_job()
    assert run_job(job_id) == JobStatus.FAILED
    assert read_job(job_id).reason == "internal_error" and read_job(job_id).error == "ZeroDivisionError: a bug"
    (ours,) = [record for record in caplog.records if "failed (internal_error)" in record.getMessage()]
    assert ours.exc_info is not None and ours.exc_info[0] is ZeroDivisionError

    def unnamed_fault(*args, **kwargs):
        raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr("workers.runner.fit", unnamed_fault)
    assert run_job(new_job()) == JobStatus.FAILED
    (system,) = [record for record in caplog.records if "Connection reset by peer" in record.getMessage()]
    assert system.exc_info is not None and system.exc_info[0] is ConnectionResetError


def test_a_cancelled_job_is_never_run(service_env):
    job_id = new_job()
    with db.session_scope() as session:
        jobs.request_cancel(session, job_id=job_id)
    assert run_job(job_id) is None
    assert read_job(job_id).status == JobStatus.CANCELLED


@pytest.mark.slow
def test_failed_lease_renewals_back_off_to_the_longest_wait(service_env, monkeypatch, caplog):
    """Renewals against a database that refuses connections (a real PostgreSQL address with
    nothing listening) are retried at growing intervals, capped, one log line each."""
    import logging
    import time

    from service.core import settings as settings_module
    from tests.support.servers import free_port
    from workers.runner import JobControl

    # Nothing listens on a free port: every connection is refused at once.
    monkeypatch.setenv("TRAINYARD_DATABASE_URL", f"postgresql+psycopg://trainyard@127.0.0.1:{free_port()}/test")
    settings_module.get_settings.cache_clear()
    db.get_engine.cache_clear()
    db.get_sessionmaker.cache_clear()
    with caplog.at_level(logging.WARNING, logger="workers.runner"):
        with JobControl("j1", 1, interval=0.05, longest_wait=0.4):
            time.sleep(2.0)
    times = [r.created for r in caplog.records if "lease renewal for job j1 failed" in r.getMessage()]
    gaps = [round(b - a, 2) for a, b in zip(times, times[1:], strict=False)]
    assert len(times) >= 4, gaps
    assert gaps[0] < 0.3 and gaps[1] > gaps[0] and max(gaps) < 0.6, gaps
    assert 0.35 < gaps[-1] < 0.6, gaps  # the cap, reached and kept
    assert "next try in 0.4 s" in caplog.records[-1].getMessage()


def test_a_sweeps_pruner_stops_a_losing_trial_and_a_stop_an_attempt_died_after_holds(service_env):
    import optuna

    from models.spec.sweeps import SweepSpec
    from service.core import studies, sweeps

    base = SPEC.model_dump(mode="json")
    request = SweepSpec(
        name="pruned",
        base=base,
        grid={"optimizer.lr": [0.5, 0.00001, 0.000001]},
        metric="test_acc",
        pruner={"name": "asha"},
        max_parallel=3,
    )
    with db.session_scope() as session:
        sweep = sweeps.create(session, sweep=request, settings=service_env).sweep
        good, bad, crashed = [t.job.id for t in sorted(sweeps.trials(session, sweep), key=lambda t: t.index)]
    assert run_job(good) == JobStatus.SUCCEEDED
    assert run_job(bad) == JobStatus.PRUNED  # worse than the good trial at epoch 1
    job = read_job(bad)
    assert (job.epoch, job.reason, job.events[-1].detail["epoch"]) == (1, "pruned_by_asha", 1)
    # An attempt that was told to stop after epoch 1, then died before recording it:
    study = optuna.load_study(study_name=sweep.study, storage=studies.storage(service_env))
    trial_id = study.trials[2]._trial_id
    studies.storage(service_env).set_trial_user_attr(trial_id, studies.PRUNED_AT_ATTR, 1)
    assert run_job(crashed) == JobStatus.PRUNED
    assert read_job(crashed).epoch == 0  # no epoch trained again
    states = [t.state for t in optuna.load_study(study_name=sweep.study, storage=studies.storage(service_env)).trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.PRUNED]

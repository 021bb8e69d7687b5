"""Adaptive sweeps' Optuna studies in-process, on SQLite and PostgreSQL: where they live, how each
trial is asked for once and told once, and what the pruners decide."""

from __future__ import annotations

import threading

import optuna
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from models.spec.sweeps import SweepSpec
from service.core import db, jobs, migrate, studies, sweeps
from service.core.reaper import advance_sweeps
from service.core.storage import StoredFile
from service.core.tables import Job, JobStatus, Sweep

BASE = {"model": {"arch": "mlp"}, "data": {"dataset": "fashion-mnist"}, "epochs": 3}
ASHA = {"name": "asha", "min_epochs": 1, "reduction_factor": 3}


def create(settings, **request) -> str:
    with db.session_scope() as session:
        return sweeps.create(session, sweep=SweepSpec(name="s", base=BASE, **request), settings=settings).sweep.id


def study_of(settings, sweep_id: str) -> optuna.Study:
    return optuna.load_study(study_name=studies.study_name(sweep_id), storage=studies.storage(settings))


def run_epochs(job_id: str, values: list[float], end: str | None, reporter=None) -> list[bool]:
    """Train job_id in this process as a worker would record it: an epoch per value of test_acc,
    reported to the sweep's study when a reporter is given; then end it with status `end`."""
    pruned = []
    with db.session_scope() as session:
        attempt = jobs.claim_job(session, job_id=job_id, worker="w", lease_seconds=30, max_attempts=3).attempt
        for epoch, value in enumerate(values, start=1):
            metrics = {"epoch": epoch, "train_loss": 1.0, "test_loss": 1 - value, "test_acc": value}
            jobs.record_epoch(
                session,
                job_id=job_id,
                attempt=attempt,
                metrics=metrics,
                checkpoint=StoredFile(f"k/{job_id}/{epoch}", 1),
            )
            session.commit()
            if reporter is not None:
                pruned.append(reporter.should_prune(epoch, metrics))
        if end is not None:
            assert jobs.finish_job(session, job_id=job_id, attempt=attempt, status=end)
    return pruned


def trial_jobs(sweep_id: str) -> list[str]:
    with db.session_scope(write=False) as session:
        found = session.execute(select_jobs(sweep_id)).all()
    return [job_id for job_id, _ in sorted(found, key=lambda row: row[1])]


def select_jobs(sweep_id):
    from sqlalchemy import select

    return select(Job.id, Job.sweep_trial).where(Job.sweep_id == sweep_id)


def reporter(settings, job_id):
    with db.session_scope(write=False) as session:
        return sweeps.reporter(session, job_id=job_id, settings=settings)


def test_studies_live_apart_from_trainyards_tables(service_env_on):
    settings = service_env_on
    sweep_id = create(settings, grid={"optimizer.lr": [0.1, 0.2]}, pruner=ASHA)
    assert len(study_of(settings, sweep_id).trials) == 2  # each launched trial is in the study
    ours = inspect(db.get_engine())
    assert not {"studies", "trials", "trial_values"} & set(ours.get_table_names())
    with db.get_engine().connect() as connection:  # trainyard's own migration history, untouched
        (version,) = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    assert version == ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()
    url = studies.storage_url(settings)
    if settings.database_url.startswith("sqlite"):
        assert url == f"sqlite:///{settings.home / 'trainyard-optuna.db'}"
    else:
        assert url.endswith("_optuna")
    theirs = create_engine(url)
    try:
        assert {"studies", "trials", "alembic_version"} <= set(inspect(theirs).get_table_names())
    finally:
        theirs.dispose()


def test_the_study_is_told_how_each_trial_ended_and_the_sweep_then_finishes(service_env_on):
    settings = service_env_on
    sweep_id = create(settings, grid={"optimizer.lr": [0.1, 0.2, 0.3, 0.4]}, pruner=ASHA)
    done, pruned, failed, deleted = trial_jobs(sweep_id)
    run_epochs(done, [0.5, 0.75, 0.7], JobStatus.SUCCEEDED, reporter(settings, done))
    assert run_epochs(pruned, [0.1], JobStatus.PRUNED, reporter(settings, pruned)) == [True]
    run_epochs(failed, [0.6], JobStatus.FAILED)
    with db.session_scope() as session:
        jobs.request_cancel(session, job_id=deleted)
        session.commit()
        session.delete(session.get(Job, deleted))
    advance_sweeps(settings)  # the reaper's pass: the workers that ran them could have died
    states = {t.number: (t.state, t.value) for t in study_of(settings, sweep_id).trials}
    assert states == {
        0: (optuna.trial.TrialState.COMPLETE, 0.7),  # the epoch it serves: its last (no validation data)
        1: (optuna.trial.TrialState.PRUNED, 0.1),
        2: (optuna.trial.TrialState.FAIL, None),
        3: (optuna.trial.TrialState.FAIL, None),
    }
    with db.session_scope(write=False) as session:
        assert session.get(Sweep, sweep_id).finished_at is not None
        assert sweep_id not in sweeps.unfinished(session)
        record = sweeps.require(session, sweep_id=sweep_id)
        assert sweeps.status(record, sweeps.trials(session, record)) == "failed"  # one trial failed
        assert [(e.trial, e.status, e.epochs, e.spent) for e in sweeps.history(session, record)] == [
            (0, "succeeded", 3, 3),
            (1, "pruned", 1, 4),
            (2, "failed", 1, 5),
        ]


def test_asha_stops_a_trial_worse_than_those_that_reached_its_epoch_and_a_retried_epoch_reports_once(
    service_env_on,
):
    settings = service_env_on
    sweep_id = create(settings, grid={"optimizer.lr": [0.1, 0.2, 0.3]}, pruner=ASHA, max_parallel=3)
    first, second, third = trial_jobs(sweep_id)
    assert run_epochs(first, [0.8, 0.85], None, reporter(settings, first)) == [False, False]
    worse = reporter(settings, second)
    assert run_epochs(second, [0.3], None, worse) == [True]  # rung 1: not the best of the two there
    assert worse.should_prune(1, {"test_acc": 0.99}) is True  # a retried epoch: its first value and decision stand
    assert study_of(settings, sweep_id).trials[1].intermediate_values == {1: 0.3}
    assert run_epochs(third, [0.9], None, reporter(settings, third)) == [False]


def test_the_median_pruner_waits_for_its_startup_trials(service_env_on):
    settings = service_env_on
    median = {"name": "median", "min_epochs": 1, "startup_trials": 1}
    sweep_id = create(settings, grid={"optimizer.lr": [0.1, 0.2, 0.3]}, pruner=median, max_parallel=3)
    first, second, third = trial_jobs(sweep_id)
    assert run_epochs(second, [0.1, 0.1], None, reporter(settings, second)) == [False, False]  # none ended yet
    run_epochs(first, [0.8, 0.9, 0.9], JobStatus.SUCCEEDED, reporter(settings, first))
    advance_sweeps(settings)
    assert run_epochs(third, [0.2], None, reporter(settings, third)) == [True]  # below the ended trial's


def test_tpe_draws_trials_as_others_end_reproducibly_by_seed(service_env):
    settings = service_env
    tpe = {
        "count": 5,
        "seed": 3,
        "startup_trials": 2,
        "distributions": {"optimizer.lr": {"log_uniform": [1e-4, 1]}, "model.hidden": {"choice": [[64], [128, 64]]}},
    }

    def run_sweep() -> list[dict]:
        sweep_id = create(settings, tpe=tpe, max_parallel=1)
        for index in range(5):
            (job_id,) = [j for j in trial_jobs(sweep_id)[index:]]  # one trial at a time: the next is not drawn yet
            with db.session_scope(write=False) as session:
                record = session.get(Sweep, sweep_id)
                assert (record.launched, len(record.trials)) == (index + 1, index + 1)
                params = record.trials[index]["params"]
            run_epochs(job_id, [min(params["optimizer.lr"] * 3, 0.9)] * 2, JobStatus.SUCCEEDED)
            advance_sweeps(settings)
        with db.session_scope(write=False) as session:
            record = session.get(Sweep, sweep_id)
            assert record.finished_at is not None
            return [t["params"] for t in record.trials]

    first, second = run_sweep(), run_sweep()
    assert first == second and len({p["optimizer.lr"] for p in first}) == 5
    assert all(1e-4 <= p["optimizer.lr"] <= 1 and p["model.hidden"] in ([64], [128, 64]) for p in first)


def test_a_trial_is_asked_for_once_however_many_advance_the_sweep_at_once(service_env_on):
    settings = service_env_on
    tpe = {"count": 6, "seed": 1, "distributions": {"optimizer.lr": {"uniform": [0.01, 1]}}}
    sweep_id = create(settings, tpe=tpe, max_parallel=2)
    errors = []

    def advance():
        try:
            with db.session_scope() as session:
                sweeps.advance(session, sweep_id=sweep_id, settings=settings)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    for job_id in trial_jobs(sweep_id):
        run_epochs(job_id, [0.5], JobStatus.SUCCEEDED)
    threads = [threading.Thread(target=advance) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    with db.session_scope(write=False) as session:
        record = session.get(Sweep, sweep_id)
        assert record.launched == 4 and len(record.trials) == 4
    assert len(study_of(settings, sweep_id).trials) == 4  # none asked for twice
    assert [t["number"] for t in record.trials] == [0, 1, 2, 3]


def test_a_trial_asked_for_before_a_crash_is_taken_up_again(service_env):
    settings = service_env
    request = SweepSpec(
        name="s", base=BASE, tpe={"count": 2, "distributions": {"optimizer.lr": {"uniform": [0.01, 1]}}}
    )
    sweep_id = create(settings, tpe=request.tpe.model_dump(), max_parallel=1)
    name = studies.study_name(sweep_id)
    asked = studies.ask(settings, name, request, index=1)  # asked, then the process died before recording it
    assert studies.ask(settings, name, request, index=1) == asked
    assert len(study_of(settings, sweep_id).trials) == 2


def test_cancelling_an_adaptive_sweep_asks_for_no_more_and_fails_its_open_trials(service_env):
    settings = service_env
    tpe = {"count": 4, "distributions": {"optimizer.lr": {"uniform": [0.01, 1]}}}
    sweep_id = create(settings, tpe=tpe, pruner=ASHA, max_parallel=1)
    with db.session_scope() as session:
        sweeps.cancel(session, sweep_id=sweep_id, settings=settings)  # its one job was queued: cancelled at once
    advance_sweeps(settings)
    trials = study_of(settings, sweep_id).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL]
    with db.session_scope(write=False) as session:
        record = session.get(Sweep, sweep_id)
        assert record.finished_at is not None and record.launched == 1
        assert session.get(Job, trial_jobs(sweep_id)[0]).status == JobStatus.CANCELLED


@pytest.mark.parametrize(
    "request_body, message",
    [
        ({"tpe": {"count": 2, "distributions": {}}}, "at least 1 item"),
        ({"grid": {"epochs": [1]}, "pruner": {"name": "asha", "startup_trials": 3}}, "median pruner only"),
        ({"grid": {"epochs": [1]}, "pruner": {"name": "sha"}}, "'asha', 'hyperband' or 'median'"),
        ({"grid": {"epochs": [1]}, "pruner": {"name": "asha", "reduction_factor": 1}}, "greater than or equal to 2"),
        ({"grid": {"epochs": [1]}, "tpe": {"count": 2, "distributions": {"seed": {"integer": [1, 2]}}}}, "one of"),
    ],
)
def test_malformed_adaptive_requests_are_refused(request_body, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        SweepSpec.model_validate({"name": "x", "base": BASE, **request_body})


def test_tpe_trials_are_checked_at_each_distributions_extremes():
    request = SweepSpec(
        name="x",
        base=BASE,
        tpe={
            "count": 9,
            "distributions": {
                "optimizer.lr": {"log_uniform": [1e-3, 1]},
                "model.activation": {"choice": ["relu", "tanh"]},
            },
        },
    )
    assert request.trials() == [] and request.size == 9 and request.adaptive
    assert request.checked_trials() == [
        {"optimizer.lr": 1e-3, "model.activation": "relu"},
        {"optimizer.lr": 1, "model.activation": "relu"},
        {"optimizer.lr": 1e-3, "model.activation": "tanh"},
    ]


def test_hyperband_spreads_trials_over_brackets_up_to_the_base_epochs(service_env):
    settings = service_env
    hyperband = {"name": "hyperband", "min_epochs": 1, "reduction_factor": 3}
    sweep_id = create(settings, grid={"optimizer.lr": [0.1, 0.2, 0.3, 0.4]}, pruner=hyperband, max_parallel=4)
    request = SweepSpec(name="s", base=BASE, grid={"optimizer.lr": [0.1]}, pruner=hyperband)
    pruner = studies._pruner(request)
    assert pruner._max_resource == 3 and pruner._min_resource == 1  # the base spec's epochs
    decided = []
    for job_id, acc in zip(trial_jobs(sweep_id), (0.9, 0.8, 0.2, 0.1), strict=True):
        stops = run_epochs(job_id, [acc] * 3, None, reporter(settings, job_id))
        stopped_at = stops.index(True) + 1 if True in stops else 3
        assert all(stops[stopped_at - 1 :]) or stopped_at == 3  # once stopped, a retry is stopped again
        decided.append(stopped_at)
    trials = study_of(settings, sweep_id).trials
    assert decided[0] == 3  # the first trial has no one to lose to
    assert [t.intermediate_values for t in trials] == [
        {epoch: acc for epoch in range(1, last + 1)} for acc, last in zip((0.9, 0.8, 0.2, 0.1), decided, strict=True)
    ]


def test_seeds_draw_apart_and_a_grid_trial_enqueued_before_a_crash_keeps_its_values(service_env):
    settings = service_env
    lr = {"optimizer.lr": {"log_uniform": [1e-4, 1]}}

    def draws(seed: int) -> list[float]:
        request = SweepSpec(name="s", base=BASE, tpe={"count": 3, "seed": seed, "distributions": lr})
        sweep_id = create(settings, tpe=request.tpe.model_dump(), max_parallel=3)
        with db.session_scope(write=False) as session:
            return [t["params"]["optimizer.lr"] for t in session.get(Sweep, sweep_id).trials]

    first, second = draws(0), draws(1)
    assert not set(first) & set(second)  # seed 1's draws are not seed 0's shifted by one trial

    request = SweepSpec(name="s", base=BASE, grid={"optimizer.lr": [0.1, 0.2, 0.3]}, pruner=ASHA, max_parallel=1)
    sweep_id = create(settings, grid={"optimizer.lr": [0.1, 0.2, 0.3]}, pruner=ASHA, max_parallel=1)
    name = studies.study_name(sweep_id)
    study = study_of(settings, sweep_id)
    study.enqueue_trial({"optimizer.lr": 0.2}, user_attrs={studies.INDEX_ATTR: 1})  # enqueued, then a crash
    assert studies.ask(settings, name, request, index=1, fixed={"optimizer.lr": 0.2}) == (1, {"optimizer.lr": 0.2})
    assert studies.ask(settings, name, request, index=2, fixed={"optimizer.lr": 0.3}) == (2, {"optimizer.lr": 0.3})
    assert len(study_of(settings, sweep_id).trials) == 3


def test_a_trial_whose_spec_cannot_run_is_recorded_invalid_and_the_sweep_goes_on(service_env):
    settings = service_env
    tpe = {"count": 3, "distributions": {"optimizer.lr": {"uniform": [0.01, 1]}}}
    sweep_id = create(settings, tpe=tpe, max_parallel=1)
    with db.session_scope() as session:  # the base spec turned bad after it was checked
        record = session.get(Sweep, sweep_id)
        record.request = {**record.request, "base": {**record.request["base"], "batch_size": -1}}
    run_epochs(trial_jobs(sweep_id)[0], [0.5], JobStatus.SUCCEEDED)
    advance_sweeps(settings)
    with db.session_scope(write=False) as session:
        record = sweeps.require(session, sweep_id=sweep_id)
        assert record.launched == 3 and record.finished_at is not None
        assert all("batch_size" in t["error"] and t["refused"] for t in record.trials[1:])
        assert sweeps.status(record, sweeps.trials(session, record)) == "failed"
        # Refused for its values, which no resume changes: nothing to resume (a 409), no button.
        assert not sweeps.resumable(record, sweeps.trials(session, record))
    states = [t.state.name for t in study_of(settings, sweep_id).trials]
    assert states == ["COMPLETE", "FAIL", "FAIL"]


def test_a_pruner_that_could_never_stop_a_trial_is_refused_naming_min_epochs(service_env):
    from service.core.errors import Invalid

    with pytest.raises(Invalid) as refused:
        create(service_env, grid={"optimizer.lr": [0.1, 0.2]}, pruner={"name": "asha", "min_epochs": 3})
    ((loc, message),) = refused.value.problems
    assert loc == ("pruner", "min_epochs") and "not below the trials' 3 epochs" in message
    with db.session_scope(write=False) as session:
        assert sweeps.page(session, limit=5, offset=0)[1] == 0  # nothing was created


def test_importances_wait_for_enough_trials_to_mean_something():
    """Two trials gave an importance of 0.9957 for one of two values: noise read as a finding."""
    spec = SweepSpec(
        name="s", base=BASE, grid={"optimizer.lr": [0.01, 0.03, 0.1, 0.3, 1.0], "batch_size": [16, 32, 64, 128, 256]}
    )
    # lr decides the metric; batch_size does nothing.
    finished = [
        ({"optimizer.lr": lr, "batch_size": b}, lr)
        for lr, b in zip([0.01, 0.03, 0.1, 0.3, 1.0, 0.01], [16, 256, 64, 32, 128, 128], strict=True)
    ]
    assert studies.importances(spec, finished[: studies.IMPORTANCE_TRIALS - 1], "max") == {}
    found = studies.importances(spec, finished, "max")
    assert set(found) == {"optimizer.lr", "batch_size"} and found["optimizer.lr"] > found["batch_size"], found


@pytest.mark.parametrize("pruner", ["asha", "hyperband"])
def test_a_resumed_trial_carries_on_with_the_epochs_and_rungs_its_ended_trial_earned(service_env, pruner):
    """Resumed at epoch 5 under a new Optuna trial, an ASHA trial's first report filled its first
    rungs with that epoch's value, to be ranked there against its own earlier values: pruned.
    (Hyperband's rungs stay: a trial's bracket, which places its rungs, follows its number.)"""
    settings = service_env
    base = {**BASE, "epochs": 9}
    with db.session_scope() as session:
        request = SweepSpec(name="s", base=base, grid={"optimizer.lr": [0.1]}, pruner={"name": pruner, "min_epochs": 1})
        sweep_id = sweeps.create(session, sweep=request, settings=settings).sweep.id
    [job_id] = trial_jobs(sweep_id)
    assert run_epochs(job_id, [0.5, 0.6, 0.7], JobStatus.CANCELLED, reporter(settings, job_id)) == [False] * 3
    advance_sweeps(settings)
    with db.session_scope() as session:
        sweeps.resume(session, sweep_id=sweep_id, settings=settings)
    old, new = study_of(settings, sweep_id).trials
    assert old.state.name == "FAIL" and new.state.name == "RUNNING"
    assert new.intermediate_values == old.intermediate_values == {1: 0.5, 2: 0.6, 3: 0.7}
    rungs = {key: value for key, value in old.system_attrs.items() if key.startswith("completed_rung_")}
    if pruner == "hyperband":
        assert not any(key.startswith("completed_rung_") for key in new.system_attrs)
        return
    assert rungs and {key: new.system_attrs[key] for key in rungs} == rungs
    assert not reporter(settings, job_id).should_prune(4, {"test_acc": 0.55})  # behind itself, not pruned for it

"""Sweep requests in-process: how trials are generated and where a bad one is reported."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from models.spec.job import JobSpec
from models.spec.sweeps import SweepSpec, label, trial_spec
from service.core.storage import StoredFile
from service.core.sweeps import _problems

BASE = {"model": {"arch": "mlp"}, "data": {"dataset": "fashion-mnist"}, "optimizer": {"lr": 0.1}}


def test_a_grid_is_every_combination_in_order():
    sweep = SweepSpec(name="g", base=BASE, grid={"optimizer.lr": [0.1, 0.5], "model.dropout": [[0.0], [0.5]]})
    assert sweep.trials() == [
        {"optimizer.lr": 0.1, "model.dropout": [0.0]},
        {"optimizer.lr": 0.1, "model.dropout": [0.5]},
        {"optimizer.lr": 0.5, "model.dropout": [0.0]},
        {"optimizer.lr": 0.5, "model.dropout": [0.5]},
    ]


def test_random_draws_follow_the_seed_and_stay_in_range():
    def draws(seed):
        return SweepSpec(
            name="r",
            base=BASE,
            random={
                "count": 20,
                "seed": seed,
                "distributions": {
                    "optimizer.lr": {"log_uniform": [1e-4, 1]},
                    "epochs": {"integer": [1, 3]},
                    "model.activation": {"choice": ["relu", "tanh"]},
                    "optimizer.momentum": {"uniform": [0, 0.9]},
                },
            },
        ).trials()

    assert draws(1) == draws(1) != draws(2)
    for trial in draws(1):
        assert 1e-4 <= trial["optimizer.lr"] <= 1 and trial["epochs"] in (1, 2, 3)
        assert trial["model.activation"] in ("relu", "tanh") and 0 <= trial["optimizer.momentum"] <= 0.9


def test_an_unnamed_sweep_is_named_after_its_base_spec():
    assert SweepSpec.model_validate({"base": {**BASE, "name": "lenet-fashion"}, "grid": {"epochs": [1]}}).name == (
        "lenet-fashion"
    )
    assert SweepSpec.model_validate({"base": BASE, "grid": {"epochs": [1]}}).name == "sweep"


def test_a_trial_spec_sets_nested_values_without_touching_the_base():
    spec = trial_spec(BASE, "s", {"optimizer.weight_decay": 3, "model.init": "xavier", "early_stopping.patience": 2})
    assert spec["optimizer"] == {"lr": 0.1, "weight_decay": 3} and spec["model"]["init"] == "xavier"
    assert spec["early_stopping"] == {"patience": 2} and "weight_decay" not in BASE["optimizer"]
    assert spec["name"] == "s [weight_decay=3, init=xavier, patience=2]"
    assert label({"optimizer.lr": 0.123456}) == "lr=0.1235"


@pytest.mark.parametrize(
    "request_body, message",
    [
        ({"name": "x", "base": BASE}, "one of grid, random or tpe"),
        ({"base": BASE}, "one of grid, random or tpe"),  # an unnamed sweep hides no other mistake
        ({"name": "", "base": BASE, "grid": {"epochs": [1]}}, "at least 1 character"),
        (
            {
                "name": "x",
                "base": BASE,
                "grid": {"optimizer.lr": [0.1]},
                "random": {"count": 1, "distributions": {"epochs": {"integer": [1, 2]}}},
            },
            "one of grid, random or tpe",
        ),
        (
            {"name": "x", "base": BASE, "grid": {p: list(range(10)) for p in ("epochs", "seed", "batch_size")}},
            "more than 256",
        ),
        (
            {"name": "x", "base": BASE, "random": {"count": 2, "distributions": {"epochs": {"integer": [3, 1]}}}},
            "above high",
        ),
        ({"name": "x", "base": BASE, "random": {"count": 2, "distributions": {"epochs": {}}}}, "exactly one"),
        ({"name": "x", "base": BASE, "grid": {"Optimizer LR": [1]}}, "pattern"),
    ],
)
def test_malformed_requests_are_refused(request_body, message):
    with pytest.raises(ValidationError, match=message):
        SweepSpec.model_validate(request_body)


@pytest.mark.parametrize(
    "grid, where, value",
    [
        ({"optimizer.lr": [-1]}, ("grid", "optimizer.lr"), "value -1:"),
        ({"model.activation": ["swish"]}, ("grid", "model.activation"), "value 'swish':"),  # inside a tagged union
        ({"model.dropout": [[2.0]]}, ("grid", "model.dropout"), "value [2.0]:"),
        ({"model.bogus": [1]}, ("grid", "model.bogus"), "unknown field 'bogus'; the fields here are"),
        (  # the path is wrong, whatever its value: said once for the whole grid
            {"optimizer.learning_rate": [0.1, 0.2]},
            ("grid", "optimizer.learning_rate"),
            "unknown field 'learning_rate': did you mean 'lr'?",
        ),
    ],
)
def test_a_bad_value_is_reported_at_its_varied_path(grid, where, value):
    sweep = SweepSpec(name="x", base=BASE, grid=grid)
    params = sweep.trials()[0]
    spec = trial_spec(sweep.base, sweep.name, params)
    with pytest.raises(ValidationError) as bad:
        JobSpec.model_validate(spec)
    ((loc, msg), *_) = _problems(sweep, spec, params, bad.value)
    assert loc == where and msg.startswith(value)


def test_a_bad_base_value_is_reported_in_base_without_union_tags():
    sweep = SweepSpec(name="x", base={**BASE, "model": {"arch": "mlp", "hidden": "wide"}}, grid={"epochs": [1]})
    params = sweep.trials()[0]
    spec = trial_spec(sweep.base, sweep.name, params)
    with pytest.raises(ValidationError) as bad:
        JobSpec.model_validate(spec)
    assert _problems(sweep, spec, params, bad.value)[0][0] == ("base", "model", "hidden")


def test_a_page_of_sweeps_is_ranked_in_one_query_per_metric(Session, engine):
    """trials_of ranks several sweeps as trials() ranks each, reading their jobs and their
    checkpoints once, however many sweeps there are; each trial by the sweep's metric at the epoch
    its job serves (the last, without validation data), not the best of its epochs."""
    from sqlalchemy import event, select

    from service.core import jobs, sweeps
    from service.core.tables import Sweep

    spec = JobSpec.model_validate({**BASE, "epochs": 2})
    rankings = [("test_acc", "max"), ("test_loss", "min"), ("test_acc", "max")]
    with Session() as session:
        for n, (metric, mode) in enumerate(rankings):
            sweep = Sweep(
                name=f"s{n}",
                request={},
                trials=[{"params": {"optimizer.lr": lr}} for lr in (1, 2, 3)],
                size=3,
                launched=2,
                metric=metric,
                mode=mode,
            )
            session.add(sweep)
            session.flush()
            for trial in range(2):  # the third trial is not launched
                job = jobs.create_job(session, spec=spec, task="classification", sweep=(sweep.id, trial))
                session.commit()
                attempt = jobs.claim_job(session, job_id=job.id, worker="w", lease_seconds=30, max_attempts=3).attempt
                for epoch in (1, 2):
                    value = (trial + 1) * epoch / 10 + n
                    jobs.record_epoch(
                        session,
                        job_id=job.id,
                        attempt=attempt,
                        checkpoint=StoredFile("checkpoints/" + "x", 1),
                        metrics={"epoch": epoch, "train_loss": 1.0, "test_loss": value, "test_acc": value},
                    )
        session.commit()
    with Session() as session:
        rows = list(session.scalars(select(Sweep).order_by(Sweep.name)))
        each = {sweep.id: sweeps.trials(session, sweep) for sweep in rows}
    with Session() as session:
        rows = list(session.scalars(select(Sweep).order_by(Sweep.name)))
        statements = []

        def count(_conn, _cursor, statement, *_):
            statements.append(statement)

        event.listen(engine, "before_cursor_execute", count)
        try:
            together = sweeps.trials_of(session, rows)
        finally:
            event.remove(engine, "before_cursor_execute", count)
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 2  # jobs, their checkpoints
    assert {k: [(t.index, t.metric) for t in v] for k, v in together.items()} == {
        k: [(t.index, t.metric) for t in v] for k, v in each.items()
    }
    by_name = {sweep.name: together[sweep.id] for sweep in rows}
    assert [(t.index, t.metric) for t in by_name["s0"]] == [(1, 0.4), (0, 0.2), (2, None)]  # epoch 2's test_acc
    # Epoch 2's test_loss, which job:<id> serves; the lower of epoch 1 was chosen on the test set.
    assert [(t.index, t.metric) for t in by_name["s1"]] == [(0, 1.2), (1, 1.4), (2, None)]


def test_a_sweep_can_vary_augmentation_and_normalisation():
    base = {"model": {"arch": "lenet"}, "data": {"dataset": "cifar10"}}
    sweep = SweepSpec(
        name="aug", base=base, grid={"data.augment.random_crop.padding": [0, 4], "data.normalize": ["none", "dataset"]}
    )
    specs = [JobSpec.model_validate(trial_spec(base, "aug", params)) for params in sweep.trials()]
    assert [(s.data.augment.random_crop.padding, s.data.normalize) for s in specs] == [
        (0, "none"),
        (0, "dataset"),
        (4, "none"),
        (4, "dataset"),
    ]


@pytest.mark.parametrize(
    ("data", "task", "ranking"),
    [
        ({"val_fraction": 0.2}, "classification", ("val_acc", "max")),
        ({"val_fraction": 0.2}, "regression", ("val_loss", "min")),
        ({}, "classification", ("test_acc", "max")),
    ],
)
def test_trials_are_ranked_on_validation_when_they_hold_one_out(data, task, ranking):
    from service.core.sweeps import default_ranking

    base = {**BASE, "data": {**BASE["data"], **data}}
    assert default_ranking(SweepSpec(name="v", base=base, grid={"epochs": [1]}), task) == ranking


def test_a_key_another_request_took_meanwhile_answers_that_sweep_on_either_database(service_env_on, monkeypatch):
    """Two requests under one key (a client's retry) both pass the check for an earlier sweep before
    either commits: the second's insert fails on the key, and it answers the first's sweep."""
    from service.core import db, sweeps
    from tests.support.specs import SOFTMAX_SPEC

    request = SweepSpec(name="retried", base={**SOFTMAX_SPEC, "epochs": 1}, grid={"optimizer.lr": [0.1]})
    with db.session_scope() as session:
        first = sweeps.create(session, sweep=request, settings=service_env_on, idempotency_key="k1")
        first_id = first.sweep.id
    looked = []
    check = sweeps._replayed

    def not_yet_committed(session, key, request_hash):  # the first look happened before the other commit
        looked.append(key)
        return None if len(looked) == 1 else check(session, key, request_hash)

    monkeypatch.setattr(sweeps, "_replayed", not_yet_committed)
    with db.session_scope() as session:
        again = sweeps.create(session, sweep=request, settings=service_env_on, idempotency_key="k1")
        assert again.replayed and again.sweep.id == first_id and looked == ["k1", "k1"]


def _end(job_id: str, status: str, reason: str | None = None, error: str | None = None) -> None:
    """A trial's job taken by a worker and ended so."""
    from service.core import db, jobs

    with db.session_scope() as session:
        attempt = jobs.claim_job(session, job_id=job_id, worker="w", lease_seconds=30, max_attempts=3).attempt
        assert jobs.finish_job(session, job_id=job_id, attempt=attempt, status=status, reason=reason, error=error)


def _fail(job_id: str, reason: str, error: str) -> None:
    _end(job_id, "failed", reason, error)


def _trial_jobs(sweep_id: str) -> dict:
    from sqlalchemy import select

    from service.core import db
    from service.core.tables import Job

    with db.session_scope(write=False) as session:
        return {job.sweep_trial: (job.id, job.status, job.reason) for job in session.scalars(select(Job))}


@pytest.mark.parametrize("pruner", [None, {"name": "asha", "min_epochs": 1}], ids=["grid", "grid+asha"])
def test_a_sweep_whose_trials_fail_alike_for_a_cause_they_share_stops_and_cancels_the_rest(service_env_on, pruner):
    """Three trials in a row fail with one dataset_not_found error: the sweep launches no more,
    cancels the trial still queued and the one running (which keeps the stop's reason when its
    worker ends it), ends failed saying why (a cancel is then a 409), and its study, if it has one,
    has no trial left open."""
    from service.api.schemas.sweeps import sweep_public
    from service.core import db, jobs, studies, sweeps
    from service.core.errors import Conflict
    from service.core.tables import JobStatus
    from tests.support.specs import SOFTMAX_SPEC

    settings = service_env_on
    request = SweepSpec(
        name="alike",
        base={**SOFTMAX_SPEC, "epochs": 2},
        grid={"optimizer.lr": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]},
        max_parallel=3,
        pruner=pruner,
    )
    with db.session_scope() as session:
        sweep_id = sweeps.create(session, sweep=request, settings=settings).sweep.id
    gone = "uploaded dataset 1234 was deleted"
    for trial in (0, 1):
        _fail(_trial_jobs(sweep_id)[trial][0], "dataset_not_found", gone)
        with db.session_scope() as session:
            sweeps.advance(session, sweep_id=sweep_id, settings=settings)
    running, queued = _trial_jobs(sweep_id)[3][0], _trial_jobs(sweep_id)[4][0]
    with db.session_scope() as session:
        attempt = jobs.claim_job(session, job_id=running, worker="w", lease_seconds=30, max_attempts=3).attempt
    _fail(_trial_jobs(sweep_id)[2][0], "dataset_not_found", gone)
    with db.session_scope() as session:
        sweeps.advance(session, sweep_id=sweep_id, settings=settings)
    assert _trial_jobs(sweep_id)[3] == (running, JobStatus.CANCELLING, "sweep_stopped")
    assert _trial_jobs(sweep_id)[4] == (queued, JobStatus.CANCELLED, "sweep_stopped")
    assert sorted(_trial_jobs(sweep_id)) == [0, 1, 2, 3, 4]  # nothing launched after the third failure
    with db.session_scope() as session:
        record = sweeps.require(session, sweep_id=sweep_id)
        assert sweeps.status(record, sweeps.trials(session, record)) == "running"  # until its running trial ends
        assert record.stopped.startswith(f"trials 0, 1 and 2 failed alike (dataset_not_found: {gone})")
        with pytest.raises(Conflict, match=f"sweep {sweep_id} stopped: trials 0, 1 and 2 failed alike"):
            sweeps.cancel(session, sweep_id=sweep_id, settings=settings)
    with db.session_scope() as session:
        assert jobs.finish_job(
            session, job_id=running, attempt=attempt, status=JobStatus.CANCELLED, reason="user_cancelled"
        )
        session.commit()
        sweeps.advance(session, sweep_id=sweep_id, settings=settings)
    assert _trial_jobs(sweep_id)[3] == (running, JobStatus.CANCELLED, "sweep_stopped")
    with db.session_scope() as session:
        record = sweeps.require(session, sweep_id=sweep_id)
        public = sweep_public(record, sweeps.trials(session, record))
        if pruner is not None:  # each launched trial told how it ended, none left open
            assert studies.running(settings, record.study, SweepSpec.model_validate(record.request)) == []
    assert record.finished_at is not None and public.status == "failed" and public.stopped == record.stopped
    assert public.counts == {"failed": 3, "cancelled": 3} and public.launched == 5

    # The cause fixed, the sweep is resumed: its failed and cancelled trials run again (three at a time,
    # as max_parallel says), then the one it never launched; a study is asked for each anew.
    with db.session_scope() as session:
        sweeps.resume(session, sweep_id=sweep_id[:8], settings=settings)
    states = {trial: status for trial, (_, status, _) in _trial_jobs(sweep_id).items()}
    assert states == {0: "queued", 1: "queued", 2: "queued", 3: "cancelled", 4: "cancelled"}, states
    with db.session_scope() as session:
        record = sweeps.require(session, sweep_id=sweep_id)
        assert record.stopped is None and record.finished_at is None
        assert sweeps.status(record, sweeps.trials(session, record)) == "running"
        with pytest.raises(Conflict, match="is still running: it can be resumed once they have ended"):
            sweeps.resume(session, sweep_id=sweep_id, settings=settings)
        if pruner is not None:
            open_trials = studies.running(settings, record.study, SweepSpec.model_validate(record.request))
            assert sorted(open_trials) == sorted(record.trials[i]["number"] for i in (0, 1, 2))
    for trial in range(6):
        _end(_trial_jobs(sweep_id)[trial][0], JobStatus.SUCCEEDED)
        with db.session_scope() as session:
            sweeps.advance(session, sweep_id=sweep_id, settings=settings)
    with db.session_scope() as session:
        record = sweeps.require(session, sweep_id=sweep_id)
        public = sweep_public(record, sweeps.trials(session, record))
        assert record.finished_at is not None and public.status == "succeeded" and public.launched == 6
        assert not any("again" in entry for entry in record.trials)
        with pytest.raises(Conflict, match="ran every trial to its end: there is nothing to resume"):
            sweeps.resume(session, sweep_id=sweep_id, settings=settings)
        if pruner is not None:
            assert studies.running(settings, record.study, SweepSpec.model_validate(record.request)) == []


@pytest.mark.parametrize(
    "ends",
    [
        [("nan_loss", "the loss became nan")] * 3,  # the trials' values may cause it: it stops nothing
        [("dataset_not_found", "gone")] * 2 + [("dataset_not_found", "another error")],
        [("dataset_not_found", "gone")] * 2,
    ],
    ids=["value-caused", "different-errors", "two-only"],
)
def test_a_sweep_goes_on_past_failures_that_are_not_three_alike_of_a_shared_cause(service_env, ends):
    from service.core import db, sweeps
    from tests.support.specs import SOFTMAX_SPEC

    request = SweepSpec(
        name="on", base={**SOFTMAX_SPEC, "epochs": 1}, grid={"optimizer.lr": [0.1, 0.2, 0.3, 0.4, 0.5]}, max_parallel=1
    )
    with db.session_scope() as session:
        sweep_id = sweeps.create(session, sweep=request, settings=service_env).sweep.id
    for trial, (reason, error) in enumerate(ends):
        _fail(_trial_jobs(sweep_id)[trial][0], reason, error)
        with db.session_scope() as session:
            sweeps.advance(session, sweep_id=sweep_id, settings=service_env)
    assert len(_trial_jobs(sweep_id)) == len(ends) + 1  # the next trial was launched
    with db.session_scope(write=False) as session:
        assert sweeps.require(session, sweep_id=sweep_id).stopped is None


def test_a_trial_asked_for_but_never_launched_is_asked_anew_when_its_sweep_resumes(service_env):
    """The stop came between the study's ask and the trial's launch: the study was told the trial
    failed, and a resumed sweep that launched it under that number would never report or prune it."""
    from service.core import db, studies, sweeps
    from service.core.tables import JobStatus, Sweep
    from tests.support.specs import SOFTMAX_SPEC

    settings = service_env
    request = SweepSpec(
        name="asked",
        base={**SOFTMAX_SPEC, "epochs": 2},
        grid={"optimizer.lr": [0.1, 0.2]},
        max_parallel=1,
        pruner={"name": "asha", "min_epochs": 1},
    )
    with db.session_scope() as session:
        sweep_id = sweeps.create(session, sweep=request, settings=settings).sweep.id
    with db.session_scope() as session:  # trial 1 asked for, as advance does before it launches it
        sweep = session.get(Sweep, sweep_id, with_for_update=True)
        sweeps._ask(sweep, 1, settings)
        dead = sweep.trials[1]["number"]
    with db.session_scope() as session:
        sweeps.cancel(session, sweep_id=sweep_id, settings=settings)  # trial 0 queued: cancelled at once
    with db.session_scope() as session:
        record = sweeps.require(session, sweep_id=sweep_id)
        assert record.finished_at is not None and studies.running(settings, record.study, request) == []
        sweeps.resume(session, sweep_id=sweep_id, settings=settings)
    _end(_trial_jobs(sweep_id)[0][0], JobStatus.SUCCEEDED)
    with db.session_scope() as session:
        sweeps.advance(session, sweep_id=sweep_id, settings=settings)
    with db.session_scope() as session:
        record = sweeps.require(session, sweep_id=sweep_id)
        asked = record.trials[1]["number"]
        assert 1 in _trial_jobs(sweep_id) and asked != dead  # launched under a trial the study keeps open
        assert studies.running(settings, record.study, request) == [asked]


@pytest.mark.parametrize("pruner", [None, {"name": "asha", "min_epochs": 1}], ids=["grid", "grid+asha"])
def test_a_trial_of_a_sweep_with_a_study_is_resumed_with_its_sweep_not_alone(service_env, pruner):
    """Resumed alone, it reported its epochs to the Optuna trial its study had closed, and its end to
    nothing; a grid sweep's trial has no study and resumes alone."""
    from service.core import db, studies, submission, sweeps
    from service.core.errors import Conflict
    from service.core.tables import JobStatus
    from tests.support.specs import SOFTMAX_SPEC

    settings = service_env
    request = SweepSpec(
        name="alone", base={**SOFTMAX_SPEC, "epochs": 2}, grid={"optimizer.lr": [0.1]}, max_parallel=1, pruner=pruner
    )
    with db.session_scope() as session:
        sweep_id = sweeps.create(session, sweep=request, settings=settings).sweep.id
    job_id = _trial_jobs(sweep_id)[0][0]
    _fail(job_id, "worker_lost", "gone")
    with db.session_scope() as session:
        sweeps.advance(session, sweep_id=sweep_id, settings=settings)
    if pruner is None:
        with db.session_scope() as session:
            submission.resume_job(session, job_id=job_id, settings=settings)
        return
    with db.session_scope() as session:
        with pytest.raises(Conflict, match=f"is trial 0 of sweep {sweep_id}, whose Optuna study has closed its trial"):
            submission.resume_job(session, job_id=job_id, settings=settings)
    from tests.support.api import make_api

    page = make_api().get(f"/ui/jobs/{job_id}").text  # no resume button: the sweep page's resumes it
    assert 'id="resumed-with-sweep"' in page and 'id="resume"' not in page
    with db.session_scope() as session:
        sweeps.resume(session, sweep_id=sweep_id, settings=settings)
    with db.session_scope() as session:
        record = sweeps.require(session, sweep_id=sweep_id)
        assert _trial_jobs(sweep_id)[0][:2] == (job_id, JobStatus.QUEUED)
        assert studies.running(settings, record.study, request) == [record.trials[0]["number"]]


def _shapes(settings, name: str = "shapes") -> str:
    """An uploaded dataset of two classes, stored; its id."""
    import io

    from service.core import datasets, db
    from tests.support.datagen import image_folder_zip

    archive = image_folder_zip(["a", "b"], per_class=6, test_per_class=2)
    with db.session_scope() as session:
        return datasets.store_upload(
            session, data=io.BytesIO(archive), name=name, options=datasets.UploadOptions(), settings=settings
        ).id


def test_a_dataset_an_unfinished_sweep_may_train_on_is_not_deleted(service_env):
    """Its trials not yet launched have no job that uses it: deleting it made each of them invalid.
    A dataset only its launched trials use is theirs to answer for."""
    from service.core import datasets, db, sweeps

    shapes, other = _shapes(service_env), _shapes(service_env, "other")
    varied = SweepSpec(
        name="varies",
        base={"model": {"arch": "mlp"}, "data": {"dataset": "fashion-mnist"}, "epochs": 1},
        grid={"data.dataset": ["uploaded:other", "uploaded:shapes", "fashion-mnist"]},
        max_parallel=1,
    )
    with db.session_scope() as session:
        sweep_id = sweeps.create(session, sweep=varied, settings=service_env).sweep.id

    def delete(dataset_id: str) -> None:
        with db.session_scope() as session:
            datasets.delete_dataset(session, dataset_id=dataset_id, settings=service_env)

    with pytest.raises(datasets.DatasetInUse, match=f"unfinished sweep\\(s\\) {sweep_id}, whose trials still to"):
        delete(shapes[:8])
    _end(_trial_jobs(sweep_id)[0][0], "succeeded")
    with db.session_scope() as session:
        sweeps.advance(session, sweep_id=sweep_id, settings=service_env)  # trial 1 launched, on shapes
    delete(other)  # trial 0's, which has ended
    with pytest.raises(
        datasets.DatasetInUse, match=f"unfinished job\\(s\\) .{{36}} \\(a trial of sweep {sweep_id}\\)$"
    ):
        delete(shapes)
    tpe = {"distributions": {"data.dataset": {"choice": ["uploaded:a", "uploaded:b"]}}, "count": 4}
    drawn = SweepSpec(name="t", base=varied.base, tpe=tpe)
    assert drawn.datasets([{"data.dataset": "uploaded:a"}]) == {"uploaded:a"}
    assert drawn.datasets([], undrawn=2) == {"uploaded:a", "uploaded:b"}  # any choice, not yet drawn
    assert SweepSpec(name="t", base=varied.base, grid={"seed": [1, 2]}).datasets([{"seed": 1}]) == {"fashion-mnist"}


@pytest.mark.parametrize("pruner", [None, {"name": "asha", "min_epochs": 1}], ids=["grid", "grid+asha"])
def test_trials_refused_for_want_of_their_dataset_run_when_the_sweep_resumes(service_env, pruner):
    """Their values made no job (invalid), so a resume that ran only failed and cancelled jobs said
    "ran every trial to its end" once the dataset was back."""
    from service.core import datasets, db, studies, sweeps
    from service.core.tables import JobStatus, StoredDataset

    settings = service_env
    gone = _shapes(settings)
    request = SweepSpec(
        name="refused",
        base={"model": {"arch": "mlp"}, "data": {"dataset": "uploaded:shapes"}, "epochs": 2},
        grid={"optimizer.lr": [0.1, 0.2, 0.3]},
        max_parallel=1,
        pruner=pruner,
    )
    with db.session_scope() as session:
        sweep_id = sweeps.create(session, sweep=request, settings=settings).sweep.id
    with db.session_scope() as session:  # gone behind the service's back (its check now refuses this)
        session.delete(session.get(StoredDataset, gone))
    _end(_trial_jobs(sweep_id)[0][0], JobStatus.SUCCEEDED)
    with db.session_scope() as session:
        sweeps.advance(session, sweep_id=sweep_id, settings=settings)
    with db.session_scope() as session:
        record = sweeps.require(session, sweep_id=sweep_id)
        assert record.finished_at is not None and [("error" in entry) for entry in record.trials] == [False, True, True]
        assert sweeps.resumable(record, sweeps.trials(session, record))
        refused_again = record.trials[1].get("number")
        sweeps.resume(session, sweep_id=sweep_id, settings=settings)  # still gone: refused again, told so
    with db.session_scope() as session:
        record = sweeps.require(session, sweep_id=sweep_id)
        assert record.finished_at is not None and "not found" in record.trials[1]["error"]
        assert set(_trial_jobs(sweep_id)) == {0}
        if pruner is not None:
            assert (
                record.trials[1]["number"] == refused_again and studies.running(settings, record.study, request) == []
            )
    _shapes(settings)  # uploaded again under its name
    with db.session_scope() as session:
        sweeps.resume(session, sweep_id=sweep_id, settings=settings)
    assert _trial_jobs(sweep_id)[1][1] == JobStatus.QUEUED and 2 not in _trial_jobs(sweep_id)  # max_parallel 1
    _end(_trial_jobs(sweep_id)[1][0], JobStatus.SUCCEEDED)
    with db.session_scope() as session:
        sweeps.advance(session, sweep_id=sweep_id, settings=settings)
    _end(_trial_jobs(sweep_id)[2][0], JobStatus.SUCCEEDED)
    with db.session_scope() as session:
        sweeps.advance(session, sweep_id=sweep_id, settings=settings)
        record = sweeps.require(session, sweep_id=sweep_id)
        assert record.finished_at is not None and not any("error" in entry for entry in record.trials)
        assert not sweeps.resumable(record, sweeps.trials(session, record))
        if pruner is not None:
            assert studies.running(settings, record.study, request) == []
    with db.session_scope() as session:
        datasets.require_dataset(session, dataset_id="shapes")


def test_a_trial_whose_job_cannot_resume_leaves_the_sweep_with_nothing_to_resume(service_env):
    """Its dataset deleted by force: the resume button stayed, and each press changed nothing."""
    from service.core import datasets, db, sweeps
    from service.core.errors import Conflict
    from service.core.tables import JobStatus

    settings = service_env
    gone = _shapes(settings)
    request = SweepSpec(
        name="stuck",
        base={"model": {"arch": "mlp"}, "data": {"dataset": "uploaded:shapes"}, "epochs": 2},
        grid={"optimizer.lr": [0.1, 0.2]},
        max_parallel=2,
    )
    with db.session_scope() as session:
        sweep_id = sweeps.create(session, sweep=request, settings=settings).sweep.id
    first, second = _trial_jobs(sweep_id)[0][0], _trial_jobs(sweep_id)[1][0]
    _end(first, JobStatus.SUCCEEDED)
    _end(second, JobStatus.CANCELLED)
    with db.session_scope() as session:
        sweeps.advance(session, sweep_id=sweep_id, settings=settings)
    with db.session_scope() as session:
        datasets.delete_dataset(session, dataset_id=gone, settings=settings, force=True)
    with db.session_scope() as session:
        sweeps.resume(session, sweep_id=sweep_id, settings=settings)  # its job cannot resume: said on the trial
    with db.session_scope() as session:
        record = sweeps.require(session, sweep_id=sweep_id)
        assert record.finished_at is not None and "was deleted: it cannot resume" in record.trials[1]["error"]
        assert not sweeps.resumable(record, sweeps.trials(session, record))
        with pytest.raises(
            Conflict, match="has nothing left that can run: trial\\(s\\) 1 cannot run again \\(job .* no other is left"
        ):
            sweeps.resume(session, sweep_id=sweep_id, settings=settings)
    from tests.support.api import make_api

    page = make_api().get(f"/ui/sweeps/{sweep_id}").text  # the page says why, and offers no resume
    assert "<th>why</th>" in page and "was deleted: it cannot resume" in page
    assert f'action="/ui/sweeps/{sweep_id}/resume"' not in page


def test_a_trial_cut_short_ranks_after_those_that_ran_whatever_value_it_reached(service_env):
    """A cancelled trial at 7 of 15 epochs ranked first with its half-trained value."""
    from service.core import db, jobs, sweeps
    from service.core.tables import JobStatus
    from tests.support.specs import SOFTMAX_SPEC

    request = SweepSpec(name="ranks", base={**SOFTMAX_SPEC, "epochs": 2}, grid={"optimizer.lr": [0.1, 0.2]})
    with db.session_scope() as session:
        sweep_id = sweeps.create(session, sweep=request, settings=service_env).sweep.id
    for trial, (accuracy, end) in enumerate([(0.9, JobStatus.CANCELLED), (0.6, JobStatus.SUCCEEDED)]):
        job_id = _trial_jobs(sweep_id)[trial][0]
        with db.session_scope() as session:
            attempt = jobs.claim_job(session, job_id=job_id, worker="w", lease_seconds=30, max_attempts=3).attempt
            metrics = {"epoch": 1, "train_loss": 1.0, "test_acc": accuracy, "test_loss": 1 - accuracy}
            jobs.record_epoch(
                session, job_id=job_id, attempt=attempt, metrics=metrics, checkpoint=StoredFile(f"k/{job_id}", 1)
            )
            jobs.finish_job(session, job_id=job_id, attempt=attempt, status=end)
    with db.session_scope() as session:
        sweeps.advance(session, sweep_id=sweep_id, settings=service_env)
        record = sweeps.require(session, sweep_id=sweep_id)
        assert [(t.index, t.metric) for t in sweeps.trials(session, record)] == [(1, 0.6), (0, 0.9)]
        assert [e.best for e in sweeps.history(session, record)] == [None, 0.6]  # the cancelled one's 0.9 is no best

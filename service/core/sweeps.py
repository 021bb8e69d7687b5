"""Sweeps: checking a sweep's trials, storing it, launching its jobs and ranking them (the request
and its trials' specs are models/spec/sweeps.py's; an adaptive sweep's Optuna study is
core/studies.py's).

The sweep row is the source of truth: it holds every trial's values and how many of them have
their job (`launched`). advance() launches the next trials while fewer than max_parallel of the
sweep's jobs are unfinished; it runs when the sweep is created, when one of its jobs ends (in the
worker) and in the reaper's sweep. It holds the sweep's row locked while it works, and each
trial's job is created with its own idempotency key, so concurrent or repeated calls never create
a trial twice; a trial's job is committed with the count that includes it, so whoever sees the job
sees it counted. For an adaptive sweep it first tells the study how the trials that ended did, then
asks it for the next trial's values (TPE) or registers the next trial's fixed ones (a pruned grid
or random sweep); a TPE trial's values are recorded in the row before its job is created. A sweep
whose last trials failed alike, for a cause they all share (a missing dataset), stops: it launches
no more trials and cancels those not ended (`stopped` says why).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from models.spec.explain import error_loc, explain
from models.spec.job import JobSpec
from models.spec.sweeps import SweepSpec, trial_spec
from service.core import jobs, studies, submission
from service.core.broker import publish_or_defer
from service.core.errors import Conflict, Invalid, NotFound
from service.core.ids import not_found, resolve_id
from service.core.settings import Settings
from service.core.tables import Job, JobStatus, Sweep, utcnow


def _problems(sweep: SweepSpec, spec: dict, params: dict, error: Exception) -> list[tuple[tuple, str]]:
    """Where a trial's spec went wrong: at the varied path when it was a varied value, else in base."""
    found = []
    details = (
        error.errors()
        if isinstance(error, ValidationError)
        else [{"loc": loc, "msg": msg} for loc, msg in error.problems]
    )
    for detail in details:
        loc = error_loc(spec, {"type": "missing", **detail})  # core's problems are paths already
        dotted = ".".join(str(part) for part in loc)
        path = next((p for p in params if dotted == p or dotted.startswith(p + ".")), None)
        message = explain(detail, JobSpec, spec)
        if path is not None and detail.get("type") == "extra_forbidden":  # the path itself, whatever its value
            found.append(((sweep.varied, path), message))
        elif path is not None:
            found.append(((sweep.varied, path), f"value {params[path]!r}: {message}"))
        else:
            found.append((("base", *loc), message))
    return found


def check(session: Session, sweep: SweepSpec, settings: Settings) -> tuple[list[dict], str]:
    """Every trial's values, each spec checked as a job submission would be (Invalid naming every
    bad path and value, before anything is created), and the sweep's task. (TPE's trials are drawn
    later: their specs are checked at each distribution's extremes.)"""
    problems, tasks, unsplit = [], set(), False
    for params in sweep.checked_trials():
        try:
            raw = trial_spec(sweep.base, sweep.name, params)
            data = raw.get("data")
            unsplit = unsplit or not (isinstance(data, dict) and data.get("val_fraction"))
            spec = submission.with_full_ids(session, spec=JobSpec.model_validate(raw))
            tasks.add(submission.check_spec(session, spec=spec, settings=settings))
        except (ValidationError, Invalid) as exc:
            problems += [p for p in _problems(sweep, raw, params, exc) if p not in problems]
        except ValueError as exc:
            problems.append((("base",), str(exc)))
    epochs = sweep.base.get("epochs")
    if sweep.pruner and isinstance(epochs, int) and "epochs" not in studies.spec_paths(sweep):
        if sweep.pruner.min_epochs >= epochs:
            problems.append(
                (
                    ("pruner", "min_epochs"),
                    f"{sweep.pruner.min_epochs} is not below the trials' {epochs} epochs: nothing would be pruned",
                )
            )
    if sweep.metric and sweep.metric.startswith("val_") and unsplit:
        problems.append(
            (("metric",), f"{sweep.metric} needs a validation split in every trial: set data.val_fraction in base")
        )
    if sweep.metric and sweep.metric.endswith("_acc") and tasks == {"regression"}:
        problems.append((("metric",), f"{sweep.metric} is a classifier's: rank regression trials by a loss"))
    if problems:
        raise Invalid(problems[:50])
    return sweep.trials(), tasks.pop()


def default_ranking(sweep: SweepSpec, task: str) -> tuple[str, str]:
    """The sweep's metric, or by default validation accuracy (loss for regression) when its trials
    hold out a validation split, else the test set's."""
    held_out = "val" if (sweep.base.get("data") or {}).get("val_fraction") else "test"
    metric = sweep.metric or (f"{held_out}_acc" if task == "classification" else f"{held_out}_loss")
    return metric, sweep.mode or ("max" if metric.endswith("_acc") else "min")


@dataclass
class Created:
    sweep: Sweep
    replayed: bool


def create(session: Session, *, sweep: SweepSpec, settings: Settings, idempotency_key: str | None = None) -> Created:
    """Check every trial, record the sweep, and launch its first trials."""
    request_hash = sweep.digest()
    replayed = _replayed(session, idempotency_key, request_hash)
    if replayed is not None:
        return replayed
    init_from = sweep.base.get("init_from")
    if isinstance(init_from, dict) and isinstance(init_from.get("model"), str):  # every trial from one version
        sweep = sweep.model_copy(
            update={
                "base": {
                    **sweep.base,
                    "init_from": {**init_from, "model": submission.pinned(session, init_from["model"])},
                }
            }
        )
    trials, task = check(session, sweep, settings)
    metric, mode = default_ranking(sweep, task)
    record = Sweep(
        name=sweep.name,
        request=sweep.model_dump(mode="json"),
        trials=[{"params": p} for p in trials],
        size=sweep.size,
        launched=0,
        metric=metric,
        mode=mode,
        max_parallel=sweep.max_parallel,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
    )
    session.add(record)
    try:
        session.flush()
    except IntegrityError:
        # Another request with the same key (a client's retry) inserted first: answer with its sweep.
        session.rollback()
        replayed = _replayed(session, idempotency_key, request_hash)
        if replayed is None:
            raise
        return replayed
    if sweep.adaptive:
        record.study = studies.create(settings, sweep_id=record.id, mode=mode)
    session.commit()
    advance(session, sweep_id=record.id, settings=settings)
    return Created(record, replayed=False)


def _replayed(session: Session, idempotency_key: str | None, request_hash: str) -> Created | None:
    """The sweep an earlier request with this key created, or None; Conflict if it asked for another sweep."""
    if not idempotency_key:
        return None
    existing = session.scalars(select(Sweep).where(Sweep.idempotency_key == idempotency_key)).first()
    if existing is None:
        return None
    if existing.request_hash != request_hash:
        raise Conflict(f"this Idempotency-Key was used for sweep {existing.id} with a different request")
    return Created(existing, replayed=True)


def _unfinished(ranked: list[Trial]) -> int:
    return sum(t.job is not None and t.job.status not in JobStatus.FINAL for t in ranked)


def advance(session: Session, *, sweep_id: str, settings: Settings) -> None:
    """Tell an adaptive sweep's study how its ended trials did; launch the sweep's next trials
    while fewer than max_parallel of its jobs are unfinished; mark it finished once nothing is
    left to run."""
    while True:
        # Locked until the commit (SQLite: a write transaction holds the database), so that
        # no other process asks the study for the same trial or launches it.
        sweep = session.get(Sweep, sweep_id, populate_existing=True, with_for_update=True)
        if sweep is None or sweep.finished_at is not None:
            session.commit()
            return
        ranked = trials(session, sweep)
        if sweep.study is not None:
            _tell_ended(session, sweep, ranked, settings)
        active = _unfinished(ranked)
        again = [i for i, entry in enumerate(sweep.trials) if entry.get("again")]  # a resumed sweep's
        left = sweep.launched < sweep.size or active or again  # something a stop would spare
        if (
            left
            and sweep.cancelled_at is None
            and sweep.stopped is None
            and (stopped := failing_alike([t for t in ranked if t.index not in again]))
        ):
            sweep.stopped = stopped
            _cancel_unfinished(session, sweep.id, reason="sweep_stopped")
            active = _unfinished(trials(session, sweep))
        if sweep.cancelled_at is not None or sweep.stopped is not None or (sweep.launched >= sweep.size and not again):
            if not active:
                if sweep.study is not None:  # trials asked for but never launched (cancelled meanwhile)
                    request = SweepSpec.model_validate(sweep.request)
                    left = studies.running(settings, sweep.study, request)
                    studies.tell(settings, sweep.study, request, {number: ("fail", None) for number in left})
                if again:  # a resumed sweep stopped again before running them all: resume() marks them anew
                    sweep.trials = [_without(entry, "again") for entry in sweep.trials]
                sweep.finished_at = utcnow()
            session.commit()
            return
        if active >= (sweep.max_parallel or sweep.size):
            session.commit()
            return
        if again:
            _run_again(session, sweep, again[0], ranked, settings)
            continue
        index = sweep.launched
        if sweep.study is not None and (index >= len(sweep.trials) or "number" not in sweep.trials[index]):
            _ask(sweep, index, settings)
            session.commit()  # the trial's values are recorded before its job exists
            continue
        try:
            submitted, queue = _add_trial_job(session, sweep, index, settings)
        except (ValidationError, Invalid, Conflict) as exc:
            # A TPE draw is checked only here (its specs were checked at each distribution's
            # extremes, not at every combination): the trial is recorded as invalid, the study
            # told it failed, and the sweep goes on.
            session.rollback()
            _invalid(session, sweep_id, index, exc, settings)
            continue
        except IntegrityError:  # a job outside the sweep took the trial's key: the next pass replays it
            session.rollback()
            continue
        sweep.launched = index + 1
        # The job and the count in one commit, the row locked until then: a concurrent advance
        # (and whoever reads the sweep after it) never sees the job without the count.
        session.commit()
        if queue is not None:
            publish_or_defer(submitted.job_id, queue)


def _trial_job_spec(sweep: Sweep, index: int) -> JobSpec:
    """Trial `index`'s job spec: the base with the trial's values; ValidationError if they make none."""
    return JobSpec.model_validate(trial_spec(sweep.request["base"], sweep.name, sweep.trials[index]["params"]))


def _add_trial_job(session: Session, sweep: Sweep, index: int, settings: Settings):
    """Trial `index`'s job, added (not committed). ValidationError, Invalid or Conflict where its
    values make no job that can run."""
    return submission.add_job(
        session,
        spec=_trial_job_spec(sweep, index),
        settings=settings,
        idempotency_key=f"sweep:{sweep.id}:{index}",
        sweep=(sweep.id, index),
    )


# A sweep stops launching trials once this many in a row have failed alike, for a reason that comes
# from what every trial shares (its dataset, its starting weights and their files), not from its
# values: the trials left would fail the same way. A trial that diverges or runs out of memory
# stops nothing, and nor does a store that cannot be reached (its trials are retried, and their
# errors name each trial's own files).
FAIL_FAST = 3
SHARED_CAUSES = frozenset(
    {
        "dataset_not_found",
        "invalid_data",
        "unsafe_data",
        "missing_weights",
        "invalid_weights",
        "missing_file",
        "corrupt_file",
    }
)


def failing_alike(ranked: list[Trial]) -> str | None:
    """Why the sweep should launch nothing more, if the last FAIL_FAST trials to end all failed with
    one of SHARED_CAUSES and the same error; else None."""
    ended = sorted(
        (t for t in ranked if t.job is not None and t.job.status in JobStatus.FINAL),
        key=lambda t: (t.job.finished_at, t.index),
    )[-FAIL_FAST:]
    causes = {(t.job.status, t.job.reason, t.job.error) for t in ended}
    if len(ended) < FAIL_FAST or len(causes) != 1:
        return None
    status, reason, error = causes.pop()
    if status != JobStatus.FAILED or reason not in SHARED_CAUSES:
        return None
    indices = sorted(t.index for t in ended)
    return (
        f"trials {', '.join(map(str, indices[:-1]))} and {indices[-1]} failed alike ({reason}: {error}), "
        "so the sweep launched no more trials and cancelled those not yet ended; fix the cause and resume it"
    )[:2000]


def _without(entry: dict, *keys: str) -> dict:
    return {key: value for key, value in entry.items() if key not in keys}


def _replaced(trials: list[dict], index: int, entry: dict) -> list[dict]:
    return [*trials[:index], entry, *trials[index + 1 :]]


def _run_again(session: Session, sweep: Sweep, index: int, ranked: list[Trial], settings: Settings) -> None:
    """Run trial `index` again, for a resumed sweep, and commit: resume its job, or for a trial
    whose values made no job (invalid), check them again and launch one. Its study, which was told
    how the trial ended, is asked for a new trial of the same values. A job that cannot resume any
    more (its uploaded dataset was deleted), or values still refused, leave the trial as it was."""
    job = next((t.job for t in ranked if t.index == index), None)
    invalid = refused(sweep, index, job)
    entry = _without(sweep.trials[index], "again", "error", "refused")
    request = SweepSpec.model_validate(sweep.request) if sweep.study is not None else None
    if request is not None:
        entry["number"], _ = studies.ask(settings, sweep.study, request, index=index, fixed=entry["params"])
    sweep.trials = _replaced(sweep.trials, index, entry)
    if not invalid and (job is None or job.status not in CUT_SHORT):
        session.commit()
        return
    try:
        if invalid:
            submitted, queue = _add_trial_job(session, sweep, index, settings)
            session.commit()
            if queue is not None:
                publish_or_defer(submitted.job_id, queue)
        else:
            submission.resume_job(session, job_id=job.id, settings=settings, by_its_sweep=True)  # commits both
    except IntegrityError:  # a job outside the sweep took the trial's key: the next pass replays it
        session.rollback()
    except (ValidationError, Invalid, Conflict, jobs.InvalidTransition) as exc:
        session.rollback()
        locked = session.get(Sweep, sweep.id, populate_existing=True, with_for_update=True)
        if request is not None:  # the trial asked for it will not run
            studies.tell(settings, sweep.study, request, {entry["number"]: ("fail", None)})
        failed = {**_without(locked.trials[index], "again"), "error": str(exc)[:2000], "refused": invalid}
        if isinstance(exc, submission.CannotResume):  # never will: no later resume tries it again
            failed["cannot_resume"] = True
        locked.trials = _replaced(locked.trials, index, failed)
        session.commit()


# Trials whose job ended without training as asked: a resumed sweep runs them again, and they rank
# after those that ran (or run) on, whatever value they had reached.
CUT_SHORT = (JobStatus.FAILED, JobStatus.CANCELLED)


def refused(sweep: Sweep, index: int, job: Job | None) -> bool:
    """Whether trial `index`'s values made no job (its status `invalid`): recorded `refused`, or in
    a row from before that key, an error and no job."""
    entry = sweep.trials[index] if index < len(sweep.trials) else {}
    return job is None and bool(entry.get("refused", "error" in entry))


def _values_check(sweep: Sweep, index: int) -> bool:
    """Whether trial `index`'s spec is valid in itself: a refusal of it came from what it met (its
    dataset gone, say), which a resume may find fixed, not from its values (a TPE draw's), which
    no resume changes."""
    try:
        _trial_job_spec(sweep, index)
    except ValidationError:
        return False
    return True


def _to_run_again(sweep: Sweep, ranked: list[Trial]) -> set[int]:
    """The trials a resumed sweep runs again: those whose job failed or was cancelled, and those
    refused for what they met rather than for their values."""
    return {
        t.index
        for t in ranked
        if (t.job is not None and t.job.status in CUT_SHORT and not sweep.trials[t.index].get("cannot_resume"))
        or (t.index < sweep.launched and refused(sweep, t.index, t.job) and _values_check(sweep, t.index))
    }


def resumable(sweep: Sweep, ranked: list[Trial]) -> bool:
    """Whether resume() would run something: a trial to run again, or one never launched, in a sweep
    that has ended."""
    return sweep.finished_at is not None and bool(_to_run_again(sweep, ranked) or sweep.launched < sweep.size)


def resume(session: Session, *, sweep_id: str, settings: Settings) -> None:
    """Go on with a sweep that stopped, failed or was cancelled: run again its trials whose jobs failed
    or were cancelled (each resumed from its last epoch) and those refused at launch for what they
    met (their dataset gone), then launch those it had not, at most max_parallel unfinished at a
    time. Conflict for a sweep still running, or one with nothing left to run."""
    sweep_id = require(session, sweep_id=sweep_id).id
    sweep = session.get(Sweep, sweep_id, populate_existing=True, with_for_update=True)
    if sweep.finished_at is None:
        session.rollback()
        stopping = sweep.cancelled_at is not None or sweep.stopped is not None
        raise Conflict(
            f"sweep {sweep_id} is still {'stopping its trials' if stopping else 'running'}: "
            "it can be resumed once they have ended"
        )
    ranked = trials(session, sweep)
    if not resumable(sweep, ranked):
        session.rollback()
        stuck = [t.index for t in ranked if t.index < len(sweep.trials) and sweep.trials[t.index].get("cannot_resume")]
        if stuck:
            raise Conflict(
                f"sweep {sweep_id} has nothing left that can run: trial(s) {', '.join(map(str, sorted(stuck)))} "
                f"cannot run again ({sweep.trials[stuck[0]]['error']}), and no other is left to run"
            )
        raise Conflict(f"sweep {sweep_id} ran every trial to its end: there is nothing to resume")
    again = _to_run_again(sweep, ranked)
    # A trial asked of the study but never launched (the stop came between) was told it failed: it
    # is asked for anew when it is launched.
    sweep.trials = [
        {
            **_without(entry, "again", *(("number",) if i >= sweep.launched else ())),
            **({"again": True} if i in again else {}),
        }
        for i, entry in enumerate(sweep.trials)
    ]
    sweep.cancelled_at = sweep.stopped = sweep.finished_at = None
    session.commit()
    advance(session, sweep_id=sweep_id, settings=settings)


def _cancel_unfinished(session: Session, sweep_id: str, *, reason: str) -> None:
    for job_id in session.scalars(select(Job.id).where(Job.sweep_id == sweep_id, Job.status.not_in(JobStatus.FINAL))):
        try:
            jobs.request_cancel(session, job_id=job_id, reason=reason)
        except jobs.InvalidTransition:
            pass  # it ended meanwhile


def _invalid(session: Session, sweep_id: str, index: int, error: Exception, settings: Settings) -> None:
    sweep = session.get(Sweep, sweep_id, populate_existing=True, with_for_update=True)
    if sweep.launched != index:
        session.commit()
        return
    entry = {**sweep.trials[index], "error": str(error)[:2000], "refused": True}
    sweep.trials = [*sweep.trials[:index], entry, *sweep.trials[index + 1 :]]
    sweep.launched = index + 1
    if sweep.study is not None and "number" in entry:
        studies.tell(settings, sweep.study, SweepSpec.model_validate(sweep.request), {entry["number"]: ("fail", None)})
    session.commit()


def _ask(sweep: Sweep, index: int, settings: Settings) -> None:
    """Record trial `index`'s Optuna trial, asking the study for its values (TPE) or telling it
    the values fixed beforehand."""
    request = SweepSpec.model_validate(sweep.request)
    fixed = sweep.trials[index]["params"] if index < len(sweep.trials) else None
    number, params = studies.ask(settings, sweep.study, request, index=index, fixed=fixed)
    entry = {"params": params, "number": number}
    sweep.trials = [*sweep.trials[:index], entry, *sweep.trials[index + 1 :]]


# A trial's job's final status -> how the study is told it ended.
TOLD_AS = {JobStatus.SUCCEEDED: "complete", JobStatus.PRUNED: "pruned"}


def _tell_ended(session: Session, sweep: Sweep, ranked: list[Trial], settings: Settings) -> None:
    """Tell the study the end of every trial whose job ended (or was deleted) since it was last told."""
    request = SweepSpec.model_validate(sweep.request)
    open_numbers = set(studies.running(settings, sweep.study, request))
    ended = {}
    for trial in ranked:
        number = sweep.trials[trial.index].get("number") if trial.index < len(sweep.trials) else None
        if number not in open_numbers or trial.index >= sweep.launched:
            continue
        if trial.job is None:  # its job was deleted
            ended[number] = ("fail", None)
        elif trial.job.status in JobStatus.FINAL:
            ended[number] = (TOLD_AS.get(trial.job.status, "fail"), trial.metric)
    if ended:
        studies.tell(settings, sweep.study, request, ended)


@dataclass
class TrialReporter:
    """What a worker reports a pruned sweep's trial's epochs through."""

    settings: Settings
    study: str
    request: SweepSpec
    number: int
    metric: str

    @property
    def pruner(self) -> str:
        return self.request.pruner.name

    def pruned_at(self) -> int | None:
        """The epoch after which the pruner already stopped this trial, if an attempt died before
        the job's end was recorded."""
        return studies.pruned_at(self.settings, self.study, number=self.number)

    def should_prune(self, epoch: int, metrics: dict) -> bool:
        """Report the epoch's value of the sweep's metric; True if the pruner stops the trial here."""
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return False
        return studies.report(self.settings, self.study, self.request, number=self.number, epoch=epoch, value=value)


def reporter(session: Session, *, job_id: str, settings: Settings) -> TrialReporter | None:
    """For a job that runs a trial of a sweep with a pruner, its reporter; else None."""
    found = session.execute(
        select(Job.sweep_trial, Sweep).join(Sweep, Job.sweep_id == Sweep.id).where(Job.id == job_id)
    ).first()
    if found is None:
        return None
    index, sweep = found
    number = sweep.trials[index].get("number") if sweep.study and index < len(sweep.trials) else None
    if number is None or not (sweep.request or {}).get("pruner"):
        return None
    return TrialReporter(settings, sweep.study, SweepSpec.model_validate(sweep.request), number, sweep.metric)


def unfinished(session: Session) -> list[str]:
    """Sweeps that still have trials to launch, jobs running or a study to tell."""
    return list(session.scalars(select(Sweep.id).where(Sweep.finished_at.is_(None))))


def require(session: Session, *, sweep_id: str) -> Sweep:
    """One sweep, named by its id or a unique prefix of it; NotFound if there is none."""
    sweep = session.get(Sweep, resolve_id(session, Sweep, sweep_id, kind="sweep"), populate_existing=True)
    if sweep is None:
        raise NotFound(not_found("sweep", sweep_id))
    return sweep


def cancel(session: Session, *, sweep_id: str, settings: Settings) -> None:
    """Launch nothing more, and cancel the sweep's unfinished jobs (its study is told as they end);
    Conflict for a sweep that ended before (cancelling one again changes nothing)."""
    sweep = require(session, sweep_id=sweep_id)
    if sweep.stopped is not None:
        raise Conflict(f"sweep {sweep.id} stopped: {sweep.stopped}")
    if sweep.finished_at is not None and sweep.cancelled_at is None:
        raise Conflict(f"sweep {sweep.id} has already ended; there is nothing left to cancel")
    sweep_id = sweep.id
    session.execute(
        update(Sweep).where(Sweep.id == sweep_id, Sweep.cancelled_at.is_(None)).values(cancelled_at=utcnow())
    )
    _cancel_unfinished(session, sweep_id, reason=jobs.USER_CANCELLED)
    session.commit()
    advance(session, sweep_id=sweep_id, settings=settings)


@dataclass
class Trial:
    index: int
    params: dict
    job: Job | None
    metric: float | None


def trials(session: Session, sweep: Sweep) -> list[Trial]:
    """Every trial with its job (None until launched) and the sweep's metric at the epoch the job
    serves (job:<id>, its best checkpoint: chosen on validation data or early stopping's metric,
    else its last epoch), ranked: best first, then those whose job failed or was cancelled, then
    trials without a value, unlaunched ones last.
    The best value over all epochs would pick each trial's epoch by the sweep's metric, the test
    set's by default: a result selected on the data it reports."""
    return trials_of(session, [sweep])[sweep.id]


def trials_of(session: Session, sweeps: list[Sweep]) -> dict[str, list[Trial]]:
    """trials() of several sweeps, in one query for their jobs and one for their checkpoints."""
    jobs_of: dict[str, dict[int, Job]] = {sweep.id: {} for sweep in sweeps}
    found = session.scalars(select(Job).where(Job.sweep_id.in_(list(jobs_of))).options(selectinload(Job.checkpoints)))
    for job in found:
        jobs_of[job.sweep_id][job.sweep_trial] = job
    best: dict[str, float] = {}
    for sweep in sweeps:
        for job in jobs_of[sweep.id].values():
            served = jobs.best_checkpoint(job)
            value = (served.metrics or {}).get(sweep.metric) if served is not None else None
            if value is not None:
                best[job.id] = value
    return {sweep.id: _ranked(sweep, jobs_of[sweep.id], best) for sweep in sweeps}


def _ranked(sweep: Sweep, by_trial: dict[int, Job], best: dict[str, float]) -> list[Trial]:
    drawn = [t["params"] for t in sweep.trials] + [{}] * (sweep.size - len(sweep.trials))  # TPE's come later
    found = [
        Trial(i, params, by_trial.get(i), best.get(by_trial[i].id) if i in by_trial else None)
        for i, params in enumerate(drawn)
    ]
    sign = -1 if sweep.mode == "max" else 1
    return sorted(
        found,
        key=lambda t: (
            (t.job is None, t.job is not None and t.job.status in CUT_SHORT, t.metric is None)
            + (sign * (t.metric or 0), t.index)
        ),
    )


@dataclass
class Ended:
    """A trial that ended, in the order trials ended."""

    trial: int
    status: str
    epochs: int  # that it trained
    spent: int  # by the sweep's trials that had ended by then, this one's included
    metric: float | None  # its best value of the sweep's metric
    best: float | None  # the best of a trial that succeeded or was pruned by then


def history(session: Session, sweep: Sweep) -> list[Ended]:
    """The sweep's ended trials in the order they ended, with the epochs spent and the best value
    found so far: how fast a search finds its best."""
    ended = sorted(
        (t for t in trials(session, sweep) if t.job is not None and t.job.status in JobStatus.FINAL),
        key=lambda t: (t.job.finished_at, t.index),
    )
    better = max if sweep.mode == "max" else min
    found, spent, best = [], 0, None
    for trial in ended:
        spent += trial.job.epoch
        if trial.metric is not None and trial.job.status in (JobStatus.SUCCEEDED, JobStatus.PRUNED):
            best = trial.metric if best is None else better(best, trial.metric)
        found.append(Ended(trial.index, trial.job.status, trial.job.epoch, spent, trial.metric, best))
    return found


def importances(session: Session, sweep: Sweep) -> tuple[dict[str, float], int]:
    """Optuna's importance of each varied value for the sweep's metric, from the trials that ran to
    the end, and how many those were."""
    finished = [
        (t.params, t.metric)
        for t in trials(session, sweep)
        if t.job is not None and t.job.status == JobStatus.SUCCEEDED and t.metric is not None
    ]
    return studies.importances(SweepSpec.model_validate(sweep.request), finished, sweep.mode), len(finished)


def status(sweep: Sweep, ranked: list[Trial]) -> str:
    if sweep.cancelled_at is not None:
        return "cancelled"
    states = [t.job.status for t in ranked if t.job is not None]
    if (sweep.launched < sweep.size and sweep.stopped is None) or any(s not in JobStatus.FINAL for s in states):
        return "running"
    invalid = any(refused(sweep, t.index, t.job) for t in ranked)
    succeeded = all(s in (JobStatus.SUCCEEDED, JobStatus.PRUNED) for s in states) and not invalid
    return "succeeded" if succeeded and sweep.stopped is None else "failed"


def page(session: Session, *, limit: int, offset: int) -> tuple[list[Sweep], int]:
    rows = list(session.scalars(select(Sweep).order_by(Sweep.created_at.desc(), Sweep.id).limit(limit).offset(offset)))
    return rows, session.scalar(select(func.count()).select_from(Sweep))

"""Schemas of the sweeps API: a sweep with its trials ranked by its metric."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from pydantic import BaseModel

from service.core import sweeps
from service.core.tables import JobStatus, Sweep


class SweepJobPublic(BaseModel):
    trial: int
    # None until the trial is launched (max_parallel holds it back), then its job.
    job_id: str | None
    # The job's status ("pruned": the sweep's pruner stopped it early); "pending" before it is
    # launched ("cancelled" once the sweep is cancelled or stopped, which launches it never), "deleted" if its job was
    # deleted, "invalid" if its values (a TPE draw) made a spec that could not run (`error` says why).
    status: str
    params: dict  # {} for a TPE trial not drawn yet
    epochs: int  # the epochs its job has trained
    # The job's best value of the sweep's metric over its epochs so far.
    metric: float | None
    error: str | None = None  # why its values made no job (invalid), or why its job failed
    reason: str | None = None  # why its job ended as it did (its job's reason: nan_loss, pruned_by_asha, ...)


class SweepPublic(BaseModel):
    id: str
    name: str
    # running, succeeded (every job succeeded or was pruned), failed (some job failed or was
    # cancelled, or the sweep stopped), cancelled
    status: str
    # Why it launched no more trials although nobody cancelled it: its last trials failed alike, for
    # a cause they all share (a missing dataset, missing weights), which the trials left would meet too.
    stopped: str | None = None
    search: str  # grid, random or tpe
    pruner: str | None  # asha, hyperband, median, or None
    metric: str
    mode: str
    max_parallel: int | None
    trials: int
    launched: int
    counts: dict[str, int]  # trials by status
    epochs_spent: int  # by all its trials together
    created_at: datetime
    cancelled_at: datetime | None
    finished_at: datetime | None  # once every trial it runs has ended
    best: SweepJobPublic | None
    jobs: list[SweepJobPublic]  # best first
    # what its trials' jobs were warned of at submission (a dataset or weights no worker has), each once
    warnings: list[str] = []


class EndedPublic(BaseModel):
    trial: int
    status: str
    epochs: int  # that it trained
    spent: int  # epochs the sweep's ended trials had trained when it ended, its own included
    metric: float | None  # its best value of the sweep's metric
    best: float | None  # the best value of a trial that succeeded or was pruned by then


class HistoryPublic(BaseModel):
    metric: str
    mode: str
    ended: list[EndedPublic]  # in the order the trials ended


class ImportancesPublic(BaseModel):
    metric: str
    trials: int  # that ran to the end, which the importances are computed from
    importances: dict[str, float]  # by varied path, most important first, summing to 1


class SweepsPublic(BaseModel):
    data: list[SweepPublic]
    count: int


def sweep_public(sweep: Sweep, ranked: list[sweeps.Trial]) -> SweepPublic:
    def state(trial: sweeps.Trial) -> str:
        if trial.job is not None:
            return trial.job.status
        if sweeps.refused(sweep, trial.index, None):
            return "invalid"
        if trial.index < sweep.launched:
            return "deleted"
        return "cancelled" if sweep.cancelled_at is not None or sweep.stopped is not None else "pending"

    entries = [
        SweepJobPublic(
            trial=t.index,
            job_id=t.job.id if t.job else None,
            status=state(t),
            params=t.params,
            epochs=t.job.epoch if t.job else 0,
            metric=t.metric,
            error=(sweep.trials[t.index].get("error") if t.index < len(sweep.trials) else None)
            or (t.job.error if t.job and t.job.status == JobStatus.FAILED else None),
            reason=t.job.reason if t.job else None,
        )
        for t in ranked
    ]
    # a trial that ran on (or runs): one cut short is no sweep's best, whatever value it reached
    best = next((e for e in entries if e.metric is not None and e.status not in sweeps.CUT_SHORT), None)
    request = sweep.request
    return SweepPublic(
        id=sweep.id,
        name=sweep.name,
        status=sweeps.status(sweep, ranked),
        stopped=sweep.stopped,
        search=next((s for s in ("grid", "random", "tpe") if request.get(s) is not None), "grid"),
        pruner=(request.get("pruner") or {}).get("name"),
        metric=sweep.metric,
        mode=sweep.mode,
        max_parallel=sweep.max_parallel,
        trials=sweep.size,
        launched=sweep.launched,
        counts=dict(Counter(e.status for e in entries)),
        epochs_spent=sum(e.epochs for e in entries),
        created_at=sweep.created_at,
        cancelled_at=sweep.cancelled_at,
        finished_at=sweep.finished_at,
        warnings=list(
            dict.fromkeys(w for t in sorted(ranked, key=lambda t: t.index) if t.job for w in t.job.warnings or [])
        ),
        best=best,
        jobs=entries,
    )

"""The Optuna side of adaptive sweeps. A sweep that samples by TPE or prunes is an Optuna study in
Optuna's own storage (never among trainyard's tables: a schema of its own on PostgreSQL, a file
beside the SQLite database); this module opens it, asks it for trials, reports epochs to it and
tells it how trials ended. core/sweeps.py decides when; Optuna is imported only here, and only
when a sweep needs it.

Each trial is an Optuna trial asked for with the sweep's distributions; its number is recorded in
the sweep's row before its job exists, so a trial is asked for once. Values Optuna cannot hold as
categorical choices (lists, objects) are held as their JSON text and turned back by the choices.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import NullPool

from models.spec.sweeps import Distribution, SweepSpec
from service.core.settings import Settings

log = logging.getLogger(__name__)

INDEX_ATTR = "trainyard_trial"  # each Optuna trial's index among the sweep's trials
PRUNED_AT_ATTR = "trainyard_pruned_at"  # the epoch after which the pruner stopped it
_SCALAR = (type(None), bool, int, float, str)


def storage_url(settings: Settings) -> str:
    """Where the studies live: TRAINYARD_OPTUNA_STORAGE_URL, or beside the database but apart."""
    return settings.optuna_storage_url or _beside(settings.database_url)


@lru_cache(maxsize=8)
def _beside(database_url: str) -> str:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        database = Path(url.database or "trainyard.db")
        return url.set(database=str(database.with_name(f"{database.stem}-optuna{database.suffix}"))).render_as_string(
            hide_password=False
        )
    if url.get_backend_name() == "postgresql":
        schema = _own_schema(database_url)
        return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    raise ValueError(f"set TRAINYARD_OPTUNA_STORAGE_URL: no default place for studies beside {url.drivername}")


def _own_schema(database_url: str) -> str:
    """A schema of Optuna's own in trainyard's PostgreSQL database (created if missing): `optuna`,
    or `<schema>_optuna` when trainyard's tables are in a schema other than public."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        for last_try in (False, True):
            try:
                with engine.begin() as connection:
                    current = connection.scalar(text("SELECT current_schema()"))
                    schema = "optuna" if current in (None, "public") else f"{current}_optuna"
                    connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
                return schema
            except IntegrityError:  # another process created it at the same moment
                if last_try:
                    raise
    finally:
        engine.dispose()


_opening = threading.Lock()
_opened: list = []


def storage(settings: Settings):
    """This process's connection to the studies' storage (its tables created on first use)."""
    return _storage(storage_url(settings), os.getpid())


@lru_cache(maxsize=4)
def _storage(url: str, pid: int):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kwargs = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    with _opening:
        try:
            opened = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except Exception:  # another process created the tables at the same moment: they are there now
            opened = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    if url.startswith("sqlite"):
        with opened.engine.connect() as connection:  # readers never wait for a writer
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    _opened.append(opened)
    return opened


def close() -> None:
    """Close this process's connections to the studies' storage."""
    for opened in _opened:
        opened.engine.dispose()
    _opened.clear()
    _storage.cache_clear()


def study_name(sweep_id: str) -> str:
    return f"sweep-{sweep_id}"


def create(settings: Settings, *, sweep_id: str, mode: str) -> str:
    """A new study for the sweep (or the one a retried request made); returns its name."""
    import optuna

    name = study_name(sweep_id)
    study = optuna.create_study(
        study_name=name,
        storage=storage(settings),
        direction="maximize" if mode == "max" else "minimize",
        load_if_exists=True,
    )
    study.set_user_attr("trainyard_sweep", sweep_id)
    return name


def _load(settings: Settings, name: str, spec: SweepSpec, *, index: int = 0):
    import optuna

    return optuna.load_study(
        study_name=name, storage=storage(settings), sampler=_sampler(spec, index), pruner=_pruner(spec)
    )


def _sampler(spec: SweepSpec, index: int):
    """TPE seeded per trial (the same seed and history draw the same values), or, for a grid or
    random sweep whose values are fixed beforehand, a sampler that is never consulted."""
    import optuna

    if spec.tpe is None:
        return optuna.samplers.RandomSampler(seed=index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            # One stream per (seed, trial): seed + index would give seed 1 trial i's draw to seed 0 trial i + 1.
            seed=int(np.random.SeedSequence([spec.tpe.seed, index]).generate_state(1)[0]),
            n_startup_trials=spec.tpe.startup_trials,
            # With trials running side by side, the running ones count as if they had done badly, so
            # that the next draw goes elsewhere.
            constant_liar=(spec.max_parallel or spec.size) > 1,
        )


def _pruner(spec: SweepSpec):
    import optuna

    pruner = spec.pruner
    if pruner is None:
        return optuna.pruners.NopPruner()
    if pruner.name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=pruner.min_epochs, reduction_factor=pruner.reduction_factor
        )
    if pruner.name == "hyperband":
        epochs = spec.base.get("epochs")
        varied = "epochs" in spec_paths(spec)
        return optuna.pruners.HyperbandPruner(
            min_resource=pruner.min_epochs,
            max_resource="auto" if varied or not isinstance(epochs, int) else max(epochs, pruner.min_epochs),
            reduction_factor=pruner.reduction_factor,
        )
    return optuna.pruners.MedianPruner(
        n_startup_trials=5 if pruner.startup_trials is None else pruner.startup_trials,
        n_warmup_steps=pruner.min_epochs,
    )


def spec_paths(spec: SweepSpec) -> list[str]:
    search = spec.grid if spec.grid is not None else (spec.random or spec.tpe).distributions
    return list(search)


def distributions(spec: SweepSpec) -> dict:
    """The sweep's varied paths as Optuna distributions (a grid's as categorical choices)."""
    import optuna.distributions as od

    if spec.grid is not None:
        return {path: od.CategoricalDistribution([_held(v) for v in values]) for path, values in spec.grid.items()}
    found = {}
    for path, dist in (spec.random or spec.tpe).distributions.items():
        if dist.uniform is not None:
            found[path] = od.FloatDistribution(*dist.uniform)
        elif dist.log_uniform is not None:
            found[path] = od.FloatDistribution(*dist.log_uniform, log=True)
        elif dist.integer is not None:
            found[path] = od.IntDistribution(*dist.integer)
        else:
            found[path] = od.CategoricalDistribution([_held(v) for v in dist.choice])
    return found


def _held(value):
    """A value as an Optuna categorical choice: itself if it can be one, else its JSON text."""
    return value if isinstance(value, _SCALAR) else json.dumps(value, sort_keys=True)


def _choices(spec: SweepSpec, path: str) -> list | None:
    if spec.grid is not None:
        return spec.grid[path]
    dist: Distribution = (spec.random or spec.tpe).distributions[path]
    return dist.choice


def to_optuna(spec: SweepSpec, params: dict) -> dict:
    return {path: _held(value) if _choices(spec, path) is not None else value for path, value in params.items()}


def from_optuna(spec: SweepSpec, params: dict) -> dict:
    found = {}
    for path, value in params.items():
        choices = _choices(spec, path)
        found[path] = next((c for c in choices if _held(c) == value), value) if choices is not None else value
    return found


def ask(settings: Settings, name: str, spec: SweepSpec, *, index: int, fixed: dict | None = None) -> tuple[int, dict]:
    """The sweep's trial `index` as (Optuna trial number, values): drawn by the sampler, or
    `fixed` (a grid's or a random draw's). The caller holds the sweep's lock; a trial asked for
    before a crash, and never recorded, is taken up again instead of asking for another."""
    import optuna

    study = _load(settings, name, spec, index=index)
    states = optuna.trial.TrialState
    mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(INDEX_ATTR) == index]
    running = next((t for t in mine if t.state == states.RUNNING), None)
    if running is not None:
        return running.number, from_optuna(spec, running.params)
    if not any(t.state == states.WAITING for t in mine):
        # Enqueued first, so that the trial carries its index from the moment it exists (and, for
        # a grid or random trial, its values); ask() then takes the oldest waiting trial, which
        # under the sweep's lock is this one.
        study.enqueue_trial(to_optuna(spec, fixed or {}), user_attrs={INDEX_ATTR: index})
    asked = study.ask(distributions(spec))
    if asked.user_attrs.get(INDEX_ATTR) != index:
        raise RuntimeError(f"study {name}: trial {asked.number} was waiting for trial {index}'s place")
    if ended := [t for t in mine if t.state.is_finished()]:
        rungs = spec.pruner is not None and spec.pruner.name == "asha"
        kept = storage(settings)
        _carry_on(kept, _trial_id(kept, name, asked.number), max(ended, key=lambda t: t.number), rungs=rungs)
    return asked.number, from_optuna(spec, asked.params)


def _trial_id(kept, name: str, number: int) -> int:
    """The storage's id of the study's trial `number`."""
    return kept.get_trial_id_from_study_id_trial_number(kept.get_study_id_from_name(name), number)


def _carry_on(kept, trial_id: int, before, *, rungs: bool) -> None:
    """Give a resumed trial's new Optuna trial what its ended one had earned: the epochs it reported,
    and with `rungs` (ASHA's) the rungs it passed. Without them, its first report, some epochs in,
    was ranked at the first rungs against its own earlier values, and pruned for falling behind
    itself. Hyperband's rungs are not carried: a trial's bracket follows its number, so the new
    trial's rungs fall at other epochs."""
    for epoch, value in before.intermediate_values.items():
        kept.set_trial_intermediate_value(trial_id, epoch, value)
    for key, value in before.system_attrs.items() if rungs else ():
        if key.startswith("completed_rung_"):
            kept.set_trial_system_attr(trial_id, key, value)


def report(settings: Settings, name: str, spec: SweepSpec, *, number: int, epoch: int, value: float) -> bool:
    """Report a trial's value of the sweep's metric at an epoch; True if the pruner stops it
    there. A trial the study has already ended (a resumed job's) is never stopped; an epoch
    reported before (a retried one) keeps its first value."""
    import optuna

    study = _load(settings, name, spec)
    kept = storage(settings)
    trial_id = _trial_id(kept, name, number)
    frozen = kept.get_trial(trial_id)
    if frozen.state != optuna.trial.TrialState.RUNNING:
        return False
    if frozen.user_attrs.get(PRUNED_AT_ATTR) is not None:  # decided before (see pruned_at)
        return True
    trial = optuna.trial.Trial(study, trial_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "already reported": a retried epoch
        trial.report(value, epoch)
    # Decided once: successive halving moves a trial to its next rung as it decides, so asking
    # again after a crash would not stop it.
    if trial.should_prune():
        trial.set_user_attr(PRUNED_AT_ATTR, epoch)
        return True
    return False


def pruned_at(settings: Settings, name: str, *, number: int) -> int | None:
    """The epoch after which the pruner stopped a trial the study has not been told the end of:
    an attempt that died before recording the stop ends the job there, training no more."""
    import optuna

    kept = storage(settings)
    frozen = kept.get_trial(_trial_id(kept, name, number))
    return frozen.user_attrs.get(PRUNED_AT_ATTR) if frozen.state == optuna.trial.TrialState.RUNNING else None


def tell(settings: Settings, name: str, spec: SweepSpec, ended: dict[int, tuple[str, float | None]]) -> None:
    """Tell the study how trials ended: {number: ("complete" | "pruned" | "fail", value)}; a trial
    it already knows has ended is left as it is."""
    import optuna

    states = {
        "complete": optuna.trial.TrialState.COMPLETE,
        "pruned": optuna.trial.TrialState.PRUNED,
        "fail": optuna.trial.TrialState.FAIL,
    }
    study = _load(settings, name, spec)
    for number, (state, value) in ended.items():
        if state == "complete" and value is None:
            state = "fail"  # it recorded no value of the metric
        study.tell(number, value if state == "complete" else None, state=states[state], skip_if_finished=True)


def running(settings: Settings, name: str, spec: SweepSpec) -> list[int]:
    """The numbers of the study's trials that it has not been told the end of."""
    import optuna

    study = _load(settings, name, spec)
    return [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))]


IMPORTANCE_TRIALS = 5  # the fewest trials run to the end that importances are computed from


def importances(spec: SweepSpec, finished: list[tuple[dict, float]], mode: str) -> dict[str, float]:
    """Optuna's parameter importances (PED-ANOVA) over trials that ran to the end: [(values,
    metric)]. Empty when there are fewer than IMPORTANCE_TRIALS (from two, any split of the values
    looks decisive), or nothing varies."""
    import optuna

    if len(finished) < IMPORTANCE_TRIALS:
        return {}
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    dists = distributions(spec)
    for params, value in finished:
        held = to_optuna(spec, params)
        try:
            study.add_trial(optuna.trial.create_trial(params=held, distributions=dists, value=value))
        except ValueError:  # a value outside the distributions (a spec edited since): left out
            continue
    try:
        return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as exc:
        log.info("no parameter importances: %s", exc)
        return {}

"""Learning curves and confusion matrices as PNG images (matplotlib, no display needed), and
images' pixels as PNG, for the plot and evaluation routes and the dashboard, which answer with
png_response."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import matplotlib
import numpy as np
from PIL import Image

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from fastapi.concurrency import run_in_threadpool  # noqa: E402
from fastapi.responses import Response  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import LogFormatter, MaxNLocator  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from models.spec.sweeps import differences, label  # noqa: E402
from service.api.deps import read  # noqa: E402
from service.api.schemas.jobs import metric_rows  # noqa: E402
from service.core import jobs, sweeps  # noqa: E402
from service.core.studies import IMPORTANCE_TRIALS  # noqa: E402
from service.core.tables import Job, JobStatus  # noqa: E402

PNG_RESPONSE = {200: {"content": {"image/png": {}}, "description": "A PNG image"}}


async def png_response(draw: Callable[..., bytes], *args) -> Response:
    """draw(*args)'s PNG, drawn in the thread pool (matplotlib and Pillow block)."""
    return Response(await run_in_threadpool(draw, *args), media_type="image/png")


async def curves_response(series: Callable[..., list[tuple[str, list[dict]]]], *args) -> Response:
    """The learning curves of series(session, *args) (job_series or sweep_series), read and drawn off the loop."""
    return await png_response(learning_curves, await read(series, *args))


COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray")


def colour_of(index: int) -> str:
    """The colour of the `index`th series of a figure, as CSS (#rrggbb): a page's key to its lines."""
    return matplotlib.colors.to_hex(COLOURS[index % len(COLOURS)])


class PlainLogFormatter(LogFormatter):
    """A log axis's labels as plain numbers (0.5, 1.16, 2), not 5×10^-1: the ticks matplotlib
    labels by default, written with %g."""

    def __call__(self, x, pos=None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


def log_y(ax) -> None:
    """A log y axis labelled in plain numbers: losses fall by orders of magnitude."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(PlainLogFormatter())
    ax.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))


def log_y_for_a_loss(ax, metric: str, values: list[float]) -> None:
    """log_y when the metric is a loss and every value is above zero."""
    if metric.endswith("_loss") and values and min(values) > 0:
        log_y(ax)


def pixels_png(pixels: np.ndarray) -> bytes:
    """uint8 pixels [C, H, W] (C = 1 grey or 3 RGB) as a PNG file, unchanged."""
    image = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def compared(session: Session, job_ids: list[str]) -> list[Job]:
    """The jobs of ids or prefixes in the order they were submitted, whatever the order given: a job
    has one colour on every plot and page of the same jobs. NotFound for an unknown job."""
    found = [jobs.require_job(session, job_id=job_id) for job_id in job_ids]
    return sorted(found, key=lambda job: (job.created_at, job.id))


def job_series(session: Session, job_ids: list[str]) -> list[tuple[str, list[dict], int | None]]:
    """(label, metric rows, best epoch) per job for learning_curves, in `compared` order."""
    found = compared(session, job_ids)
    return labelled_series(session, list(zip(found, compared_labels(found), strict=True)))


def job_series_as_shown(session: Session, job_id: str, epochs: int, best: int | None) -> list[tuple]:
    """A job's series as its page showed it: its first `epochs` epochs, `best` marked. The page's
    picture is fetched after the page, when a running job may have ended another epoch."""
    [(label, rows, _)] = job_series(session, [job_id])
    shown = rows[:epochs]
    return [(label, shown, best if any(row["epoch"] == best for row in shown) else None)]


COMPARED = (2, 8)


def compared_jobs(values: list[str]) -> list[str]:
    """The job ids of a comparison: 2 to 8, each value of the `jobs` parameter holding one or several."""
    ids = [part.strip() for value in values for part in value.split(",") if part.strip()]
    if not COMPARED[0] <= len(ids) <= COMPARED[1]:
        raise ValueError(
            f"give {COMPARED[0]} to {COMPARED[1]} job ids (or 6+ character prefixes), comma-separated or each in "
            f"a jobs parameter of its own; {len(ids)} given"
        )
    return ids


def compared_labels(found: list[Job]) -> list[str]:
    """A label per job: its id alone, its name among several, and where names repeat (two runs of one
    example), the values that tell them apart."""
    if len(found) == 1:
        return [found[0].id[:8]]
    names = [job.name or job.id[:8] for job in found]
    if len(set(names)) == len(names):
        return names
    # Unset fields (None: no augmentation where the other has some) are left out, and a long label
    # is cut: the compare page's table has every value.
    told_apart = [
        {path: value for path, value in values.items() if value is not None}
        for values in differences([job.spec for job in found])
    ]
    labels = [
        _cut(f"{name} [{label(values)}]") if values else name for name, values in zip(names, told_apart, strict=True)
    ]
    return [f"{text} {job.id[:8]}" if labels.count(text) > 1 else text for text, job in zip(labels, found, strict=True)]


LABEL_CHARACTERS = 60


def _cut(text: str) -> str:
    return text if len(text) <= LABEL_CHARACTERS else text[: LABEL_CHARACTERS - 2] + "…]"


def labelled_series(session: Session, labelled: list[tuple[Job, str]]) -> list[tuple[str, list[dict], int | None]]:
    """(label, metric rows, the epoch `best` serves) for each (job, label)."""
    series = []
    for job, name in labelled:
        best = jobs.best_checkpoint(job)
        series.append((name, metric_rows(jobs.get_metrics(session, job_id=job.id)), best.epoch if best else None))
    return series


MAX_SWEEP_CURVES = 12


@dataclass
class TrialCurve:
    label: str
    epochs: list[int]
    values: list[float | None]
    status: str


def sweep_curves(session: Session, sweep_id: str) -> tuple[list[TrialCurve], str, str]:
    """The sweep's metric per epoch of its best launched trials (up to MAX_SWEEP_CURVES), labelled
    by their values, best first; the metric and the sweep's name."""
    sweep = sweeps.require(session, sweep_id=sweep_id)
    ranked = [t for t in sweeps.trials(session, sweep) if t.job is not None][:MAX_SWEEP_CURVES]
    curves = []
    for trial in ranked:
        rows = jobs.get_metrics(session, job_id=trial.job.id)
        values = [getattr(row, sweep.metric) for row in rows]
        curves.append(TrialCurve(label(trial.params), [row.epoch for row in rows], values, trial.job.status))
    return curves, sweep.metric, sweep.name


def sweep_curves_png(curves: list[TrialCurve], metric: str, name: str) -> bytes:
    """One line per trial of the sweep's metric against the epoch, the best trial's thickest; a
    pruned trial's line is dashed and ends in a cross where the pruner stopped it."""
    figure, ax = plt.subplots(figsize=(10, 4.2))
    for index, curve in enumerate(curves):
        colour = COLOURS[index % len(COLOURS)]
        pruned = curve.status == JobStatus.PRUNED
        ax.plot(
            curve.epochs,
            curve.values,
            color=colour,
            linewidth=2.5 if index == 0 else 1.2,
            linestyle="--" if pruned else "-",
            marker="o" if len(curve.epochs) == 1 else None,
            label=curve.label + (" (pruned)" if pruned else ""),
        )
        if pruned and curve.epochs:
            ax.plot(curve.epochs[-1], curve.values[-1], marker="x", markersize=9, color=colour)
    trials = "trial" if len(curves) == 1 else f"{len(curves)} trials"
    ax.set(xlabel="epoch", ylabel=metric, title=f"{name}: {metric} per epoch of its best {trials}")
    whole_ticks(ax, [epoch for curve in curves for epoch in curve.epochs])
    log_y_for_a_loss(ax, metric, [v for curve in curves for v in curve.values if v is not None])
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _png(figure)


# How each ended trial shows on the history: (marker, colour, legend).
ENDINGS = {
    JobStatus.SUCCEEDED: ("o", "tab:blue", "ran to the end"),
    JobStatus.PRUNED: ("x", "tab:gray", "pruned"),
}
OTHER_ENDING = ("v", "tab:red", "failed or cancelled")


def sweep_history(session: Session, sweep_id: str) -> tuple[list[sweeps.Ended], str, str]:
    sweep = sweeps.require(session, sweep_id=sweep_id)
    return sweeps.history(session, sweep), sweep.metric, sweep.name


def history_png(ended: list[sweeps.Ended], metric: str, name: str) -> bytes:
    """Each ended trial's best value at the epochs the sweep had spent when it ended, and the best
    so far as a step line: how many epochs the search took to find its best."""
    figure, ax = plt.subplots(figsize=(7, 4))
    for status in {e.status for e in ended}:
        marker, colour, legend = ENDINGS.get(status, OTHER_ENDING)
        shown = [e for e in ended if e.status == status and e.metric is not None]
        ax.scatter([e.spent for e in shown], [e.metric for e in shown], marker=marker, color=colour, label=legend)
    steps = [e for e in ended if e.best is not None]
    if steps:
        ax.step([e.spent for e in steps], [e.best for e in steps], where="post", color="black", label="best so far")
    ax.set(xlabel="epochs spent by all trials", ylabel=metric, title=f"{name}: best {metric} against epochs spent")
    whole_ticks(ax, [e.spent for e in ended])
    log_y_for_a_loss(ax, metric, [e.metric for e in ended if e.metric is not None])
    ax.grid(alpha=0.3)
    if ended:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no trial has ended yet", ha="center", va="center", transform=ax.transAxes)
    return _png(figure)


def sweep_importances(session: Session, sweep_id: str) -> tuple[dict[str, float], int, str]:
    sweep = sweeps.require(session, sweep_id=sweep_id)
    found, used = sweeps.importances(session, sweep)
    return found, used, sweep.metric


def importances_png(importances: dict[str, float], used: int, metric: str) -> bytes:
    """Optuna's importance of each varied value for the metric, as horizontal bars, most important on top."""
    figure, ax = plt.subplots(figsize=(7, 0.5 * max(len(importances), 2) + 1.2))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    title = f"what matters for {metric} ({used} trials that ran to the end)"
    ax.set(xlabel="importance (Optuna, PED-ANOVA)", title=title)
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3, axis="x")
    if not importances:
        why = (
            f"importances need {IMPORTANCE_TRIALS} trials run to the end"
            if used < IMPORTANCE_TRIALS
            else "nothing that varies could be told apart"
        )
        ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes)
    return _png(figure)


def whole_ticks(ax, xs: list[int]) -> None:
    """Whole numbers on the x axis (epochs); one value alone is shown with a little room each side
    (left to itself, matplotlib spans it 0.95 to 1.05 with ticks between)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(set(xs)) == 1:
        ax.set_xlim(xs[0] - 1, xs[0] + 1)


def learning_curves(series: list[tuple]) -> bytes:
    """Loss (left) and accuracy (right) per epoch, train solid and test dashed, one colour per job,
    as the course draws them; several jobs overlay for comparisons."""
    return _png(learning_curves_figure(series))


def learning_curves_figure(series: list[tuple]):
    """The figure learning_curves draws (the caller closes it): series are (label, rows) or
    (label, rows, best epoch), and a best epoch is marked by a dash-dotted vertical line on both axes."""
    has_acc = any(row.get("test_acc") is not None for _, rows, *_ in series for row in rows)
    figure, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(10 if has_acc else 5.5, 3.8), squeeze=False)
    loss_ax = axes[0][0]
    for index, (name, rows, *best) in enumerate(series):
        epochs = [r["epoch"] for r in rows]
        colour = COLOURS[index % len(COLOURS)]
        # One epoch is a point, which a line alone does not draw: a marker for each split instead
        train, test, val = (
            {"color": colour, "linestyle": style, "marker": marker if len(epochs) == 1 else None}
            for style, marker in (("-", "o"), ("--", "s"), (":", "^"))
        )
        prefix = f"{name} " if len(series) > 1 else ""
        loss_ax.plot(epochs, [r["train_loss"] for r in rows], **train, label=f"{prefix}train loss")
        loss_ax.plot(epochs, [r["test_loss"] for r in rows], **test, label=f"{prefix}test loss")
        if any(r.get("val_loss") is not None for r in rows):
            loss_ax.plot(epochs, [r["val_loss"] for r in rows], **val, label=f"{prefix}val loss")
        accuracy = has_acc and any(r.get("test_acc") is not None for r in rows)  # not a regression compared
        if accuracy:
            acc_ax = axes[0][1]
            acc_ax.plot(epochs, [r["train_acc"] for r in rows], **train, label=f"{prefix}train acc")
            acc_ax.plot(epochs, [r["test_acc"] for r in rows], **test, label=f"{prefix}test acc")
            if any(r.get("val_acc") is not None for r in rows):  # what chooses the best epoch
                acc_ax.plot(epochs, [r["val_acc"] for r in rows], **val, label=f"{prefix}val acc")
        if best and best[0] is not None:
            for ax in axes[0] if accuracy else [loss_ax]:
                ax.axvline(
                    best[0],
                    color=colour,
                    linestyle="-.",
                    linewidth=1,
                    alpha=0.6,
                    label=f"{prefix}best (epoch {best[0]})" if ax is loss_ax else None,
                )
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    for ax in axes[0]:
        whole_ticks(ax, [r["epoch"] for _, rows, *_ in series for r in rows])  # epochs, not 1.5
    if not any(rows for _, rows, *_ in series):
        loss_ax.set(xlim=(0, 1), xticks=[], yticks=[])
        loss_ax.text(0.5, 0.5, "no epoch has ended yet", transform=loss_ax.transAxes, ha="center", color="grey")
        return figure
    log_y_for_a_loss(
        loss_ax, "train_loss", [r["train_loss"] for _, rows, *_ in series for r in rows if r["train_loss"] is not None]
    )
    loss_ax.grid(alpha=0.3)
    if has_acc:
        acc_ax = axes[0][1]
        acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
        acc_ax.grid(alpha=0.3)
    if len(series) > 1:
        _compared_legend(figure, series)
    else:
        for ax in axes[0]:
            ax.legend(fontsize=8)
    return figure


def _compared_legend(figure, series: list[tuple]) -> None:
    """Several jobs' legend below the axes, where it covers no curve: a colour per job (with the
    epoch it serves), then what each line style means."""
    jobs_shown = [
        Line2D(
            [],
            [],
            color=COLOURS[i % len(COLOURS)],
            label=name + (f" (best: epoch {best[0]})" if best and best[0] else ""),
        )
        for i, (name, _, *best) in enumerate(series)
    ]
    lines = [line for ax in figure.axes for line in ax.get_lines()]
    styles = [
        Line2D([], [], color="grey", linestyle=style, label=meaning)
        for style, meaning in (("-", "train"), ("--", "test"), (":", "validation"), ("-.", "best epoch"))
        if any(line.get_linestyle() == style for line in lines)
    ]
    figure.legend(handles=jobs_shown, loc="upper left", bbox_to_anchor=(0.0, 0.0), fontsize=8, frameon=False)
    figure.legend(handles=styles, loc="upper right", bbox_to_anchor=(1.0, 0.0), fontsize=8, frameon=False)


def confusion_matrix(matrix: list[list[int]], classes: list[str]) -> bytes:
    """Counts of true class (rows) against predicted class (columns)."""
    size = max(4.0, 0.55 * len(classes) + 2)
    figure, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (test set)")
    peak = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(
                j, i, str(count), ha="center", va="center", fontsize=8, color="white" if count > peak / 2 else "black"
            )
    return _png(figure)

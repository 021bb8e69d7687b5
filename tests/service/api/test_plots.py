"""Learning-curve images: the loss axis is labelled with plain numbers."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from service.api import plots


def rows(losses: list[float]) -> list[dict]:
    return [
        {"epoch": epoch, "train_loss": loss, "test_loss": loss * 1.02, "train_acc": 0.5, "test_acc": 0.5}
        for epoch, loss in enumerate(losses, start=1)
    ]


def loss_labels(series) -> list[str]:
    figure = plots.learning_curves_figure(series)
    try:
        figure.canvas.draw()
        axis = figure.axes[0].yaxis
        assert figure.axes[0].get_yscale() == "log"
        return [
            t.get_text()
            for ticks in (axis.get_majorticklabels(), axis.get_minorticklabels())
            for t in ticks
            if t.get_text()
        ]
    finally:
        plt.close(figure)


@pytest.mark.parametrize(
    "losses, expected",
    [
        ([1.2, 1.16, 1.12, 1.1], {"1.16", "1.2"}),  # within one decade: minor ticks are labelled
        ([0.9, 0.6, 0.4, 0.31], {"0.4", "1"}),
        ([2.3, 0.5, 0.08, 0.012], {"0.01", "0.1", "1"}),  # several decades: the decades
    ],
)
def test_loss_axis_labels_are_plain_numbers(losses, expected):
    labels = loss_labels([("job", rows(losses))])
    assert expected <= set(labels), labels
    assert not [label for label in labels if "10^" in label or "times" in label or "$" in label or "e" in label]


def test_learning_curves_are_a_png():
    assert plots.learning_curves([("job", rows([1.2, 1.1]))]).startswith(b"\x89PNG")


def test_epochs_are_whole_and_validation_accuracy_is_drawn():
    series = [("job", [{**row, "val_loss": 1.0, "val_acc": 0.7} for row in rows([1.2, 1.1, 1.0])])]
    figure = plots.learning_curves_figure(series)
    try:
        figure.canvas.draw()
        epochs = [
            float(t.get_text().replace("\u2212", "-"))
            for t in figure.axes[0].xaxis.get_majorticklabels()
            if t.get_text()
        ]
        assert epochs and all(epoch == int(epoch) for epoch in epochs), epochs
        assert "val acc" in [line.get_label() for line in figure.axes[1].get_lines()]
    finally:
        plt.close(figure)


def test_the_best_epoch_is_marked_on_both_axes():
    figure = plots.learning_curves_figure([("job", rows([1.2, 1.0, 1.1]), 2)])
    try:
        for ax in figure.axes:
            marks = [line for line in ax.get_lines() if list(line.get_xdata()) == [2, 2]]
            assert len(marks) == 1, [line.get_label() for line in ax.get_lines()]
        assert "best (epoch 2)" in [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    finally:
        plt.close(figure)
    unmarked = plots.learning_curves_figure([("job", rows([1.2, 1.0]), None)])
    try:
        assert not [line for line in unmarked.axes[0].get_lines() if len(set(line.get_xdata())) == 1]
    finally:
        plt.close(unmarked)


def test_a_regression_compared_with_a_classifier_has_no_accuracy_lines():
    regression = [{**row, "train_acc": None, "test_acc": None} for row in rows([1.2, 1.1])]
    figure = plots.learning_curves_figure([("classifier", rows([1.2, 1.1])), ("regression", regression, 2)])
    try:
        labels = [line.get_label() for line in figure.axes[1].get_lines()]
        assert labels == ["classifier train acc", "classifier test acc"], labels
        assert "regression best (epoch 2)" in [line.get_label() for line in figure.axes[0].get_lines()]
    finally:
        plt.close(figure)


def test_a_job_with_no_epoch_says_so():
    figure = plots.learning_curves_figure([("job", [])])
    try:
        assert [text.get_text() for text in figure.axes[0].texts] == ["no epoch has ended yet"]
        assert list(figure.axes[0].get_xticks()) == []
    finally:
        plt.close(figure)


@pytest.mark.parametrize(
    ("metric", "values", "scale"),
    [
        ("test_loss", [250.0, 0.04], "log"),  # a sweep's losses fall by orders of magnitude
        ("val_loss", [0.0, 1.0], "linear"),  # a zero has no place on a log axis
        ("test_acc", [0.2, 0.9], "linear"),
        ("test_loss", [], "linear"),
    ],
)
def test_a_sweeps_loss_is_drawn_on_a_log_axis(metric, values, scale):
    figure, ax = plt.subplots()
    try:
        plots.log_y_for_a_loss(ax, metric, values)
        assert ax.get_yscale() == scale
    finally:
        plt.close(figure)


def test_importances_without_enough_trials_say_how_many_they_need(monkeypatch):
    """The picture said "not enough trials ran to the end yet" of a finished 3-trial grid."""
    said = []
    monkeypatch.setattr(plots.plt.Axes, "text", lambda ax, x, y, text, **kw: said.append(text))
    assert plots.importances_png({}, 3, "test_acc").startswith(b"\x89PNG")
    assert plots.importances_png({}, 6, "test_acc").startswith(b"\x89PNG")
    assert said == ["importances need 5 trials run to the end", "nothing that varies could be told apart"]


def test_compared_jobs_of_one_name_are_told_apart_by_what_their_specs_differ_in():
    from service.core.tables import Job

    def job(job_id: str, name: str | None, lr: float, epochs: int = 3) -> Job:
        spec = {"name": name, "optimizer": {"name": "sgd", "lr": lr}, "epochs": epochs, "data": {"dataset": "mnist"}}
        return Job(id=job_id, name=name, spec=spec)

    assert plots.compared_labels([job("a" * 12, "mlp", 0.1)]) == ["aaaaaaaa"]  # one job: its id
    assert plots.compared_labels([job("a" * 12, "mlp", 0.1), job("b" * 12, "lenet", 0.1)]) == ["mlp", "lenet"]
    runs = [job("a" * 12, "mlp", 0.1), job("b" * 12, "mlp", 0.5), job("c" * 12, None, 0.5, epochs=5)]
    assert plots.compared_labels(runs) == [
        "mlp [epochs=3, lr=0.1]",
        "mlp [epochs=3, lr=0.5]",
        "cccccccc [epochs=5, lr=0.5]",
    ]
    twins = [job("a" * 12, "mlp", 0.1), job("b" * 12, "mlp", 0.1)]
    assert plots.compared_labels(twins) == ["mlp aaaaaaaa", "mlp bbbbbbbb"]
    plain, augmented = job("a" * 12, "cnn", 0.1), job("b" * 12, "cnn", 0.1)
    plain.spec["data"]["augment"] = {"brightness": None, "contrast": None, "horizontal_flip": None, "padding": None}
    augmented.spec["data"]["augment"] = {"brightness": 0.2, "contrast": 0.0, "horizontal_flip": True, "padding": 4}
    told = plots.compared_labels([plain, augmented])  # the unset fields are left out, a long label cut
    assert told[0] == "cnn" and told[1].startswith("cnn [brightness=0.2, contrast=0, ")
    assert len(told[1]) == plots.LABEL_CHARACTERS and told[1].endswith("…]")


def test_one_epoch_is_drawn_as_points_on_a_whole_epoch_axis():
    """A line through one point draws nothing: the job's one epoch showed empty axes from 0.95 to 1.05."""
    figure = plots.learning_curves_figure([("job", rows([1.3]))])
    try:
        figure.canvas.draw()
        assert [line.get_marker() for line in figure.axes[0].get_lines()] == ["o", "s"]  # train, test
        assert figure.axes[0].get_xlim() == (0, 2)
        ticks = [t.get_text() for t in figure.axes[0].xaxis.get_majorticklabels() if t.get_text()]
        assert all(float(t.replace("\u2212", "-")).is_integer() for t in ticks), ticks
    finally:
        plt.close(figure)


def test_specs_differ_at_the_paths_where_they_do_not_all_agree():
    from models.spec.sweeps import differences

    a = {"name": "x", "model": {"arch": "mlp", "hidden": [64]}, "optimizer": {"lr": 0.1}}
    b = {"name": "y", "model": {"arch": "mlp", "hidden": [64, 32]}, "optimizer": {"lr": 0.1}, "seed": 3}
    assert differences([a, b]) == [{"model.hidden": [64], "seed": None}, {"model.hidden": [64, 32], "seed": 3}]
    assert differences([a, a]) == [{}, {}]


def test_compared_jobs_are_told_apart_in_one_legend_below_the_curves():
    series = [(f"job {i}", rows([1.2, 1.1, 1.0]), 2) for i in range(3)]
    figure = plots.learning_curves_figure(series)
    try:
        assert all(ax.get_legend() is None for ax in figure.axes)  # nine entries covered the curves
        told, styles = ([text.get_text() for text in legend.get_texts()] for legend in figure.legends)
        assert told == [f"job {i} (best: epoch 2)" for i in range(3)] and styles == ["train", "test", "best epoch"]
    finally:
        plt.close(figure)

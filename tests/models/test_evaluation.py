"""The evaluation report against scikit-learn's metrics on the same predictions."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from models.inference.evaluation import THRESHOLDS, evaluate, report_from_json, report_json

CLASSES = [f"c{i}" for i in range(8)]
NEVER_PREDICTED, NO_SUPPORT, NEITHER = 5, 6, 7


@pytest.fixture
def predictions() -> tuple[np.ndarray, np.ndarray]:
    """Random probabilities and labels: about half the labels agree with the most probable class;
    class 5 has examples but is never predicted, class 6 is predicted but has no examples, class 7
    is neither."""
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(400, len(CLASSES))) * 2
    logits[:, [NEVER_PREDICTED, NEITHER]] = -30
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.where(rng.random(400) < 0.5, probs.argmax(axis=1), rng.integers(0, 6, size=400))
    labels[labels == NO_SUPPORT] = NEVER_PREDICTED
    assert (probs.argmax(axis=1) == NO_SUPPORT).any() and (labels == NEVER_PREDICTED).any()
    return probs.astype(np.float32), labels


def test_report_equals_scikit_learn(predictions):
    probs, labels = predictions
    report = evaluate(torch.from_numpy(probs), torch.from_numpy(labels), CLASSES)
    predicted = probs.argmax(axis=1)
    every = list(range(len(CLASSES)))

    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=every, zero_division=0)
    assert [c.label for c in report.classes] == CLASSES
    assert [c.precision for c in report.classes] == pytest.approx(precision.tolist())
    assert [c.recall for c in report.classes] == pytest.approx(recall.tolist())
    assert [c.f1 for c in report.classes] == pytest.approx(f1.tolist())
    assert [c.support for c in report.classes] == support.tolist()
    assert report.classes[NEVER_PREDICTED].precision == 0 and report.classes[NEVER_PREDICTED].support > 0
    assert report.classes[NO_SUPPORT].recall == 0 and report.classes[NO_SUPPORT].support == 0
    assert report.classes[NEITHER].f1 == 0

    summary = classification_report(labels, predicted, labels=every, zero_division=0, output_dict=True)
    for ours, theirs in ((report.macro_avg, summary["macro avg"]), (report.weighted_avg, summary["weighted avg"])):
        assert (ours.precision, ours.recall, ours.f1) == pytest.approx(
            (theirs["precision"], theirs["recall"], theirs["f1-score"])
        )
        assert ours.support == theirs["support"] == len(labels)

    assert report.num_test == len(labels)
    assert report.accuracy == pytest.approx(accuracy_score(labels, predicted))
    assert set(report.top_k_accuracy) == {1, 3, 5}
    for k, value in report.top_k_accuracy.items():
        assert value == pytest.approx(top_k_accuracy_score(labels, probs, k=k, labels=every)), k
    assert report.confusion_matrix == confusion_matrix(labels, predicted, labels=every).tolist()


def test_mistakes_and_thresholds(predictions):
    probs, labels = predictions
    report = evaluate(torch.from_numpy(probs), torch.from_numpy(labels), CLASSES, mistakes=10)
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    assert len(report.mistakes) == 10
    assert [m.index for m in report.mistakes] == sorted(wrong, key=lambda i: (-confidence[i], i))[:10]
    for m in report.mistakes:
        assert (m.true_label, m.predicted_label) == (CLASSES[labels[m.index]], CLASSES[predicted[m.index]])
        assert m.probability == confidence[m.index]

    assert [row.threshold for row in report.thresholds] == list(THRESHOLDS)
    assert THRESHOLDS[:3] == (0.0, 0.05, 0.1) and THRESHOLDS[-2:] == (0.95, 0.99)
    for row in report.thresholds:
        covered = confidence.astype(np.float64) >= row.threshold
        assert row.coverage == pytest.approx(covered.mean())
        if covered.any():
            assert row.accuracy == pytest.approx((predicted == labels)[covered].mean())
        else:
            assert row.accuracy is None
    coverage = [row.coverage for row in report.thresholds]
    assert coverage[0] == 1.0 and coverage == sorted(coverage, reverse=True) and report.thresholds[-1].accuracy is None


def test_few_classes_ties_and_an_empty_set():
    probs = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    report = evaluate(probs, torch.tensor([1, 2]), ["a", "b", "c"])
    assert report.confusion_matrix == [[0, 0, 0], [1, 0, 0], [0, 0, 1]]  # a tie predicts the first class
    assert report.top_k_accuracy == {1: 0.5}  # k = 3 would be trivially 1 with three classes
    assert [(m.index, m.predicted_label, m.probability) for m in report.mistakes] == [(0, "a", 0.5)]

    empty = evaluate(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), ["a", "b", "c"])
    assert empty.num_test == 0 and empty.accuracy == 0 and empty.mistakes == []
    assert empty.macro_avg.f1 == 0 and all(row.coverage == 0 and row.accuracy is None for row in empty.thresholds)
    with pytest.raises(ValueError):
        evaluate(probs, torch.tensor([1, 3]), ["a", "b", "c"])


def test_a_report_comes_back_whole_from_json(predictions):
    """What SQL keeps (service/core/evaluation_reports.py) reads back as the report it was, its
    top-k keys numbers again; a form that is no report is a ValueError."""
    probs, labels = predictions
    report = evaluate(torch.from_numpy(probs), torch.from_numpy(labels), CLASSES)
    assert report_from_json(json.loads(json.dumps(report_json(report)))) == report
    for broken in ({}, {**report_json(report), "classes": [{"label": "c0"}]}, {**report_json(report), "mistakes": 3}):
        with pytest.raises(ValueError, match="not an evaluation report"):
            report_from_json(broken)

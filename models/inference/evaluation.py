"""A classifier's evaluation report from its class probabilities on a labelled set.

Per-class precision, recall and F1 follow scikit-learn's `precision_recall_fscore_support(...,
labels=range(classes), zero_division=0)`: a class never predicted has precision 0, a class with no
examples has recall 0, and F1 is 2·TP / (2·TP + FP + FN), 0 when that is 0/0. The averages are
taken over every class of the model, as `classification_report` does with the same labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

TOP_K = (1, 3, 5)  # top-k accuracies reported, for k below the number of classes
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(20)) + (0.99,)  # 0.0, 0.05, ..., 0.95, 0.99


@dataclass
class Average:
    precision: float
    recall: float
    f1: float
    support: int  # examples counted


@dataclass
class ClassScores(Average):
    label: str


@dataclass
class Mistake:
    index: int  # into the labelled set
    true_label: str
    predicted_label: str
    probability: float  # of the predicted class


@dataclass
class ThresholdRow:
    threshold: float
    coverage: float  # share of examples whose top probability is >= threshold
    accuracy: float | None  # among those; None when none is covered


@dataclass
class Evaluation:
    num_test: int
    accuracy: float
    top_k_accuracy: dict[int, float]
    classes: list[ClassScores]
    macro_avg: Average
    weighted_avg: Average
    confusion_matrix: list[list[int]]  # [true][predicted]
    mistakes: list[Mistake]  # the most confident wrong predictions first
    thresholds: list[ThresholdRow]


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator elementwise, 0 where the denominator is 0 (zero_division=0)."""
    defined = denominator > 0
    return torch.where(defined, numerator / torch.where(defined, denominator, 1.0), 0.0)


def evaluate(
    probabilities: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[str],
    *,
    mistakes: int = 100,
    top_k: Sequence[int] = TOP_K,
    thresholds: Sequence[float] = THRESHOLDS,
) -> Evaluation:
    """The report for probabilities [N, K] (rows sum to 1) and true class indices [N]; the prediction
    is the most probable class (the first on a tie), and at most `mistakes` mistakes are listed."""
    n, k = probabilities.shape
    if k != len(classes):
        raise ValueError(f"{k} probabilities a row for {len(classes)} classes")
    labels = labels.to(torch.long)
    if n and not 0 <= int(labels.min()) <= int(labels.max()) < k:
        raise ValueError(f"labels must be class indices 0..{k - 1}")
    ks = sorted({1, *(j for j in top_k if j < k)})
    ranked = probabilities.argsort(dim=1, descending=True, stable=True)[:, : ks[-1]]
    predicted = ranked[:, 0]
    confidence = probabilities.gather(1, predicted[:, None]).squeeze(1)
    correct = predicted == labels

    matrix = torch.zeros(k, k, dtype=torch.long)
    matrix.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    hits = matrix.diagonal().double()
    support, predicted_count = matrix.sum(dim=1).double(), matrix.sum(dim=0).double()
    precision, recall = _ratio(hits, predicted_count), _ratio(hits, support)
    f1 = _ratio(2 * hits, support + predicted_count)

    def average(weights: torch.Tensor) -> Average:
        total = weights.sum()
        return Average(*(float(_ratio((m * weights).sum(), total)) for m in (precision, recall, f1)), support=n)

    def share(flags: torch.Tensor) -> float:
        return int(flags.sum()) / n if n else 0.0

    wrong = (~correct).nonzero().squeeze(1)
    order = wrong[confidence[wrong].argsort(descending=True, stable=True)][:mistakes].tolist()
    truth, guess = labels.tolist(), predicted.tolist()
    return Evaluation(
        num_test=n,
        accuracy=share(correct),
        top_k_accuracy={j: share((ranked[:, :j] == labels[:, None]).any(dim=1)) for j in ks},
        classes=[
            ClassScores(p, r, f, int(s), label=label)
            for label, p, r, f, s in zip(
                classes, precision.tolist(), recall.tolist(), f1.tolist(), support.tolist(), strict=False
            )
        ],
        macro_avg=average(torch.ones(k, dtype=torch.float64)),
        weighted_avg=average(support),
        confusion_matrix=matrix.tolist(),
        mistakes=[Mistake(i, classes[truth[i]], classes[guess[i]], float(confidence[i])) for i in order],
        thresholds=[_threshold_row(t, sure, correct) for sure in [confidence.double()] for t in thresholds],
    )


def _threshold_row(threshold: float, confidence: torch.Tensor, correct: torch.Tensor) -> ThresholdRow:
    """Coverage and accuracy when only predictions at least `threshold` sure are kept (compared in
    float64, as the probabilities predict answers in JSON are)."""
    covered = confidence >= threshold
    count = int(covered.sum())
    return ThresholdRow(
        threshold=threshold,
        coverage=count / len(covered) if len(covered) else 0.0,
        accuracy=int(correct[covered].sum()) / count if count else None,
    )


def report_json(report: Evaluation) -> dict:
    """The report as JSON holds it (report_from_json reads it back)."""
    return asdict(report)


def report_from_json(data: dict) -> Evaluation:
    """A report report_json wrote, after a trip through JSON (its top-k keys are strings then);
    ValueError if `data` is not one (a form an older or newer version kept)."""
    try:
        return Evaluation(
            num_test=int(data["num_test"]),
            accuracy=float(data["accuracy"]),
            top_k_accuracy={int(k): float(v) for k, v in data["top_k_accuracy"].items()},
            classes=[ClassScores(**scores) for scores in data["classes"]],
            macro_avg=Average(**data["macro_avg"]),
            weighted_avg=Average(**data["weighted_avg"]),
            confusion_matrix=[[int(count) for count in row] for row in data["confusion_matrix"]],
            mistakes=[Mistake(**mistake) for mistake in data["mistakes"]],
            thresholds=[ThresholdRow(**row) for row in data["thresholds"]],
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not an evaluation report: {exc!r}") from None

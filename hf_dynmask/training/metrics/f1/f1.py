"""F1 score for classification: binary, or per class averaged (macro / micro / weighted).

An ``evaluate`` metric script shipped with hf_dynmask, written for it (not a copy of the Hub module): the Hub's
``evaluate.load("f1")`` cannot be loaded without network, and scikit-learn is not a dependency of hf_dynmask, so the
counting is done here in numpy. The results follow ``sklearn.metrics.f1_score`` (tested against it), with a class
that is never predicted nor present scoring ``zero_division`` (0.0). Keep one import per line: evaluate's import
scanner misreads ``import a, b``.

>>> round(f1_score([0, 1, 1, 2], [0, 1, 2, 2], average="macro"), 6)  # per class: 1, 2/3, 2/3
0.777778
>>> f1_score([0, 1, 1, 0], [0, 1, 0, 0])  # binary, class 1: precision 1/2, recall 1
0.6666666666666666
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import evaluate
import numpy as np

AVERAGES = ("binary", "micro", "macro", "weighted", None)

_DESCRIPTION = """\
F1 is the harmonic mean of precision and recall: F1 = 2 * P * R / (P + R) = 2 TP / (2 TP + FP + FN).
For more than two classes it is computed per class and averaged: "macro" (unweighted mean over classes), "weighted"
(mean weighted by each class's number of references), "micro" (from the TP / FP / FN summed over classes).
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (list of int): predicted labels.
    references (list of int): reference labels, one per prediction.
    average (str or None, defaults to "binary"): "binary" scores the class pos_label only; "micro", "macro",
        "weighted" average over classes; None returns one score per class (in the order of `labels`).
    labels (list of int, optional): the classes to score; defaults to every class in references or predictions.
    pos_label (int, defaults to 1): the positive class with average="binary".
    sample_weight (list of float, optional): one weight per example.
    zero_division (float, defaults to 0.0): the score of a class with no reference and no prediction.
Returns:
    f1 (float, or array of float with average=None): in [0, 1].
Example:
    metric = hf_dynmask.training.metrics.load("f1")
    metric.compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2], average="macro")  # {'f1': 0.777...}
"""

_CITATION = """\
@book{van_rijsbergen_1979,
  title={Information Retrieval},
  author={van Rijsbergen, C. J.},
  edition={2},
  publisher={Butterworths},
  year={1979}
}
"""


def class_counts(
    predictions: np.ndarray, references: np.ndarray, labels: np.ndarray, sample_weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted true positives, false positives and false negatives of each class in ``labels``, each ``(K,)``."""
    hit = predictions == references
    tp = np.array([np.sum(sample_weight[hit & (references == c)]) for c in labels], dtype=np.float64)
    predicted = np.array([np.sum(sample_weight[predictions == c]) for c in labels], dtype=np.float64)
    actual = np.array([np.sum(sample_weight[references == c]) for c in labels], dtype=np.float64)
    return tp, predicted - tp, actual - tp


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, zero_division: float) -> np.ndarray:
    denominator = 2 * tp + fp + fn
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, 2 * tp / safe, zero_division)


def f1_score(
    predictions: Sequence[int] | np.ndarray,
    references: Sequence[int] | np.ndarray,
    average: str | None = "binary",
    labels: Sequence[int] | None = None,
    pos_label: int = 1,
    sample_weight: Sequence[float] | np.ndarray | None = None,
    zero_division: float = 0.0,
) -> float | np.ndarray:
    """F1 of ``predictions`` against ``references`` (both ``(n,)`` integer labels); see the module docstring."""
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {list(AVERAGES)}, got {average!r}")
    pred = np.asarray(predictions).reshape(-1)
    ref = np.asarray(references).reshape(-1)
    if pred.shape != ref.shape:
        raise ValueError(f"got {pred.size} predictions for {ref.size} references; give one prediction per reference")
    if ref.size == 0:
        raise ValueError("no predictions to score; give at least one prediction and its reference")
    weight = np.ones(ref.shape, dtype=np.float64) if sample_weight is None else np.asarray(sample_weight, np.float64)
    if weight.shape != ref.shape:
        raise ValueError(f"sample_weight has {weight.size} values for {ref.size} references; give one per example")
    present = np.union1d(pred, ref)
    if average == "binary":
        if present.size > 2:
            raise ValueError(
                f"average='binary' needs two classes, found {present.size} ({present[:10].tolist()}); "
                "pass average='macro', 'micro' or 'weighted' for multi-class labels"
            )
        if present.size == 2 and pos_label not in present:
            raise ValueError(f"pos_label={pos_label} is not one of the labels {present.tolist()}; pass pos_label=")
        classes = np.array([pos_label])
    else:
        classes = present if labels is None else np.asarray(labels)
    tp, fp, fn = class_counts(pred, ref, classes, weight)
    if average == "micro":
        return float(_f1(tp.sum(), fp.sum(), fn.sum(), zero_division))
    per_class = _f1(tp, fp, fn, zero_division)
    if average is None:
        return per_class
    if average == "binary":
        return float(per_class[0])
    if average == "weighted":
        support = tp + fn
        return float(np.sum(per_class * support) / support.sum()) if support.sum() > 0 else float(zero_division)
    return float(per_class.mean()) if per_class.size else float(zero_division)


class F1(evaluate.Metric):
    """F1 score (binary or averaged over classes); see ``_KWARGS_DESCRIPTION`` for the arguments."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.f1_score.html"],
        )

    def _compute(
        self,
        predictions,
        references,
        average="binary",
        labels=None,
        pos_label=1,
        sample_weight=None,
        zero_division=0.0,
    ):
        score = f1_score(predictions, references, average, labels, pos_label, sample_weight, zero_division)
        return {"f1": score if isinstance(score, float) else score.tolist()}

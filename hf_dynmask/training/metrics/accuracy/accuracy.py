"""Accuracy: the fraction of predictions equal to their reference.

An ``evaluate`` metric script shipped with hf_dynmask, written for it (not a copy of the Hub module): the Hub's
``evaluate.load("accuracy")`` cannot be loaded without network, so this script is loaded by path instead, with
``hf_dynmask.training.metrics.load("accuracy")`` or ``evaluate.load("/path/to/accuracy")``. It needs numpy,
datasets and evaluate only. Keep one import per line: evaluate's import scanner misreads ``import a, b``.

>>> accuracy_score([0, 1, 2, 2], [0, 1, 1, 2])
0.75
>>> accuracy_score([0, 1, 2, 2], [0, 1, 1, 2], normalize=False)
3.0
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """\
Accuracy is the proportion of predictions equal to their reference: (TP + TN) / (TP + TN + FP + FN) for two
classes, correct / total in general. With sample weights, the weighted share of correct predictions.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (list of int): predicted labels.
    references (list of int): reference labels, one per prediction.
    normalize (bool, defaults to True): return the fraction correct; False returns the (weighted) count correct.
    sample_weight (list of float, optional): one weight per example.
Returns:
    accuracy (float): in [0, 1] with normalize=True, else the count of correct predictions.
Example:
    metric = hf_dynmask.training.metrics.load("accuracy")
    metric.compute(predictions=[0, 1, 2, 2], references=[0, 1, 1, 2])  # {'accuracy': 0.75}
"""

_CITATION = """\
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and Varoquaux, G. and Gramfort, A. and Michel, V. and Thirion, B. and Grisel, O. and
          Blondel, M. and Prettenhofer, P. and Weiss, R. and Dubourg, V. and Vanderplas, J. and Passos, A. and
          Cournapeau, D. and Brucher, M. and Perrot, M. and Duchesnay, E.},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
"""


def accuracy_score(
    predictions: Sequence[int] | np.ndarray,
    references: Sequence[int] | np.ndarray,
    normalize: bool = True,
    sample_weight: Sequence[float] | np.ndarray | None = None,
) -> float:
    """Fraction (``normalize=True``) or weighted count of ``predictions`` equal to ``references``, both ``(n,)``."""
    pred = np.asarray(predictions).reshape(-1)
    ref = np.asarray(references).reshape(-1)
    if pred.shape != ref.shape:
        raise ValueError(f"got {pred.size} predictions for {ref.size} references; give one prediction per reference")
    if ref.size == 0:
        raise ValueError("no predictions to score; give at least one prediction and its reference")
    weight = np.ones(ref.shape, dtype=np.float64) if sample_weight is None else np.asarray(sample_weight, np.float64)
    if weight.shape != ref.shape:
        raise ValueError(f"sample_weight has {weight.size} values for {ref.size} references; give one per example")
    correct = float(np.sum(weight * (pred == ref)))
    if not normalize:
        return correct
    total = float(np.sum(weight))
    return correct / total if total > 0 else 0.0


class Accuracy(evaluate.Metric):
    """Accuracy (fraction of correct predictions); see ``_KWARGS_DESCRIPTION`` for the arguments."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.accuracy_score.html"],
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        return {"accuracy": accuracy_score(predictions, references, normalize, sample_weight)}

"""SQuAD v1.1 exact match and token F1 for extractive question answering.

An ``evaluate`` metric script shipped with hf_dynmask, written for it (not a copy of the Hub module): the Hub's
``evaluate.load("squad")`` cannot be loaded without network, so the official v1.1 scoring is re-implemented here with
the standard library. Keep one import per line: evaluate's import scanner misreads ``import a, b``.

Answers are normalized as the official v1.1 script does: lower case, drop ASCII punctuation, drop the articles
"a", "an", "the" (whole words), collapse whitespace. Exact match is 1 when the normalized prediction equals one of
the normalized references; F1 is the bag-of-tokens F1, the best over the references. Both are averaged over the
questions and reported in percent (0-100), like the official script.

>>> normalize_answer("The  Eiffel-Tower!")
'eiffeltower'
>>> squad_scores(["Eiffel Tower", "in Paris"], [["the Eiffel Tower"], ["Paris", "Paris, France"]])
{'exact_match': 50.0, 'f1': 83.33333333333333}
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import datasets
import evaluate

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)

_DESCRIPTION = """\
SQuAD v1.1 scoring for extractive question answering: exact match (EM) and token-level F1 between the predicted
answer text and the reference answers, after normalization (lower case, no punctuation, no articles, single spaces),
each the best over a question's references, averaged over the questions, in percent.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (list of dict): {"id": str, "prediction_text": str} per question.
    references (list of dict): {"id": str, "answers": {"text": list of str, "answer_start": list of int}} per
        question; every prediction id must have a reference.
Returns:
    exact_match (float): percentage of questions whose normalized prediction equals a normalized reference.
    f1 (float): average over questions of the best token F1 against a reference, in percent.
Example:
    metric = hf_dynmask.training.metrics.load("squad")
    metric.compute(
        predictions=[{"id": "q1", "prediction_text": "Eiffel Tower"}],
        references=[{"id": "q1", "answers": {"text": ["the Eiffel Tower"], "answer_start": [0]}}],
    )  # {'exact_match': 100.0, 'f1': 100.0}
"""

_CITATION = """\
@inproceedings{rajpurkar-etal-2016-squad,
  title={{SQ}u{AD}: 100,000+ Questions for Machine Comprehension of Text},
  author={Rajpurkar, Pranav and Zhang, Jian and Lopyrev, Konstantin and Liang, Percy},
  booktitle={Proceedings of the 2016 Conference on Empirical Methods in Natural Language Processing},
  pages={2383--2392},
  year={2016}
}
"""


def normalize_answer(text: str) -> str:
    """Official SQuAD v1.1 normalization: lower, strip punctuation, drop articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalized texts are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """F1 between the bags of normalized tokens (0.0 when they share none, as in v1.1, even if both are empty)."""
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    shared = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if shared == 0:
        return 0.0
    precision = shared / len(pred_tokens)
    recall = shared / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Exact match and F1 in percent: ``predictions[i]`` (a text) against its references ``references[i]``."""
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions for {len(references)} questions; give one per question")
    if not predictions:
        raise ValueError("no predictions to score; give at least one question")
    em = f1 = 0.0
    for i, (prediction, answers) in enumerate(zip(predictions, references, strict=True)):
        if isinstance(answers, str) or len(answers) == 0:
            raise ValueError(f"question {i}: references must be a non-empty list of answer texts, got {answers!r}")
        em += max(exact_match(prediction, answer) for answer in answers)
        f1 += max(token_f1(prediction, answer) for answer in answers)
    return {"exact_match": 100.0 * em / len(predictions), "f1": 100.0 * f1 / len(predictions)}


class Squad(evaluate.Metric):
    """SQuAD v1.1 exact match and F1; see ``_KWARGS_DESCRIPTION`` for the arguments."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": {"id": datasets.Value("string"), "prediction_text": datasets.Value("string")},
                    "references": {
                        "id": datasets.Value("string"),
                        "answers": datasets.Sequence(
                            {"text": datasets.Value("string"), "answer_start": datasets.Value("int32")}
                        ),
                    },
                }
            ),
            reference_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
        )

    def _compute(self, predictions, references):
        answers_by_id = {ref["id"]: ref["answers"]["text"] for ref in references}
        missing = [pred["id"] for pred in predictions if pred["id"] not in answers_by_id]
        if missing:
            raise ValueError(f"predictions {missing[:5]} have no reference with the same id; give one per question")
        texts = [pred["prediction_text"] for pred in predictions]
        return squad_scores(texts, [answers_by_id[pred["id"]] for pred in predictions])

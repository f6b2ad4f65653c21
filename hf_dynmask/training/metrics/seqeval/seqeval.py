"""Entity-level precision, recall and F1 for sequence labelling (NER, chunking), in the sense of seqeval / conlleval.

An ``evaluate`` metric script shipped with hf_dynmask, written for it (not a copy of the Hub module): the Hub's
``evaluate.load("seqeval")`` cannot be loaded without network, and the ``seqeval`` package is not a dependency of
hf_dynmask, so chunking and counting are done here with the standard library. Keep one import per line: the
scanner evaluate runs over this file misreads ``import a, b``, and reads any line that starts with those words.

Tags are ``O`` or ``<prefix>-<TYPE>`` with prefix B (begin), I (inside), E (end) or S (single), as in IOB2 / IOBES.
Entities never cross a sentence (each inner list is one sentence). An entity counts as correct when its type, first
and last token all match a reference entity; precision, recall and F1 are micro-averaged over all entities, and also
reported per type. Two chunking modes:

    default    seqeval's default (conlleval's rules): an ``I-X`` that does not continue an ``X`` entity starts one.
    "strict"   IOB2 only: an entity is a ``B-X`` and the ``I-X`` tokens right after it; a stray ``I-X`` is no entity.

>>> entity_chunks(["B-PER", "I-PER", "O", "B-LOC"])
[Chunk(type='PER', start=0, end=2), Chunk(type='LOC', start=3, end=4)]
>>> entity_chunks(["I-PER", "I-PER", "B-PER"]), entity_chunks(["I-PER", "I-PER", "B-PER"], mode="strict")
([Chunk(type='PER', start=0, end=2), Chunk(type='PER', start=2, end=3)], [Chunk(type='PER', start=2, end=3)])
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

import datasets
import evaluate

PREFIXES = ("B", "I", "E", "S")
MODES = (None, "strict")

_DESCRIPTION = """\
Entity-level evaluation of sequence labelling: tags (IOB2 / IOBES) are grouped into entities (chunks) per sentence,
and a predicted entity is correct when its type and span equal those of a reference entity. Reports micro precision,
recall and F1 over all entities, the same per entity type, and token accuracy.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (list of list of str): predicted tags, one list per sentence.
    references (list of list of str): reference tags, same shapes as predictions.
    mode (str or None, defaults to None): None for seqeval's default chunking, "strict" for strict IOB2.
    zero_division (float, defaults to 0.0): a precision (recall) with no predicted (reference) entity.
Returns:
    overall_precision, overall_recall, overall_f1 (float): micro-averaged over all entities, in [0, 1].
    overall_accuracy (float): fraction of tokens whose tag is right.
    <TYPE> (dict): precision, recall, f1 and number (count of reference entities) for each entity type found in
        the references or the predictions.
Example:
    metric = hf_dynmask.training.metrics.load("seqeval")
    metric.compute(predictions=[["B-PER", "O", "O", "B-LOC"]], references=[["B-PER", "I-PER", "O", "B-LOC"]])
    # overall precision 1/2, recall 1/2, f1 1/2, accuracy 3/4
"""

_CITATION = """\
@misc{seqeval,
  title={{seqeval}: A Python framework for sequence labeling evaluation},
  author={Hiroki Nakayama},
  year={2018},
  note={Software available from https://github.com/chakki-works/seqeval}
}
@inproceedings{ramshaw-marcus-1995-text,
  title={Text Chunking using Transformation-Based Learning},
  author={Ramshaw, Lance and Marcus, Mitch},
  booktitle={Third Workshop on Very Large Corpora},
  year={1995}
}
"""


class Chunk(NamedTuple):
    """One entity: its type and the token span ``[start, end)`` inside its sentence."""

    type: str
    start: int
    end: int


def split_tag(tag: str) -> tuple[str, str]:
    """``"B-PER"`` -> ``("B", "PER")``; ``"O"`` -> ``("O", "")``. Types may contain ``-`` (``"I-creative-work"``)."""
    if tag == "O":
        return "O", ""
    prefix, sep, entity_type = tag.partition("-")
    if not sep or prefix not in PREFIXES or not entity_type:
        raise ValueError(
            f"tag {tag!r} is neither 'O' nor '<B|I|E|S>-<TYPE>'; map label ids to IOB2 tag names (e.g. 'B-PER') "
            "before scoring entities"
        )
    return prefix, entity_type


def _chunk_ends(prev: str, prev_type: str, cur: str, cur_type: str) -> bool:
    """Whether an entity open at the previous tag ends before the current one (conlleval's rules)."""
    return prev in ("E", "S") or (prev in ("B", "I") and cur in ("B", "S", "O")) or prev_type != cur_type


def _chunk_starts(prev: str, prev_type: str, cur: str, cur_type: str) -> bool:
    """Whether the current tag starts an entity (conlleval's rules)."""
    if cur == "O":
        return False
    return cur in ("B", "S") or prev in ("E", "S", "O") or prev_type != cur_type


def entity_chunks(tags: Sequence[str], mode: str | None = None) -> list[Chunk]:
    """The entities of one sentence, in order; see the module docstring for the two modes."""
    if mode not in MODES:
        raise ValueError(f"mode must be None (seqeval's default) or 'strict', got {mode!r}")
    chunks: list[Chunk] = []
    start: int | None = None
    prev, prev_type = "O", ""
    for i, tag in enumerate([*tags, "O"]):  # a trailing "O" closes the last entity
        cur, cur_type = split_tag(tag)
        if mode == "strict":
            if cur in ("E", "S"):
                raise ValueError(f"strict mode reads IOB2 tags (B-, I-, O), got {tag!r}; use mode=None for IOBES")
            continues = cur == "I" and cur_type == prev_type and start is not None
            if start is not None and not continues:
                chunks.append(Chunk(prev_type, start, i))
                start = None
            if cur == "B":
                start = i
            # a stray I- (not continuing an entity of its type) belongs to no entity: forget its type
            prev, prev_type = (cur, cur_type) if start is not None else ("O", "")
            continue
        if start is not None and _chunk_ends(prev, prev_type, cur, cur_type):
            chunks.append(Chunk(prev_type, start, i))
            start = None
        if _chunk_starts(prev, prev_type, cur, cur_type):
            start = i
        prev, prev_type = cur, cur_type
    return chunks


def _ratio(numerator: float, denominator: float, zero_division: float) -> float:
    return numerator / denominator if denominator > 0 else float(zero_division)


def _prf(correct: int, predicted: int, actual: int, zero_division: float) -> tuple[float, float, float]:
    precision = _ratio(correct, predicted, zero_division)
    recall = _ratio(correct, actual, zero_division)
    f1 = _ratio(2 * precision * recall, precision + recall, 0.0)
    return precision, recall, f1


def entity_scores(
    predictions: Sequence[Sequence[str]],
    references: Sequence[Sequence[str]],
    mode: str | None = None,
    zero_division: float = 0.0,
) -> dict:
    """Entity precision / recall / F1 (overall and per type) and token accuracy; see ``_KWARGS_DESCRIPTION``.

    >>> scores = entity_scores([["B-PER", "O", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-LOC"]])
    >>> scores["overall_precision"], scores["overall_recall"], scores["overall_f1"], scores["overall_accuracy"]
    (0.5, 0.5, 0.5, 0.75)
    """
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predicted sentences for {len(references)} reference sentences")
    predicted: set[tuple[int, Chunk]] = set()
    actual: set[tuple[int, Chunk]] = set()
    right_tokens = total_tokens = 0
    for i, (pred_tags, ref_tags) in enumerate(zip(predictions, references, strict=True)):
        if len(pred_tags) != len(ref_tags):
            raise ValueError(
                f"sentence {i}: {len(pred_tags)} predicted tags for {len(ref_tags)} reference tags; give one per token"
            )
        predicted.update((i, chunk) for chunk in entity_chunks(pred_tags, mode))
        actual.update((i, chunk) for chunk in entity_chunks(ref_tags, mode))
        right_tokens += sum(p == r for p, r in zip(pred_tags, ref_tags, strict=True))
        total_tokens += len(ref_tags)
    if total_tokens == 0:
        raise ValueError("no tags to score; give at least one sentence with at least one tag")
    correct = predicted & actual
    count_pred = Counter(chunk.type for _, chunk in predicted)
    count_true = Counter(chunk.type for _, chunk in actual)
    count_correct = Counter(chunk.type for _, chunk in correct)
    scores: dict = {}
    for entity_type in sorted(set(count_pred) | set(count_true)):
        p, r, f = _prf(count_correct[entity_type], count_pred[entity_type], count_true[entity_type], zero_division)
        scores[entity_type] = {"precision": p, "recall": r, "f1": f, "number": count_true[entity_type]}
    p, r, f = _prf(len(correct), len(predicted), len(actual), zero_division)
    scores.update(
        overall_precision=p,
        overall_recall=r,
        overall_f1=f,
        overall_accuracy=_ratio(right_tokens, total_tokens, zero_division),
    )
    return scores


class Seqeval(evaluate.Metric):
    """Entity-level precision / recall / F1; see ``_KWARGS_DESCRIPTION`` for the arguments."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("string", id="label"), id="sequence"),
                    "references": datasets.Sequence(datasets.Value("string", id="label"), id="sequence"),
                }
            ),
            reference_urls=["https://github.com/chakki-works/seqeval", "https://www.clips.uantwerpen.be/conll2000/"],
        )

    def _compute(self, predictions, references, mode=None, zero_division=0.0):
        return entity_scores(predictions, references, mode=mode, zero_division=zero_division)

"""``compute_metrics`` for ``transformers.Trainer`` that score padded and packed evaluation alike.

Each factory returns a callable taking the Trainer's ``EvalPrediction`` and returning a flat ``{name: float}`` dict.
The scoring itself lives in the metric scripts of :mod:`.metrics` (offline, numpy / standard library);
this module turns what the Trainer gathered back into per-example predictions.

Dimension legend:
    R  rows the Trainer stacked: examples (padded) or batches (packed, one ``(1, N)`` row per batch and process)
    B  examples of a padded batch       T  padded length
    S  sequences of a packed batch      N  tokens of a packed batch        C  classes        L  longest sequence

What the Trainer hands over (``eval_do_concat_batches=True``, the default): per batch it pads dim 1 with ``-100``
and stacks batches along dim 0; with ``eval_do_concat_batches=False`` it gives a list of the per-batch arrays
instead (both are accepted here).

    task                      padded batch                    packed batch
    sequence classification   logits (B, C), labels (B,)      logits (S, C), labels (S,)       one row per example
    token classification      logits (B, T, C), labels (B, T)  logits (1, N, C), labels (1, N)  rows are batches
    question answering        start/end logits (B, T)         start/end logits (S, L)          one row per example

Packed token classification needs the sequence boundaries, which labels alone do not show (``-100`` marks special
tokens and non-first sub-words inside a sequence too). The packed collator states them in ``seq_idx`` /
``cu_seq_lens_q``; the Trainer gathers, pads and concatenates in step with the labels (across processes too) only the
model's outputs and the batch keys named as *labels*. So the boundaries reach ``compute_metrics`` in one of two ways:

- a DynMask token-classification model returns a packed batch's ``seq_idx`` as its last output
  (:class:`~hf_dynmask.modeling.modeling_dynmask.DynMaskTokenClassifierOutput`), and ``EvalPrediction.predictions``
  arrives as ``(logits (R, N, C), seq_idx (R, N))``: nothing to configure, with any Trainer;
- for any model, name ``seq_idx`` as a second label column, ``label_ids`` then arrives as ``(labels, seq_idx)``
  (the model still gets every key and computes its loss from ``labels``); :class:`~.trainer.DynMaskTrainer` sets it::

    TrainingArguments(..., label_names=["labels", "seq_idx"])      # packed mode; see eval_label_names()

The other ways in do not fit: ``include_for_metrics=["inputs"]`` gathers only ``input_ids`` (no boundaries);
``batch_eval_metrics=True`` passes the whole local batch as ``inputs`` but the gathered (all processes) logits, so
they disagree under distributed evaluation; guessing boundaries from ``[CLS]`` tokens or label runs is a heuristic.
Padded mode needs nothing: one row per example. Predictions of packed rows without boundaries (a stock model with
``attn_implementation="dynmask_varlen"`` under a Trainer without those label names) cannot be told from padded ones
by their values: pass the label names.

Entity F1 for NER (``task="ner"``) chunks each example separately (seqeval's default IOB2 / IOBES rules) and
micro-averages over entities; ``accuracy`` is token accuracy over labelled tokens. Examples with no labelled token are
skipped in both layouts (they carry no tag to score), so padded and packed evaluation give the same numbers.

>>> import numpy as np
>>> from transformers import EvalPrediction
>>> compute = token_classification_metrics(["O", "B-PER", "I-PER"], task="ner")
>>> logits = np.eye(3)[[[0, 1, 2, 0]]]  # (R=1 batch, N=4, C=3): O B-PER I-PER O
>>> labels, seq_idx = np.array([[-100, 1, 2, 1]]), np.array([[0, 0, 0, 1]])  # [CLS] B-PER I-PER | B-PER
>>> compute(EvalPrediction(predictions=logits, label_ids=(labels, seq_idx)))
{'precision': 1.0, 'recall': 0.5, 'f1': 0.6666666666666666, 'accuracy': 0.6666666666666666}
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from ..data.tasks import TASKS, get_task
from ..modeling.configuration_dynmask import did_you_mean
from ..modeling.input_checks import IGNORE_INDEX
from .metrics.accuracy.accuracy import accuracy_score
from .metrics.f1.f1 import AVERAGES, f1_score
from .metrics.seqeval.seqeval import entity_scores
from .metrics.squad.squad import squad_scores

__all__ = [
    "PACKED_TOKEN_LABEL_NAMES",
    "Span",
    "TokenExample",
    "answer_text",
    "best_span",
    "eval_label_names",
    "per_example_tokens",
    "question_answering_metrics",
    "sequence_classification_metrics",
    "squad_metrics",
    "token_classification_metrics",
]

#: What packed token-classification evaluation gathers: the labels and the boundaries of every packed row.
PACKED_TOKEN_LABEL_NAMES: tuple[str, ...] = tuple(TASKS["token-classification"].label_names("packed"))

TokenTask = Literal["ner", "pos"]
TOKEN_TASKS: tuple[str, ...] = typing.get_args(TokenTask)
ComputeMetrics = Callable[[Any], dict[str, float]]

_NOTHING_TO_SCORE = (
    "no labelled example to score: the evaluation set is empty or every label is -100; check eval_dataset and, for "
    "packed token classification, label_names=eval_label_names(task, mode)"
)


class TokenExample(NamedTuple):
    """The labelled tokens of one example: predicted and reference class ids, both int64 ``(n,)``."""

    predictions: np.ndarray
    labels: np.ndarray


class Span(NamedTuple):
    """An answer span: token ``start`` to token ``end`` (inclusive, like ``start_positions`` / ``end_positions``)."""

    start: int
    end: int
    score: float


def eval_label_names(task: str, mode: str) -> list[str]:
    """The ``TrainingArguments.label_names`` that make the Trainer gather what these metrics need (the task record's,
    :meth:`hf_dynmask.data.tasks.Task.label_names`); ``ValueError`` for a task hf_dynmask does not know.

    >>> eval_label_names("token-classification", "packed"), eval_label_names("token-classification", "dynamic")
    (['labels', 'seq_idx'], ['labels'])
    """
    return get_task(task).label_names(mode)


# --------------------------------------------------------------------------------------------------------------------
# Reading what the Trainer gathered
# --------------------------------------------------------------------------------------------------------------------


def _as_numpy(array: Any) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu()
        return (array.float() if array.is_floating_point() else array).numpy()
    return np.asarray(array)


def _batches(gathered: Any) -> list[Any]:
    """``eval_do_concat_batches=False`` gives a list of per-batch items; the default gives one stacked item."""
    return list(gathered) if isinstance(gathered, list) else [gathered]


def _first_output(predictions: Any) -> np.ndarray:
    """The logits: models that return more outputs (hidden states, ...) give a tuple whose first item is them."""
    return _as_numpy(predictions[0] if isinstance(predictions, tuple) else predictions)


def _predicted_seq_idx(predictions: Any) -> np.ndarray | None:
    """The ``seq_idx`` ``(R, N)`` a DynMask token-classification model returns with packed batches: the last of
    several outputs, integer-valued (logits and hidden states are floating point). None when there is none."""
    if not isinstance(predictions, tuple) or len(predictions) < 2 or isinstance(predictions[-1], tuple | list):
        return None
    last = _as_numpy(predictions[-1])
    return last if np.issubdtype(last.dtype, np.integer) else None


def _class_ids(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Arg-max logits ``(..., C)`` to class ids, or pass ids through (``preprocess_logits_for_metrics`` did it)."""
    if predictions.ndim == labels.ndim + 1:
        return predictions.argmax(-1)
    if predictions.shape != labels.shape:
        raise ValueError(
            f"predictions {predictions.shape} do not match labels {labels.shape}: expected logits (..., C) or class "
            "ids of the labels' shape"
        )
    return predictions


def per_example_tokens(predictions: Any, label_ids: Any) -> list[TokenExample]:
    """Regroup token-classification output into examples, keeping the labelled tokens (label != -100).

    Args:
        predictions: logits ``(R, T, C)`` (or class ids ``(R, T)``), a tuple whose first item is that (and whose
            last item is ``seq_idx`` ``(R, N)`` for a DynMask model's packed batches), or a list of them (one per
            batch, ``eval_do_concat_batches=False``).
        label_ids: padded: labels ``(R, T)`` with one example per row. Packed: ``(labels, seq_idx)``, both
            ``(R, N)``, a row per batch, ``seq_idx`` counting the sequences of the batch from 0 (``-100`` after its
            end); this is what ``label_names=["labels", "seq_idx"]`` produces. Or a list of either, per batch.

    Returns:
        One :class:`TokenExample` per example that has labelled tokens, in the order the Trainer saw them.
    """
    pred_batches, label_batches = _batches(predictions), _batches(label_ids)
    if len(pred_batches) != len(label_batches):
        raise ValueError(f"got {len(pred_batches)} prediction batches for {len(label_batches)} label batches")
    examples: list[TokenExample] = []
    for pred_batch, label_batch in zip(pred_batches, label_batches, strict=True):
        if isinstance(label_batch, (tuple, list)) and len(label_batch) == 2:
            labels, seq_idx = _as_numpy(label_batch[0]), _as_numpy(label_batch[1])
        elif isinstance(label_batch, (tuple, list)):
            raise ValueError(
                f"label_ids holds {len(label_batch)} arrays; expected labels, or (labels, seq_idx) from "
                "label_names=['labels', 'seq_idx'] in packed mode"
            )
        else:
            labels, seq_idx = _as_numpy(label_batch), _predicted_seq_idx(pred_batch)
        logits = _first_output(pred_batch)
        ids = _class_ids(logits, labels)
        if labels.ndim == 1:  # a single row
            labels, ids = labels[None], ids[None]
            seq_idx = None if seq_idx is None else seq_idx.reshape(1, -1)
        if seq_idx is not None and seq_idx.shape != labels.shape:
            raise ValueError(
                f"seq_idx {seq_idx.shape} does not match labels {labels.shape}; pass "
                "label_names=['labels', 'seq_idx'] (labels first) with batches from the packed collator"
            )
        for row in range(labels.shape[0]):
            keep = labels[row] != IGNORE_INDEX
            row_labels, row_ids = labels[row][keep].astype(np.int64), ids[row][keep].astype(np.int64)
            if seq_idx is None:
                if row_labels.size:
                    examples.append(TokenExample(row_ids, row_labels))
                continue
            row_seq = seq_idx[row][keep]
            if row_seq.size == 0:  # a batch without a labelled token (or the Trainer's -100 padding rows)
                continue
            if row_seq.min() < 0 or bool((np.diff(row_seq) < 0).any()):
                raise ValueError(
                    "seq_idx must count the sequences of each packed batch (0, 0, 1, ...) at every labelled token; "
                    "pass label_names=['labels', 'seq_idx'] (labels first) with batches from the packed collator"
                )
            cuts = np.flatnonzero(np.diff(row_seq)) + 1
            pieces = zip(np.split(row_ids, cuts), np.split(row_labels, cuts), strict=True)
            examples.extend(TokenExample(p, lab) for p, lab in pieces)
    return examples


def _flat_rows(gathered: Any) -> np.ndarray:
    """Concatenate per-batch arrays (``eval_do_concat_batches=False``) along dim 0."""
    arrays = [_first_output(item) for item in _batches(gathered)]
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)


# --------------------------------------------------------------------------------------------------------------------
# compute_metrics factories
# --------------------------------------------------------------------------------------------------------------------


def sequence_classification_metrics(average: str = "macro") -> ComputeMetrics:
    """``compute_metrics`` returning ``{"accuracy", "f1"}`` for logits ``(B, C)`` / ``(S, C)`` and labels ``(B,)``.

    ``average`` is the F1 averaging: ``"macro"`` (default), ``"micro"``, ``"weighted"`` or ``"binary"``. Padded and
    packed batches both give one row per example, so the two layouts need nothing different.
    """
    if average not in AVERAGES or average is None:
        choices = [a for a in AVERAGES if a]
        raise ValueError(f"average must be one of {choices}, got {average!r}{did_you_mean(average, choices)}")

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        labels = _flat_rows(eval_pred.label_ids).reshape(-1)
        logits = _flat_rows(eval_pred.predictions)
        ids = _class_ids(logits, labels)
        keep = labels != IGNORE_INDEX
        if not keep.any():
            raise ValueError(_NOTHING_TO_SCORE)
        return {
            "accuracy": accuracy_score(ids[keep], labels[keep]),
            "f1": f1_score(ids[keep], labels[keep], average=average),
        }

    return compute_metrics


def token_classification_metrics(
    label_names: Sequence[str], task: TokenTask = "ner", per_type: bool = False
) -> ComputeMetrics:
    """``compute_metrics`` for token classification, padded or packed (see the module docstring for packed).

    Args:
        label_names: the tag of each class id (``model.config.id2label`` in order), e.g. ``["O", "B-PER", ...]``.
        task: ``"ner"``: entity-level ``{"precision", "recall", "f1"}`` (micro over entities, seqeval's chunking)
            plus token ``"accuracy"``; ``"pos"``: ``{"accuracy"}`` over labelled tokens.
        per_type: NER only: also ``"<TYPE>_precision"`` / ``_recall`` / ``_f1`` / ``_number`` per entity type.
    """
    if task not in TOKEN_TASKS:
        raise ValueError(f"task must be one of {list(TOKEN_TASKS)}, got {task!r}{did_you_mean(task, TOKEN_TASKS)}")
    names = list(label_names)
    if not names:
        raise ValueError(
            "label_names is empty; pass the tag of every class id, e.g. list(model.config.id2label.values())"
        )

    def to_tags(ids: np.ndarray) -> list[str]:
        if ids.size and (ids.min() < 0 or ids.max() >= len(names)):
            raise ValueError(f"class id {int(ids.max())} has no name: label_names has {len(names)} entries")
        return [names[i] for i in ids.tolist()]

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        examples = per_example_tokens(eval_pred.predictions, eval_pred.label_ids)
        if not examples:
            raise ValueError(_NOTHING_TO_SCORE)
        if task == "pos":
            correct = sum(int((ex.predictions == ex.labels).sum()) for ex in examples)
            total = sum(ex.labels.size for ex in examples)
            return {"accuracy": correct / total}
        scores = entity_scores([to_tags(ex.predictions) for ex in examples], [to_tags(ex.labels) for ex in examples])
        result = {
            "precision": scores["overall_precision"],
            "recall": scores["overall_recall"],
            "f1": scores["overall_f1"],
            "accuracy": scores["overall_accuracy"],
        }
        if per_type:
            for name, value in scores.items():
                if isinstance(value, dict):
                    result.update({f"{name}_{key}": float(v) for key, v in value.items()})
        return result

    return compute_metrics


# --------------------------------------------------------------------------------------------------------------------
# Question answering
# --------------------------------------------------------------------------------------------------------------------

# Real logits never come near this; padding holds some dtype's finfo.min, all of which are <= float16's (also after
# the Trainer converts bfloat16 logits to float32).
_PADDING_CEILING = float(torch.finfo(torch.float16).min)


def best_span(
    start_logits: np.ndarray | torch.Tensor,
    end_logits: np.ndarray | torch.Tensor,
    max_answer_len: int = 30,
    allowed: np.ndarray | torch.Tensor | None = None,
) -> Span:
    """The span ``start <= end < start + max_answer_len`` maximizing ``start_logits[start] + end_logits[end]``.

    Args:
        start_logits, end_logits: ``(L,)``, one sequence. Positions holding ``torch.finfo(dtype).min`` (the DynMask
            QA head's padding) are never chosen. Rows the Trainer padded with ``-100`` (sequences shorter than the
            longest of the evaluation) need ``allowed``.
        max_answer_len: the most tokens an answer may have.
        allowed: bool ``(L,)``, True where an answer may start and end (e.g. context tokens: offsets not ``None``).

    >>> best_span(np.array([0.0, 3.0, 1.0, 2.0]), np.array([0.0, 1.0, 0.5, 4.0]))
    Span(start=1, end=3, score=7.0)
    >>> best_span(np.array([0.0, 3.0, 1.0, 2.0]), np.array([0.0, 1.0, 0.5, 4.0]), max_answer_len=2)
    Span(start=3, end=3, score=6.0)
    """
    start, end = _as_numpy(start_logits).astype(np.float64), _as_numpy(end_logits).astype(np.float64)
    if start.ndim != 1 or start.shape != end.shape:
        raise ValueError(
            f"start_logits {start.shape} and end_logits {end.shape} must both be (L,): call best_span per sequence"
        )
    if max_answer_len < 1:
        raise ValueError(f"max_answer_len must be >= 1, got {max_answer_len}")
    valid = (start > _PADDING_CEILING) & (end > _PADDING_CEILING)
    if allowed is not None:
        allowed = _as_numpy(allowed).astype(bool)
        if allowed.shape != start.shape:
            raise ValueError(f"allowed {allowed.shape} must match the logits {start.shape}")
        valid &= allowed
    length = start.shape[0]
    offset = np.arange(length)[None, :] - np.arange(length)[:, None]  # (L, L): end - start
    ok = (offset >= 0) & (offset < max_answer_len) & valid[:, None] & valid[None, :]
    if not ok.any():
        raise ValueError("no position may hold an answer (all padding or not allowed); check allowed / the logits")
    scores = np.where(ok, start[:, None] + end[None, :], -np.inf)  # (L, L)
    i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return Span(int(i), int(j), float(scores[i, j]))


def answer_text(span: Span, offset_mapping: Sequence[tuple[int, int] | None], context: str) -> str:
    """The context characters a span covers, from a fast tokenizer's ``offset_mapping`` (character spans per token).

    >>> answer_text(Span(1, 2, 0.0), [None, (0, 3), (4, 9)], "the tower")
    'the tower'
    """
    first, last = offset_mapping[span.start], offset_mapping[span.end]
    if first is None or last is None:
        raise ValueError(
            f"span {span.start}..{span.end} starts or ends outside the context; pass allowed= to best_span"
        )
    return context[first[0] : last[1]]


def squad_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """SQuAD v1.1 ``{"exact_match", "f1"}`` in percent: answer texts against each question's reference texts.

    >>> squad_metrics(["the Eiffel Tower", "Paris"], [["Eiffel Tower"], ["London"]])
    {'exact_match': 50.0, 'f1': 50.0}
    """
    return squad_scores(predictions, references)


def question_answering_metrics(
    contexts: Sequence[str],
    offset_mappings: Sequence[Sequence[tuple[int, int] | None]],
    references: Sequence[Sequence[str]],
    max_answer_len: int = 30,
    example_index: Sequence[int] | None = None,
) -> ComputeMetrics:
    """``compute_metrics`` for extractive QA: one feature per question, or several windows (document stride).

    ``contexts[i]`` and ``offset_mappings[i]`` (``None`` for non-context tokens) describe the ``i``-th evaluation
    feature, in evaluation order (use a sequential sampler). Each row of logits must start at its feature's first
    token, as in packed mode and with right padding (not left padding). The rows must arrive in dataset order: the
    stock ``Trainer`` with ``train_sampling_strategy="group_by_length"`` length-groups the evaluation set too
    (transformers 5), which pairs rows with the wrong contexts; :class:`~.trainer.DynMaskTrainer` evaluates in dataset
    order when ``compute_metrics`` is this function. Predictions are ``(start_logits,
    end_logits)``, each ``(R, L)``; the answer of each row is :func:`best_span` over its context tokens, so the
    Trainer's ``-100`` padding never wins.

    Without ``example_index`` every feature is one question and ``references[i]`` are its answers. With it
    (``prepare_dataset(..., doc_stride=...)`` makes the column), ``example_index[i]`` is the question of feature
    ``i``, numbered ``0 .. len(references) - 1``; a question's answer is the best-scoring span (start + end logit)
    over its windows, as transformers' ``run_qa.py`` post-processing picks it. Returns SQuAD ``{"exact_match",
    "f1"}`` in percent over the questions.
    """
    if len(contexts) == 0:
        raise ValueError("no evaluation examples: give the context, offset mapping and references of each question")
    if example_index is None:
        if not len(contexts) == len(offset_mappings) == len(references):
            raise ValueError(
                f"got {len(contexts)} contexts, {len(offset_mappings)} offset mappings and {len(references)} "
                "references; give one of each per evaluation example (or example_index= for windows)"
            )
        example_index = range(len(contexts))
    elif not len(contexts) == len(offset_mappings) == len(example_index):
        raise ValueError(
            f"got {len(contexts)} contexts, {len(offset_mappings)} offset mappings and {len(example_index)} example "
            "indices; give one of each per evaluation feature (window)"
        )
    elif sorted(set(example_index)) != list(range(len(references))):
        raise ValueError(
            f"example_index must number the questions 0 .. {len(references) - 1} (one reference list each), every "
            "question with at least one feature; select the evaluation rows before prepare_dataset"
        )
    questions = list(example_index)

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        batches = _batches(eval_pred.predictions)
        starts = np.concatenate([_pad_rows(_as_numpy(b[0]), _width(batches)) for b in batches])
        ends = np.concatenate([_pad_rows(_as_numpy(b[1]), _width(batches)) for b in batches])
        if starts.shape[0] != len(contexts):
            raise ValueError(f"got {starts.shape[0]} predictions for {len(contexts)} features")
        best: dict[int, tuple[float, str]] = {}
        for row, (context, offsets, question) in enumerate(zip(contexts, offset_mappings, questions, strict=True)):
            allowed = np.zeros(starts.shape[1], dtype=bool)
            context_tokens = [k for k, o in enumerate(offsets) if o is not None and k < starts.shape[1]]
            allowed[context_tokens] = True
            span = best_span(starts[row], ends[row], max_answer_len, allowed=allowed)
            if question not in best or span.score > best[question][0]:
                best[question] = (span.score, answer_text(span, offsets, context))
        return squad_scores([best[q][1] for q in range(len(references))], references)

    compute_metrics.needs_dataset_order = True  # DynMaskTrainer then evaluates in dataset order (see its docstring)
    return compute_metrics


def _width(batches: list[Any]) -> int:
    return max(_as_numpy(b[0]).shape[-1] for b in batches)


def _pad_rows(rows: np.ndarray, width: int) -> np.ndarray:
    """Right-pad ``(R, L)`` logits to ``(R, width)`` with ``-100``, as the Trainer does when it stacks batches."""
    return np.pad(rows, ((0, 0), (0, width - rows.shape[-1])), constant_values=IGNORE_INDEX)

"""Checks of what the DynMask models' tables can take: token ids, token types, labels, answer spans.

Model-side module: imports only torch, transformers and relative siblings (it is saved next to a model as remote code).

The batch's structure (rows, padding, boundaries, positions) is the batch contract's (:mod:`.batch`); this module
checks the values a model looks up in its own tables. Two kinds of checks, so validation costs nothing per layer:

- **types and shapes** (:func:`check_encoder_inputs`, the ``dtype`` part of the label checks): Python only, no
  device work;
- **values** (token ids inside the vocabulary, labels inside the classes): reduced on the device to a few integers
  and read back to the host in **one** transfer per check, once per forward, before any layer runs. The id ranges are
  read in the batch contract's transfer (:func:`id_stats`, :func:`raise_for_ids`). The slow path (which row, which
  value) runs only when a check fails.

Dimension legend:
    B  padded batch rows    T  padded length    N  packed tokens    S  sequences    C  classes
"""

from __future__ import annotations

import torch
from transformers.utils import logging

from .batch import is_integer, require_integer, require_tensor

logger = logging.get_logger(__name__)

IGNORE_INDEX = -100  # the label value transformers' losses skip

__all__ = [
    "IGNORE_INDEX",
    "check_answer_positions",
    "check_encoder_inputs",
    "check_sequence_labels",
    "check_token_labels",
    "id_stats",
    "raise_for_ids",
]

_is_integer = is_integer

_TENSOR_HINT = {
    "input_ids": "tokenize first, e.g. tokenizer(texts, return_tensors='pt') or an hf_dynmask collator",
    "inputs_embeds": "pass a float tensor (batch, seq_len, hidden_size)",
    "token_type_ids": "pass torch.tensor(token_type_ids)",
    "labels": "collate the labels with the batch (an hf_dynmask collator returns tensors)",
    "start_positions": "collate the positions with the batch (hf_dynmask's question-answering collator)",
    "end_positions": "collate the positions with the batch (hf_dynmask's question-answering collator)",
}


def _require_tensor(value, name: str, what: str) -> None:
    require_tensor(value, name, what, _TENSOR_HINT[name])


_require_integer = require_integer


def check_encoder_inputs(config, input_ids, inputs_embeds, token_type_ids) -> torch.Tensor:
    """Types, dtypes and shapes of the encoder's token inputs (no device work). Returns the ``(B, T)`` reference
    tensor (``input_ids``, or ``inputs_embeds[..., 0]``) every other input must match."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    if input_ids is not None:
        _require_tensor(input_ids, "input_ids", "token ids (batch, seq_len)")
        _require_integer(input_ids, "input_ids")
        if input_ids.dim() != 2:
            raise ValueError(
                f"input_ids must be (batch, seq_len), got shape {tuple(input_ids.shape)}; add a batch dimension with "
                "input_ids[None] for one example"
            )
        reference = input_ids
    else:
        _require_tensor(inputs_embeds, "inputs_embeds", "float (batch, seq_len, hidden_size)")
        if not inputs_embeds.dtype.is_floating_point:
            raise ValueError(f"inputs_embeds must be floating point, got dtype {inputs_embeds.dtype}")
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.hidden_size:
            raise ValueError(
                f"inputs_embeds must be (batch, seq_len, hidden_size={config.hidden_size}), got shape "
                f"{tuple(inputs_embeds.shape)}; they replace the word embeddings (model.get_input_embeddings())"
            )
        reference = inputs_embeds[..., 0]
    if token_type_ids is not None:
        _require_tensor(token_type_ids, "token_type_ids", "(batch, seq_len)")
        _require_integer(token_type_ids, "token_type_ids")
        if tuple(token_type_ids.shape) != tuple(reference.shape):
            raise ValueError(
                f"token_type_ids {tuple(token_type_ids.shape)} must match input_ids {tuple(reference.shape)}"
            )
    return reference


# ---------------------------------------------------------------------------------------------------------------------
# Token ids, read with the batch contract's values
# ---------------------------------------------------------------------------------------------------------------------


def id_stats(input_ids: torch.Tensor | None, token_type_ids: torch.Tensor | None) -> list[torch.Tensor]:
    """Minimum and maximum of the token ids and the token type ids (0-d int64 tensors, still on the device)."""
    stats = []
    for tensor in (input_ids, token_type_ids):
        if tensor is not None:
            low, high = torch.aminmax(tensor)
            stats += [low.long(), high.long()]
    return stats


def raise_for_ids(config, input_ids, token_type_ids, values: list[int]) -> None:
    """Raise for the first id outside its table; ``values`` are :func:`id_stats`' numbers, read back."""
    checks = []
    if input_ids is not None:
        checks.append(("input_ids", config.vocab_size, "config.vocab_size"))
    if token_type_ids is not None:
        checks.append(("token_type_ids", config.type_vocab_size, "config.type_vocab_size"))
    for (name, size, field), (low, high) in zip(checks, zip(values[::2], values[1::2], strict=True), strict=True):
        if low < 0:
            raise ValueError(
                f"{name} hold {low}: ids are indices into a table and cannot be negative"
                + (" (-100 marks ignored labels, never inputs)" if low == IGNORE_INDEX else "")
                + "; pass the tokenizer's ids"
            )
        if high >= size:
            if name == "input_ids":
                raise ValueError(
                    f"input_ids hold id {high}, outside the model's vocabulary of {size} ({field}): the tokenizer "
                    "and the model do not match. Use the model's own tokenizer, or after adding tokens call "
                    "model.resize_token_embeddings(len(tokenizer))"
                )
            raise ValueError(
                f"token_type_ids hold {high}, but the model has {size} token type(s) ({field}); models with one "
                "type (RoBERTa) take none: tokenize with return_token_type_ids=False or drop token_type_ids"
            )


# ---------------------------------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------------------------------


def _warn_if_nothing_to_learn(valid: int, num_items_in_batch) -> None:
    if valid == 0 and num_items_in_batch is None:
        logger.warning_once(
            "every label of the batch is -100 (ignored): the mean loss over no label is NaN, as in transformers. "
            "Check the labels (e.g. truncation cut every labelled token, or an MLM batch of special tokens only)"
        )


@torch.compiler.disable  # a host read of the labels: one boundary, outside compiled graphs
def check_token_labels(labels, num_classes: int, what: str, num_items_in_batch=None) -> None:
    """Per-token class labels: integers in ``[0, num_classes)`` or ``-100``; one host read.

    ``what`` names the number of classes in messages (``"config.num_labels"``).
    """
    _require_tensor(labels, "labels", "class ids, -100 where ignored")
    if not _is_integer(labels):
        raise ValueError(
            f"labels must be integer class ids (-100 where ignored), got dtype {labels.dtype}; per-token labels "
            "are classes, not scores: convert with labels.long()"
        )
    _check_classes(labels, num_classes, what, num_items_in_batch)


def _check_classes(labels: torch.Tensor, num_classes: int, what: str, num_items_in_batch) -> None:
    """Integer ``labels`` inside ``[0, num_classes)`` or ``-100``; warn when every one is ``-100``. One host read."""
    if labels.numel() == 0:
        return
    ignored = labels == IGNORE_INDEX
    kept = torch.where(ignored, 0, labels)
    low, high, valid = torch.stack([kept.amin().long(), kept.amax().long(), (~ignored).sum()]).tolist()
    _raise_for_classes(low, high, num_classes, f"{what}={num_classes}")
    _warn_if_nothing_to_learn(valid, num_items_in_batch)


def _raise_for_classes(low: int, high: int, num_classes: int, what: str) -> None:
    if low < 0:
        raise ValueError(f"labels hold {low}; class ids start at 0 (use -100 for tokens without a label)")
    if high >= num_classes:
        raise ValueError(
            f"labels hold class {high}, but the head predicts {num_classes} classes ({what}); load the model with "
            f"num_labels=<number of classes> (and id2label / label2id), or check the label mapping"
        )


@torch.compiler.disable  # a host read of the labels: one boundary, outside compiled graphs
def check_sequence_labels(config, labels, num_items_in_batch=None) -> None:
    """One label per sequence, as transformers' sequence-classification loss reads it; one host read at most.

    ``config.problem_type`` (or, unset, the rule transformers applies: one label is regression, integer labels
    are single-label classes, float labels multi-label targets) decides what the labels must be.
    """
    _require_tensor(labels, "labels", "one per sequence")
    num_labels = config.num_labels
    problem = config.problem_type
    if problem is None:
        if num_labels == 1:
            problem = "regression"
        elif _is_integer(labels):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    if problem == "regression":
        if not labels.dtype.is_floating_point:
            raise ValueError(
                f"a head with num_labels={num_labels} is regression (problem_type='regression') and needs float "
                f"labels, got dtype {labels.dtype}; for classification load the model with num_labels=<number of "
                "classes>"
            )
        return
    if problem == "multi_label_classification":
        if not labels.dtype.is_floating_point or labels.dim() != 2 or labels.shape[-1] != num_labels:
            raise ValueError(
                f"labels of dtype {labels.dtype} and shape {tuple(labels.shape)} for a {num_labels}-class head: "
                "single-label classification needs integer class ids (batch,) (labels.long()); multi-label "
                f"classification needs float targets (batch, {num_labels}); regression needs num_labels=1"
            )
        return
    if not _is_integer(labels):
        raise ValueError(
            f"problem_type='single_label_classification' needs integer class ids, got dtype {labels.dtype}; "
            "convert with labels.long()"
        )
    if labels.dim() > 1 and not (labels.dim() == 2 and labels.shape[-1] == 1):
        raise ValueError(
            f"labels {tuple(labels.shape)}: single-label classification takes one class id per sequence (batch,); "
            "for multi-hot targets pass floats (labels.float()) or set problem_type='multi_label_classification'"
        )
    _check_classes(labels, num_labels, "config.num_labels", num_items_in_batch)


@torch.compiler.disable  # a host read of the labels: one boundary, outside compiled graphs
def check_answer_positions(start_positions, end_positions, first: torch.Tensor, lens: torch.Tensor, length) -> None:
    """Answer spans: integer token indices with ``start <= end``, on real tokens, or at ``length`` and beyond (outside
    the logits, where transformers' loss ignores them); one host read.

    Args:
        start_positions, end_positions: ``(R,)`` or ``(R, 1)``, one per row of logits.
        first: ``(R,)`` index of each row's first real token (its left padding; 0 in packed rows).
        lens: ``(R,)`` real tokens of each row.
        length: the width of the logits rows (``T`` padded, the longest sequence packed); an int or a 0-d tensor.
    """
    for name, value in (("start_positions", start_positions), ("end_positions", end_positions)):
        _require_tensor(value, name, "one token index per sequence")
        _require_integer(value, name)
    start, end = start_positions.reshape(-1).to(lens.device), end_positions.reshape(-1).to(lens.device)
    rows = lens.shape[0]
    if start.numel() != rows or end.numel() != rows:
        raise ValueError(
            f"{rows} sequences in the batch but {start.numel()} start_positions and {end.numel()} end_positions; "
            "give one of each per sequence"
        )
    on_padding = [((p < first) | (p >= first + lens)) & (p < length) for p in (start, end)]
    after, negative, padding = torch.stack(
        [(start > end).sum(), ((start < 0) | (end < 0)).sum(), (on_padding[0] | on_padding[1]).sum()]
    ).tolist()  # the one host read
    if after:
        i = int(torch.nonzero(start > end)[0])
        raise ValueError(
            f"sequence {i}: start_positions={int(start[i])} comes after end_positions={int(end[i])}; an answer span "
            "needs start <= end (swapped columns?)"
        )
    if negative:
        raise ValueError("start_positions / end_positions hold negative values; positions are token indices >= 0")
    if padding:
        i = int(torch.nonzero(on_padding[0] | on_padding[1])[0])
        raise ValueError(
            f"sequence {i}: the answer span {int(start[i])}..{int(end[i])} points at padding (its real tokens are "
            f"{int(first[i])}..{int(first[i] + lens[i]) - 1}); with left padding positions index the padded row, in "
            "packed batches each sequence from its first token (hf_dynmask's question-answering collator does both)"
        )

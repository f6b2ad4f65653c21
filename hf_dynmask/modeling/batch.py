"""The batch contract: what a batch given to a model may look like, written once.

Model-side module: imports only the standard library, torch and relative siblings (it is saved next to a model as
remote code).

Every path that takes a batch calls :func:`describe_batch` once per forward, before any layer runs: the DynMask encoder
family, each side of the DynMask seq2seq family, and stock transformers models loaded with
``attn_implementation="dynmask_varlen"`` (at the model's entry, :mod:`.stock`). It turns the batch into one
:class:`BatchLayout`, or raises ``ValueError`` naming the input and what to do instead. One input, one verdict, one
message, whatever the path; what differs between models (their first position id, whether their attention is causal,
whether they number positions themselves) is a parameter of the rules (:class:`BatchRules`), never a second copy.

Dimension legend:
    B  input rows    T  tokens per row (the new ones of a cache step)    P  cached positions before them
    N  tokens of a batch run packed (``B * T`` for a packed input)    S  sequences

The forms a batch comes in, and the verdicts:

    ==========  ===========================================================  ====================================
    form        how it is marked                                             verdict (:attr:`BatchLayout.kind`)
    ==========  ===========================================================  ====================================
    rows        ``(B, T)``, one sequence per row; ``attention_mask``          ``"padded"``, or ``"unpadded"`` when
                ``(B, P + T)`` with 1 at real tokens, or none (all real)      the model strips the padding
    packed      ``(1, N)`` with stated boundaries: ``cu_seq_lens_q`` (and     ``"packed"``
                an equal ``cu_seq_lens_k``) or ``seq_idx``
    flattened   rows whose ``position_ids`` start a new sequence, without     ``"packed"`` for causal
                boundaries (``DataCollatorWithFlattening()``, TRL's           self-attention without a cache
                padding-free batches)                                          (transformers' padding-free
                                                                               convention); refused otherwise
    cache step  rows of ``T`` new tokens after ``P`` cached ones             ``"padded"``; never packed
    pairs       cross-attention: target ``s`` attends to source ``s``        :func:`check_pairs` on both sides
    ==========  ===========================================================  ====================================

The rules, each written once below:

    shape       a packed batch is one row ``(1, N)``; masks, positions and ``seq_idx`` match the rows
    padding     ``attention_mask`` holds 0 / 1; every row has a real token; padding sits on one side of a row
                (padding between real tokens would join two sequences in one row); a packed row has no padding
    boundaries  1-D integers, starting at 0, ending at ``N``, strictly increasing; ``cu_seq_lens_k`` equals
                ``cu_seq_lens_q`` (self-attention); ``seq_idx`` non-decreasing
    positions   a new sequence starts wherever a position is not its predecessor plus one (transformers'
                ``find_packed_sequence_indices``): inside a row of real tokens that needs stated boundaries; every
                sequence of a packed row starts at the model's first position (0, or ``padding_idx + 1`` for
                RoBERTa-style models) and counts up by one; every position lies in ``[0, max positions)``; padding
                computed for a head that reads it is numbered as the stock model numbers it (its column, left
                padding refused; or ``padding_idx``)
    cache       packed and flattened rows take no cache
    targets     a seq2seq target given ``labels`` and no ``decoder_attention_mask`` (transformers'
                ``DataCollatorForSeq2Seq``): the tail of ``-100`` labels of each row is its padding
                (:func:`target_padding_from_labels`); without labels the target's padding is not known

Values are reduced on the device to a few integers and read back in one transfer (two for a packed row with
``position_ids``), together with any value statistics the caller adds (:func:`describe_batch`'s ``value_stats``).

>>> rules = BatchRules()
>>> describe_batch((2, 3), attention_mask=torch.tensor([[1, 1, 0], [1, 1, 1]]), rules=rules).kind
'padded'
>>> packed = describe_batch((1, 5), cu_seq_lens_q=torch.tensor([0, 2, 5]), rules=rules)
>>> packed.kind, packed.cu_seqlens.tolist(), packed.position_ids.tolist()
('packed', [0, 2, 5], [0, 1, 0, 1, 2])
>>> describe_batch((1, 5), position_ids=torch.tensor([[0, 1, 0, 1, 2]]), rules=rules)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: position_ids start a new sequence inside a row but no sequence boundaries were given: ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch

from .configuration_dynmask import did_you_mean
from .layout import (
    UnpadIndex,
    cu_seqlens_from_position_ids,
    cu_seqlens_from_seq_idx,
    position_ids_from_cu_seqlens,
    repad,
    seq_idx_from_cu_seqlens,
    unpad,
    unpad_index,
)

__all__ = [
    "DECODER_NAMES",
    "ENCODER_NAMES",
    "BatchLayout",
    "BatchRules",
    "InputNames",
    "check_pairs",
    "describe_batch",
    "is_integer",
    "refuse_unknown_arguments",
    "require_integer",
    "require_tensor",
    "rows_as_packed",
    "target_padding_from_labels",
]

Kind = Literal["padded", "unpadded", "packed"]


class InputNames(NamedTuple):
    """The argument names a side of a batch comes with, for the messages."""

    input_ids: str = "input_ids"
    attention_mask: str = "attention_mask"
    position_ids: str = "position_ids"
    cu_seqlens: str = "cu_seq_lens_q"
    seq_idx: str = "seq_idx"


ENCODER_NAMES = InputNames()
DECODER_NAMES = InputNames(
    "decoder_input_ids", "decoder_attention_mask", "decoder_position_ids", "decoder_cu_seq_lens", "decoder_seq_idx"
)


@dataclass(frozen=True)
class BatchRules:
    """What one model reads from a batch: the parameters of the rules (the rules themselves never change).

    Args:
        position_start: the first position id of every sequence (0; ``padding_idx + 1`` for RoBERTa-style models).
        max_positions: positions must stay below this (the position table's size); None: not checked here.
        reads_restarts: causal self-attention reads restarting ``position_ids`` without boundaries as sequence
            boundaries (transformers' and TRL's padding-free convention); otherwise such rows are refused.
        numbers_positions: the model numbers each sequence itself when no ``position_ids`` are given (DynMask); when
            False (stock models, which number a row as one sequence) a packed row needs ``position_ids``.
        given_positions: ``"used"``: the ``position_ids`` of rows are used as given; ``"checked"``: they must equal
            each sequence's own positions at real tokens (the seq2seq family numbers positions itself).
        unpad: run padded rows packed (``"unpadded"``: DynMask's dynamic masking); rows without padding run as they
            are (``"padded"`` with no padding: there is nothing to strip, and gathering every token would only copy).
        padding_positions: the positions of padding tokens in rows the model numbers itself and runs padded. None:
            any (nothing reads a padding position's output). Where a head reads them (stock BERT's question-answering
            softmax scores padding), the stock models' numbering: ``"column"``, padding at ``position_start`` plus its
            column (stock BERT numbers a padded row's columns; real tokens then need to start at column 0, so
            left-padded rows without ``position_ids`` are refused), or an ``int``, every padding token at that
            position (stock RoBERTa's ``padding_idx``).
        names: the argument names, for the messages.
    """

    position_start: int = 0
    max_positions: int | None = None
    reads_restarts: bool = False
    numbers_positions: bool = True
    given_positions: Literal["used", "checked"] = "used"
    unpad: bool = False
    padding_positions: int | Literal["column"] | None = None
    names: InputNames = field(default=ENCODER_NAMES)


class BatchLayout(NamedTuple):
    """One batch as a model runs it, from :func:`describe_batch`, once per forward.

    ``kind``:
        ``"padded"``    layers see ``(B, T, ...)``; ``real`` marks the real tokens;
        ``"unpadded"``  padded rows run packed: layers see the ``(N, ...)`` real tokens, ``index`` maps them back;
        ``"packed"``    a packed input (stated boundaries, or a flattened causal row): layers see ``(N, ...)``.
    """

    kind: Kind
    batch_size: int  # B: input rows
    seqlen: int  # T: tokens per input row
    cu_seqlens: torch.Tensor | None  # int32 (S + 1,): "packed" / "unpadded"
    max_seqlen: int  # the longest sequence (real tokens, cached ones included)
    position_ids: torch.Tensor | None  # int64, the layers' form: (N,) packed / unpadded, (B, T) padded; None: model's
    real: torch.Tensor | None  # bool (B, P + T), "padded": True at real tokens; None when no token is padding
    index: UnpadIndex | None = None  # "unpadded"
    boundaries: Literal["stated", "position_ids"] | None = None  # how a packed row's sequences are known
    past: int = 0  # P: cached positions before the rows
    values: tuple[int, ...] = ()  # the caller's value_stats, read with the checks

    @property
    def runs_packed(self) -> bool:
        return self.kind != "padded"

    @property
    def num_seqs(self) -> int:
        return self.cu_seqlens.numel() - 1 if self.cu_seqlens is not None else self.batch_size

    @property
    def seq_idx(self) -> torch.Tensor | None:
        """int32 ``(N,)``: the sequence of every token run packed; None for padded rows."""
        return None if self.cu_seqlens is None else seq_idx_from_cu_seqlens(self.cu_seqlens)

    def flat(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        """A per-token input, ``(B, T, ...)`` (``(1, N, ...)`` packed), in the layers' form: ``(N, ...)`` run
        packed, as is padded."""
        if tensor is None or self.kind == "padded":
            return tensor
        if self.kind == "packed":
            return tensor.reshape(-1, *tensor.shape[2:])
        return unpad(tensor, self.index)

    def output(self, hidden: torch.Tensor, pad_value: float = 0.0) -> torch.Tensor:
        """Layer outputs back in the input's shape: ``(B, T, ...)``; ``pad_value`` at stripped padding."""
        if self.kind == "packed":
            return hidden.view(self.batch_size, -1, *hidden.shape[1:])
        return repad(hidden, self.index, pad_value) if self.kind == "unpadded" else hidden


# ---------------------------------------------------------------------------------------------------------------------
# Types
# ---------------------------------------------------------------------------------------------------------------------


def is_integer(tensor: torch.Tensor) -> bool:
    return not (tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool)


def require_tensor(value: Any, name: str, what: str, hint: str = "") -> None:
    """Raise unless ``value`` is a tensor; ``what`` says what it holds, ``hint`` how to make one."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(
            f"{name} must be a torch.Tensor ({what}), got {type(value).__name__}"
            + (f"; {hint}" if hint else f"; pass torch.tensor({name})")
        )


def require_integer(tensor: torch.Tensor, name: str) -> None:
    if not is_integer(tensor):
        raise ValueError(
            f"{name} must hold integers, got dtype {tensor.dtype}; "
            + (
                "token ids are integer indices: do not cast them to float"
                if name.endswith(("input_ids", "token_type_ids"))
                else f"convert with {name}.long()"
            )
        )


_BOUNDARY_HINT = "pass torch.tensor(boundaries, dtype=torch.int32), as hf_dynmask's packed collator does"


def _check_types(shape, attention_mask, position_ids, cu_q, cu_k, seq_idx, past: int, names: InputNames) -> None:
    """Types and shapes of the batch arguments: Python only, no device work."""
    rows, length = shape
    if length == 0:
        raise ValueError(f"the batch has no tokens ({names.input_ids} of length 0); drop empty examples first")
    if attention_mask is not None:
        require_tensor(attention_mask, names.attention_mask, "(batch, seq_len)", "pass the tokenizer's attention_mask")
        expected = (rows, past + length)
        if tuple(attention_mask.shape) != expected:
            raise ValueError(
                f"{names.attention_mask} {tuple(attention_mask.shape)} must match {names.input_ids} "
                f"{(rows, length)}"
                + (f" and the {past} cached positions: {expected}" if past else "")
                + ": a 2-D mask with 1 at real tokens and 0 at padding (the model builds the 4-D mask itself)"
            )
    if position_ids is not None:
        require_tensor(position_ids, names.position_ids, "(batch, seq_len)", "pass them as a tensor, or leave out")
        require_integer(position_ids, names.position_ids)
        if tuple(position_ids.shape) not in ((rows, length), (1, length)):
            raise ValueError(f"{names.position_ids} {tuple(position_ids.shape)} must match {names.input_ids} {shape}")
    for name, value in ((names.cu_seqlens, cu_q), ("cu_seq_lens_k", cu_k)):
        if value is not None:
            require_tensor(value, name, "int32 (num_seqs + 1,)", _BOUNDARY_HINT)
            require_integer(value, name)
            if value.dim() != 1:
                raise ValueError(
                    f"{name} must be 1-D (num_seqs + 1,), got shape {tuple(value.shape)}; a packed batch is one row "
                    "of concatenated sequences with one set of boundaries (hf_dynmask's packed collator)"
                )
    if seq_idx is not None:
        require_tensor(seq_idx, names.seq_idx, "(1, total_tokens)", "pass torch.tensor(seq_idx), as the collator does")
        require_integer(seq_idx, names.seq_idx)
        if seq_idx.numel() != rows * length or seq_idx.dim() > 2:
            raise ValueError(
                f"{names.seq_idx} {tuple(seq_idx.shape)} must give one sequence id per token of {names.input_ids} "
                f"{shape}"
            )


# ---------------------------------------------------------------------------------------------------------------------
# The contract
# ---------------------------------------------------------------------------------------------------------------------


@torch.compiler.disable  # host reads: kept out of compiled graphs (one graph break per call)
def describe_batch(
    shape: tuple[int, int],
    *,
    rules: BatchRules,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    cu_seq_lens_k: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    past: int = 0,
    device: torch.device | str | None = None,
    value_stats: Sequence[torch.Tensor] = (),
    check_values: Callable[[list[int]], None] | None = None,
) -> BatchLayout:
    """Check a batch against every rule and describe it (see the module docstring); raise ``ValueError`` otherwise.

    Args:
        shape: ``(B, T)``, the rows of ``input_ids`` (or of ``inputs_embeds``).
        rules: what the model reads (:class:`BatchRules`).
        attention_mask: ``(B, P + T)``, 1 at real tokens, 0 at padding; None: every token is real.
        position_ids: ``(B, T)`` or ``(1, T)``, optional.
        cu_seq_lens_q / cu_seq_lens_k: int ``(S + 1,)`` stated boundaries of a packed row (self-attention: equal).
        seq_idx: ``(1, N)`` sequence id of every token of a packed row, instead of ``cu_seq_lens_q``.
        past: ``P``, positions already in a cache.
        device: where the inputs live (for the tensors built here).
        value_stats: 0-d integer tensors the caller wants read in the same transfer (token id ranges); their values
            go to ``check_values`` before any rule here raises, and into :attr:`BatchLayout.values`.
    """
    names = rules.names
    _check_types(shape, attention_mask, position_ids, cu_seq_lens_q, cu_seq_lens_k, seq_idx, past, names)
    if cu_seq_lens_q is not None or cu_seq_lens_k is not None or seq_idx is not None:
        return _describe_packed(
            shape, rules, attention_mask, position_ids, cu_seq_lens_q, cu_seq_lens_k, seq_idx, past, value_stats,
            check_values,
        )  # fmt: skip
    return _describe_rows(shape, rules, attention_mask, position_ids, past, device, value_stats, check_values)


def _read(stats: list[torch.Tensor], value_stats: Sequence[torch.Tensor], check_values) -> tuple[list[int], tuple]:
    """The one host read: ``stats`` and the caller's ``value_stats``; runs ``check_values`` on the latter."""
    stacked = [s.reshape(-1).long() for s in stats] + [s.reshape(-1).long() for s in value_stats]
    values = torch.cat([s.to(stacked[0].device) for s in stacked]).tolist() if stacked else []
    extra = tuple(values[len(values) - len(value_stats) :]) if value_stats else ()
    if check_values is not None:
        check_values(list(extra))
    return values[: len(values) - len(value_stats)], extra


def _refuse_restarts(names: InputNames, reason: str = "") -> ValueError:
    return ValueError(
        f"{names.position_ids} start a new sequence inside a row but no sequence boundaries were given: this looks "
        f"like a packed batch{reason}. Pass {names.cu_seqlens} (or {names.seq_idx}), e.g. with "
        "hf_dynmask.make_collator(..., mode='packed') or DataCollatorWithFlattening(return_flash_attn_kwargs=True); "
        "otherwise the sequences would attend to each other"
    )


def _describe_packed(
    shape, rules: BatchRules, attention_mask, position_ids, cu_q, cu_k, seq_idx, past, value_stats, check_values
) -> BatchLayout:
    names = rules.names
    rows, num_tokens = shape
    given = names.cu_seqlens if cu_q is not None else ("cu_seq_lens_k" if cu_k is not None else names.seq_idx)
    if rows != 1:
        raise ValueError(
            f"a packed batch is one row of concatenated sequences (shape (1, total_tokens)), got {names.input_ids} "
            f"of shape {tuple(shape)} with {given}; use hf_dynmask's packed collator, or drop {given} for padded rows"
        )
    if past:
        raise ValueError(
            f"a packed row ({given}) takes no cache ({past} cached positions): packed batches are for training and "
            "scoring; generate or decode with padded rows"
        )
    if cu_q is None and cu_k is None:
        cu_q = cu_seqlens_from_seq_idx(seq_idx)
    cu = cu_q if cu_q is not None else cu_k
    stats = [cu]
    if attention_mask is not None:
        stats.append((attention_mask != 1).sum())
    if cu_q is not None and cu_k is not None:
        stats.append(cu_q.new_tensor(1) if cu_q.shape != cu_k.shape else (cu_q != cu_k.to(cu_q.device)).sum())
    values, extra = _read(stats, value_stats, check_values)
    bounds = values[: cu.numel()]
    padding = values[cu.numel()] if attention_mask is not None else 0
    mismatch = values[-1] if cu_q is not None and cu_k is not None else 0
    if attention_mask is not None and padding:
        raise ValueError(
            f"packed batch ({given}) with a padding {names.attention_mask}: a packed row has no padding. Drop "
            f"{names.attention_mask}, or use the dynamic-padding collator instead of the packed one"
        )
    if len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != num_tokens:
        raise ValueError(
            f"{given} must start at 0 and end at the row's {num_tokens} tokens, got {bounds[:8]}"
            f"{'...' if len(bounds) > 8 else ''}; build packed batches with hf_dynmask's packed collator"
        )
    lens = [end - start for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
    if min(lens) < 1:
        raise ValueError(f"{given} must be strictly increasing: every packed sequence needs at least one token")
    if mismatch:
        raise ValueError(
            f"cu_seq_lens_k must equal {names.cu_seqlens}: they describe self-attention of one packed row (for "
            "cross-attention the DynMask seq2seq family pairs sources and targets: decoder_cu_seq_lens)"
        )
    longest = max(lens)
    start = rules.position_start
    _check_position_range(rules, start, start + longest - 1, longest)
    cu = cu.to(torch.int32)
    expected = position_ids_from_cu_seqlens(cu, start)
    if position_ids is None and not rules.numbers_positions:
        raise ValueError(
            f"a packed row ({given}) without {names.position_ids}: the model would number positions over the whole "
            f"row. Pass {names.position_ids} restarting at {start} in every sequence (hf_dynmask's packed collator "
            f"and DataCollatorWithFlattening(position_ids_start={start}) do)"
        )
    if position_ids is not None:
        given_positions = position_ids.reshape(-1).to(expected.device)
        if not torch.equal(given_positions, expected):  # the second host read
            raise _positions_per_sequence(names, start, given_positions, bounds)
    return BatchLayout("packed", 1, num_tokens, cu, longest, expected, None, boundaries="stated", values=extra)


def _positions_per_sequence(names: InputNames, start: int, given: torch.Tensor, bounds: list[int]) -> ValueError:
    return ValueError(
        f"the {names.position_ids} of a packed row must restart at {start} in every sequence (the model numbers "
        f"positions from {start}); got {given[:12].tolist()}{'...' if given.numel() > 12 else ''} for sequence "
        f"boundaries {bounds[:6]}{'...' if len(bounds) > 6 else ''}. Number positions per sequence: "
        f"make_collator(..., mode='packed', position_start={start}) or DataCollatorWithFlattening("
        f"position_ids_start={start})"
    )


def _check_position_range(rules: BatchRules, lowest: int, highest: int, longest: int) -> None:
    names = rules.names
    if lowest < 0:
        raise ValueError(f"{names.position_ids} hold {lowest}; positions cannot be negative (leave them out)")
    if rules.max_positions is not None and highest >= rules.max_positions:
        raise ValueError(
            f"a sequence is longer than the model can number: position {highest} >= max_position_embeddings="
            f"{rules.max_positions} (at most {rules.max_positions - rules.position_start} tokens per sequence, "
            f"{longest} given); truncate at tokenization (truncation=True, max_length=...)"
        )


def _describe_rows(shape, rules: BatchRules, attention_mask, position_ids, past, device, value_stats, check_values):
    names = rules.names
    rows, length = shape
    stats: list[torch.Tensor] = []
    real = None if attention_mask is None else attention_mask.bool()  # (B, P + T)
    if attention_mask is not None:
        width = real.shape[1]
        lens = real.sum(dim=1)  # (B,)
        index = torch.arange(width, device=real.device)
        first = torch.where(real, index, width).amin(dim=1)
        last = torch.where(real, index, -1).amax(dim=1)
        stats += [
            ((attention_mask != 0) & (attention_mask != 1)).sum(),  # not a 0 / 1 mask
            lens.min(),
            lens.max(),
            ((last - first + 1 != lens) & (lens > 0)).sum(),  # rows with padding between real tokens
        ]
    column_padding = rules.padding_positions == "column" and position_ids is None and not rules.unpad
    if column_padding and attention_mask is not None:
        stats.append((first > 0).sum())  # rows with left padding
    if position_ids is not None:
        positions = position_ids.expand(rows, length).long()  # (B, T)
        current = None if real is None else real[:, -length:]  # (B, T)
        both_real = None if current is None else current[:, 1:] & current[:, :-1]  # (B, T - 1)
        new_sequence = positions[:, 1:] != positions[:, :-1] + 1
        stats += [
            (new_sequence if both_real is None else new_sequence & both_real).sum(),
            (positions if current is None else torch.where(current, positions, torch.iinfo(torch.int64).max)).amin(),
            (positions if current is None else torch.where(current, positions, -1)).amax(),
        ]
    values, extra = _read(stats, value_stats, check_values)
    left_padded = values.pop() if column_padding and attention_mask is not None else 0
    if attention_mask is not None:
        bad_values, shortest, longest, holes, *values = values
        if bad_values:
            raise ValueError(
                f"{names.attention_mask} must hold 1 at real tokens and 0 at padding, got other values (an additive "
                "mask?); pass the tokenizer's attention_mask"
            )
        if shortest == 0:
            empty = torch.nonzero(lens == 0).flatten().tolist()
            raise ValueError(
                f"rows {empty[:10]} of {names.attention_mask} have no real token; drop empty examples before batching"
            )
        if holes:
            bad = torch.nonzero((last - first + 1 != lens) & (lens > 0)).flatten().tolist()
            raise ValueError(
                f"rows {bad[:10]} of {names.attention_mask} have padding between real tokens; padding goes on one "
                "side of a row (left or right). Several sequences in one row are a packed batch: pass their "
                f"boundaries ({names.cu_seqlens}, e.g. hf_dynmask.make_collator(..., mode='packed'))"
            )
        padded = shortest < real.shape[1]
    else:
        longest, padded = past + length, False
    start = rules.position_start
    if position_ids is None:
        _check_position_range(rules, start, start + longest - 1, longest)
        if column_padding and padded:
            if left_padded:
                raise ValueError(
                    f"{names.attention_mask} pads {left_padded} row(s) on the left, but the stock model this "
                    "computation reproduces numbers a padded row's columns, so its real tokens would get other "
                    "positions than their own: pad on the right (tokenizer.padding_side='right'), or pass "
                    f"{names.position_ids} (the columns, as the stock model uses them)"
                )
            _check_position_range(rules, start, start + past + length - 1, past + length)
    else:
        new_sequences, lowest, highest = values
        if new_sequences:
            if not rules.reads_restarts:
                raise _refuse_restarts(names)
            if padded:
                raise _refuse_restarts(names, " with padding (boundaries are read from positions of unpadded rows)")
            if past:
                raise ValueError(
                    f"{names.position_ids} start a new sequence inside a row of {length} new tokens after {past} "
                    "cached ones (a packed row over a cache): packed rows are supported without cached tokens only. "
                    "Run packed rows in one forward without a cache, or pad the batch instead"
                )
            return _describe_flattened(shape, rules, position_ids, extra)
        _check_position_range(rules, lowest, highest, longest)
    if not padded:
        real = None
    if rules.unpad and not past and padded:  # rows without padding have nothing to strip: they run as they are
        index = unpad_index(real if real is not None else torch.ones(shape, dtype=torch.bool, device=device))
        if position_ids is None:
            packed_positions = position_ids_from_cu_seqlens(index.cu_seqlens, start)
        else:
            packed_positions = unpad(position_ids.expand(rows, length), index)
            if rules.given_positions == "checked":
                _check_given(names, packed_positions, position_ids_from_cu_seqlens(index.cu_seqlens, start), start)
        return BatchLayout(
            "unpadded", rows, length, index.cu_seqlens, index.max_seqlen, packed_positions, None, index, values=extra
        )
    own = _own_positions(real, shape, past, start, device) if rules.numbers_positions else None
    if own is not None and real is not None and rules.padding_positions is not None:
        own = _stock_padding_positions(own, real[:, -length:], rules.padding_positions, start, past)
    if position_ids is None:
        layer_positions = own
    else:
        layer_positions = position_ids.expand(rows, length)
        if rules.given_positions == "checked":
            current = None if real is None else real[:, -length:]
            given, expected = (layer_positions, own) if current is None else (layer_positions[current], own[current])
            _check_given(names, given, expected, start)
    return BatchLayout("padded", rows, length, None, longest, layer_positions, real, past=past, values=extra)


def _own_positions(real: torch.Tensor | None, shape, past: int, start: int, device) -> torch.Tensor:
    """Each token's position inside its own sequence, ``(B, T)``, from ``start`` at its first real token (cached
    ones counted; padding before the first real token gets ``start``, padding after the last one that token's
    position)."""
    rows, length = shape
    if real is None:
        return (torch.arange(past, past + length, device=device) + start).expand(rows, length)
    return (real.long().cumsum(1) - 1).clamp(min=0)[:, -length:] + start


def _stock_padding_positions(
    own: torch.Tensor, real: torch.Tensor, padding_positions: int | str, start: int, past: int
) -> torch.Tensor:
    """``own`` ``(B, T)`` with the padding tokens (``real`` False) at the stock models' positions: their column
    (from ``start``) or the one position ``padding_positions``."""
    if padding_positions == "column":
        stock = torch.arange(past, past + own.shape[1], device=own.device) + start  # (T,)
    else:
        stock = torch.full((), padding_positions, dtype=own.dtype, device=own.device)
    return torch.where(real, own, stock)


def _check_given(names: InputNames, given: torch.Tensor, expected: torch.Tensor, start: int) -> None:
    if not torch.equal(given, expected.to(given.device)):
        raise ValueError(
            f"{names.position_ids} must restart at {start} at the first real token of every sequence (as "
            "hf_dynmask's collators build them): the model numbers each sequence itself, so leave them out"
        )


def _describe_flattened(shape, rules: BatchRules, position_ids, extra) -> BatchLayout:
    """Rows whose restarting positions mark the sequences (causal self-attention only): run them packed."""
    rows, length = shape
    positions = position_ids.expand(rows, length)
    cu = cu_seqlens_from_position_ids(positions)  # every row start is a boundary too
    bounds = cu.tolist()
    start = rules.position_start
    flat = positions.reshape(-1)
    firsts = flat[cu[:-1].long()]
    if bool((firsts != start).any()):
        raise _positions_per_sequence(rules.names, start, flat, bounds)
    lens = [end - begin for begin, end in zip(bounds[:-1], bounds[1:], strict=True)]
    _check_position_range(rules, start, start + max(lens) - 1, max(lens))
    return BatchLayout("packed", rows, length, cu, max(lens), flat, None, boundaries="position_ids", values=extra)


@torch.compiler.disable  # host reads: kept out of compiled graphs (one graph break per call)
def rows_as_packed(layout: BatchLayout) -> BatchLayout:
    """Rows without padding as the packed batch they are: ``B`` sequences of ``T`` tokens, back to back (for a
    cross-attention whose other side runs packed).

    >>> rows = describe_batch((2, 3), rules=BatchRules())
    >>> rows_as_packed(rows).cu_seqlens.tolist()
    [0, 3, 6]
    """
    if layout.kind != "padded" or layout.real is not None or layout.past:
        raise ValueError("only rows without padding or a cache are a packed batch as they are")
    rows, length = layout.batch_size, layout.seqlen
    device = None if layout.position_ids is None else layout.position_ids.device
    cu = torch.arange(0, (rows + 1) * length, length, dtype=torch.int32, device=device)
    positions = None if layout.position_ids is None else layout.position_ids.reshape(-1)
    return BatchLayout("packed", rows, length, cu, length, positions, None, boundaries="stated", values=layout.values)


@torch.compiler.disable  # host reads: kept out of compiled graphs (one graph break per call)
def check_pairs(source: BatchLayout, target: BatchLayout) -> None:
    """Cross-attention pairs target ``s`` with source ``s``: both sides packed or neither, as many of each."""
    if (source.kind == "packed") != (target.kind == "packed"):
        raise ValueError(
            "a packed batch packs both sides: pass cu_seq_lens_q for the sources together with decoder_cu_seq_lens "
            "for the targets (hf_dynmask's seq2seq collator in mode='packed'), or neither"
        )
    if source.num_seqs != target.num_seqs:
        raise ValueError(f"{source.num_seqs} sources but {target.num_seqs} targets: every pair needs both")


@torch.compiler.disable  # host reads: kept out of compiled graphs (one graph break per call)
def target_padding_from_labels(
    labels: torch.Tensor | None,
    shape: tuple[int, int],
    *,
    attention_mask: torch.Tensor | None = None,
    packed: bool = False,
    past: int = 0,
    ignore_index: int = -100,
) -> torch.Tensor | None:
    """A seq2seq target's padding where its ``labels`` state it: the ``decoder_attention_mask`` ``(B, Tt)`` (1 at real
    positions), or None where the padding cannot be known.

    transformers' ``DataCollatorForSeq2Seq`` pads ``labels`` with ``-100`` and sends no ``decoder_attention_mask``, so
    the model sees no target padding. The decoder is causal: a position after the last scored label of its row is
    attended to by no earlier position, and the loss never reads it. So the tail of ``-100`` labels of each row is
    padding, and stripping it leaves the loss and its gradients unchanged (the stripped positions' outputs are zeros).
    Every position up to the last scored label is real, ``-100`` labels among them (left padding, unscored prompt
    tokens: later positions attend to them); a row with no scored label keeps its first position.

    None (every target position is computed, as by the stock models) when: no ``labels``; a ``decoder_attention_mask``
    is given (it states the padding itself); the target is packed (it has no padding); ``past`` positions are cached
    (generation); ``labels`` does not have the decoder inputs' ``shape`` ``(B, Tt)`` (the model refuses them later).

    >>> labels = torch.tensor([[5, 6, -100, -100], [-100, 7, -100, 9], [-100, -100, -100, -100]])
    >>> target_padding_from_labels(labels, (3, 4)).tolist()
    [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    """
    if labels is None or attention_mask is not None or packed or past:
        return None
    if not isinstance(labels, torch.Tensor) or labels.dim() != 2 or tuple(labels.shape) != tuple(shape):
        return None
    columns = torch.arange(labels.shape[1], device=labels.device)  # (Tt,)
    last = torch.where(labels != ignore_index, columns, 0).amax(dim=1, keepdim=True)  # (B, 1): 0 when none scored
    return (columns <= last).long()  # (B, Tt)


# ---------------------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------------------


def refuse_unknown_arguments(kwargs: Mapping[str, Any], known: Iterable[str], model: str) -> None:
    """One policy for every DynMask forward: an argument it does not know (and that is not None) is refused, with the
    closest known name, never ignored (a misspelled ``atention_mask=`` would otherwise change the outputs)."""
    known = sorted(set(known))
    unknown = sorted(name for name, value in kwargs.items() if value is not None and name not in known)
    if unknown:
        hints = "".join(did_you_mean(name, known).replace("; did you", f"; {name}: did you") for name in unknown)
        raise ValueError(f"{model} does not know the argument(s) {unknown}; it refuses rather than ignore them{hints}")

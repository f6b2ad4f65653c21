"""Attention masks as small predicates, converted to each backend's format.

A mask is written once, as a predicate ``mask_fn(batch_idx, head_idx, q_idx, kv_idx) -> bool tensor`` (True = the
query may attend to the key), the convention of transformers' ``masking_utils`` and of FlexAttention's ``mask_mod``.
Predicates work on broadcastable integer index tensors, so one predicate is evaluated by plain broadcasting
(:func:`to_bool`) or handed to ``create_block_mask`` (:func:`to_block_mask`). Combine them with :func:`and_masks` /
:func:`or_masks`, then convert:

    ==============  ===================================  =====================================================
    backend         form                                 function
    ==============  ===================================  =====================================================
    SDPA            bool ``(B, 1, Q, KV)``               :func:`to_bool`, :func:`padding_to_bool_4d`
    eager           float ``(B, 1, Q, KV)``              :func:`to_additive` (0 / ``torch.finfo(dtype).min``)
    FlexAttention   ``BlockMask``                        :func:`to_block_mask`
    varlen (flash)  :class:`VarlenArgs` (document only)  :func:`varlen_args_from_seq_idx`
    ==============  ===================================  =====================================================

Dimension legend:
    B   batch size              H   attention heads (masks here are the same for every head: ``H = 1``, broadcast)
    Q   query length            KV  key/value length (``Q == KV == T`` without a cache)
    T   padded or packed sequence length
    S   number of sequences in a packed batch

Polarity: bool masks are True where attention is allowed; additive masks are 0 where allowed and
``torch.finfo(dtype).min`` where not. :func:`draw` shows a 2-D bool mask with ``■`` (attend) and ``⬚`` (blocked),
one row per query:

>>> print(draw(to_bool(and_masks(causal(), document(torch.tensor([0, 0, 1, 1, 1]))), 1, 5, 5)[0, 0]))
■ ⬚ ⬚ ⬚ ⬚
■ ■ ⬚ ⬚ ⬚
⬚ ⬚ ■ ⬚ ⬚
⬚ ⬚ ■ ■ ⬚
⬚ ⬚ ■ ■ ■
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch
from transformers import masking_utils as _hf_masks

from .layout import cu_seqlens_from_seq_idx, seq_lens_from_cu_seqlens

if TYPE_CHECKING:  # pragma: no cover
    from torch.nn.attention.flex_attention import BlockMask

__all__ = [
    "MaskFn",
    "VarlenArgs",
    "and_masks",
    "bidirectional",
    "causal",
    "document",
    "draw",
    "or_masks",
    "padding",
    "padding_to_bool_4d",
    "prefix_lm",
    "sliding_window",
    "to_additive",
    "to_block_mask",
    "to_bool",
    "varlen_args_from_cu_seqlens",
    "varlen_args_from_seq_idx",
]

MaskFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``mask_fn(batch_idx, head_idx, q_idx, kv_idx) -> bool tensor``, True = may attend; arguments broadcast."""

ATTEND, BLOCKED = "■", "⬚"


# --------------------------------------------------------------------------------------------------------------------
# Predicates
# --------------------------------------------------------------------------------------------------------------------


def and_masks(*mask_fns: MaskFn) -> MaskFn:
    """Intersection: a query may attend to a key only where every predicate allows it.

    >>> print(draw(to_bool(and_masks(causal(), sliding_window(2)), 1, 4, 4)[0, 0]))
    ■ ⬚ ⬚ ⬚
    ■ ■ ⬚ ⬚
    ⬚ ■ ■ ⬚
    ⬚ ⬚ ■ ■
    """
    _check_callables(mask_fns, "and_masks")
    return _hf_masks.and_masks(*mask_fns)


def or_masks(*mask_fns: MaskFn) -> MaskFn:
    """Union: a query may attend to a key where any predicate allows it.

    Causal attention with one key of look-ahead:

    >>> print(draw(to_bool(or_masks(causal(), sliding_window(2)), 1, 4, 4)[0, 0]))
    ■ ■ ⬚ ⬚
    ■ ■ ■ ⬚
    ■ ■ ■ ■
    ■ ■ ■ ■
    """
    _check_callables(mask_fns, "or_masks")
    return _hf_masks.or_masks(*mask_fns)


def causal() -> MaskFn:
    """Each query attends to itself and earlier keys: ``kv_idx <= q_idx``.

    >>> print(draw(to_bool(causal(), 1, 4, 4)[0, 0]))
    ■ ⬚ ⬚ ⬚
    ■ ■ ⬚ ⬚
    ■ ■ ■ ⬚
    ■ ■ ■ ■
    """
    return _hf_masks.causal_mask_function


def bidirectional() -> MaskFn:
    """Every query attends to every key (the encoder mask before padding or documents are applied).

    >>> print(draw(to_bool(bidirectional(), 1, 3, 3)[0, 0]))
    ■ ■ ■
    ■ ■ ■
    ■ ■ ■
    """
    return _hf_masks.bidirectional_mask_function


def padding(attention_mask: torch.Tensor) -> MaskFn:
    """Key-side padding: a query may attend to key ``kv_idx`` of row ``b`` only if it is a real token.

    Args:
        attention_mask: ``(B, KV)``, 1 / True at real tokens, 0 at padding (either padding side). Query rows at
            padding positions still attend to the real keys, so no row is fully blocked unless the whole row is
            padding; their outputs are meaningless and are dropped by the loss.

    >>> print(draw(to_bool(padding(torch.tensor([[1, 1, 1, 0]])), 1, 4, 4)[0, 0]))
    ■ ■ ■ ⬚
    ■ ■ ■ ⬚
    ■ ■ ■ ⬚
    ■ ■ ■ ⬚
    """
    _check_attention_mask_2d(attention_mask)
    # transformers indexes the mask directly, so it must already be bool (an int mask would give an int "predicate").
    return _hf_masks.padding_mask_function(attention_mask.bool())


def document(seq_idx: torch.Tensor) -> MaskFn:
    """Block-diagonal mask of a packed row: a query attends only to keys of its own sequence.

    Args:
        seq_idx: int ``(B, T)`` (one packed row per batch row) or ``(T,)`` (shared by every batch row): the sequence
            each token belongs to (see :mod:`.layout`). Ids need not be sorted here; only equality counts.

    Combine with :func:`causal` for a packed decoder. A packed encoder row:

    >>> print(draw(to_bool(document(torch.tensor([0, 0, 1, 1, 1])), 1, 5, 5)[0, 0]))
    ■ ■ ⬚ ⬚ ⬚
    ■ ■ ⬚ ⬚ ⬚
    ⬚ ⬚ ■ ■ ■
    ⬚ ⬚ ■ ■ ■
    ⬚ ⬚ ■ ■ ■
    """
    if seq_idx.dim() == 2:
        return _hf_masks.packed_sequence_mask_function(seq_idx)
    if seq_idx.dim() == 1:
        # Written by hand: transformers' packed_sequence_mask_function needs a batch dimension, and a 1-D seq_idx
        # is meant to be shared by every batch row whatever the batch size.
        def same_sequence(batch_idx, head_idx, q_idx, kv_idx):
            return seq_idx[q_idx] == seq_idx[kv_idx]

        return same_sequence
    raise ValueError(f"seq_idx must be (batch, seq_len) or (seq_len,), got shape {tuple(seq_idx.shape)}")


def sliding_window(window: int) -> MaskFn:
    """Local attention: a query attends to keys less than ``window`` positions away, ``|q_idx - kv_idx| < window``.

    Symmetric on purpose, so it serves encoders as is and decoders as ``and_masks(causal(), sliding_window(w))``,
    which lets each query see itself and the ``w - 1`` keys before it (the same as transformers'
    ``sliding_window_causal_mask_function(w)``).

    >>> print(draw(to_bool(sliding_window(2), 1, 4, 4)[0, 0]))
    ■ ■ ⬚ ⬚
    ■ ■ ■ ⬚
    ⬚ ■ ■ ■
    ⬚ ⬚ ■ ■
    """
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1 (1 = each token sees only itself), got {window!r}")
    # transformers' bidirectional overlay is inclusive (|q - kv| <= w) while its causal overlay is exclusive
    # (q - kv < w); shifting by one gives one convention for both directions.
    return _hf_masks.sliding_window_bidirectional_overlay(window - 1)


def prefix_lm(prefix_lens: torch.Tensor) -> MaskFn:
    """Prefix-LM: bidirectional inside each row's prefix, causal after it.

    Key ``kv_idx`` is visible to query ``q_idx`` of row ``b`` if ``kv_idx <= q_idx`` or ``kv_idx < prefix_lens[b]``.

    Args:
        prefix_lens: int ``(B,)``, the prefix length of each row (0 gives a plain causal mask).

    >>> print(draw(to_bool(prefix_lm(torch.tensor([3])), 1, 5, 5)[0, 0]))
    ■ ■ ■ ⬚ ⬚
    ■ ■ ■ ⬚ ⬚
    ■ ■ ■ ⬚ ⬚
    ■ ■ ■ ■ ⬚
    ■ ■ ■ ■ ■
    """
    if prefix_lens.dim() != 1:
        raise ValueError(f"prefix_lens must be 1-D (batch,), got shape {tuple(prefix_lens.shape)}")

    # Written by hand: transformers has no prefix overlay (blockwise_overlay needs per-token block ids instead).
    def in_prefix(batch_idx, head_idx, q_idx, kv_idx):
        return kv_idx < prefix_lens[batch_idx]

    return or_masks(causal(), in_prefix)


def _check_attention_mask_2d(attention_mask: torch.Tensor) -> None:
    if attention_mask.dim() != 2:
        raise ValueError(
            "attention_mask must be 2-D (batch, seq_len) with 1 at real tokens, got shape "
            f"{tuple(attention_mask.shape)}"
        )


def _check_callables(mask_fns: tuple, name: str) -> None:
    if not mask_fns:
        raise ValueError(f"{name} needs at least one mask function")
    bad = [fn for fn in mask_fns if not callable(fn)]
    if bad:
        raise ValueError(f"{name} takes mask functions such as causal() or padding(mask); got {bad!r}")


# --------------------------------------------------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------------------------------------------------


def to_bool(
    mask_fn: MaskFn, batch_size: int, q_len: int, kv_len: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Evaluate ``mask_fn`` by broadcasting: bool ``(B, 1, Q, KV)``, True = may attend (the SDPA form).

    ``device`` is where the index tensors (and so the result) live; None means CPU. Tensors captured by the
    predicate (padding masks, ``seq_idx``) should be on the same device.

    >>> to_bool(causal(), 2, 3, 3).shape
    torch.Size([2, 1, 3, 3])
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    batch_idx = torch.arange(batch_size, device=device).view(batch_size, 1, 1, 1)
    head_idx = torch.zeros(1, 1, 1, 1, dtype=torch.long, device=device)
    q_idx = torch.arange(q_len, device=device).view(1, 1, q_len, 1)
    kv_idx = torch.arange(kv_len, device=device).view(1, 1, 1, kv_len)
    allowed = torch.as_tensor(mask_fn(batch_idx, head_idx, q_idx, kv_idx), device=device)
    if allowed.dtype != torch.bool:
        raise ValueError(f"mask functions must return bool tensors (True = may attend), got {allowed.dtype}")
    return allowed.expand(batch_size, 1, q_len, kv_len).contiguous()


def to_additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool mask to the eager form: same shape, 0 where allowed, ``torch.finfo(dtype).min`` where blocked.

    Args:
        allowed: bool, usually ``(B, 1, Q, KV)`` from :func:`to_bool`.
        dtype: a floating dtype, the dtype of the attention scores it is added to.

    >>> to_additive(torch.tensor([True, False]), torch.float16).tolist()
    [0.0, -65504.0]
    """
    if allowed.dtype != torch.bool:
        raise ValueError(f"to_additive expects a bool mask (True = may attend), got {allowed.dtype}; use .bool()")
    if not dtype.is_floating_point:
        raise ValueError(f"additive masks need a floating dtype (the attention scores' dtype), got {dtype}")
    additive_bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return additive_bias.masked_fill_(~allowed, torch.finfo(dtype).min)


def padding_to_bool_4d(
    attention_mask_2d: torch.Tensor, q_len: int | None = None, causal: bool = False
) -> torch.Tensor:
    """The common padded case in one broadcast: bool ``(B, 1, Q, KV)``, True = may attend.

    Equals ``to_bool(padding(m), B, Q, KV)`` (and with ``causal=True``, ``and_masks(causal(), padding(m))`` with the
    queries aligned to the *last* ``Q`` keys, as when decoding with a cache), without evaluating predicates.
    Non-causal results are a broadcast view of ``attention_mask_2d``: read them, do not write into them.

    With ``causal=True`` and left padding, the query rows at padding positions have no allowed key (first row
    below). Backends disagree on such rows (SDPA with a bool mask returns zeros on CPU, the additive form a uniform
    average), so only outputs at real tokens are meaningful; losses must ignore the padding positions.

    Args:
        attention_mask_2d: ``(B, KV)``, 1 / True at real tokens.
        q_len: number of queries ``Q``; defaults to ``KV``.
        causal: also block keys after each query.

    >>> print(draw(padding_to_bool_4d(torch.tensor([[0, 1, 1, 1]]), causal=True)[0, 0]))
    ⬚ ⬚ ⬚ ⬚
    ⬚ ■ ⬚ ⬚
    ⬚ ■ ■ ⬚
    ⬚ ■ ■ ■
    """
    _check_attention_mask_2d(attention_mask_2d)
    batch_size, kv_len = attention_mask_2d.shape
    q_len = kv_len if q_len is None else q_len
    if q_len > kv_len:
        raise ValueError(f"q_len ({q_len}) cannot exceed the key length ({kv_len}) of attention_mask")
    allowed = attention_mask_2d.bool()[:, None, None, :].expand(batch_size, 1, q_len, kv_len)  # (B, 1, Q, KV)
    if causal:
        device = attention_mask_2d.device
        q_pos = torch.arange(kv_len - q_len, kv_len, device=device).view(q_len, 1)
        allowed = allowed & (torch.arange(kv_len, device=device).view(1, kv_len) <= q_pos)
    return allowed


def to_block_mask(
    mask_fn: MaskFn, batch_size: int, q_len: int, kv_len: int, device: torch.device | str | None = None
) -> BlockMask:
    """FlexAttention ``BlockMask`` for ``mask_fn`` (heads broadcast), via ``create_block_mask``.

    ``device`` defaults to CPU (``create_block_mask`` itself defaults to CUDA). Raises ``RuntimeError`` when this
    torch has no FlexAttention (it needs torch >= 2.5); use :func:`to_bool` with SDPA instead.
    """
    try:
        from torch.nn.attention.flex_attention import create_block_mask
    except ImportError as err:
        raise RuntimeError(
            f"torch {torch.__version__} has no FlexAttention (torch.nn.attention.flex_attention, torch >= 2.5); "
            "upgrade torch or use to_bool(...) with SDPA / to_additive(...) with eager attention"
        ) from err
    device = torch.device("cpu") if device is None else torch.device(device)
    return create_block_mask(mask_fn, batch_size, None, q_len, kv_len, device=device)


class VarlenArgs(NamedTuple):
    """Varlen-kernel arguments of a document mask (transformers: ``cu_seq_lens_q/k``, ``max_length_q/k``)."""

    cu_seqlens: torch.Tensor  # int32 (S + 1,)
    max_seqlen: int


def varlen_args_from_cu_seqlens(cu_seqlens: torch.Tensor) -> VarlenArgs:
    """:class:`VarlenArgs` from cumulative lengths (int ``(S + 1,)`` starting at 0), cast to int32.

    >>> varlen_args_from_cu_seqlens(torch.tensor([0, 3, 9, 16]))
    VarlenArgs(cu_seqlens=tensor([ 0,  3,  9, 16], dtype=torch.int32), max_seqlen=7)
    """
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or int(cu_seqlens[0]) != 0:
        raise ValueError(f"cu_seqlens must be 1-D (num_seqs + 1,) starting at 0, got {cu_seqlens.tolist()}")
    return VarlenArgs(cu_seqlens.to(torch.int32), int(seq_lens_from_cu_seqlens(cu_seqlens).max()))


def varlen_args_from_seq_idx(seq_idx: torch.Tensor) -> VarlenArgs:
    """:class:`VarlenArgs` equivalent to ``document(seq_idx)``: the tokens, flattened row after row, split by sequence.

    Args:
        seq_idx: int ``(T,)`` or ``(B, T)``, non-decreasing inside each row, every token in some sequence. Each row
            is a separate packed row, so a sequence never continues into the next row even if its id repeats there.

    >>> varlen_args_from_seq_idx(torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]]))
    VarlenArgs(cu_seqlens=tensor([ 0,  2,  5,  6, 10], dtype=torch.int32), max_seqlen=4)
    """
    if seq_idx.dim() == 2:
        # Renumber so that ids grow across rows: row b's first id becomes one past row b-1's last one.
        relative = seq_idx.long() - seq_idx[:, :1].long()  # (B, T)
        ids_per_row = relative[:, -1] + 1
        seq_idx = relative + (torch.cumsum(ids_per_row, 0) - ids_per_row)[:, None]
    elif seq_idx.dim() != 1:
        raise ValueError(f"seq_idx must be (batch, seq_len) or (seq_len,), got shape {tuple(seq_idx.shape)}")
    return varlen_args_from_cu_seqlens(cu_seqlens_from_seq_idx(seq_idx))


def draw(allowed: torch.Tensor) -> str:
    """ASCII drawing of a 2-D bool mask ``(Q, KV)``: one line per query, ``■`` attend, ``⬚`` blocked.

    >>> print(draw(torch.tensor([[True, False], [True, True]])))
    ■ ⬚
    ■ ■
    """
    if allowed.dim() != 2:
        raise ValueError(f"draw takes one 2-D (q_len, kv_len) mask, e.g. allowed[0, 0]; got {tuple(allowed.shape)}")
    return "\n".join(" ".join(ATTEND if cell else BLOCKED for cell in row) for row in allowed.bool().tolist())

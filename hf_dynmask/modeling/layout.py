"""One vocabulary for batch layouts.

Every other module of hf_dynmask describes a batch with the names defined here, and converts between layouts with
the functions defined here. The model code imports this module, so it depends on torch alone (it is copied next to a
saved model as remote code).

Dimension legend:
    B  batch size (rows of a padded batch)          T  padded sequence length
    S  number of sequences in a packed batch        N  total real tokens (sum of the sequence lengths)

Layouts:
    padded   ``(B, T, ...)`` with a 2-D ``attention_mask`` (1 = real token, 0 = padding), either padding side.
    packed   ``(N, ...)`` (or ``(1, N, ...)`` as a model input row): sequences back to back, no padding, described by
             ``cu_seqlens`` / ``max_seqlen`` / ``position_ids`` / ``seq_idx``.

The names:
    seq_lens      int64 ``(S,)``: length of each sequence, every one >= 1.
    cu_seqlens    int32 ``(S + 1,)``: cumulative lengths starting at 0; sequence ``s`` spans
                  ``[cu_seqlens[s], cu_seqlens[s+1])``.
                  transformers calls it ``cu_seq_lens_q`` / ``cu_seq_lens_k``.
    max_seqlen    python int: the longest sequence (transformers: ``max_length_q`` / ``max_length_k``).
    position_ids  int64 ``(N,)``: position of each token inside its own sequence, restarting at ``position_start``
                  (0 for BERT, ``padding_idx + 1`` for RoBERTa-style models).
    seq_idx       int32 ``(N,)``: which sequence each token belongs to.

>>> layout = packed_layout([3, 6, 7])
>>> layout.cu_seqlens.tolist(), layout.max_seqlen
([0, 3, 9, 16], 7)
>>> layout.position_ids[:5].tolist(), layout.seq_idx[:5].tolist()
([0, 1, 2, 0, 1], [0, 0, 0, 1, 1])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

__all__ = [
    "PackedLayout",
    "UnpadIndex",
    "as_seq_lens",
    "cu_seqlens_from_position_ids",
    "cu_seqlens_from_seq_idx",
    "cu_seqlens_from_seq_lens",
    "pad_index_from_cu_seqlens",
    "packed_layout",
    "position_ids_from_cu_seqlens",
    "repad",
    "seq_idx_from_cu_seqlens",
    "seq_lens_from_cu_seqlens",
    "unpad",
    "unpad_index",
]


class PackedLayout(NamedTuple):
    """Boundaries of a packed batch of ``S`` sequences and ``N`` tokens."""

    cu_seqlens: torch.Tensor  # int32 (S + 1,)
    max_seqlen: int
    position_ids: torch.Tensor  # int64 (N,)
    seq_idx: torch.Tensor  # int32 (N,)

    @property
    def seq_lens(self) -> torch.Tensor:
        return seq_lens_from_cu_seqlens(self.cu_seqlens)

    @property
    def num_seqs(self) -> int:
        return self.cu_seqlens.numel() - 1

    @property
    def num_tokens(self) -> int:
        return self.position_ids.numel()


class UnpadIndex(NamedTuple):
    """Where the real tokens of a padded ``(B, T)`` batch live, and their packed layout.

    ``indices`` (int64 ``(N,)``) index the flattened ``B * T`` positions in row-major order, so sequence ``b`` of the
    padded batch is sequence ``b`` of the packed one, whatever the padding side.
    """

    indices: torch.Tensor  # int64 (N,)
    cu_seqlens: torch.Tensor  # int32 (B + 1,)
    max_seqlen: int
    batch_size: int
    seqlen: int

    @property
    def seq_lens(self) -> torch.Tensor:
        return seq_lens_from_cu_seqlens(self.cu_seqlens)


def as_seq_lens(seq_lens: Sequence[int] | torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """Validate sequence lengths and return them as an int64 ``(S,)`` tensor.

    Raises ``ValueError`` for an empty list, a non 1-D input or a length below 1: an empty sequence has no tokens to
    carry its label, so it must be filtered out (or given special tokens) before batching.
    """
    lens = torch.as_tensor(seq_lens, dtype=torch.int64, device=device)
    if lens.dim() != 1:
        raise ValueError(f"seq_lens must be 1-D, got shape {tuple(lens.shape)}")
    if lens.numel() == 0:
        raise ValueError("seq_lens is empty: a batch needs at least one sequence")
    if bool((lens < 1).any()):
        bad = torch.nonzero(lens < 1).flatten().tolist()
        raise ValueError(
            f"sequences {bad[:10]} have length < 1; drop empty examples before batching "
            "(e.g. dataset.filter(lambda ex: len(ex['input_ids']) > 0))"
        )
    return lens


def cu_seqlens_from_seq_lens(seq_lens: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Cumulative sequence lengths, int32 ``(S + 1,)`` starting at 0.

    >>> cu_seqlens_from_seq_lens([3, 6, 7]).tolist()
    [0, 3, 9, 16]
    """
    lens = as_seq_lens(seq_lens, device=seq_lens.device if isinstance(seq_lens, torch.Tensor) else None)
    return torch.nn.functional.pad(torch.cumsum(lens, 0, dtype=torch.int32), (1, 0))


def seq_lens_from_cu_seqlens(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`cu_seqlens_from_seq_lens`: int64 ``(S,)``.

    >>> seq_lens_from_cu_seqlens(torch.tensor([0, 3, 9, 16])).tolist()
    [3, 6, 7]
    """
    return (cu_seqlens[1:] - cu_seqlens[:-1]).long()


def seq_idx_from_cu_seqlens(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Sequence index of every packed token, int32 ``(N,)``.

    >>> seq_idx_from_cu_seqlens(torch.tensor([0, 2, 5])).tolist()
    [0, 0, 1, 1, 1]
    """
    lens = seq_lens_from_cu_seqlens(cu_seqlens)
    ids = torch.arange(lens.numel(), device=cu_seqlens.device, dtype=torch.int32)
    return torch.repeat_interleave(ids, lens)


def position_ids_from_cu_seqlens(cu_seqlens: torch.Tensor, position_start: int = 0) -> torch.Tensor:
    """Position of every packed token inside its own sequence, int64 ``(N,)``, starting at ``position_start``.

    RoBERTa-style models number positions from ``padding_idx + 1``:

    >>> position_ids_from_cu_seqlens(torch.tensor([0, 2, 5]), position_start=2).tolist()
    [2, 3, 2, 3, 4]
    """
    lens = seq_lens_from_cu_seqlens(cu_seqlens)
    total = int(cu_seqlens[-1])
    starts = torch.repeat_interleave(cu_seqlens[:-1].long(), lens)
    return torch.arange(total, device=cu_seqlens.device) - starts + position_start


def cu_seqlens_from_seq_idx(seq_idx: torch.Tensor) -> torch.Tensor:
    """Boundaries from explicit per-token sequence ids (sorted, contiguous), int32 ``(S + 1,)``.

    Unlike boundaries guessed from ``position_ids`` (where a sequence that happens to restart at 0 is ambiguous),
    ``seq_idx`` states them, so no heuristic is involved.

    >>> cu_seqlens_from_seq_idx(torch.tensor([[0, 0, 1, 1, 1, 2]])).tolist()
    [0, 2, 5, 6]
    """
    flat = seq_idx.reshape(-1)
    if flat.numel() == 0:
        raise ValueError("seq_idx is empty")
    if bool((flat[1:] < flat[:-1]).any()):
        raise ValueError("seq_idx must be non-decreasing: each sequence's tokens must be contiguous in a packed row")
    _, counts = torch.unique_consecutive(flat, return_counts=True)
    return torch.nn.functional.pad(torch.cumsum(counts, 0, dtype=torch.int32), (1, 0))


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor | None:
    """Boundaries implied by restarting ``position_ids``, transformers' padding-free convention for decoders.

    A sequence starts at every row start and wherever a position is not its predecessor plus one (transformers'
    ``find_packed_sequence_indices``). Rows are concatenated, so the result describes the flattened ``B * T`` tokens.
    Returns int32 ``(S + 1,)``, or None when no row restarts (one sequence per row: nothing to split).

    Only for causal models, where this is how transformers and TRL mark packed rows; encoders need the boundaries
    stated (``cu_seq_lens_q`` or ``seq_idx``), never guessed.

    >>> cu_seqlens_from_position_ids(torch.tensor([[0, 1, 2, 0, 1, 0]])).tolist()
    [0, 3, 5, 6]
    >>> cu_seqlens_from_position_ids(torch.tensor([[0, 1, 2], [5, 6, 7]])) is None
    True
    """
    positions = position_ids.reshape(-1, position_ids.shape[-1])  # (B, T)
    starts = torch.ones_like(positions, dtype=torch.bool)
    starts[:, 1:] = positions[:, 1:] != positions[:, :-1] + 1
    if not bool(starts[:, 1:].any()):
        return None
    indices = torch.nonzero(starts.reshape(-1)).flatten().to(torch.int32)
    return torch.cat([indices, indices.new_tensor([positions.numel()])])


def packed_layout(
    seq_lens: Sequence[int] | torch.Tensor, position_start: int = 0, device: torch.device | str | None = None
) -> PackedLayout:
    """Everything a packed batch needs, from its sequence lengths."""
    lens = as_seq_lens(seq_lens, device=device)
    cu_seqlens = cu_seqlens_from_seq_lens(lens)
    return PackedLayout(
        cu_seqlens=cu_seqlens,
        max_seqlen=int(lens.max()),
        position_ids=position_ids_from_cu_seqlens(cu_seqlens, position_start),
        seq_idx=seq_idx_from_cu_seqlens(cu_seqlens),
    )


def unpad_index(attention_mask: torch.Tensor) -> UnpadIndex:
    """Index map from a padded batch to its packed form.

    Args:
        attention_mask: ``(B, T)``, nonzero / True at real tokens. Left or right padding; every row needs at
            least one real token.

    >>> mask = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 1, 1]])  # right, left, none
    >>> index = unpad_index(mask)
    >>> index.indices.tolist(), index.cu_seqlens.tolist(), index.max_seqlen
    ([0, 1, 4, 5, 6, 7, 8], [0, 2, 4, 7], 3)
    """
    if attention_mask.dim() != 2:
        raise ValueError(
            "attention_mask must be 2-D (batch, seq_len) with 1 at real tokens, "
            f"got shape {tuple(attention_mask.shape)}"
        )
    real = attention_mask.bool()
    seq_lens = real.sum(dim=1)
    if bool((seq_lens == 0).any()):
        rows = torch.nonzero(seq_lens == 0).flatten().tolist()
        raise ValueError(f"rows {rows[:10]} of attention_mask have no real token; drop empty examples before batching")
    batch_size, seqlen = real.shape
    return UnpadIndex(
        indices=torch.nonzero(real.reshape(-1), as_tuple=False).flatten(),
        cu_seqlens=torch.nn.functional.pad(torch.cumsum(seq_lens, 0, dtype=torch.int32), (1, 0)),
        max_seqlen=int(seq_lens.max()),
        batch_size=batch_size,
        seqlen=seqlen,
    )


def pad_index_from_cu_seqlens(cu_seqlens: torch.Tensor, max_seqlen: int | None = None) -> UnpadIndex:
    """Index map that lays a packed batch out as a right-padded ``(S, max_seqlen)`` one.

    The inverse direction of :func:`unpad_index`: ``repad(packed, index)`` gives one row per sequence.

    >>> index = pad_index_from_cu_seqlens(torch.tensor([0, 2, 5]))
    >>> repad(torch.arange(5.0), index, pad_value=-1).tolist()
    [[0.0, 1.0, -1.0], [2.0, 3.0, 4.0]]
    """
    lens = seq_lens_from_cu_seqlens(cu_seqlens)
    if max_seqlen is None:
        max_seqlen = int(lens.max())
    num_seqs = lens.numel()
    position = position_ids_from_cu_seqlens(cu_seqlens)
    rows = seq_idx_from_cu_seqlens(cu_seqlens).long()
    return UnpadIndex(
        indices=rows * max_seqlen + position,
        cu_seqlens=cu_seqlens,
        max_seqlen=max_seqlen,
        batch_size=num_seqs,
        seqlen=max_seqlen,
    )


def unpad(padded: torch.Tensor, index: UnpadIndex) -> torch.Tensor:
    """Gather the real tokens of ``padded`` ``(B, T, ...)`` into ``(N, ...)``. Differentiable."""
    flat = padded.reshape(-1, *padded.shape[2:])  # (B * T, ...): the tensor's own sizes (symbolic under compile)
    return flat.index_select(0, index.indices)


def repad(packed: torch.Tensor, index: UnpadIndex, pad_value: float = 0.0) -> torch.Tensor:
    """Scatter ``packed`` ``(N, ...)`` back to ``(B, T, ...)``, ``pad_value`` at padding. Differentiable.

    >>> mask = torch.tensor([[0, 1, 1], [1, 0, 0]])
    >>> index = unpad_index(mask)
    >>> repad(unpad(torch.arange(6.0).view(2, 3), index), index, pad_value=-1).tolist()
    [[-1.0, 1.0, 2.0], [3.0, -1.0, -1.0]]
    """
    flat = packed.new_full((index.batch_size * index.seqlen, *packed.shape[1:]), pad_value)
    flat = flat.index_copy(0, index.indices, packed)
    return flat.view(index.batch_size, index.seqlen, *packed.shape[1:])

"""Attention over packed tokens, exact and padding-free, on any device; and its ``AttentionInterface`` entry.

Model-side module: imports only torch, transformers and relative siblings (it is saved next to a model as remote code).

Dimension legend:
    Nq, Nk  packed query / key tokens     S  sequences          H  query heads       Hkv  key/value heads
    D       head dim                      n  sequences in one length group           Lq, Lk  longest query / key
    B, Q, K rows, queries and keys of a padded batch                                         length of that group

A packed batch holds ``S`` sequences back to back, with boundaries in ``cu_seqlens``: ``cu_seqlens_q`` for the
queries and ``cu_seqlens_k`` for the keys (the same tensor for self-attention; different for cross-attention, where
target ``s`` attends to source ``s`` only, or for a decoder step over a cache). Exact attention lets every query see
the keys of its own sequence only (a block-diagonal "document" mask). Three ways to compute it:

- one dense ``(Nq, Nk)`` block-diagonal mask: correct but quadratic in the pack length, so hf_dynmask builds it only
  when attention weights are asked for (``output_attentions``, :func:`dense_mask`);
- flash-attn's varlen kernels (CUDA only): used through transformers' ``flash_attention_2`` when installed;
- :func:`varlen_attention` here: sequences are grouped by similar lengths (:func:`plan_varlen`, once per forward),
  each group is gathered into small padded ``(n, H, Lq, D)`` / ``(n, Hkv, Lk, D)`` blocks with a key-padding mask,
  run through SDPA (or :func:`eager_attention`, the reference) and scattered back. Cost ``sum(n * Lq * Lk)``, close
  to the real ``sum(lq * lk)``; no sequence ever sees another. It works on CPU, CUDA and anything else SDPA runs on.

Inside each sequence the kernel honours causality (aligned bottom-right when a query block is shorter than its keys,
as when decoding with a cache: query ``i`` sees keys up to ``i + lk - lq``), a sliding window (``sliding_window=W``:
at most ``W - 1`` keys away, on both sides unless causal: flash-attn's ``window_size=(W - 1, W - 1)``, which is what
transformers' ``sliding_window`` argument means), grouped-query attention (``Hkv`` divides ``H``) and an attention
softcap (``tanh(scores / c) * c``, computed on the explicit path).

:func:`varlen_attention_forward` is that path behind transformers' ``AttentionInterface`` signature, registered as
``"dynmask_varlen"`` (with :func:`varlen_attention_mask` in ``AttentionMaskInterface``) by :mod:`.stock`, whose
entry check describes each batch once per forward (:mod:`.batch`) and hands every attention layer that description
and its plan as arguments (``dynmask_layout``, ``dynmask_plan``). The entry is a route and a kernel call: a packed
row goes to the varlen kernel, padded rows to transformers' own SDPA function with the mask it built, rows with a
window, a softcap or queries over a cache to the varlen kernel as one length group; with ``output_attentions`` the
same mask runs through the eager kernel, which returns the weights. Arguments it cannot honour (attention sinks, a
relative position bias on packed rows, an unknown argument) are refused, naming what to use instead.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch.nn import functional as F

from .families import check_verified_family

ATTN_IMPLEMENTATION = "dynmask_varlen"

__all__ = [
    "ATTN_IMPLEMENTATION",
    "COMPILED_GROUPS",
    "FEW_COMPILED_GROUPS",
    "AttentionLayout",
    "LengthGroup",
    "VarlenPlan",
    "attend",
    "compiled_plan",
    "dense_mask",
    "eager_attention",
    "flex_attention",
    "plan_varlen",
    "repeat_kv",
    "rows_plan",
    "varlen_attention",
    "varlen_attention_forward",
    "varlen_attention_mask",
]


class LengthGroup(NamedTuple):
    """Sequences of similar lengths, laid out as right-padded ``(n, Lq)`` query and ``(n, Lk)`` key blocks of
    packed-token indices."""

    q_gather: torch.Tensor  # int64 (n * Lq,): packed query index per block slot (padding slots repeat a real token)
    k_gather: torch.Tensor  # int64 (n * Lk,): the same for keys (the same tensor as q_gather for self-attention)
    q_real_slots: torch.Tensor | None  # int64 (Mq,): query slots holding real tokens; None when no query padding
    q_real: torch.Tensor | None  # bool (n, Lq): True at real query slots; None when no query padding
    key_allowed: torch.Tensor | None  # bool (n, 1, 1, Lk): True at real keys; None when no key padding
    diagonal: torch.Tensor | None  # int64 (n, 1, 1, 1): lk - lq per sequence (causal alignment); None when all 0
    num_seqs: int
    q_len: int
    k_len: int


class VarlenPlan(NamedTuple):
    """How :func:`varlen_attention` splits a packed batch into length groups. Built once per forward.

    The kernel gathers every group's blocks at once (one ``index_select`` per tensor: ``q_index``, ``k_index``) and
    scatters every output back at once (``out_index``), whatever the number of groups.
    """

    groups: tuple[LengthGroup, ...]
    q_index: torch.Tensor | None  # int64 (sum n * Lq,): the groups' q_gather, concatenated; None: no gather needed
    k_index: torch.Tensor | None  # int64 (sum n * Lk,): the same for keys (q_index itself for self-attention)
    out_index: torch.Tensor | None  # int64 (Nq,): each packed query's slot in the concatenated blocks; None: identity
    num_q_tokens: int
    num_k_tokens: int
    cu_seqlens_q: torch.Tensor | None = None  # int32 (S + 1,): for kernels that take boundaries (torch_varlen)
    cu_seqlens_k: torch.Tensor | None = None
    max_q: int = 0
    max_k: int = 0
    query_surplus: int = 0  # the most queries any sequence has beyond its keys (lq - lk; 0 when none has more)


def _bounds(cu_seqlens: torch.Tensor, name: str) -> list[int]:
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"{name} must be 1-D (num_seqs + 1,), got shape {tuple(cu_seqlens.shape)}")
    bounds = cu_seqlens.tolist()  # one host sync per forward, shared by every layer
    if bounds[0] != 0 or any(end <= start for start, end in zip(bounds[:-1], bounds[1:], strict=True)):
        raise ValueError(f"{name} must start at 0 and strictly increase (every sequence >= 1 token), got {bounds[:8]}")
    return bounds


#: The most length groups (attention kernel calls per layer) :func:`plan_varlen` makes by default, whatever the mix of
#: lengths: more groups waste fewer padded slots but cost a kernel call (and its views' bookkeeping) each. On CPU four
#: trained fastest, on short utterances as on 384-token windows, at about twice stock BERT's operator count per step
#: (BENCHMARKS.md, "Attention calls per layer").
MAX_GROUPS = 4

#: The most length groups of a plan made under ``torch.compile`` (:func:`compiled_plan`) for a DynMask encoder and
#: the seq2seq family (whose decoder's cross plan takes its self plan's groups, so its graph meets four structures, not
#: sixteen): each group count is a plan structure, and each structure one graph. On CPU, four ran compiled training
#: steps on the long-tailed docstrings at eager's speed where two ran at 0.78x (more padding in fewer groups), and
#: matched two on short utterances; on long-tailed seq2seq sources 0.99-1.03x eager where two ran at 0.95x
#: (BENCHMARKS.md, "torch.compile on CPU").
COMPILED_GROUPS = 4

#: The same bound for graphs that meet each plan structure more than once: a stock model's forward compiles each
#: structure twice (static sizes, then dynamic). With two groups it stays within dynamo's recompile limit (8 compiles
#: of a frame; past it the frame runs eager); with four it would not.
FEW_COMPILED_GROUPS = 2


def plan_varlen(
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor | None = None,
    bucket_ratio: float = 0.8,
    static_structure: bool = False,
    max_groups: int | None = MAX_GROUPS,
    min_group_seqs: int = 1,
    group_by_keys: bool = True,
) -> VarlenPlan:
    """Group the sequences of a packed batch by length for :func:`varlen_attention`.

    Sequences are sorted by query length; a sequence joins the current group while its query length is at least
    ``bucket_ratio`` times the group's longest and its key length within that ratio of the group's key lengths, so
    each group wastes at most about ``1 - bucket_ratio`` of its slots on padding (``bucket_ratio=0`` makes one group,
    ``1`` one group per distinct pair of lengths). Then, while there are more than ``max_groups`` groups, the two
    neighbouring groups whose merge adds the fewest padded query-key pairs are merged, so a layer never makes more
    than ``max_groups`` kernel calls (None: no bound); a group of fewer than ``min_group_seqs`` sequences is merged
    the same way (``torch.compile`` specializes a size of 1, so compiled plans keep every group at two or more).

    Args:
        cu_seqlens_q: int32 ``(S + 1,)``, starting at 0: the queries' boundaries.
        cu_seqlens_k: int32 ``(S + 1,)``: the keys' boundaries; None (or the same tensor) for self-attention.
        static_structure: fill every optional tensor of the plan (``q_real_slots``, ``q_real``, ``key_allowed``,
            ``inverse``) even where it would be a no-op, so that batches of any lengths give plans of the same
            structure; with ``bucket_ratio=0.0`` (one group) ``torch.compile`` then reuses one graph for every batch
            instead of recompiling whenever the lengths happen to be equal or already sorted.
        group_by_keys: False: group and merge by the query lengths alone (keys padded to each group's longest), so a
            cross-attention plan has the groups of the queries' self-attention plan, and the same group count.

    Lengths [3, 10, 2, 9]: the two long ones share a padded (2, 10) block, the short ones a (2, 3) block.

    >>> plan = plan_varlen(torch.tensor([0, 3, 13, 15, 24], dtype=torch.int32), bucket_ratio=0.6)
    >>> [(g.num_seqs, g.q_len, g.k_len, g.key_allowed is None) for g in plan.groups]
    [(2, 10, 10, False), (2, 3, 3, False)]

    Cross-attention of targets of lengths [2, 3] to sources of lengths [4, 1]:

    >>> plan = plan_varlen(torch.tensor([0, 2, 5]), torch.tensor([0, 4, 5]), bucket_ratio=0.0)
    >>> [(g.num_seqs, g.q_len, g.k_len) for g in plan.groups], plan.num_q_tokens, plan.num_k_tokens
    ([(2, 3, 4)], 5, 5)
    """
    self_attention = cu_seqlens_k is None or cu_seqlens_k is cu_seqlens_q
    bounds_q = _bounds(cu_seqlens_q, "cu_seqlens_q")
    bounds_k = bounds_q if self_attention else _bounds(cu_seqlens_k, "cu_seqlens_k")
    if len(bounds_k) != len(bounds_q):
        raise ValueError(
            f"cu_seqlens_q describes {len(bounds_q) - 1} sequences but cu_seqlens_k {len(bounds_k) - 1}: each query "
            "sequence needs its own key sequence"
        )
    self_attention = self_attention or bounds_k == bounds_q
    lens_q = [end - start for start, end in zip(bounds_q[:-1], bounds_q[1:], strict=True)]
    lens_k = [end - start for start, end in zip(bounds_k[:-1], bounds_k[1:], strict=True)]
    lens_grouped = lens_k if group_by_keys else lens_q  # the key lengths that grouping and merging look at
    order = sorted(range(len(lens_q)), key=lambda s: (-lens_q[s], -lens_grouped[s]))
    device = cu_seqlens_q.device

    members_of_groups: list[list[int]] = []
    k_range: list[int] = []  # (min, max) key length of the current group
    for s in order:
        if members_of_groups:
            low, high = min(k_range[0], lens_grouped[s]), max(k_range[1], lens_grouped[s])
            if lens_q[s] >= bucket_ratio * lens_q[members_of_groups[-1][0]] and low >= bucket_ratio * high:
                members_of_groups[-1].append(s)
                k_range = [low, high]
                continue
        members_of_groups.append([s])
        k_range = [lens_grouped[s], lens_grouped[s]]
    members_of_groups = _merge_groups(members_of_groups, lens_q, lens_grouped, max_groups, min_group_seqs)

    groups = []
    gathered_real = []  # packed query indices in the order the groups' outputs are concatenated
    for members in members_of_groups:
        q_gather, q_real = _block(bounds_q, lens_q, members, device)
        if self_attention:
            k_gather, k_real = q_gather, q_real
        else:
            k_gather, k_real = _block(bounds_k, lens_k, members, device)
        q_all_real = bool(q_real.all()) and not static_structure
        q_real_slots = None if q_all_real else torch.nonzero(q_real.reshape(-1)).flatten()
        gathered_real.append(q_gather if q_real_slots is None else q_gather[q_real_slots])
        offsets = [lens_k[s] - lens_q[s] for s in members]
        diagonal = None
        if any(offsets):
            diagonal = torch.tensor(offsets, device=device).view(-1, 1, 1, 1)
        groups.append(
            LengthGroup(
                q_gather=q_gather,
                k_gather=k_gather,
                q_real_slots=q_real_slots,
                q_real=None if q_all_real else q_real,
                key_allowed=None if bool(k_real.all()) and not static_structure else k_real[:, None, None, :],
                diagonal=diagonal,
                num_seqs=len(members),
                q_len=q_real.shape[1],
                k_len=k_real.shape[1],
            )
        )

    num_q_tokens = bounds_q[-1]
    q_index = torch.cat([g.q_gather for g in groups]) if len(groups) > 1 else groups[0].q_gather
    k_index = q_index if self_attention else torch.cat([g.k_gather for g in groups])
    slots, offset = [], 0
    for group in groups:
        slots.append(offset + (torch.arange(group.q_gather.numel(), device=device) if group.q_real_slots is None
                               else group.q_real_slots))  # fmt: skip
        offset += group.q_gather.numel()
    out_index = torch.empty(num_q_tokens, dtype=torch.long, device=device)
    out_index[torch.cat(gathered_real)] = torch.cat(slots)
    identity = (
        not static_structure
        and q_index.numel() == num_q_tokens
        and torch.equal(q_index, torch.arange(num_q_tokens, device=device))
        and (self_attention or torch.equal(k_index, torch.arange(bounds_k[-1], device=device)))
    )
    boundaries = (
        cu_seqlens_q.to(torch.int32),
        (cu_seqlens_q if self_attention else cu_seqlens_k).to(torch.int32),
        max(lens_q),
        max(lens_k),
        max(max(q - k for q, k in zip(lens_q, lens_k, strict=True)), 0),
    )
    if identity:  # one group, no padding, in packed order: the blocks are views of the inputs
        return VarlenPlan(tuple(groups), None, None, None, num_q_tokens, bounds_k[-1], *boundaries)
    return VarlenPlan(tuple(groups), q_index, k_index, out_index, num_q_tokens, bounds_k[-1], *boundaries)


def compiled_plan(
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor | None = None,
    max_groups: int = COMPILED_GROUPS,
    group_by_keys: bool = True,
) -> VarlenPlan:
    """The plan to hand a graph being compiled: at most ``max_groups`` length groups (one per distinct length, merged
    where that wastes least) of two sequences or more, every optional field filled, and every size that changes from
    batch to batch marked dynamic. So a plan has one of ``max_groups`` structures (one group, two, ...) and
    ``torch.compile`` reuses one graph per structure for batches of any lengths; a group of one sequence would be a
    size it specializes.

    Call it outside the compiled graph (where the plan's host reads happen), deciding with
    ``torch.compiler.is_compiling()`` read inside it. ``group_by_keys=False`` (cross-attention): the groups of the
    queries' own self-attention plan, so a graph that meets both plans meets as many structures as one of them.
    """
    plan = plan_varlen(
        cu_seqlens_q,
        cu_seqlens_k,
        bucket_ratio=1.0,
        static_structure=True,
        max_groups=max_groups,
        min_group_seqs=2,
        group_by_keys=group_by_keys,
    )
    for group in plan.groups:
        for tensor, dims in (
            (group.q_gather, (0,)),
            (group.k_gather, (0,)),
            (group.q_real_slots, (0,)),
            (group.q_real, (0, 1)),
            (group.key_allowed, (0, 3)),
        ):
            if tensor is not None:
                torch._dynamo.maybe_mark_dynamic(tensor, list(dims))
    for tensor in (plan.q_index, plan.k_index, plan.out_index):
        if tensor is not None:
            torch._dynamo.maybe_mark_dynamic(tensor, 0)
    return plan


def _merge_groups(
    groups: list[list[int]], lens_q: list[int], lens_k: list[int], max_groups: int | None, min_group_seqs: int
) -> list[list[int]]:
    """Merge neighbouring groups (longest first) while more than ``max_groups`` remain or one holds fewer than
    ``min_group_seqs`` sequences, each time the pair whose merge adds the fewest padded query-key pairs (``n * Lq *
    Lk`` of the merged block minus the two blocks'; among the pairs with such a small group when that is the
    reason)."""
    if max_groups is not None and max_groups < 1:
        raise ValueError(f"max_groups must be >= 1 or None, got {max_groups}")

    def cost(members: list[int]) -> int:
        return len(members) * max(lens_q[s] for s in members) * max(lens_k[s] for s in members)

    groups = [list(g) for g in groups]
    while len(groups) > 1:
        too_many = max_groups is not None and len(groups) > max_groups
        small = [i for i, g in enumerate(groups) if len(g) < min_group_seqs]
        if not too_many and not small:
            break
        pairs = range(len(groups) - 1)
        if not too_many:  # only pairs that absorb a small group
            pairs = [i for i in pairs if i in small or i + 1 in small]
        i = min(pairs, key=lambda i: cost(groups[i] + groups[i + 1]) - cost(groups[i]) - cost(groups[i + 1]))
        groups[i : i + 2] = [groups[i] + groups[i + 1]]
    return groups


def _block(bounds: list[int], lens: list[int], members: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather indices ``(n * L,)`` of a right-padded ``(n, L)`` block and its real-slot mask ``(n, L)``."""
    seqlen = max(lens[s] for s in members)
    starts = torch.tensor([bounds[s] for s in members], device=device)
    member_lens = torch.tensor([lens[s] for s in members], device=device)
    offsets = torch.arange(seqlen, device=device)
    is_real = offsets[None, :] < member_lens[:, None]  # (n, L)
    # Padding slots gather the sequence's own first token: they are masked as keys and dropped as queries.
    gather = (starts[:, None] + torch.where(is_real, offsets[None, :], 0)).reshape(-1)
    return gather, is_real


def _block_shape(group: LengthGroup) -> tuple[int, int, int]:
    """``(n, Lq, Lk)`` of a group's blocks, read from its mask tensors when it has them (a plan built with
    ``static_structure=True``): under ``torch.compile`` those sizes are symbolic, so new lengths reuse the graph."""
    if group.q_real is not None and group.key_allowed is not None:
        return group.q_real.shape[0], group.q_real.shape[1], group.key_allowed.shape[-1]
    return group.num_seqs, group.q_len, group.k_len


def _group_mask(group: LengthGroup, is_causal: bool, sliding_window: int | None) -> torch.Tensor | None:
    """Bool ``(n, 1, Lq, Lk)`` (or broadcastable), True = may attend, for one length group; None = attend to all.

    Query slots that are padding attend to every real key of their sequence (their output is dropped), so no row of
    the block is fully masked: a fully masked row gives NaN in SDPA, and NaN would reach the keys' gradients.
    """
    if not is_causal and sliding_window is None:
        return group.key_allowed
    device = group.q_gather.device
    _, q_len, k_len = _block_shape(group)
    q_pos = torch.arange(q_len, device=device).view(1, 1, -1, 1)  # (1, 1, Lq, 1)
    if group.diagonal is not None:
        q_pos = q_pos + group.diagonal  # each query's position on its sequence's key axis
    distance = q_pos - torch.arange(k_len, device=device).view(1, 1, 1, -1)  # query minus key position
    allowed = distance >= 0 if is_causal else torch.ones_like(distance, dtype=torch.bool)
    if sliding_window is not None:
        allowed = allowed & (distance.abs() < sliding_window)
    if group.key_allowed is not None:
        allowed = allowed & group.key_allowed
    if group.q_real is not None:
        fallback = group.key_allowed if group.key_allowed is not None else torch.ones_like(allowed)
        allowed = torch.where(group.q_real[:, None, :, None], allowed, fallback)
    return allowed


def rows_plan(batch_size: int, q_len: int, k_len: int, device: torch.device | str | None = None) -> VarlenPlan:
    """``B`` rows of ``q_len`` queries over ``k_len`` keys (the last ``q_len`` of them) as one length group, built
    without reading anything back from the device.

    >>> plan = rows_plan(2, 1, 4)
    >>> [(g.num_seqs, g.q_len, g.k_len, g.diagonal.flatten().tolist()) for g in plan.groups]
    [(2, 1, 4, [3, 3])]
    """
    q_gather = torch.arange(batch_size * q_len, device=device)
    k_gather = q_gather if k_len == q_len else torch.arange(batch_size * k_len, device=device)
    diagonal = None if k_len == q_len else torch.full((batch_size, 1, 1, 1), k_len - q_len, device=device)
    group = LengthGroup(q_gather, k_gather, None, None, None, diagonal, batch_size, q_len, k_len)
    cu_q = torch.arange(0, (batch_size + 1) * q_len, q_len, dtype=torch.int32, device=device)
    cu_k = (
        cu_q if k_len == q_len else torch.arange(0, (batch_size + 1) * k_len, k_len, dtype=torch.int32, device=device)
    )
    return VarlenPlan(
        (group,), None, None, None, batch_size * q_len, batch_size * k_len, cu_q, cu_k, q_len, k_len,
        max(q_len - k_len, 0),
    )  # fmt: skip


class AttentionLayout(NamedTuple):
    """How every layer's attention of one kind (self-attention, or a decoder's cross-attention) sees the batch, built
    once per forward by both DynMask families.

    Packed tokens (``packed=True``, hidden states ``(N, h)``): ``plan`` for :func:`varlen_attention` (the SDPA and
    eager kernels), ``mask`` a ``BlockMask`` for flex attention, ``cu_seqlens`` / ``max_seqlen`` for flash-attn.
    Padded rows (hidden states ``(B, T, h)``): ``mask`` in the backend's form: bool ``(B, 1, Q, K)``, True = may
    attend (SDPA and the eager kernel), a ``BlockMask`` (flex), the 2-D ``(B, T)`` padding mask (flash-attn, which
    unpads it itself), or None to attend to every key; ``is_causal`` asks SDPA for its own causal mask.
    """

    kernel: str  # "sdpa", "eager", "flex_attention" or a flash implementation
    packed: bool = False
    plan: VarlenPlan | None = None
    mask: Any = None
    is_causal: bool = False
    cu_seqlens: torch.Tensor | None = None  # int32 (S + 1,), packed
    max_seqlen: int = 0


def repeat_kv(states: torch.Tensor, groups: int) -> torch.Tensor:
    """``(..., Hkv, L, D)`` -> ``(..., Hkv * groups, L, D)``: query head ``h`` reads key/value head ``h // groups``
    (grouped-query attention)."""
    if groups == 1:
        return states
    *lead, heads, length, dim = states.shape
    expanded = states.unsqueeze(-3).expand(*lead, heads, groups, length, dim)
    return expanded.reshape(*lead, heads * groups, length, dim)


def eager_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    allowed: torch.Tensor | None,
    scaling: float,
    dropout_p: float = 0.0,
    training: bool = False,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference kernel: an explicit softmax, which the other kernels are tested against, and the one that
    returns attention weights.

    Args:
        query: ``(..., H, Q, D)``; key, value: ``(..., Hkv, K, D)`` with ``Hkv`` dividing ``H``.
        allowed: bool, broadcastable to ``(..., H, Q, K)``, True = may attend (an additive float mask, 0 /
            ``finfo.min``, is added as is); None: every key.
        softcap: cap the scores as Gemma-2 does (``tanh(scores / softcap) * softcap``, before the mask).

    The softmax runs in float32 and is cast back, as transformers' eager attention does. Returns the output
    ``(..., H, Q, D)`` and the weights ``(..., H, Q, K)``.
    """
    groups = query.shape[-3] // key.shape[-3]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if allowed is not None:
        if allowed.dtype == torch.bool:
            scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        else:
            scores = scores + allowed
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = F.dropout(probs, p=dropout_p, training=training)
    return torch.matmul(probs, value), probs


def dense_mask(
    batch_size: int,
    q_len: int,
    k_len: int,
    *,
    device: torch.device | str | None = None,
    is_causal: bool = False,
    sliding_window: int | None = None,
    seq_idx: torch.Tensor | None = None,
    key_seq_idx: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bool ``(B, 1, Q, K)``, True = may attend: the whole mask of a batch, built only where attention weights are
    returned (quadratic in the row length).

    Queries are the last ``q_len`` of ``k_len`` positions (bottom-right, as over a cache). ``seq_idx`` ``(B, Q)``
    (and ``key_seq_idx`` ``(B, K)`` for cross-attention) keep each sequence of a packed row to its own keys;
    ``allowed`` (a padding mask, broadcastable) is and-ed in.

    >>> from hf_dynmask.modeling.masks import draw
    >>> print(draw(dense_mask(1, 4, 4, is_causal=True, seq_idx=torch.tensor([[0, 0, 1, 1]]))[0, 0]))
    ■ ⬚ ⬚ ⬚
    ■ ■ ⬚ ⬚
    ⬚ ⬚ ■ ⬚
    ⬚ ⬚ ■ ■
    """
    q_pos = torch.arange(k_len - q_len, k_len, device=device).view(1, 1, -1, 1)  # (1, 1, Q, 1)
    distance = q_pos - torch.arange(k_len, device=device).view(1, 1, 1, -1)  # query minus key position
    mask = distance >= 0 if is_causal else torch.ones_like(distance, dtype=torch.bool)
    if sliding_window is not None:
        mask = mask & (distance.abs() < sliding_window)
    if seq_idx is not None:
        keys = seq_idx if key_seq_idx is None else key_seq_idx
        mask = mask & (seq_idx[:, None, :, None] == keys[:, None, None, :])
    if allowed is not None:
        mask = mask & allowed.bool()
    return mask.expand(batch_size, 1, q_len, k_len)


def varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    plan: VarlenPlan,
    *,
    scaling: float,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    sliding_window: int | None = None,
    softcap: float | None = None,
    kernel: str = "sdpa",
    training: bool = False,
) -> torch.Tensor:
    """Exact attention of packed tokens within their own sequences.

    Args:
        query: ``(Nq, H, D)`` packed queries.
        key, value: ``(Nk, Hkv, D)`` packed keys and values; ``Hkv`` divides ``H`` (grouped-query attention).
        plan: from :func:`plan_varlen` on the batch's ``cu_seqlens_q`` (and ``cu_seqlens_k``).
        is_causal: each query sees its sequence's keys up to its own position (bottom-right aligned). A sequence
            with more queries than keys is refused (its first queries would see no key), as is one whose surplus of
            queries reaches ``sliding_window``.
        sliding_window: ``W``: keys at most ``W - 1`` positions away (only before the query when causal).
        softcap: cap the scores at ``softcap`` with ``tanh`` before the mask (forces the explicit kernel).
        kernel: ``"sdpa"`` (torch's scaled_dot_product_attention per length group), ``"eager"`` (explicit softmax,
            the reference) or ``"torch_varlen"`` (CUDA: torch's own varlen flash kernel,
            ``torch.nn.attention.varlen.varlen_attn``, on the packed tokens directly, no length groups; not verified on
            a GPU yet, so opt-in: ``tests/modeling/test_gpu.py`` and ``benchmarks/gpu_check.py`` verify it where a
            GPU is lent).

    Returns:
        ``(Nq, H, D)``, in packed order.
    """
    if kernel not in ("sdpa", "eager", "torch_varlen"):
        raise ValueError(f"kernel must be 'sdpa', 'eager' or 'torch_varlen', got {kernel!r}")
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be >= 1, got {sliding_window}")
    # (is_causal and sliding_window first: a non-causal cross plan's surplus changes from batch to batch, and reading
    # it would make torch.compile guard on it.)
    if (is_causal or sliding_window is not None) and plan.query_surplus >= (1 if is_causal else sliding_window):
        raise ValueError(
            f"a sequence has {plan.query_surplus} more queries than keys, so with "
            + ("causal attention" if is_causal else f"sliding_window={sliding_window}")
            + " its first queries would see no key at all (aligned bottom-right, as over a cache), and no kernel "
            "defines that output the same way: give every sequence at least as many keys as queries (a decoder's keys "
            "include its cache), or attend without the causal mask and the window"
        )
    if kernel == "torch_varlen":
        return _torch_varlen(query, key, value, plan, scaling, dropout_p, is_causal, sliding_window, softcap, training)
    # (Not under torch.compile, where comparing with the plan's ints would fix the token count in the graph; a
    # mismatched plan still fails there, at the reshape back to the queries' shape.)
    compiling = torch.compiler.is_compiling()
    if not compiling and (query.shape[0] != plan.num_q_tokens or key.shape[0] != plan.num_k_tokens):
        raise ValueError(
            f"query has {query.shape[0]} tokens and key {key.shape[0]} but the plan describes {plan.num_q_tokens} "
            f"and {plan.num_k_tokens}: the boundaries (cu_seq_lens_q/k) belong to another batch"
        )
    num_heads, kv_heads = query.shape[1], key.shape[1]
    if num_heads % kv_heads:
        raise ValueError(f"{num_heads} query heads cannot share {kv_heads} key/value heads evenly")
    use_sdpa = kernel == "sdpa" and softcap is None
    dropout_p = dropout_p if training else 0.0
    # Every group's blocks in one gather per tensor, split into views: a kernel call per group, no more.
    q_all, k_all, v_all = (
        t if index is None else t.index_select(0, index)
        for t, index in ((query, plan.q_index), (key, plan.k_index), (value, plan.k_index))
    )
    shapes = [_block_shape(group) for group in plan.groups]
    if len(shapes) == 1:
        q_parts, k_parts, v_parts = (q_all,), (k_all,), (v_all,)
    else:
        q_parts = q_all.split([n * q_len for n, q_len, _ in shapes])
        k_parts, v_parts = (t.split([n * k_len for n, _, k_len in shapes]) for t in (k_all, v_all))
    outputs = []
    for group, (n, q_len, k_len), q, k, v in zip(plan.groups, shapes, q_parts, k_parts, v_parts, strict=True):
        q = q.view(n, q_len, num_heads, -1).transpose(1, 2)  # (n, H, Lq, D)
        k, v = (t.view(n, k_len, kv_heads, -1).transpose(1, 2) for t in (k, v))  # (n, Hkv, Lk, D)
        plain_causal = (
            is_causal and sliding_window is None and group.key_allowed is None and group.diagonal is None
        )  # equal lengths, no padding: SDPA's own causal flag
        allowed = None if plain_causal else _group_mask(group, is_causal, sliding_window)
        if use_sdpa:
            k, v = repeat_kv(k, num_heads // kv_heads), repeat_kv(v, num_heads // kv_heads)
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, dropout_p=dropout_p, is_causal=plain_causal, scale=scaling
            )
        else:
            if plain_causal:
                allowed = _group_mask(group, True, None)
            out, _ = eager_attention(q, k, v, allowed, scaling, dropout_p, training, softcap)
        outputs.append(out.transpose(1, 2).reshape(n * q_len, num_heads, -1))  # (n * Lq, H, D)
    blocks = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    return blocks if plan.out_index is None else blocks.index_select(0, plan.out_index)  # (Nq, H, D), packed order


def _torch_varlen(query, key, value, plan, scaling, dropout_p, is_causal, sliding_window, softcap, training):
    """torch's varlen flash kernel (CUDA, fp16 / bf16): the whole packed batch in one call, from the boundaries."""
    from torch.nn.attention.varlen import varlen_attn

    if not query.is_cuda:
        raise ValueError("kernel='torch_varlen' runs on CUDA only (torch's flash kernel); use kernel='sdpa' elsewhere")
    if softcap is not None or (training and dropout_p > 0.0):
        raise ValueError(
            "kernel='torch_varlen' has no attention softcap or dropout; use kernel='sdpa' (length groups) for them"
        )
    if plan.cu_seqlens_q is None:
        raise ValueError("kernel='torch_varlen' needs a plan with its boundaries (plan_varlen / rows_plan)")
    left = -1 if sliding_window is None else sliding_window - 1
    window = (left, 0) if is_causal else (left, left)  # flash's window; causal: nothing to the right (bottom-right)
    return varlen_attn(
        query,
        key,
        value,
        plan.cu_seqlens_q,
        plan.cu_seqlens_k,
        plan.max_q,
        plan.max_k,
        scale=scaling,
        window_size=window,
        enable_gqa=query.shape[1] != key.shape[1],
    )


def flex_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, block_mask, *, scaling: float
) -> torch.Tensor:
    """FlexAttention over ``(B, H, T, D)`` with a ``BlockMask``; returns ``(B, T, H, D)``.

    Compiled on CUDA. Elsewhere torch's uncompiled kernel runs: on CPU inductor's flex template failed to compile
    here (torch 2.13) for some shapes, and flex has no CPU backward at all, so it serves as a forward-only check there.
    """
    from torch.nn.attention.flex_attention import flex_attention as torch_flex_attention

    kernel = torch.compile(torch_flex_attention) if query.is_cuda else torch_flex_attention
    return kernel(query, key, value, block_mask=block_mask, scale=scaling).transpose(1, 2)


def attend(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: AttentionLayout,
    *,
    scaling: float,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    output_attentions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The DynMask families' attention call, one for every backend.

    Args:
        query: ``(Nq, H, D)`` packed tokens or ``(B, H, Q, D)`` padded rows; key, value: ``(Nk, H, D)`` or
            ``(B, H, K, D)``.
        layout: how this kind of attention sees the batch (built once per forward).
        dropout_p: the attention dropout (0 in eval).
        output_attentions: also return the weights ``(B, H, Q, K)``, computed by :func:`eager_attention` over
            ``layout.mask``, which the family then builds whole (:func:`dense_mask`), packed rows included.

    Returns:
        The output, ``(Nq, H, D)`` packed or ``(B, Q, H, D)`` padded, and the weights or None.
    """
    training = module.training
    if layout.packed and not output_attentions:
        if layout.kernel == "flex_attention":
            qkv = (t.transpose(0, 1).unsqueeze(0) for t in (query, key, value))  # (1, H, N, D)
            return flex_attention(*qkv, layout.mask, scaling=scaling)[0], None
        if layout.kernel.startswith("flash_attention"):
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

            out, _ = ALL_ATTENTION_FUNCTIONS[layout.kernel](
                module,
                *(t.transpose(0, 1).unsqueeze(0) for t in (query, key, value)),  # (1, H, N, D)
                None,
                dropout=dropout_p,
                scaling=scaling,
                is_causal=is_causal,
                cu_seq_lens_q=layout.cu_seqlens,
                cu_seq_lens_k=layout.cu_seqlens,
                max_length_q=layout.max_seqlen,
                max_length_k=layout.max_seqlen,
            )
            return out[0], None  # (N, H, D)
        out = varlen_attention(
            query, key, value, layout.plan, scaling=scaling, dropout_p=dropout_p, is_causal=is_causal,
            kernel="eager" if layout.kernel == "eager" else "sdpa", training=training,
        )  # fmt: skip
        return out, None
    if layout.packed:  # the weights of packed tokens: rows of the whole mask
        rows = layout.mask.shape[0]
        query, key, value = (t.view(rows, -1, *t.shape[1:]).transpose(1, 2) for t in (query, key, value))
    if output_attentions or layout.kernel == "eager":
        out, weights = eager_attention(query, key, value, layout.mask, scaling, dropout_p, training)
        out = out.transpose(1, 2)
    elif layout.kernel == "flex_attention":
        out, weights = flex_attention(query, key, value, layout.mask, scaling=scaling), None
    else:
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=layout.mask, dropout_p=dropout_p, is_causal=layout.is_causal, scale=scaling
        ).transpose(1, 2)
        weights = None
    if layout.packed:
        out = out.reshape(-1, *out.shape[2:])  # (N, H, D)
    return out, weights  # (B, Q, H, D)


# --------------------------------------------------------------------------------------------------------------------
# transformers' AttentionInterface / AttentionMaskInterface entries
# --------------------------------------------------------------------------------------------------------------------

#: Arguments transformers models pass to attention functions that never change the scores (bookkeeping, or read
#: elsewhere: the batch's boundaries and positions reach the attention through ``dynmask_layout``). Anything else
#: that is not None and not handled below is refused.
PASSIVE_KWARGS = frozenset(
    {
        "cache_position",
        "cu_seq_lens_k",
        "cu_seq_lens_q",
        "deterministic",
        "layer_idx",
        "max_length_k",
        "max_length_q",
        "num_items_in_batch",
        "output_hidden_states",
        "past_key_value",
        "past_key_values",
        "position_embeddings",
        "position_ids",
        "return_dict",
        "seq_idx",
        "use_cache",
    }
)


def _check_kwargs(kwargs: dict[str, Any]) -> None:
    unknown = sorted(name for name, value in kwargs.items() if value is not None and name not in PASSIVE_KWARGS)
    if unknown:
        raise ValueError(
            f"dynmask_varlen does not know the attention argument(s) {unknown}, which may change the attention "
            "scores; it refuses rather than ignore them. Use attn_implementation='sdpa' or 'eager' with padded "
            "batches for this model"
        )


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    position_bias: torch.Tensor | None = None,
    s_aux: torch.Tensor | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    output_attentions: bool | None = None,
    dynmask_layout: Any = None,
    dynmask_plan: VarlenPlan | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers ``AttentionInterface`` entry for ``attn_implementation="dynmask_varlen"``: a route, then a kernel.

    Args:
        query: ``(B, H, Tq, D)``; key, value: ``(B, Hkv, Tk, D)``, as transformers passes them.
        attention_mask: what :func:`varlen_attention_mask` built: None (no padding) or the padded batch's 4-D bool
            mask (True = may attend), as stock SDPA gets it.
        sliding_window, softcap: the model's local-attention window and score cap (see :func:`varlen_attention`).
        output_attentions: return the attention weights ``(B, H, Tq, Tk)`` (computed by :func:`eager_attention`).
        dynmask_layout: the batch's :class:`~.batch.BatchLayout`, from the model's entry check (:mod:`.stock`);
            ``"packed"`` rows run the varlen kernel with ``dynmask_plan``.

    Returns:
        ``((B, Tq, H, D) attention output, weights or None)``, the layout transformers' attention functions return.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    check_verified_family(module)
    _check_kwargs(kwargs)
    if s_aux is not None:
        raise ValueError(
            "dynmask_varlen does not implement attention sinks (s_aux); use attn_implementation='eager' or a "
            "flash-attention kernel that supports them"
        )
    if dynmask_layout is None:
        raise ValueError(
            f"{type(module).__name__} runs attn_implementation='dynmask_varlen' but its model never checked the "
            "batch: load the model with attn_implementation='dynmask_varlen' (after import hf_dynmask), or call "
            "model.set_attn_implementation('dynmask_varlen'), instead of setting config._attn_implementation (or "
            "building another model with dynmask_varlen from this model's config object: give each model its own "
            "config, copy.deepcopy(config))"
        )
    is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    batch_size, num_heads, q_len, _ = query.shape
    k_len = key.shape[2]

    # -- the route ----------------------------------------------------------------------------------------------------
    packed = dynmask_layout.kind == "packed"
    if packed and (encoder_hidden_states is not None or k_len != q_len):
        raise ValueError(
            "dynmask_varlen packs self-attention of stock models only; this layer attends to other keys (cross-"
            "attention or a cache). For encoder-decoder models use the DynMask seq2seq family, or padded batches"
        )
    if position_bias is not None and (packed or softcap is not None or attention_mask is None):
        raise ValueError(
            "dynmask_varlen cannot apply a relative position bias (T5-style) to packed rows or local windows: the "
            "bias is computed over the whole row. Use attn_implementation='sdpa' with padded batches"
        )
    window = sliding_window if sliding_window is not None and k_len > sliding_window else None
    if output_attentions:  # the weights: the same mask, whole, through the eager kernel
        seq_idx = dynmask_layout.seq_idx.view(batch_size, q_len) if packed else None
        allowed = attention_mask
        if allowed is None:
            allowed = dense_mask(
                batch_size, q_len, k_len, device=query.device, is_causal=is_causal, sliding_window=window,
                seq_idx=seq_idx,
            )  # fmt: skip
        out, weights = eager_attention(query, key, value, allowed, scaling, dropout, module.training, softcap)
        return out.transpose(1, 2).contiguous(), weights
    if packed:
        plan = dynmask_plan
    elif attention_mask is not None:  # padded rows: the 4-D mask says everything, as for stock SDPA
        if softcap is None:
            return sdpa_attention_forward(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal,
                position_bias=position_bias,
            )  # fmt: skip
        out, _ = eager_attention(query, key, value, attention_mask, scaling, dropout, module.training, softcap)
        return out.transpose(1, 2).contiguous(), None
    elif window is None and softcap is None and not (is_causal and 1 < q_len != k_len):
        return sdpa_attention_forward(
            module, query, key, value, None, dropout=dropout, scaling=scaling, is_causal=is_causal,
            position_bias=position_bias,
        )  # fmt: skip
    else:  # one sequence per row, with a window, a softcap or queries over a cache (bottom-right causal)
        plan = rows_plan(batch_size, q_len, k_len, query.device)

    # -- the kernel ---------------------------------------------------------------------------------------------------
    q, k, v = (t.transpose(1, 2).reshape(-1, t.shape[1], t.shape[3]) for t in (query, key, value))  # (B * T, H, D)
    out = varlen_attention(
        q, k, v, plan, scaling=scaling, dropout_p=dropout, is_causal=bool(is_causal), sliding_window=sliding_window,
        softcap=softcap, training=module.training,
    )  # fmt: skip
    return out.view(batch_size, q_len, num_heads, -1), None  # (B, Tq, H, D)


def varlen_attention_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function=None,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor | None:
    """transformers ``AttentionMaskInterface`` entry for ``"dynmask_varlen"``.

    No padding, no cache offset and no custom mask overlay: None, whatever transformers detected (a packed row is
    not turned into a dense ``(N, N)`` mask; :func:`varlen_attention_forward` reads its boundaries). Anything else
    (padding, a cache, image-token overlays): the 4-D bool mask stock SDPA gets, from transformers' ``sdpa_mask``.
    """
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    plain = (
        attention_mask is None
        and not kwargs.get("use_vmap", False)
        and q_length == kv_length
        and not q_offset
        and not kv_offset
    )
    if plain:
        return None
    return sdpa_mask(
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        mask_function=causal_mask_function if mask_function is None else mask_function,
        attention_mask=attention_mask,
        **kwargs,
    )

"""Attention over packed tokens, exact and padding-free, on any device; and its registration with transformers.

Model-side module: imports only torch, transformers and relative siblings (it is saved next to a model as remote code).

Dimension legend:
    N  packed tokens        S  sequences        H  heads        D  head dim
    n  sequences in one length group            L  longest sequence of that group

A packed batch holds ``S`` sequences back to back in ``N`` tokens, with boundaries in ``cu_seqlens``. Exact attention
lets every token see the tokens of its own sequence only (a block-diagonal "document" mask). Three ways to compute it:

- one dense ``(N, N)`` block-diagonal mask: correct but quadratic in ``N`` (every pack of a large token budget
  pays ``N**2``), so hf_dynmask never does this on the SDPA/eager backends;
- flash-attn's varlen kernels (CUDA only): used through transformers' ``flash_attention_2`` when installed;
- :func:`varlen_attention` here: sequences are grouped by similar length (:func:`plan_varlen`, once per forward),
  each group is gathered into a small padded ``(n, H, L, D)`` block with a key-padding mask, run through SDPA (or
  the eager reference) and scattered back. Cost ``sum(n * L**2)``, close to the real ``sum(len**2)``; no sequence
  ever sees another. It works on CPU, CUDA and anything else SDPA runs on.

:func:`varlen_attention_forward` is that path behind transformers' ``AttentionInterface`` signature, registered as
``"dynmask_varlen"``, so stock transformers models (``BertModel(..., attn_implementation="dynmask_varlen")``)
also honour ``cu_seq_lens_q`` boundaries on CPU; the name is registered in ``AttentionMaskInterface`` too, so padded
batches still get their padding mask.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.nn import functional as F

from .masks import to_additive

ATTN_IMPLEMENTATION = "dynmask_varlen"


class LengthGroup(NamedTuple):
    """Sequences of similar length, laid out as a right-padded ``(n, L)`` block of packed-token indices."""

    gather: torch.Tensor  # int64 (n * L,): packed index per block slot (padding slots repeat a real token)
    real_slots: (
        torch.Tensor | None
    )  # int64 (M,): block slots that hold real tokens; None when the block has no padding
    key_allowed: torch.Tensor | None  # bool (n, 1, 1, L): True at real keys; None when the block has no padding
    num_seqs: int
    seqlen: int


class VarlenPlan(NamedTuple):
    """How :func:`varlen_attention` splits a packed batch into length groups. Built once per forward."""

    groups: tuple[LengthGroup, ...]
    inverse: torch.Tensor | None  # int64 (N,): packed order from the groups' concatenated outputs; None if identity
    num_tokens: int


def plan_varlen(cu_seqlens: torch.Tensor, bucket_ratio: float = 0.8) -> VarlenPlan:
    """Group the sequences of a packed batch by length for :func:`varlen_attention`.

    Sequences are sorted by length; a sequence joins the current group while its length is at least ``bucket_ratio``
    times the group's longest, so each group wastes at most ``1 - bucket_ratio`` of its slots on padding
    (``bucket_ratio=0`` makes one group, ``1`` one group per distinct length).

    Args:
        cu_seqlens: int32 ``(S + 1,)``, starting at 0.

    Lengths [3, 10, 2, 9]: the two long ones share a padded (2, 10) block, the short ones a (2, 3) block.

    >>> plan = plan_varlen(torch.tensor([0, 3, 13, 15, 24], dtype=torch.int32), bucket_ratio=0.6)
    >>> [(g.num_seqs, g.seqlen, g.key_allowed is None) for g in plan.groups]
    [(2, 10, False), (2, 3, False)]
    """
    bounds = cu_seqlens.tolist()  # one host sync per forward, shared by every layer
    lens = [end - start for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
    order = sorted(range(len(lens)), key=lambda s: -lens[s])
    device = cu_seqlens.device

    groups_members: list[list[int]] = []
    for s in order:
        if groups_members and lens[s] >= bucket_ratio * lens[groups_members[-1][0]]:
            groups_members[-1].append(s)
        else:
            groups_members.append([s])

    groups = []
    gathered_real = []  # packed indices in the order the groups' outputs are concatenated
    for members in groups_members:
        seqlen = lens[members[0]]
        starts = torch.tensor([bounds[s] for s in members], device=device)
        member_lens = torch.tensor([lens[s] for s in members], device=device)
        offsets = torch.arange(seqlen, device=device)
        is_real = offsets[None, :] < member_lens[:, None]  # (n, L)
        # Padding slots gather the sequence's own first token: they are masked as keys and dropped as queries.
        gather = (starts[:, None] + torch.where(is_real, offsets[None, :], 0)).reshape(-1)
        if bool(is_real.all()):
            real_slots, key_allowed = None, None
            gathered_real.append(gather)
        else:
            real_slots = torch.nonzero(is_real.reshape(-1)).flatten()
            key_allowed = is_real[:, None, None, :]
            gathered_real.append(gather[real_slots])
        groups.append(LengthGroup(gather, real_slots, key_allowed, len(members), seqlen))

    order_out = torch.cat(gathered_real)
    num_tokens = bounds[-1]
    identity = torch.equal(order_out, torch.arange(num_tokens, device=device))
    return VarlenPlan(tuple(groups), None if identity else torch.argsort(order_out), num_tokens)


def _group_mask(group: LengthGroup, is_causal: bool) -> torch.Tensor | None:
    """Bool ``(n, 1, L, L)`` (or broadcastable), True = may attend, for one length group; None = attend to all."""
    if not is_causal:
        return group.key_allowed
    causal = torch.ones(group.seqlen, group.seqlen, dtype=torch.bool, device=group.gather.device).tril()
    return causal if group.key_allowed is None else causal & group.key_allowed


def _eager(query, key, value, allowed, scaling, dropout_p, training):
    """Explicit softmax over an additive mask: the reference the other kernels are tested against."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if allowed is not None:
        scores = scores + to_additive(allowed, scores.dtype)
    probs = F.dropout(torch.softmax(scores, dim=-1), p=dropout_p, training=training)
    return torch.matmul(probs, value)


def varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    plan: VarlenPlan,
    *,
    scaling: float,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    kernel: str = "sdpa",
    training: bool = False,
) -> torch.Tensor:
    """Exact attention of packed tokens within their own sequences.

    Args:
        query, key, value: ``(N, H, D)`` packed tokens.
        plan: from :func:`plan_varlen` on the batch's ``cu_seqlens``.
        kernel: ``"sdpa"`` (torch's scaled_dot_product_attention) or ``"eager"`` (explicit softmax, the reference).

    Returns:
        ``(N, H, D)``, in packed order.
    """
    if query.shape[0] != plan.num_tokens:
        raise ValueError(f"query has {query.shape[0]} tokens but the plan describes {plan.num_tokens}")
    outputs = []
    for group in plan.groups:
        block_shape = (group.num_seqs, group.seqlen, *query.shape[1:])
        q, k, v = (t.index_select(0, group.gather).view(block_shape).transpose(1, 2) for t in (query, key, value))
        allowed = _group_mask(group, is_causal)  # (n, H, L, D) blocks from here on
        if kernel == "sdpa":
            use_causal_flag = is_causal and group.key_allowed is None
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=None if use_causal_flag else allowed,
                dropout_p=dropout_p if training else 0.0,
                is_causal=use_causal_flag,
                scale=scaling,
            )
        elif kernel == "eager":
            out = _eager(q, k, v, allowed, scaling, dropout_p, training)
        else:
            raise ValueError(f"kernel must be 'sdpa' or 'eager', got {kernel!r}")
        out = out.transpose(1, 2).reshape(-1, *query.shape[1:])  # (n * L, H, D)
        outputs.append(out if group.real_slots is None else out.index_select(0, group.real_slots))
    packed = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    return packed if plan.inverse is None else packed.index_select(0, plan.inverse)


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


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    cu_seq_lens_k: torch.Tensor | None = None,
    dynmask_plan: VarlenPlan | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers ``AttentionInterface`` entry for ``attn_implementation="dynmask_varlen"``.

    Args:
        query, key, value: ``(B, H, T, D)`` as transformers passes them. A packed batch is one row, ``B == 1``.
        attention_mask: the padded batch's mask as ``AttentionMaskInterface`` built it (bool, True = may attend),
            or None.
        cu_seq_lens_q / cu_seq_lens_k: int32 ``(S + 1,)`` boundaries of a packed row (transformers' names for
            ``cu_seqlens``); when given, attention stays inside each sequence.

    Returns:
        ``((B, T, H, D) attention output, None)``, the layout transformers' attention functions return.
    """
    if is_causal is None:
        is_causal = getattr(module, "is_causal", False)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    if cu_seq_lens_q is None:
        if attention_mask is not None and attention_mask.dtype != torch.bool:
            attention_mask = attention_mask == 0  # additive 0 / finfo.min -> bool, True = may attend
        use_causal_flag = bool(is_causal) and attention_mask is None and query.shape[2] > 1
        out = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=dropout if module.training else 0.0,
            is_causal=use_causal_flag,
            scale=scaling,
        )
        return out.transpose(1, 2).contiguous(), None

    if (
        cu_seq_lens_k is not None
        and cu_seq_lens_k is not cu_seq_lens_q
        and not torch.equal(cu_seq_lens_k, cu_seq_lens_q)
    ):
        raise ValueError("dynmask_varlen supports self-attention only: cu_seq_lens_k must equal cu_seq_lens_q")
    if query.shape[0] != 1:
        raise ValueError(
            f"a packed batch is one row of concatenated sequences, got batch size {query.shape[0]}; "
            "use hf_dynmask's packed collator (input_ids of shape (1, total_tokens))"
        )
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ValueError(
            "packed batch (cu_seq_lens_q) with a padding attention_mask: a packed row has no padding, so drop "
            "attention_mask or use the dynamic-padding collator instead of the packed one"
        )
    if dynmask_plan is None:
        dynmask_plan = plan_varlen(cu_seq_lens_q, getattr(getattr(module, "config", None), "varlen_bucket_ratio", 0.8))
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (N, H, D)
    out = varlen_attention(
        q,
        k,
        v,
        dynmask_plan,
        scaling=scaling,
        dropout_p=dropout,
        is_causal=bool(is_causal),
        training=module.training,
    )
    return out.unsqueeze(0), None  # (1, N, H, D)


def register_attention() -> None:
    """Register ``"dynmask_varlen"`` with transformers' attention and mask interfaces (idempotent).

    Both registrations are needed: transformers hands ``attention_mask=None`` to a name that is missing from
    ``AttentionMaskInterface``, which would silently ignore padding.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, varlen_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)


__all__ = [
    "ATTN_IMPLEMENTATION",
    "LengthGroup",
    "VarlenPlan",
    "flex_attention",
    "plan_varlen",
    "register_attention",
    "varlen_attention",
    "varlen_attention_forward",
]

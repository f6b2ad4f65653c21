"""What the DynMask model families share around attention: checking packed rows and positions, refusing rows whose
packing is not stated, and the eager reference attention over a padded batch.

Model-side module: imports only torch and relative siblings (it is saved next to a model as remote code).

Dimension legend:
    B  padded rows    T  padded length (keys: K, queries: Q)    N  packed tokens    S  sequences    H  heads
    D  head dim
"""

from __future__ import annotations

import torch

__all__ = ["check_max_position", "check_packed_row", "eager_attention", "reject_unmarked_packing"]


def check_packed_row(
    reference: torch.Tensor, attention_mask: torch.Tensor | None, cu_seqlens: torch.Tensor, name: str = "cu_seq_lens_q"
) -> tuple[torch.Tensor, int]:
    """Check one packed row against its boundaries; return them as int32 ``(S + 1,)`` and the longest sequence.

    Args:
        reference: ``(1, N)`` (the row's ids, or any per-token tensor of that shape).
        attention_mask: must be None or all ones (a packed row has no padding).
        cu_seqlens: ``(S + 1,)``, starting at 0, strictly increasing, ending at ``N``.
        name: the argument's name, for the errors.

    >>> check_packed_row(torch.zeros(1, 5), None, torch.tensor([0, 2, 5]))
    (tensor([0, 2, 5], dtype=torch.int32), 3)
    """
    if reference.dim() != 2 or reference.shape[0] != 1:
        raise ValueError(
            f"a packed batch is one row of concatenated sequences (shape (1, total_tokens)), got shape "
            f"{tuple(reference.shape)} with {name}; use hf_dynmask's packed collator"
        )
    if attention_mask is not None and not bool(attention_mask.bool().all()):
        raise ValueError(
            f"packed batch ({name}) with a padding attention_mask: a packed row has no padding. Drop the "
            "attention_mask, or use the dynamic-padding collator instead of the packed one"
        )
    num_tokens = reference.shape[1]
    bounds = cu_seqlens.tolist() if cu_seqlens.dim() == 1 else None  # the one host sync of these checks
    if not bounds or bounds[0] != 0 or bounds[-1] != num_tokens:
        raise ValueError(
            f"{name} must be 1-D, start at 0 and end at the row's {num_tokens} tokens, got "
            f"{cu_seqlens.tolist()[:8]}..."
        )
    lens = [end - start for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
    if not lens or min(lens) < 1:
        raise ValueError(f"{name} must be strictly increasing: every packed sequence needs >= 1 token")
    return cu_seqlens.to(torch.int32), max(lens)


def check_max_position(position_ids: torch.Tensor, max_position_embeddings: int, max_seqlen: int) -> None:
    """Refuse positions the position embeddings cannot number (``>= max_position_embeddings``)."""
    if position_ids.numel() and int(position_ids.max()) >= max_position_embeddings:
        raise ValueError(
            f"a sequence is longer than the model can number: position {int(position_ids.max())} >= "
            f"max_position_embeddings={max_position_embeddings} (at most {max_seqlen} tokens per sequence); "
            "truncate at tokenization (truncation=True, max_length=...)"
        )


def reject_unmarked_packing(position_ids: torch.Tensor | None, attention_mask: torch.Tensor | None) -> None:
    """Refuse a flattened batch whose boundaries are only implied by restarting ``position_ids``.

    transformers' encoder mask ignores ``position_ids``, so such a row would silently attend across sequences.
    hf_dynmask never guesses boundaries; it asks for them.

    >>> reject_unmarked_packing(torch.tensor([[0, 1, 0, 1]]), None)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: position_ids restart inside a row but no sequence boundaries were given: ...
    """
    if position_ids is None or position_ids.shape[-1] < 2:
        return
    if bool((position_ids[..., 1:] < position_ids[..., :-1]).any()):
        if attention_mask is None or bool(attention_mask.bool().all()):
            raise ValueError(
                "position_ids restart inside a row but no sequence boundaries were given: this looks like a packed "
                "batch. Pass cu_seq_lens_q (or seq_idx), e.g. with hf_dynmask.make_collator(..., mode='packed') or "
                "DataCollatorWithFlattening(return_flash_attn_kwargs=True); otherwise sequences would attend to "
                "each other"
            )


def eager_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """The reference: explicit softmax over an additive ``(B, 1, Q, K)`` mask (0 / finfo.min), in the input dtype,
    as transformers' BERT and BART eager attention. ``query`` ``(B, H, Q, D)``, ``key`` / ``value`` ``(B, H, K, D)``.

    Returns ``((B, Q, H, D) output, (B, H, Q, K) probabilities)``, transformers' attention-function layout.
    """
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.nn.functional.dropout(torch.softmax(scores, dim=-1), p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs

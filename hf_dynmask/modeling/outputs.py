"""Model outputs shared by the DynMask families and stock models on ``dynmask_varlen``.

Model-side module: imports only torch, transformers and relative siblings (it is saved next to a model as remote code).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import TokenClassifierOutput

__all__ = ["DynMaskTokenClassifierOutput"]


@dataclass
class DynMaskTokenClassifierOutput(TokenClassifierOutput):
    """[`TokenClassifierOutput`]; for a packed batch also ``seq_idx`` ``(1, N)`` int32, the sequence of every token.

    The Trainer gathers every output next to the logits, so ``compute_metrics`` gets each packed row's boundaries
    with its predictions (:func:`hf_dynmask.training.evaluation.per_example_tokens`) and never scores a pack of
    sequences as one example. DynMask's token-classification head returns it, and so does a stock
    ``...ForTokenClassification`` on ``attn_implementation="dynmask_varlen"`` given a packed row. None for padded
    batches.
    """

    seq_idx: torch.Tensor | None = None

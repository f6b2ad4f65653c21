"""The data side: collators (padding, packing, MLM masking), packing algorithms and samplers, dataset preparation.

Imports only the layout vocabulary of :mod:`hf_dynmask.modeling` from the rest of the package.

    collators.py    make_collator: static / dynamic / packed batches for six tasks
    mlm.py          static (BERT) and dynamic (RoBERTa) masked-LM masking
    packing.py      best-fit-decreasing packing, TokenBudgetBatchSampler
    prepare.py      prepare_dataset (tokenize once, cached length column), TokenBudgetStream
"""

from .collators import TokenCounts, align_labels_with_tokens, make_collator, token_counts, tokenize_and_align
from .packing import PackingResult, TokenBudgetBatchSampler, pack, read_lengths
from .prepare import TokenBudgetStream, prepare_dataset

__all__ = [
    "PackingResult",
    "TokenBudgetBatchSampler",
    "TokenBudgetStream",
    "TokenCounts",
    "align_labels_with_tokens",
    "make_collator",
    "pack",
    "prepare_dataset",
    "read_lengths",
    "token_counts",
    "tokenize_and_align",
]

"""The data side: collators (padding, packing, MLM masking), packing algorithms and samplers, dataset preparation.

Imports from the rest of the package only what the model side defines for batches: the layout vocabulary
(:mod:`hf_dynmask.modeling.layout`), the ignored-label value (``IGNORE_INDEX``) and the unknown-option message.

    tasks.py        one record per task: its collator, columns, label keys, evaluation label names, model-card names
    collators.py    make_collator: static / dynamic / packed batches for the tasks
    mlm.py          static (BERT) and dynamic (RoBERTa) masked-LM masking
    options.py      checks of option values (integers, booleans)
    packing.py      best-fit-decreasing packing, TokenBudgetBatchSampler
    prepare.py      prepare_dataset (tokenize once, cached length column), TokenBudgetStream
"""

from .collators import TokenCounts, align_labels_with_tokens, make_collator, token_counts, tokenize_and_align
from .packing import PackingResult, TokenBudgetBatchSampler, pack, read_lengths
from .prepare import TokenBudgetStream, prepare_dataset
from .tasks import TASKS, Task, get_task

__all__ = [
    "TASKS",
    "PackingResult",
    "TokenBudgetBatchSampler",
    "Task",
    "TokenBudgetStream",
    "TokenCounts",
    "align_labels_with_tokens",
    "get_task",
    "make_collator",
    "pack",
    "prepare_dataset",
    "read_lengths",
    "token_counts",
    "tokenize_and_align",
]

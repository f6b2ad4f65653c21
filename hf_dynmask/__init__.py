"""hf_dynmask: dynamic padding, sequence packing and static/dynamic MLM masking for Hugging Face Transformers.

Importing it registers the DynMask model family with transformers' Auto classes and the ``"dynmask_varlen"``
attention implementation.
"""

from .attention import ATTN_IMPLEMENTATION, plan_varlen, varlen_attention
from .auto import register_auto_classes
from .collators import TokenCounts, align_labels_with_tokens, make_collator, token_counts, tokenize_and_align
from .configuration_dynmask import DynMaskConfig
from .layout import (
    PackedLayout,
    UnpadIndex,
    cu_seqlens_from_seq_idx,
    cu_seqlens_from_seq_lens,
    packed_layout,
    pad_index_from_cu_seqlens,
    position_ids_from_cu_seqlens,
    repad,
    seq_idx_from_cu_seqlens,
    seq_lens_from_cu_seqlens,
    unpad,
    unpad_index,
)
from .modeling_dynmask import (
    DynMaskForCausalLM,
    DynMaskForMaskedLM,
    DynMaskForQuestionAnswering,
    DynMaskForSequenceClassification,
    DynMaskForTokenClassification,
    DynMaskModel,
    DynMaskPreTrainedModel,
)
from .packing import PackingResult, TokenBudgetBatchSampler, pack, read_lengths

__version__ = "0.1.0"

register_auto_classes()

# Exported lazily: these pull in transformers' Trainer, accelerate, datasets or evaluate, which `import hf_dynmask`
# should not pay for.
_LAZY = {
    "DynMaskTrainer": "trainer",
    "DynMaskTrainingArguments": "trainer",
    "check_packed_support": "trainer",
    "PaddingStatsCallback": "callbacks",
    "SetEpochCallback": "callbacks",
    "prepare_dataset": "data",
    "TokenBudgetStream": "data",
    "save_with_code": "hub",
    "push_to_hub_with_code": "hub",
    "TrainingSummary": "model_card",
    "write_model_card": "model_card",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    *_LAZY,
    "ATTN_IMPLEMENTATION",
    "DynMaskConfig",
    "DynMaskForCausalLM",
    "DynMaskForMaskedLM",
    "DynMaskForQuestionAnswering",
    "DynMaskForSequenceClassification",
    "DynMaskForTokenClassification",
    "DynMaskModel",
    "DynMaskPreTrainedModel",
    "PackedLayout",
    "PackingResult",
    "TokenBudgetBatchSampler",
    "TokenCounts",
    "UnpadIndex",
    "align_labels_with_tokens",
    "cu_seqlens_from_seq_idx",
    "cu_seqlens_from_seq_lens",
    "make_collator",
    "pack",
    "pad_index_from_cu_seqlens",
    "packed_layout",
    "plan_varlen",
    "position_ids_from_cu_seqlens",
    "read_lengths",
    "register_auto_classes",
    "repad",
    "seq_idx_from_cu_seqlens",
    "seq_lens_from_cu_seqlens",
    "token_counts",
    "tokenize_and_align",
    "unpad",
    "unpad_index",
    "varlen_attention",
]

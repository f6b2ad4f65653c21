"""hf_dynmask: dynamic padding, sequence packing and static/dynamic MLM masking for Hugging Face Transformers.

Importing it registers the DynMask model families (BERT / RoBERTa encoders, BART / Marian encoder-decoders) with
transformers' Auto classes and the ``"dynmask_varlen"`` attention implementation.

The package is layered; a layer imports only the layers above it in this list:

    modeling/   the model side, self-contained (shipped next to saved models as remote code)
    data/       collators, MLM masking, packing, dataset preparation (uses modeling's layout vocabulary)
    training/   Trainer integration, callbacks, checks, evaluation, offline metrics
    sharing/    Hub helpers and model cards
    integrations/   sentence-transformers and PEFT (beside training and sharing; optional dependencies)
    commands/   the ``hf-dynmask`` command line (demo, bench, inspect) and the ``python -m hf_dynmask.run`` launcher
"""

from .data.collators import TokenCounts, align_labels_with_tokens, make_collator, token_counts, tokenize_and_align
from .data.packing import PackingResult, TokenBudgetBatchSampler, pack, read_lengths
from .data.prepare import TokenBudgetStream, prepare_dataset
from .modeling.attention import ATTN_IMPLEMENTATION, plan_varlen, varlen_attention
from .modeling.auto import register_auto_classes
from .modeling.configuration_dynmask import DynMaskConfig
from .modeling.configuration_dynmask_seq2seq import DynMaskSeq2SeqConfig
from .modeling.layout import (
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
from .modeling.modeling_dynmask import (
    DynMaskForCausalLM,
    DynMaskForMaskedLM,
    DynMaskForQuestionAnswering,
    DynMaskForSequenceClassification,
    DynMaskForTokenClassification,
    DynMaskModel,
    DynMaskPreTrainedModel,
)
from .modeling.modeling_dynmask_seq2seq import (
    DynMaskSeq2SeqForConditionalGeneration,
    DynMaskSeq2SeqModel,
    DynMaskSeq2SeqPreTrainedModel,
)

__version__ = "0.1.0"

register_auto_classes()

# Exported lazily: these pull in transformers' Trainer, accelerate or huggingface_hub's card machinery, which
# `import hf_dynmask` should not pay for.
_LAZY = {
    "DynMaskTrainer": "training.trainer",
    "DynMaskTrainingArguments": "training.trainer",
    "check_packed_support": "training.checks",
    "check_collator_for_model": "training.checks",
    "PaddingStatsCallback": "training.callbacks",
    "SetEpochCallback": "training.callbacks",
    "save_with_code": "sharing.hub",
    "push_to_hub_with_code": "sharing.hub",
    "TrainingSummary": "sharing.model_card",
    "write_model_card": "sharing.model_card",
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
    "DynMaskSeq2SeqConfig",
    "DynMaskSeq2SeqForConditionalGeneration",
    "DynMaskSeq2SeqModel",
    "DynMaskSeq2SeqPreTrainedModel",
    "PackedLayout",
    "PackingResult",
    "TokenBudgetBatchSampler",
    "TokenBudgetStream",
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
    "prepare_dataset",
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

"""The model side of hf_dynmask: the layout vocabulary, masks, the varlen attention and the DynMask model family.

Self-contained: every module here imports only the standard library, torch, transformers and its own siblings, so
the files a model needs can be saved next to it as remote code and load where hf_dynmask is not installed
(``tests/test_layers.py`` holds the package to that).

    layout.py                   seq_lens <-> cu_seqlens <-> position_ids <-> seq_idx, pad <-> unpad index maps
    batch.py                    the batch contract: every rule about a batch, once; BatchLayout, the one description
    masks.py                    masks as predicates, converted to each backend's format
    attention.py                exact varlen attention on any device, the eager reference, the families' attend()
    backends.py                 which attn_implementation each family runs, and the hooks every family shares
    families.py                 the stock transformers families dynmask_varlen is verified exact on
    stock.py                    stock models on dynmask_varlen: refused at load unless verified, checked per forward
    outputs.py                  outputs shared by the families and stock models (seq_idx of a packed row)
    input_checks.py             what the models' tables take: token ids, labels, answer spans
    configuration_dynmask.py    DynMaskConfig (reads BERT / RoBERTa configs)
    modeling_dynmask.py         DynMaskModel and its heads
    configuration_dynmask_seq2seq.py  DynMaskSeq2SeqConfig (reads BART / Marian configs)
    modeling_dynmask_seq2seq.py       DynMaskSeq2SeqModel, DynMaskSeq2SeqForConditionalGeneration
    saving.py                   the auto_map each family writes when saved with its code
    auto.py                     registration with transformers' Auto classes
"""

from .attention import ATTN_IMPLEMENTATION, plan_varlen, varlen_attention
from .auto import AUTO_CLASSES, DYNMASK_FAMILIES, SEQ2SEQ_AUTO_CLASSES, register_auto_classes
from .configuration_dynmask import DynMaskConfig
from .configuration_dynmask_seq2seq import DynMaskSeq2SeqConfig
from .modeling_dynmask import (
    DynMaskForCausalLM,
    DynMaskForMaskedLM,
    DynMaskForQuestionAnswering,
    DynMaskForSequenceClassification,
    DynMaskForTokenClassification,
    DynMaskModel,
    DynMaskModelOutput,
    DynMaskPreTrainedModel,
    DynMaskTokenClassifierOutput,
)
from .modeling_dynmask_seq2seq import (
    DynMaskSeq2SeqForConditionalGeneration,
    DynMaskSeq2SeqModel,
    DynMaskSeq2SeqPreTrainedModel,
)

__all__ = [
    "ATTN_IMPLEMENTATION",
    "AUTO_CLASSES",
    "DYNMASK_FAMILIES",
    "DynMaskConfig",
    "DynMaskForCausalLM",
    "DynMaskForMaskedLM",
    "DynMaskForQuestionAnswering",
    "DynMaskForSequenceClassification",
    "DynMaskForTokenClassification",
    "DynMaskModel",
    "DynMaskModelOutput",
    "DynMaskPreTrainedModel",
    "DynMaskSeq2SeqConfig",
    "DynMaskSeq2SeqForConditionalGeneration",
    "DynMaskSeq2SeqModel",
    "DynMaskSeq2SeqPreTrainedModel",
    "DynMaskTokenClassifierOutput",
    "SEQ2SEQ_AUTO_CLASSES",
    "plan_varlen",
    "register_auto_classes",
    "varlen_attention",
]

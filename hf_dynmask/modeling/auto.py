"""Registration of the DynMask families with transformers' Auto classes and attention interfaces.

Called on ``import hf_dynmask``; idempotent. After it, ``AutoConfig.for_model("dynmask")``,
``AutoModel.from_pretrained(path, config=DynMaskConfig.from_pretrained(path, masking="dynamic"))`` and every
``AutoModelFor...`` below resolve to DynMask classes (``AutoModelForSeq2SeqLM`` with a ``DynMaskSeq2SeqConfig`` to
the encoder-decoder family), and ``attn_implementation="dynmask_varlen"`` is a valid name.
"""

from __future__ import annotations

import transformers
from transformers import AutoConfig

from .configuration_dynmask import DynMaskConfig
from .configuration_dynmask_seq2seq import DynMaskSeq2SeqConfig
from .modeling_dynmask import AUTO_CLASS_NAMES
from .modeling_dynmask_seq2seq import SEQ2SEQ_AUTO_CLASS_NAMES
from .stock import register_attention

#: The encoder family (BERT / RoBERTa): transformers Auto class -> DynMask model class.
AUTO_CLASSES = {getattr(transformers, auto_name): model for model, auto_name in AUTO_CLASS_NAMES.items()}

#: The encoder-decoder family (BART / Marian): transformers Auto class -> DynMask model class.
SEQ2SEQ_AUTO_CLASSES = {
    getattr(transformers, auto_name): model for model, auto_name in SEQ2SEQ_AUTO_CLASS_NAMES.items()
}

#: Every DynMask family: its config class -> its Auto classes.
DYNMASK_FAMILIES = {DynMaskConfig: AUTO_CLASSES, DynMaskSeq2SeqConfig: SEQ2SEQ_AUTO_CLASSES}


def register_auto_classes() -> None:
    """Register every family's config and model classes with their Auto classes (safe to call twice)."""
    register_attention()
    for config_class, auto_classes in DYNMASK_FAMILIES.items():
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        for auto_class, model_class in auto_classes.items():
            auto_class.register(config_class, model_class, exist_ok=True)

"""Registration of the DynMask family with transformers' Auto classes and attention interfaces.

Called on ``import hf_dynmask``; idempotent. After it, ``AutoConfig.for_model("dynmask")``,
``AutoModel.from_pretrained(path, config=DynMaskConfig.from_pretrained(path, masking="dynamic"))`` and every
``AutoModelFor...`` below resolve to DynMask classes, and ``attn_implementation="dynmask_varlen"`` is a valid name.
"""

from __future__ import annotations

import transformers
from transformers import AutoConfig

from .attention import register_attention
from .configuration_dynmask import DynMaskConfig
from .modeling_dynmask import AUTO_CLASS_NAMES

#: transformers Auto class -> DynMask model class (the pairs of :data:`~.modeling_dynmask.AUTO_CLASS_NAMES`).
AUTO_CLASSES = {getattr(transformers, auto_name): model for model, auto_name in AUTO_CLASS_NAMES.items()}


def register_auto_classes() -> None:
    """Register the config and every model class with their Auto classes (safe to call twice)."""
    register_attention()
    AutoConfig.register(DynMaskConfig.model_type, DynMaskConfig, exist_ok=True)
    for auto_class, model_class in AUTO_CLASSES.items():
        auto_class.register(DynMaskConfig, model_class, exist_ok=True)

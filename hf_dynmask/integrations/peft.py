"""PEFT adapters trained on a DynMask base, reloaded on a DynMask base.

PEFT records where the base model came from (``base_model_name_or_path`` in ``adapter_config.json``: the base's
``name_or_path``) and rebuilds the base from there. For a DynMask model loaded from a BERT or RoBERTa checkpoint that
path is the *stock* checkpoint, so ``AutoPeftModelFor...from_pretrained(adapter)`` silently builds a stock BERT, which
then mis-reads a packed batch. Two ways get the DynMask base back:

- :func:`load_peft_model` (any adapter): reads the adapter's base path and task, builds the DynMask head for it (from
  a stock checkpoint with ``DynMaskConfig.from_pretrained``, from a DynMask folder as saved), and loads the adapter
  with ``PeftModel.from_pretrained``;
- ``AutoPeftModelFor...from_pretrained(adapter)`` when the base path is a folder saved by hf_dynmask (``model_type``
  ``"dynmask"``): transformers resolves it to the DynMask classes where hf_dynmask is imported, and with
  ``trust_remote_code=True`` to the folder's own code where it is not. Save the base first and train from that
  folder (``base.save_pretrained(folder)``; ``AutoModelFor...from_pretrained(folder)``; ``get_peft_model(...)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..modeling.configuration_dynmask import DynMaskConfig

if TYPE_CHECKING:
    from peft import PeftModel

__all__ = ["TASK_AUTO_CLASSES", "load_peft_model"]

#: PEFT task type -> the transformers Auto class of the head it adapts (None: no task, the base encoder).
TASK_AUTO_CLASSES: dict[str | None, str] = {
    None: "AutoModel",
    "FEATURE_EXTRACTION": "AutoModel",
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "CAUSAL_LM": "AutoModelForCausalLM",
}


def load_peft_model(
    adapter_name_or_path: str | Path,
    *,
    masking: str | None = None,
    is_trainable: bool = False,
    **model_kwargs: Any,
) -> PeftModel:
    """Load a PEFT adapter onto a DynMask base model built from the adapter's base checkpoint.

    Args:
        adapter_name_or_path: a folder (or Hub id) written by ``PeftModel.save_pretrained``.
        masking: the base's masking mode; default: the DynMask folder's own, ``"dynamic"`` for a stock checkpoint.
        is_trainable: load the adapter for further training (PEFT's flag).
        model_kwargs: passed to the base's ``from_pretrained`` (``num_labels=...`` for a head whose checkpoint has
            none, ``attn_implementation``, ``trust_remote_code``...).

    Returns:
        The ``PeftModel``; ``model.get_base_model()`` is a DynMask model.
    """
    try:
        import transformers
        from peft import PeftConfig, PeftModel
    except ImportError as error:
        raise ImportError("load_peft_model needs PEFT: pip install 'hf-dynmask[peft]'") from error

    peft_config = PeftConfig.from_pretrained(str(adapter_name_or_path))
    base_path = peft_config.base_model_name_or_path
    if base_path is None:
        raise ValueError(
            f"{adapter_name_or_path} does not name its base model (base_model_name_or_path is empty); load the base "
            "yourself and call PeftModel.from_pretrained(base, adapter)"
        )
    task = getattr(peft_config.task_type, "value", peft_config.task_type)
    if task not in TASK_AUTO_CLASSES:
        raise ValueError(
            f"PEFT task type {task!r} has no DynMask head; supported: {sorted(map(str, TASK_AUTO_CLASSES))}"
        )
    auto_class = getattr(transformers, TASK_AUTO_CLASSES[task])
    config_kwargs = {
        key: model_kwargs.pop(key) for key in ("num_labels", "id2label", "label2id") if key in model_kwargs
    }
    if masking is not None:
        config_kwargs["masking"] = masking
    config = DynMaskConfig.from_pretrained(base_path, **config_kwargs)
    base = auto_class.from_pretrained(base_path, config=config, **model_kwargs)
    return PeftModel.from_pretrained(base, str(adapter_name_or_path), is_trainable=is_trainable)

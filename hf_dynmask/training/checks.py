"""Checks the Trainer integration runs before training: can the model take packed batches, which mode is the
collator in, does the training data carry the labels its task needs.

They sit below :mod:`~hf_dynmask.training.trainer` and :mod:`~hf_dynmask.training.callbacks`, which both run them
(``DynMaskTrainer`` at construction and before training, ``PaddingStatsCallback`` at ``on_train_begin``).
"""

from __future__ import annotations

from typing import Any

import torch

from ..data.collators import BaseCollator
from ..modeling.modeling_dynmask import DynMaskPreTrainedModel
from ..modeling.modeling_dynmask_seq2seq import DynMaskSeq2SeqPreTrainedModel

__all__ = [
    "PACKED_ATTENTION_IMPLEMENTATIONS",
    "check_packed_support",
    "check_training_labels",
    "collator_mode",
    "unwrap_collator",
]

#: Attention implementations of stock transformers models that honour ``cu_seq_lens_q`` boundaries.
PACKED_ATTENTION_IMPLEMENTATIONS = ("dynmask_varlen", "flash_attention_2", "flash_attention_3", "flash_attention_4")
# Stock model classes whose outputs and loss are per token (a packed row is fine); anything else (sequence
# classification, multiple choice, QA with per-sequence positions) pools or indexes row 0 and cannot take a pack.
_TOKEN_LEVEL_SUFFIXES = ("ForTokenClassification", "ForMaskedLM", "ForCausalLM", "LMHeadModel", "Model")


def _unwrap_model(model: Any) -> Any:
    """The model inside DDP / accelerate (``.module``) and PEFT (``get_base_model()``) wrappers."""
    for _ in range(10):
        if hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), torch.nn.Module):
            model = model.module
        else:
            break
    return model


def check_packed_support(model: Any) -> None:
    """Raise ``ValueError`` unless ``model`` keeps the sequences of a packed batch apart.

    Accepted: every DynMask model; a stock transformers model whose ``config._attn_implementation`` is one of
    :data:`PACKED_ATTENTION_IMPLEMENTATIONS` *and* whose head is per token (``...ForTokenClassification``,
    ``...ForMaskedLM``, ``...ForCausalLM``, a base ``...Model``). A stock ``BertForSequenceClassification`` pools row
    0, so it can never take a packed batch, whatever its attention.
    """
    inner = _unwrap_model(model)
    if isinstance(inner, (DynMaskPreTrainedModel, DynMaskSeq2SeqPreTrainedModel)):
        return
    name = type(inner).__name__
    config = getattr(inner, "config", None)
    attn = getattr(config, "_attn_implementation", None)
    token_level = name.endswith(_TOKEN_LEVEL_SUFFIXES)
    if attn in PACKED_ATTENTION_IMPLEMENTATIONS and token_level:
        return
    if not token_level:
        raise ValueError(
            f"{name} cannot take packed batches: its head works on whole rows (pooling or per-sequence outputs), so a "
            "pack of several sequences in one row would be scored as one. Use a dynamic or static collator "
            "(make_collator(..., mode='dynamic')), or a DynMask model, which pools per sequence: "
            "AutoModelForSequenceClassification.from_pretrained(path, config=DynMaskConfig.from_pretrained(path))"
        )
    raise ValueError(
        f"{name} with attn_implementation={attn!r} ignores the boundaries of a packed batch (cu_seq_lens_q): its "
        "sequences would attend to each other. Load it with attn_implementation='dynmask_varlen' (any device; "
        "import hf_dynmask first) or 'flash_attention_2' (CUDA), use a DynMask model, or use a dynamic collator"
    )


def collator_mode(collate_fn: Any) -> str | None:
    """``"static"``, ``"dynamic"`` or ``"packed"`` for an hf_dynmask collator (through the Trainer's wrappers).

    transformers' ``DataCollatorWithFlattening`` counts as ``"packed"``. None for any other collator.
    """
    collator = unwrap_collator(collate_fn)
    if isinstance(collator, BaseCollator):
        return collator.mode
    if type(collator).__name__ == "DataCollatorWithFlattening":
        return "packed"
    return None


# Label columns a training dataset must carry, per collator task (None: the collator makes the labels).
_REQUIRED_LABELS: dict[str, tuple[str, ...] | None] = {
    "sequence-classification": ("labels", "label"),
    "token-classification": ("labels",),
    "question-answering": ("start_positions",),
    "seq2seq": ("labels",),
    "masked-lm": None,
    "causal-lm": None,
}


def _column_names(dataset: Any) -> list[str] | None:
    names = getattr(dataset, "column_names", None)
    return list(names) if isinstance(names, list | tuple) else None


def check_training_labels(dataset: Any, collator: Any) -> None:
    """Raise ``ValueError`` when ``dataset`` has no label column that ``collator``'s task needs for training.

    Only datasets that know their columns (``datasets.Dataset``, a typed ``IterableDataset``) are checked here; the
    trainer also checks every batch.
    """
    task = getattr(unwrap_collator(collator), "task", None)
    required = _REQUIRED_LABELS.get(task) if task else None
    names = _column_names(dataset)
    if required is None or names is None:
        return
    if not any(key in names for key in required):
        raise ValueError(
            f"the training dataset has no label column (looked for {list(required)} among {names}): a {task} "
            "training run needs labels. Keep the label column when tokenizing (hf_dynmask.data.prepare_dataset "
            "keeps it), or use trainer.predict / evaluate without labels for inference"
        )


def unwrap_collator(collate_fn: Any) -> Any:
    """The collator inside the wrappers a Trainer or this module puts around it.

    Follows transformers' ``RemoveColumnsCollator`` (``.data_collator``) and :class:`CountingCollator`
    (``.collator``).
    """
    seen = 0
    while seen < 10:
        inner = getattr(collate_fn, "data_collator", None) or getattr(collate_fn, "collator", None)
        if inner is None:
            return collate_fn
        collate_fn, seen = inner, seen + 1
    return collate_fn

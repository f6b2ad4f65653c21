"""Checks the Trainer integration runs before training: can the model take the collator's packed batches, which mode
is the collator in, does the training data carry the labels its task needs.

They sit below :mod:`~hf_dynmask.training.trainer` and :mod:`~hf_dynmask.training.callbacks`, which both run them
(``DynMaskTrainer`` at construction and before training, evaluation and prediction; ``PaddingStatsCallback`` at
``on_train_begin``).

What makes a packed batch safe. A packed row holds several sequences back to back; the model must keep them apart
(attention, positions, pooling, loss). :func:`check_packed_support` accepts:

- every DynMask model (it reads the stated boundaries and pools per sequence);
- a stock transformers model whose family and head are verified exact with ``dynmask_varlen`` (every transformers
  module it contains belongs to a family of :data:`~hf_dynmask.modeling.families.VERIFIED_FAMILIES`, and its class is
  one of that family's tested heads, found through transformers' Auto mappings), loaded with
  ``attn_implementation="dynmask_varlen"`` (any device) or a flash-attention kernel (CUDA; transformers' own varlen
  path for these families, which reads the same boundaries).

Everything else is refused with what to use instead: dynamic padding (``make_collator(..., mode="dynamic")``).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Literal

import torch

from ..data.collators import BaseCollator
from ..data.prepare import dataset_columns
from ..data.tasks import TASKS
from ..modeling.backends import STOCK_PACKED_BACKENDS
from ..modeling.families import (
    DYNAMIC_PADDING,
    DYNMASK_FAMILY,
    REFUSED_BECAUSE,
    VERIFIED_FAMILIES,
    family_of,
    packed_head_refusal,
    position_start_of,
    stock_family_of,
)
from ..modeling.modeling_dynmask import DynMaskPreTrainedModel
from ..modeling.modeling_dynmask_seq2seq import DynMaskSeq2SeqPreTrainedModel

__all__ = [
    "PACKED_ATTENTION_IMPLEMENTATIONS",
    "PACKED_MODES",
    "check_collator_for_model",
    "check_packed_support",
    "check_training_labels",
    "collator_for_model",
    "collator_mode",
    "unwrap_collator",
    "unwrap_model",
]

#: Attention implementations of stock transformers models that keep the sequences of a packed row apart.
PACKED_ATTENTION_IMPLEMENTATIONS = STOCK_PACKED_BACKENDS

#: Collator modes whose batches are rows of several sequences: ``"packed"`` states the boundaries
#: (``cu_seq_lens_q/k``); ``"flattened"`` marks them only by restarting ``position_ids``.
PACKED_MODES = ("packed", "flattened")

Boundaries = Literal["cu_seq_lens", "position_ids"]


def unwrap_model(model: Any) -> Any:
    """The model inside DDP / accelerate (``.module``), ``torch.compile`` (``._orig_mod``) and PEFT
    (``get_base_model()``) wrappers."""
    for _ in range(10):
        if hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), torch.nn.Module):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        else:
            break
    return model


def check_packed_support(model: Any, boundaries: Boundaries = "cu_seq_lens") -> None:
    """Raise ``ValueError`` unless ``model`` keeps the sequences of a packed row apart exactly.

    Args:
        model: the model (DDP, accelerate and PEFT wrappers are looked through).
        boundaries: how the rows mark their sequences: ``"cu_seq_lens"`` (stated: hf_dynmask's packed collator,
            ``DataCollatorWithFlattening(return_flash_attn_kwargs=True)``) or ``"position_ids"`` (restarting
            positions only: ``DataCollatorWithFlattening()``, TRL's ``padding_free``), which only causal decoders
            can read; an encoder's boundaries are never guessed.

    See the module docstring for what is accepted. A stock ``...ForSequenceClassification`` (or multiple choice,
    question answering) pools or indexes each *row*, so a pack of several sequences would be scored as one: refused
    whatever its attention, with or without labels.
    """
    inner = unwrap_model(model)
    name = type(inner).__name__
    if (
        isinstance(inner, (DynMaskPreTrainedModel, DynMaskSeq2SeqPreTrainedModel))
        or family_of(inner) == DYNMASK_FAMILY
    ):  # installed or remote code
        causal = bool(getattr(inner.config, "is_decoder", False)) and not inner.config.is_encoder_decoder
        if boundaries == "position_ids" and not causal:  # the batch contract's rule (modeling/batch.py)
            raise ValueError(
                f"{name} reads packed boundaries from cu_seq_lens_q / seq_idx and refuses rows marked only by "
                "restarting position_ids (only causal models read those); use make_collator(..., mode='packed') or "
                "DataCollatorWithFlattening(return_flash_attn_kwargs=True)"
            )
        return
    families = {family_of(module) for module in inner.modules()} - {None, DYNMASK_FAMILY}
    unverified = sorted(f for f in families if f not in VERIFIED_FAMILIES)
    if unverified:
        reasons = "; ".join(f"{f}: {REFUSED_BECAUSE[f]}" for f in unverified if f in REFUSED_BECAUSE)
        raise ValueError(
            f"{name} cannot take packed batches: packed attention is not verified exact on the model family "
            f"{unverified}"
            + (f" ({reasons})" if reasons else "")
            + f". Verified: {sorted(VERIFIED_FAMILIES)}. "
            + DYNAMIC_PADDING
        )
    family = stock_family_of(inner)
    if family is None or family not in VERIFIED_FAMILIES:
        raise ValueError(
            f"{name} is neither a DynMask model nor a stock transformers model of a verified family "
            f"({sorted(VERIFIED_FAMILIES)}), so nothing says it keeps packed sequences apart. " + DYNAMIC_PADDING
        )
    refusal = packed_head_refusal(inner)  # the refusal the model's own forward makes on dynmask_varlen
    if refusal is not None:
        raise ValueError(refusal)
    attn = getattr(inner.config, "_attn_implementation", None)
    if attn not in STOCK_PACKED_BACKENDS:
        raise ValueError(
            f"{name} with attn_implementation={attn!r} ignores the boundaries of a packed batch (cu_seq_lens_q): its "
            "sequences would attend to each other. Load it with attn_implementation='dynmask_varlen' (any device; "
            "import hf_dynmask first) or 'flash_attention_2' (CUDA), use a DynMask model, or use a dynamic collator"
        )
    if boundaries == "position_ids" and not VERIFIED_FAMILIES[family].decoder:
        raise ValueError(
            f"{name} is an encoder: its packed rows need stated boundaries, never guessed from restarting "
            "position_ids. Use make_collator(..., mode='packed') or DataCollatorWithFlattening("
            "return_flash_attn_kwargs=True)"
        )


def collator_mode(collate_fn: Any) -> str | None:
    """The layout a collator makes, seen through the Trainer's wrappers; None for a collator it does not know.

    ``"static"``, ``"dynamic"`` or ``"packed"`` for an hf_dynmask collator. transformers'
    ``DataCollatorWithFlattening`` is ``"packed"`` with ``return_flash_attn_kwargs=True`` (it states
    ``cu_seq_lens_q/k``) and ``"flattened"`` without (sequences marked only by restarting ``position_ids``), like
    TRL's ``padding_free`` collator.
    """
    collator = unwrap_collator(collate_fn)
    if isinstance(collator, BaseCollator):
        return collator.mode
    kind = type(collator).__name__
    if kind == "DataCollatorWithFlattening":
        return "packed" if getattr(collator, "return_flash_attn_kwargs", False) else "flattened"
    if kind == "DataCollatorForLanguageModeling" and type(collator).__module__.startswith("trl"):
        return "flattened" if getattr(collator, "padding_free", False) else "dynamic"
    return None


def _collator_position_start(collator: Any) -> int | None:
    """The first position id a packed collator gives every sequence (None: the model's, resolved by the caller)."""
    if isinstance(collator, BaseCollator):
        return collator.position_start
    return int(getattr(collator, "position_ids_start", 0))


def check_collator_for_model(model: Any, collate_fn: Any) -> int | None:
    """Before the first step: can ``model`` take what ``collate_fn`` makes? Raise ``ValueError`` if not.

    For packed and flattened collators: :func:`check_packed_support` with the collator's kind of boundaries, rows
    that carry position ids, and the collator's first position id equal to the model's (RoBERTa-style models number
    positions from ``padding_idx + 1``). An hf_dynmask packed collator left at ``position_start=None`` is accepted: it
    must number positions from the returned value (:func:`collator_for_model` makes such a copy of it).

    Returns the model's first position id for a packed or flattened collator, None for any other. Neither the model
    nor the collator is changed.
    """
    collator = unwrap_collator(collate_fn)
    mode = collator_mode(collator)
    if mode not in PACKED_MODES:
        return None
    if type(collator).__name__ == "DataCollatorWithFlattening" and not getattr(collator, "return_position_ids", True):
        raise ValueError(
            f"{type(collator).__name__}(return_position_ids=False) makes rows of several sequences without position "
            "ids: every model would number positions over the whole row. Keep return_position_ids=True"
        )
    check_packed_support(model, "cu_seq_lens" if mode == "packed" else "position_ids")
    config = getattr(unwrap_model(model), "config", None)
    expected = position_start_of(config)
    given = _collator_position_start(collator)
    if given is not None and given != expected:
        option = "position_start" if isinstance(collator, BaseCollator) else "position_ids_start"
        raise ValueError(
            f"the packed collator numbers positions from {given} but {type(unwrap_model(model)).__name__} numbers "
            f"them from {expected}" + (" (padding_idx + 1)" if expected else "") + f": set {option}={expected} "
            f"(or leave an hf_dynmask collator's position_start unset and it follows the model)"
        )
    return expected


def collator_for_model(model: Any, collate_fn: Any) -> Any:
    """``collate_fn`` as ``model`` needs it, after :func:`check_collator_for_model` (which raises for a mismatch).

    Where the collator inside ``collate_fn`` is an hf_dynmask packed collator left at ``position_start=None`` (which
    numbers from 0) and the model numbers from another position (RoBERTa-style models): a copy of it that numbers
    positions from the model's (``dataclasses.replace``, so its randomness starts again from its seed and its epoch
    from 0), inside shallow copies of the wrappers around it (:func:`unwrap_collator`). Otherwise ``collate_fn``
    itself. The objects given are never changed: the caller's collator keeps ``position_start=None``.
    """
    start = check_collator_for_model(model, collate_fn)
    collator = unwrap_collator(collate_fn)
    if not start or not isinstance(collator, BaseCollator) or collator.position_start is not None:
        return collate_fn
    return _rewrapped(collate_fn, dataclasses.replace(collator, position_start=start))


def _rewrapped(collate_fn: Any, collator: Any, depth: int = 0) -> Any:
    """``collate_fn`` with the collator inside its wrappers replaced by ``collator``; each wrapper shallow-copied."""
    attribute = _wrapped_attribute(collate_fn)
    if attribute is None or depth >= _MAX_WRAPPERS:
        return collator
    outer = copy.copy(collate_fn)
    setattr(outer, attribute, _rewrapped(getattr(collate_fn, attribute), collator, depth + 1))
    return outer


def check_training_labels(dataset: Any, collator: Any) -> None:
    """Raise ``ValueError`` when ``dataset`` has no label column that ``collator``'s task needs for training.

    Only datasets that know their columns (``datasets.Dataset``, a typed ``IterableDataset``) are checked here; the
    trainer also checks every batch.
    """
    task = getattr(unwrap_collator(collator), "task", None)
    required = TASKS[task].training_labels if task in TASKS else ()
    names = dataset_columns(dataset)
    if not required or names is None:
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
    for _ in range(_MAX_WRAPPERS):
        attribute = _wrapped_attribute(collate_fn)
        if attribute is None:
            return collate_fn
        collate_fn = getattr(collate_fn, attribute)
    return collate_fn


_MAX_WRAPPERS = 10


def _wrapped_attribute(collate_fn: Any) -> str | None:
    """The attribute holding the collator a wrapper wraps (``data_collator`` or ``collator``), None if not one."""
    for attribute in ("data_collator", "collator"):
        if getattr(collate_fn, attribute, None):
            return attribute
    return None

"""The stock transformers model families and heads that ``attn_implementation="dynmask_varlen"`` is verified exact on.

Model-side module: imports only the standard library and, lazily, transformers (it may be saved next to a model as
remote code).

A family is named by the folder of its modeling code in transformers (``transformers.models.<family>``), which is
what a module's class tells about itself: ``type(module).__module__`` is ``"transformers.models.llama.modeling_llama"``
for every Llama attention layer, whatever the head or the config. Each family listed in :data:`VERIFIED_FAMILIES`
has an equivalence test (``tests/modeling/test_families.py``): a packed row against every sequence run alone
through the stock model on SDPA, for each listed head, in eval and train mode, with gradient checkpointing, and for
decoders with and without a cache. Any other family is refused, because what its attention does (a relative position
bias, an attention that never calls transformers' ``AttentionInterface``, positions numbered over the whole row) has
not been checked.

A head is named by the Auto class that loads it (:data:`HEADS`); :func:`head_of` reads it from transformers' own
Auto mappings, so a model is recognised by its class, not by a suffix of its name.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = [
    "DYNMASK_FAMILY",
    "HEADS",
    "REFUSED_BECAUSE",
    "VERIFIED_FAMILIES",
    "Family",
    "DYNAMIC_PADDING",
    "check_verified_family",
    "packed_head_refusal",
    "family_of",
    "head_of",
    "position_start_of",
    "stock_family_of",
]

#: The DynMask family's own modules (they call the varlen kernel directly and use the interface for padded batches).
DYNMASK_FAMILY = "dynmask"

#: Head kind -> the name of transformers' Auto mapping that lists its class for each model type. These heads keep
#: one output per token (and a loss over tokens), so a packed row gives each sequence's outputs; heads that pool a
#: row (sequence classification, multiple choice) or index it (question answering) cannot take a packed row.
HEADS: dict[str, str] = {
    "base": "MODEL_MAPPING_NAMES",
    "causal-lm": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "masked-lm": "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "token-classification": "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
}


class Family(NamedTuple):
    """What the equivalence tests verified for one transformers model family."""

    decoder: bool  # causal self-attention: packed boundaries may also come from restarting position_ids
    heads: tuple[str, ...]  # keys of HEADS tested exact
    features: str  # what the tests exercise, for the README table
    pad_offset_positions: bool = False  # positions start at padding_idx + 1 (RoBERTa-style), else at 0
    position_table: bool = False  # learned absolute positions: at most max_position_embeddings of them


_DECODER = ("base", "causal-lm", "token-classification")
_ENCODER = ("base", "masked-lm", "token-classification")

#: transformers model folder -> what the equivalence tests verified. Keep in step with tests/modeling/test_families.py
#: (a test checks that the two agree).
VERIFIED_FAMILIES: dict[str, Family] = {
    # decoders
    "llama": Family(True, _DECODER, "grouped-query"),
    "mistral": Family(True, _DECODER, "grouped-query, sliding window"),
    "qwen2": Family(True, _DECODER, "grouped-query, sliding window on some layers"),
    "qwen3": Family(True, _DECODER, "multi-query, q/k norms, sliding window on some layers"),
    "gemma": Family(True, _DECODER, "multi-query"),
    "gemma2": Family(True, _DECODER, "grouped-query, sliding window, attention softcap"),
    "phi3": Family(True, _DECODER, "grouped-query, sliding window"),
    "olmo2": Family(True, ("base", "causal-lm"), "grouped-query, q/k norms"),
    "gpt_neox": Family(True, _DECODER, "partial rotary, parallel residual"),
    "gpt2": Family(True, _DECODER, "learned absolute positions, per-layer attention scaling", position_table=True),
    # encoders
    "bert": Family(False, _ENCODER, "learned absolute positions", position_table=True),
    "roberta": Family(
        False, _ENCODER, "positions from padding_idx + 1", pad_offset_positions=True, position_table=True
    ),
    "xlm_roberta": Family(
        False, _ENCODER, "positions from padding_idx + 1", pad_offset_positions=True, position_table=True
    ),
    "distilbert": Family(False, _ENCODER, "learned absolute positions", position_table=True),
    "electra": Family(False, _ENCODER, "factorised embeddings", position_table=True),
    "albert": Family(
        False,
        _ENCODER,
        "shared layers, factorised embeddings (no gradient checkpointing in transformers)",
        position_table=True,
    ),
    "modernbert": Family(False, _ENCODER, "rotary, local (sliding window) attention on some layers"),
}


#: Why some common families are refused, beyond "not verified", and what packs them instead.
_NEVER_CALLS_THE_INTERFACE = (
    "its disentangled attention never calls transformers' attention interface, so no attn_implementation reaches it "
    "and packed sequences would attend to each other"
)
_SEQ2SEQ = (
    "its positions are numbered over the whole row (an encoder-decoder); the DynMask seq2seq family packs BART and "
    "Marian checkpoints exactly: AutoModelForSeq2SeqLM.from_pretrained(path, config=DynMaskSeq2SeqConfig."
    "from_pretrained(path))"
)
REFUSED_BECAUSE: dict[str, str] = {
    "deberta": _NEVER_CALLS_THE_INTERFACE,
    "deberta_v2": _NEVER_CALLS_THE_INTERFACE,
    "t5": "its relative position bias is computed over the whole row",
    "mt5": "its relative position bias is computed over the whole row",
    "bart": _SEQ2SEQ,
    "mbart": _SEQ2SEQ,
    "marian": _SEQ2SEQ,
}

#: What to do instead of packing a model that cannot take packed rows.
DYNAMIC_PADDING = (
    "Use dynamic padding instead: make_collator(tokenizer, task, mode='dynamic') (or transformers' "
    "DataCollatorWithPadding), with group_by_length=True or DynMaskTrainingArguments(token_budget=...) for less "
    "padding"
)


def family_of(obj: Any) -> str | None:
    """The transformers model folder a module (an attention layer or a whole model) comes from, ``"dynmask"`` for
    DynMask's own modules (both families, also when loaded as remote code), None for anything else. A class FSDP
    derived from the module's own (``fully_shard``) counts as that class.

    >>> import torch
    >>> family_of(torch.nn.Linear(1, 1)) is None
    True
    """
    # FSDP2's fully_shard swaps a module's class for a subclass it defines (FSDPLlamaAttention): read the class below.
    cls = next(c for c in type(obj).__mro__ if not c.__module__.startswith("torch.distributed."))
    parts = cls.__module__.split(".")
    if len(parts) >= 3 and parts[0] == "transformers" and parts[1] == "models":
        return parts[2]
    if parts[-1] in ("modeling_dynmask", "modeling_dynmask_seq2seq"):
        return DYNMASK_FAMILY
    return None


def stock_family_of(model: Any) -> str | None:
    """The family of the first transformers model class ``model`` is an instance of (itself or a subclass of one),
    ``"dynmask"`` for DynMask models, None for anything else."""
    family = family_of(model)
    if family is not None:
        return family
    for cls in type(model).__mro__:
        parts = cls.__module__.split(".")
        if len(parts) >= 3 and parts[:2] == ["transformers", "models"]:
            return parts[2]
    return None


def head_of(model: Any) -> str | None:
    """The :data:`HEADS` kind of a stock transformers model, from transformers' Auto mappings; None when its class is
    not the class one of those Auto classes loads for its ``model_type`` (another head, or a subclass that changes
    ``forward``).
    """
    from transformers.models.auto import modeling_auto

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is None:
        return None
    for cls in type(model).__mro__:
        if cls.__module__.split(".")[:2] != ["transformers", "models"]:
            continue
        if cls.forward is not type(model).forward:
            return None  # a subclass that computes something else than the stock head
        for head, mapping in HEADS.items():
            names = getattr(modeling_auto, mapping).get(model_type)
            if cls.__name__ in ((names,) if isinstance(names, str) else tuple(names or ())):
                return head
        return None
    return None


def position_start_of(config: Any) -> int:
    """The first position id of every sequence a model of ``config`` numbers itself: ``padding_idx + 1`` for
    RoBERTa-style embeddings (``pad_token_id + 1``), DynMask's ``position_start``, 0 otherwise.

    >>> from types import SimpleNamespace
    >>> position_start_of(SimpleNamespace(model_type="roberta", pad_token_id=1))
    2
    """
    if getattr(config, "model_type", None) == DYNMASK_FAMILY:
        return int(getattr(config, "position_start", 0))
    family = VERIFIED_FAMILIES.get(family_of(config) or str(getattr(config, "model_type", "")).replace("-", "_"))
    if family is not None and family.pad_offset_positions:
        return int(config.pad_token_id) + 1
    return 0


def check_verified_family(module: Any, family: str | None = None) -> str:
    """Return the family of ``module`` (or the given ``family``), or raise ``ValueError`` if dynmask_varlen is not
    verified on it."""
    family = family_of(module) if family is None else family
    if family == DYNMASK_FAMILY or family in VERIFIED_FAMILIES:
        return family
    reason = REFUSED_BECAUSE.get(family or "")
    raise ValueError(
        f"attn_implementation='dynmask_varlen' is not verified on {type(module).__name__} "
        f"(family {family or type(module).__module__!r})"
        + (f": {reason}" if reason else ": its attention may pass arguments the varlen kernel does not honour")
        + f". It is refused rather than run approximately. Verified families: {sorted(VERIFIED_FAMILIES)}. "
        "Load this model with attn_implementation='sdpa' (or 'eager') and use padded batches "
        "(make_collator(..., mode='dynamic'))"
    )


def packed_head_refusal(model: Any) -> str | None:
    """Why a stock model of a verified family cannot take packed rows because of its head, or None if it can.

    Only per-token heads are verified with packed rows (:data:`HEADS`); a head that pools or indexes each row
    (sequence classification, multiple choice, question answering) would score a row of several sequences as one.
    """
    family = stock_family_of(model)
    info = VERIFIED_FAMILIES.get(family or "")
    if info is None or head_of(model) in info.heads:
        return None
    hint = ""
    if family in ("bert", "roberta"):
        hint = (
            ". For BERT or RoBERTa checkpoints a DynMask model pools per sequence: "
            "AutoModelForSequenceClassification.from_pretrained(path, config=DynMaskConfig.from_pretrained(path))"
        )
    return (
        f"{type(model).__name__} cannot take packed batches: only per-token heads of {family} are verified with "
        f"packed rows ({', '.join(info.heads)}); this head pools or indexes whole rows (or is not one of "
        "transformers' stock heads), so a row of several sequences would be scored as one, with or without labels. "
        + DYNAMIC_PADDING
        + hint
    )

"""The stock transformers model families that ``attn_implementation="dynmask_varlen"`` is verified exact on.

Model-side module: imports only the standard library (it may be saved next to a model as remote code).

A family is named by the folder of its modeling code in transformers (``transformers.models.<family>``), which is
what an attention module's class tells about itself: ``type(module).__module__`` is
``"transformers.models.llama.modeling_llama"`` for every Llama attention layer, whatever the head or the config.
Each family listed here has an equivalence test against every sequence run alone through the stock model on
``"sdpa"`` (``tests/modeling/test_attention.py``); any other family is refused, because what its attention passes
(relative position biases, extra masks, score modifiers) has not been checked.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DYNMASK_FAMILY", "VERIFIED_FAMILIES", "check_verified_family", "family_of"]

#: The DynMask family's own modules (they call the varlen kernel directly and use the interface for padded batches).
DYNMASK_FAMILY = "dynmask"

#: transformers model folder -> what the family is (the equivalence tests cover each).
VERIFIED_FAMILIES: dict[str, str] = {
    "bert": "encoder",
    "gemma2": "decoder, grouped-query, sliding window, attention softcap",
    "llama": "decoder, grouped-query",
    "mistral": "decoder, grouped-query, sliding window",
    "modernbert": "encoder, local (sliding window) attention",
    "qwen2": "decoder, grouped-query, sliding window",
}


def family_of(obj: Any) -> str | None:
    """The transformers model folder an attention module (or a model) comes from, ``"dynmask"`` for DynMask's own
    modules (also when loaded as remote code), None for anything else.

    >>> import torch
    >>> family_of(torch.nn.Linear(1, 1)) is None
    True
    """
    module_name = type(obj).__module__
    parts = module_name.split(".")
    if len(parts) >= 3 and parts[0] == "transformers" and parts[1] == "models":
        return parts[2]
    if parts[-1] == "modeling_dynmask":
        return DYNMASK_FAMILY
    return None


def check_verified_family(module: Any) -> str:
    """Return the family of ``module``, or raise ``ValueError`` if dynmask_varlen is not verified on it."""
    family = family_of(module)
    if family == DYNMASK_FAMILY or family in VERIFIED_FAMILIES:
        return family
    raise ValueError(
        f"attn_implementation='dynmask_varlen' is not verified on {type(module).__name__} "
        f"(family {family or type(module).__module__!r}): its attention may pass arguments the varlen kernel does not "
        f"honour, so it is refused rather than run approximately. Verified families: {sorted(VERIFIED_FAMILIES)}. "
        "Load this model with attn_implementation='sdpa' (or 'eager') and use padded batches "
        "(make_collator(..., mode='dynamic'))"
    )

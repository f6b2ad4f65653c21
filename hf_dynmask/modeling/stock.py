"""Stock transformers models on ``attn_implementation="dynmask_varlen"``: verified at load, every batch checked at the
model's entry.

Model-side module: imports only the standard library, torch, transformers and relative siblings.

An attention function sees the tensors of one layer only, so the batch contract (:mod:`.batch`) cannot be enforced
there: some families never call transformers' attention interface at all (DeBERTa-v2), some attention layers never
see ``position_ids`` (DistilBERT), no layer knows whether its head pools each row. The contract is enforced where a
model is chosen and where it is called instead:

- **at load**: transformers resolves every backend choice (``from_pretrained``, ``from_config``,
  ``set_attn_implementation``) in one method, ``PreTrainedModel._check_and_adjust_attn_implementation``.
  :func:`install_load_check` wraps it, the only patch of transformers hf_dynmask makes: it acts only on a model
  resolved to ``"dynmask_varlen"`` (opt-in), checks the method's signature first (version-checked), is undone by
  :func:`uninstall_load_check` (reversible), and is tested. A model outside the verified families
  (:mod:`.families`) is refused there, with what to use instead; the others get the entry check below.
- **at every forward**: a forward pre-hook on the model refuses arguments the model does not know (with the closest
  known name), describes the batch with the rules every path shares (:func:`~.batch.describe_batch`: causal models
  read restarting positions as boundaries), refuses a packed row for a head that pools or indexes rows, gives a
  packed row without ``position_ids`` each sequence's own (the model would number the row as one sequence), plans
  the packed attention once, and hands the description and the plan to every attention layer as arguments
  (``dynmask_layout``, ``dynmask_plan``: transformers passes a model's keyword arguments down to its attention
  functions). A
  token-classification head's packed output also carries ``seq_idx`` (:class:`~.outputs.DynMaskTokenClassifierOutput`),
  so evaluation scores each sequence on its own, as with DynMask's own head.

A head around a base model runs the check once: the base model sees ``dynmask_layout`` among its arguments and skips
it.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from typing import Any

import torch
from transformers.utils import logging

from .attention import (
    ATTN_IMPLEMENTATION,
    FEW_COMPILED_GROUPS,
    compiled_plan,
    plan_varlen,
    varlen_attention_forward,
    varlen_attention_mask,
)
from .batch import BatchLayout, BatchRules, describe_batch, refuse_unknown_arguments
from .families import (
    DYNMASK_FAMILY,
    VERIFIED_FAMILIES,
    check_verified_family,
    family_of,
    head_of,
    packed_head_refusal,
    position_start_of,
    stock_family_of,
)
from .outputs import DynMaskTokenClassifierOutput

logger = logging.get_logger(__name__)

__all__ = [
    "install_load_check",
    "prepare_stock_model",
    "register_attention",
    "stock_batch_rules",
    "uninstall_load_check",
]


def register_attention() -> None:
    """Register ``"dynmask_varlen"`` with transformers' attention and mask interfaces and install the load check
    (idempotent).

    Both interface registrations are needed: transformers hands ``attention_mask=None`` to a name that is missing from
    ``AttentionMaskInterface``, which would silently ignore padding.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, varlen_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, varlen_attention_mask)
    install_load_check()


# --------------------------------------------------------------------------------------------------------------------
# At load
# --------------------------------------------------------------------------------------------------------------------

_ORIGINAL = "__dynmask_original__"


def install_load_check() -> bool:
    """Wrap ``PreTrainedModel._check_and_adjust_attn_implementation`` so that a model resolved to ``"dynmask_varlen"``
    goes through :func:`prepare_stock_model`. Idempotent; returns whether the check is installed.

    A transformers without that method (or with another signature) is left alone, with a warning: stock models then
    refuse ``dynmask_varlen`` at their first attention call (their batches would go unchecked).
    """
    from transformers import PreTrainedModel

    current = PreTrainedModel._check_and_adjust_attn_implementation
    if getattr(current, _ORIGINAL, None) is not None:
        return True
    parameters = list(inspect.signature(current).parameters)
    if parameters[:3] != ["self", "attn_implementation", "is_init_check"]:
        logger.warning(
            "hf_dynmask: this transformers' PreTrainedModel._check_and_adjust_attn_implementation has the signature "
            f"{parameters}, not the one hf_dynmask checks models at (transformers 5.x); stock models on "
            "attn_implementation='dynmask_varlen' will be refused. DynMask models are not affected"
        )
        return False

    @functools.wraps(current)
    def checked(self, attn_implementation, is_init_check=False, *args, **kwargs):
        resolved = current(self, attn_implementation, is_init_check, *args, **kwargs)
        if resolved == ATTN_IMPLEMENTATION:
            prepare_stock_model(self)
        else:
            refuse_switching_a_shared_config(self, resolved)
        return resolved

    setattr(checked, _ORIGINAL, current)
    PreTrainedModel._check_and_adjust_attn_implementation = checked
    return True


def uninstall_load_check() -> None:
    """Undo :func:`install_load_check` (models already prepared keep their entry check)."""
    from transformers import PreTrainedModel

    original = getattr(PreTrainedModel._check_and_adjust_attn_implementation, _ORIGINAL, None)
    if original is not None:
        PreTrainedModel._check_and_adjust_attn_implementation = original


def prepare_stock_model(model: torch.nn.Module) -> None:
    """Refuse a model ``dynmask_varlen`` is not verified on; give the others the entry check (once).

    Called at load (``__init__``, before the model's layers exist: the family is read from its class) and by
    ``set_attn_implementation``. DynMask models check their own batches and are left alone.
    """
    if family_of(model) == DYNMASK_FAMILY:
        return
    check_verified_family(model, stock_family_of(model))
    if _entry not in model._forward_pre_hooks.values():
        model.register_forward_pre_hook(_entry, with_kwargs=True)
        model.register_forward_hook(_mark_packed_output, with_kwargs=True)
    _models_on_config(model.config, create=True).add(model)


#: id(config) -> (the config, weakly; the stock models prepared for ``dynmask_varlen`` that hold it). transformers
#: keeps a model's attention backend on its config object, and ``from_config`` does not copy the config it is given.
_PREPARED: dict[int, tuple[weakref.ref, weakref.WeakSet]] = {}


def _models_on_config(config: Any, create: bool = False) -> weakref.WeakSet:
    entry = _PREPARED.get(id(config))
    if entry is None or entry[0]() is not config:  # none yet, or a dead config's id reused
        if not create:
            return weakref.WeakSet()
        for key in [key for key, (ref, _) in _PREPARED.items() if ref() is None]:
            del _PREPARED[key]
        entry = _PREPARED[id(config)] = (weakref.ref(config), weakref.WeakSet())
    return entry[1]


def refuse_switching_a_shared_config(model: torch.nn.Module, resolved: str) -> None:
    """Refuse to give ``model`` another backend than ``dynmask_varlen`` on a config object that a model prepared for
    ``dynmask_varlen`` holds (``AutoModel.from_config(config, attn_implementation="sdpa")`` after a model was made
    from the same ``config`` with ``dynmask_varlen``): the backend lives on the config, so the earlier model would run
    ``resolved`` from then on, and a packed batch would mix its sequences in families whose stock attention does not
    keep them apart. ``model`` itself and its own sub-models may switch (``model.set_attn_implementation``)."""
    others = [
        other
        for other in _models_on_config(model.config)
        if other is not model and not any(module is other for module in model.modules())
    ]
    if others:
        # from_config has already written the new backend on the config: put back what those models run on.
        model.config._attn_implementation = ATTN_IMPLEMENTATION
        raise ValueError(
            f"this config object is the config of a {type(others[0]).__name__} loaded with attn_implementation="
            f"'{ATTN_IMPLEMENTATION}', and transformers keeps the attention backend on the config: building "
            f"{type(model).__name__} with attn_implementation={resolved!r} from it would switch that model to "
            f"{resolved!r} too. Give each model its own config: copy.deepcopy(config) (or load each with "
            "from_pretrained)"
        )


# --------------------------------------------------------------------------------------------------------------------
# At every forward
# --------------------------------------------------------------------------------------------------------------------

_CHECKED_MODULES: weakref.WeakSet = weakref.WeakSet()


def _check_modules(model: torch.nn.Module) -> None:
    """Every transformers module inside ``model`` belongs to a verified family (a composite model may hold a family
    its class does not name); checked at the model's first forward."""
    if model in _CHECKED_MODULES:
        return
    for module in model.modules():
        family = family_of(module)
        if family is not None:
            check_verified_family(module, family)
    _CHECKED_MODULES.add(model)


@functools.cache
def _positional_names(cls: type) -> tuple[str, ...]:
    parameters = inspect.signature(cls.forward).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in parameters if p.kind in kinds and p.name != "self")


def stock_batch_rules(model: torch.nn.Module) -> BatchRules:
    """The contract's parameters for a stock model: positions from the family's first one (inside the position table
    of a learned-position family); decoders read restarting positions as boundaries. A packed row without
    ``position_ids`` gets each sequence's own (the entry check passes them on: the model would number the row as one
    sequence)."""
    family = VERIFIED_FAMILIES[stock_family_of(model)]
    config = model.config
    return BatchRules(
        position_start=position_start_of(config),
        max_positions=getattr(config, "max_position_embeddings", None) if family.position_table else None,
        reads_restarts=family.decoder,
    )


def _known_arguments(model: torch.nn.Module) -> frozenset[str]:
    """What a stock model's forward takes: its class's parameters, transformers' keyword arguments, and the
    parameters of a forward patched onto the instance (TRL's fused LM head adds ``fused_lm_head``)."""
    known = _class_arguments(type(model))
    patched = model.__dict__.get("forward")
    if patched is not None:
        known = known | _parameters(patched)
    return known


@functools.cache
def _class_arguments(cls: type) -> frozenset[str]:
    from transformers.utils.generic import TransformersKwargs

    transformers_kwargs = set(TransformersKwargs.__optional_keys__)
    return frozenset(_parameters(cls.forward) | transformers_kwargs | {"return_dict", *_RENAMED, *_INJECTED})


def _parameters(function) -> frozenset[str]:
    """The named parameters of ``function`` and of every function it wraps (a wrapper made with
    ``functools.wraps`` reports the wrapped signature, not its own)."""
    names: set[str] = set()
    for _ in range(8):
        parameters = inspect.signature(function, follow_wrapped=False).parameters.values()
        names |= {p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"}
        inner = getattr(getattr(function, "__func__", function), "__wrapped__", None)
        if inner is None:
            break
        function = inner
    return frozenset(names)


_INJECTED = ("dynmask_layout", "dynmask_plan")
#: Older names transformers' forwards still take (with a FutureWarning: ``deprecate_kwarg``), e.g. the cache's.
_RENAMED = ("past_key_values",)


def _call_inputs(model: torch.nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """A forward's arguments by name (positional ones named from the model's signature)."""
    return {**dict(zip(_positional_names(type(model)), args, strict=False)), **kwargs}


def _boundaries_given(inputs: dict[str, Any]) -> list[str]:
    """The names of the packed-row boundaries a forward was given."""
    return [name for name in ("cu_seq_lens_q", "cu_seq_lens_k", "seq_idx") if inputs.get(name) is not None]


def _cached_positions(cache: Any) -> int:
    if cache is None or not hasattr(cache, "get_seq_length"):
        return 0
    return int(cache.get_seq_length())


def _entry(model: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Forward pre-hook: :func:`_check_entry`, told whether the forward is being compiled (read here, in the traced
    frame: inside the disabled check it is always False)."""
    return _check_entry(model, args, kwargs, torch.compiler.is_compiling())


@torch.compiler.disable  # host reads of the checks: one boundary, outside compiled graphs
def _check_entry(model: torch.nn.Module, args: tuple, kwargs: dict, compiling: bool) -> tuple[tuple, dict] | None:
    """Describe the batch, refuse what is not exact, hand the layout and plan to the attention (under compile a plan
    of at most two structures, :func:`~.attention.compiled_plan` with ``FEW_COMPILED_GROUPS``, so that one graph per
    structure serves every batch)."""
    if kwargs.get("dynmask_layout") is not None:
        return None
    current = model.config._attn_implementation
    if current != ATTN_IMPLEMENTATION:
        _refuse_packed_boundaries(model, args, kwargs, current)
        return None
    _check_modules(model)
    refuse_unknown_arguments(kwargs, _known_arguments(model), type(model).__name__)
    inputs = _call_inputs(model, args, kwargs)
    reference = inputs.get("input_ids")
    if reference is None:
        reference = inputs.get("inputs_embeds")
    if not isinstance(reference, torch.Tensor) or reference.dim() < 2:
        return None  # nothing to describe: the model raises its own error
    shape = (reference.shape[0], reference.shape[1])
    mask = inputs.get("attention_mask")
    boundaries = _boundaries_given(inputs)
    if isinstance(mask, torch.Tensor) and mask.dim() != 2:  # a custom 4-D mask: the model applies it as stock does
        if boundaries:
            raise ValueError(
                f"a {mask.dim()}-D attention_mask with a packed row ({boundaries}): a packed row has no padding, and "
                "its boundaries make the mask. Drop attention_mask"
            )
        layout = BatchLayout("padded", shape[0], shape[1], None, shape[1], None, None)
    else:
        layout = describe_batch(
            shape,
            rules=stock_batch_rules(model),
            attention_mask=mask,
            position_ids=inputs.get("position_ids"),
            cu_seq_lens_q=inputs.get("cu_seq_lens_q"),
            cu_seq_lens_k=inputs.get("cu_seq_lens_k"),
            seq_idx=inputs.get("seq_idx"),
            past=_cached_positions(inputs.get("cache", inputs.get("past_key_values"))),
            device=reference.device,
        )
    extra: dict[str, Any] = {"dynmask_layout": layout, "dynmask_plan": None}
    if layout.kind == "packed":
        refusal = packed_head_refusal(model)
        if refusal is not None:
            raise ValueError(refusal)
        if compiling:
            extra["dynmask_plan"] = compiled_plan(layout.cu_seqlens, max_groups=FEW_COMPILED_GROUPS)
        else:
            ratio = float(getattr(model.config, "varlen_bucket_ratio", 0.8))
            extra["dynmask_plan"] = plan_varlen(layout.cu_seqlens, bucket_ratio=ratio)
        if inputs.get("position_ids") is None:  # each sequence's own positions: the model would number the row
            positions = layout.position_ids.view(layout.batch_size, -1)
            names = _positional_names(type(model))
            where = names.index("position_ids") if "position_ids" in names else len(args)
            if where < len(args):
                args = (*args[:where], positions, *args[where + 1 :])
            else:
                extra["position_ids"] = positions
    return args, {**kwargs, **extra}


def _refuse_packed_boundaries(model: torch.nn.Module, args: tuple, kwargs: dict, current: str) -> None:
    """A model prepared for ``dynmask_varlen`` that now runs another backend (``set_attn_implementation``, or its
    config changed) runs every batch as stock does, except a packed row's boundaries: stock attention functions
    ignore ``cu_seq_lens_*`` and ``seq_idx``, and some families would then mix the row's sequences."""
    boundaries = _boundaries_given(_call_inputs(model, args, kwargs))
    if boundaries:
        raise ValueError(
            f"a packed row ({', '.join(boundaries)}) for a {type(model).__name__} that now runs "
            f"attn_implementation={current!r}, which ignores those boundaries: call "
            f"model.set_attn_implementation('{ATTN_IMPLEMENTATION}') (and give each model its own config object), or "
            "pass padded batches"
        )


@torch.compiler.disable
def _mark_packed_output(model: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    """Forward hook: a token-classification head's packed output carries each token's sequence (``seq_idx``)."""
    layout = kwargs.get("dynmask_layout")
    if layout is None or layout.kind != "packed" or head_of(model) != "token-classification":
        return None
    seq_idx = layout.seq_idx.view(layout.batch_size, -1)  # (B, T), int32
    if isinstance(output, tuple):
        return (*output, seq_idx)
    return DynMaskTokenClassifierOutput(**output, seq_idx=seq_idx)

"""Attention backends: which ``attn_implementation`` each DynMask family runs, and how a family meets transformers'
choice of backend.

Model-side module: imports only torch, transformers and relative siblings (it is saved next to a model as remote code).

One table (:data:`FAMILY_BACKENDS`) says what each family runs; :data:`STOCK_PACKED_BACKENDS` what keeps the
sequences of a packed row apart in a stock model. Two of transformers' ``PreTrainedModel`` hooks need the same answer
in every family (:class:`AttentionBackendHooks`):

- ``_check_and_adjust_attn_implementation``, the one entry of every backend choice (``from_pretrained``,
  ``_from_config``, ``set_attn_implementation``), before transformers resolves Hub kernels: since 5.25 (with its
  ``kernels`` dependency) it takes an ``"org/repo"`` name as a kernel to download and stands a Hub flash kernel in
  for a missing flash-attn, both without reaching ``get_correct_attn_implementation``. A family refuses there what it
  does not run.
- ``_can_set_attn_implementation``: transformers guesses from the module source whether ``set_attn_implementation``
  can work, and otherwise only warns and keeps the old backend. DynMask layers read ``config._attn_implementation``
  at every call, so switching works.
"""

from __future__ import annotations

import transformers.utils

from .configuration_dynmask import did_you_mean

__all__ = [
    "FAMILY_BACKENDS",
    "FLASH_IMPLEMENTATIONS",
    "STOCK_PACKED_BACKENDS",
    "AttentionBackendHooks",
    "backend_of",
]

#: flash-attn's implementations, as transformers names them.
FLASH_IMPLEMENTATIONS = ("flash_attention_2", "flash_attention_3", "flash_attention_4")

#: The backends each DynMask family runs (packed tokens always run exactly: the varlen kernel on SDPA / eager,
#: flash-attn's varlen kernels, or flex attention's document mask).
FAMILY_BACKENDS: dict[str, tuple[str, ...]] = {
    "encoder": ("eager", "sdpa", "dynmask_varlen", "flex_attention", *FLASH_IMPLEMENTATIONS),
    "seq2seq": ("eager", "sdpa", "dynmask_varlen"),
}

#: Backends of stock transformers models that keep the sequences of a packed row apart (with ``cu_seq_lens_q/k``).
STOCK_PACKED_BACKENDS = ("dynmask_varlen", "flash_attention_2", "flash_attention_3")


def _flash_attn_available(attn_implementation: str) -> bool:
    """transformers' own availability check of the flash-attn package the name asks for (and a device for it)."""
    check = getattr(transformers.utils, f"is_flash_attn_{attn_implementation[-1]}_available", None)
    return bool(check is not None and check())


def _refuse(family: str, name: str | None) -> None:
    supported = FAMILY_BACKENDS[family]
    if name is not None and name not in supported:
        raise ValueError(
            f"attn_implementation={name!r} is not supported by DynMask's {family} family; choose one of "
            f"{supported}{did_you_mean(name, supported)}"
        )


def backend_of(config, family: str) -> str:
    """The backend a model of ``family`` runs now (``config._attn_implementation``, sdpa when unset), checked."""
    name = config._attn_implementation or "sdpa"
    _refuse(family, name)
    return name


class AttentionBackendHooks:
    """Mixin, listed before ``PreTrainedModel``; the family names itself in ``_dynmask_family`` (a key of
    :data:`FAMILY_BACKENDS`)."""

    _dynmask_family: str

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        return True

    def _check_and_adjust_attn_implementation(
        self, attn_implementation: str | None, is_init_check: bool = False, **kwargs
    ) -> str:
        _refuse(self._dynmask_family, attn_implementation)
        if attn_implementation in FLASH_IMPLEMENTATIONS and not _flash_attn_available(attn_implementation):
            raise ImportError(
                f"attn_implementation={attn_implementation!r} needs flash-attn on a CUDA GPU, which this environment "
                "lacks: pip install 'hf-dynmask[flash]' (Hub flash kernels are not verified with DynMask). On other "
                "devices use 'dynmask_varlen' (exact packed attention without flash-attn)."
            )
        return super()._check_and_adjust_attn_implementation(attn_implementation, is_init_check, **kwargs)

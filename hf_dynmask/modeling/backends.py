"""How a DynMask family meets transformers' choice of attention backend (``attn_implementation``).

Model-side module: imports only torch, transformers and relative siblings (it is saved next to a model as remote code).

Two of transformers' ``PreTrainedModel`` hooks need the same answer in every family:

- ``_check_and_adjust_attn_implementation``, the one entry of every backend choice (``from_pretrained``,
  ``_from_config``, ``set_attn_implementation``), before transformers resolves Hub kernels: since 5.25 (with its
  ``kernels`` dependency) it takes an ``"org/repo"`` name as a kernel to download and stands a Hub flash kernel in
  for a missing flash-attn, both without reaching ``get_correct_attn_implementation``. A family refuses there what it
  is not verified on.
- ``_can_set_attn_implementation``: transformers guesses from the module source whether ``set_attn_implementation``
  can work, and otherwise only warns and keeps the old backend. DynMask layers read ``config._attn_implementation``
  at every call, so switching works.
"""

from __future__ import annotations

__all__ = ["AttentionBackendHooks"]


class AttentionBackendHooks:
    """Mixin, listed before ``PreTrainedModel``: the family implements :meth:`_refuse_attn_implementation`."""

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        return True

    def _refuse_attn_implementation(self, attn_implementation: str | None) -> None:
        """Raise (naming what to use instead) if the family does not run ``attn_implementation``."""
        raise NotImplementedError

    def _check_and_adjust_attn_implementation(
        self, attn_implementation: str | None, is_init_check: bool = False, **kwargs
    ) -> str:
        self._refuse_attn_implementation(attn_implementation)
        return super()._check_and_adjust_attn_implementation(attn_implementation, is_init_check, **kwargs)

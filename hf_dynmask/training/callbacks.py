"""Trainer callbacks: padding statistics next to the loss, and the epoch of collators and token-budget samplers.

:class:`PaddingStatsCallback` counts the real and the computed (real + padding) input tokens of every training batch
and adds two numbers to each training log, next to ``loss`` in the progress bar and in every reporting integration:

    padding_efficiency       real / computed tokens of the batches since the previous log (1.0 when packed)
    real_tokens_per_second   real tokens since the previous log / wall-clock seconds since the previous log

It keeps the run's totals for the model card: :meth:`PaddingStatsCallback.totals` is the input of
``hf_dynmask.sharing.model_card.TrainingSummary.from_totals``. The totals survive a resume from a checkpoint (the
callback is an ``ExportableState``, saved in ``trainer_state.json``).

Where the counts come from: a ``Trainer`` does not show callbacks its batches, so something has to hand them over.

- :class:`~.trainer.DynMaskTrainer` calls :meth:`PaddingStatsCallback.record` on each micro-batch it trains
  on (exact, whatever the DataLoader workers or prefetching do) and adds the numbers to the logs before they reach
  ``state.log_history`` and the integrations.
- With a stock ``Trainer``, wrap the collator: ``data_collator=stats.wrap(collator)``. Batches are then counted when
  collated, which needs ``dataloader_num_workers=0`` (a worker process would count in its own copy) and runs up to
  the DataLoader's prefetch ahead of training; the numbers are added to the logs when the callback's ``on_log``
  runs, so they reach the progress bar and the callbacks after this one but not ``state.log_history``.

With several processes, each process counts its own batches and the counts are summed across processes (one
``all_reduce`` at each logging step and at the end), so the logs and the totals describe the whole run.

:class:`SetEpochCallback` calls ``set_epoch(epoch)`` at the start of each epoch on the training collator (static MLM
masking: one mask per example and epoch) and on a ``set_epoch`` batch sampler under the training DataLoader, at any
depth of wrapping (accelerate's shard and skip wrappers, used on resume, do not forward it).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from ..data.collators import token_counts
from .allocator import allocator_hint
from .checks import PACKED_MODES, collator_for_model, collator_mode, unwrap_collator

logger = logging.getLogger(__name__)

__all__ = ["CountingCollator", "PaddingStatsCallback", "SetEpochCallback"]


@functools.cache
def _warn_once(message: str) -> None:
    """Log ``message`` as a warning the first time only, in this process (the allocator hint, :mod:`.allocator`)."""
    logger.warning(message)


def _samplers(loader: Any) -> Iterator[Any]:
    """The batch samplers and samplers under a (wrapped) DataLoader, outermost first."""
    stack = [getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None)]
    seen: set[int] = set()
    while stack:
        obj = stack.pop(0)
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj
        stack += [getattr(obj, "batch_sampler", None), getattr(obj, "sampler", None)]


def _set_collate_fn(loader: Any, collate_fn: Any) -> None:
    """Give ``loader`` a new collate function before its next epoch: on the torch ``DataLoader`` that iterates, which
    reads it when the epoch's iterator is made (accelerate's ``DataLoaderShard`` delegates to ``.base_dataloader``)."""
    while getattr(loader, "base_dataloader", None) is not None:
        loader = loader.base_dataloader
    loader.collate_fn = collate_fn


class CountingCollator:
    """A collator that records each batch it makes in a :class:`PaddingStatsCallback` (stock ``Trainer``).

    The batch is returned unchanged. Use it with ``dataloader_num_workers=0``.
    """

    def __init__(self, collator: Callable[[Sequence[Any]], Any], stats: PaddingStatsCallback) -> None:
        self.collator = collator
        self.stats = stats

    def __call__(self, features: Sequence[Any]) -> Any:
        batch = self.collator(features)
        self.stats.record(batch)
        return batch


class PaddingStatsCallback(TrainerCallback, ExportableState):
    """Log ``padding_efficiency`` and ``real_tokens_per_second`` at each logging step; keep the run's totals.

    Counts come from :meth:`record` (called by ``DynMaskTrainer``) or from a collator wrapped with :meth:`wrap`;
    see the module docstring. Its totals are saved in every checkpoint and picked up again when training resumes
    from one (at ``on_train_begin``, whatever ``restore_callback_states_from_checkpoint`` says).

    At ``on_train_begin`` it also refuses a packed collator with a model that cannot keep packed sequences apart
    (:func:`~.checks.check_collator_for_model`), so a stock ``Trainer`` with this callback fails before the first
    step instead of training on cross-contaminated batches; and where the training DataLoader's collator is an
    hf_dynmask packed collator left at ``position_start=None``, it gives the DataLoader a copy that numbers positions
    from the model's start (:func:`~.checks.collator_for_model`; the collator passed to the Trainer is not changed).
    """

    def __init__(self) -> None:
        self.real_tokens = 0  # run totals (all processes), including a resumed run's earlier part
        self.padded_tokens = 0
        self.runtime_before = 0.0  # seconds of training before a resume
        self.train_steps = 0
        self.train_loss: float | None = None
        self.eval_metrics: dict[str, float] = {}
        self._window_real = 0  # this process, since the previous log
        self._window_padded = 0
        self._window_start: float | None = None
        self._train_start: float | None = None
        self._train_end: float | None = None

    # -- counting ----------------------------------------------------------------------------------------------------

    def record(self, batch: Mapping[str, Any]) -> None:
        """Count one training batch (``hf_dynmask.data.collators.token_counts``)."""
        counts = token_counts(batch)
        self._window_real += counts.real
        self._window_padded += counts.padded

    def wrap(self, collator: Callable[[Sequence[Any]], Any]) -> CountingCollator:
        """``collator``, recording every batch it makes here; for a stock ``Trainer`` (see the module docstring)."""
        return CountingCollator(collator, self)

    def _drain_window(self) -> tuple[int, int, float]:
        """Real and computed tokens since the previous drain (summed over processes), and the seconds it took."""
        counts = torch.tensor([self._window_real, self._window_padded], dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
        real, padded = int(counts[0]), int(counts[1])
        now = time.perf_counter()
        seconds = now - self._window_start if self._window_start is not None else 0.0
        self._window_real, self._window_padded, self._window_start = 0, 0, now
        self.real_tokens += real
        self.padded_tokens += padded
        return real, padded, seconds

    def update_logs(self, logs: dict[str, float]) -> None:
        """Add ``padding_efficiency`` and ``real_tokens_per_second`` to a training log (one with ``loss``).

        Idempotent per log: a log that already has them is left alone. Every process must call it at the same logging
        steps (as the Trainer's ``log`` does), because the counts are summed across processes.
        """
        if "loss" not in logs or "padding_efficiency" in logs:
            return
        real, padded, seconds = self._drain_window()
        if padded == 0:
            return
        logs["padding_efficiency"] = round(real / padded, 4)
        if seconds > 0:
            logs["real_tokens_per_second"] = round(real / seconds, 1)

    # -- results -----------------------------------------------------------------------------------------------------

    def totals(self) -> dict[str, Any]:
        """The run's totals: the keys ``TrainingSummary.from_totals`` reads, plus the two ratios.

        ``real_tokens``, ``padded_tokens``, ``train_runtime`` (seconds, across resumes), ``train_steps``,
        ``train_loss`` (None before the end of training), ``padding_efficiency``, ``real_tokens_per_second`` and the
        last evaluation's ``eval_*`` metrics.
        """
        runtime = self.runtime_before
        if self._train_start is not None:
            runtime += (self._train_end or time.perf_counter()) - self._train_start
        result: dict[str, Any] = {
            "real_tokens": self.real_tokens,
            "padded_tokens": self.padded_tokens,
            "train_runtime": runtime,
            "train_steps": self.train_steps,
            "train_loss": self.train_loss,
            "padding_efficiency": self.real_tokens / self.padded_tokens if self.padded_tokens else math.nan,
            "real_tokens_per_second": self.real_tokens / runtime if runtime > 0 else math.nan,
        }
        result.update(self.eval_metrics)
        return result

    def state(self) -> dict[str, Any]:
        """Checkpointed totals (``ExportableState``), so a resumed run's totals cover the whole run."""
        return {
            "args": {},
            "attributes": {
                "real_tokens": self.real_tokens,
                "padded_tokens": self.padded_tokens,
                "runtime_before": self.totals()["train_runtime"],
                "train_steps": self.train_steps,
            },
        }

    # -- Trainer events ----------------------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        collate_fn = getattr(train_dataloader, "collate_fn", None)
        if model is not None and train_dataloader is not None:
            for_model = collator_for_model(model, collate_fn)
            if for_model is not collate_fn:
                _set_collate_fn(train_dataloader, for_model)
        hint = allocator_hint(args.device.type, collator_mode(collate_fn) in PACKED_MODES)
        if hint is not None and state.is_world_process_zero:
            _warn_once(hint)
        saved = state.stateful_callbacks.get(type(self).__name__) if state.global_step > 0 else None
        if isinstance(saved, dict):  # resumed from a checkpoint: continue its totals
            for name, value in saved.get("attributes", {}).items():
                setattr(self, name, value)
        self._train_start = self._window_start = time.perf_counter()
        self._train_end = None

    def on_step_end(self, args, state, control, **kwargs):
        self.train_steps = state.global_step
        if control.should_save:  # the checkpoint about to be written stores totals(): bring them up to date
            self._drain_window()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None:
            return
        self.update_logs(logs)
        if "train_loss" in logs:
            self.train_loss = float(logs["train_loss"])

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics:
            self.eval_metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}

    def on_train_end(self, args, state, control, **kwargs):
        self._drain_window()
        self._train_end = time.perf_counter()
        self.train_steps = state.global_step


class SetEpochCallback(TrainerCallback):
    """At each epoch start, ``set_epoch(epoch)`` on the training collator and on the samplers under the DataLoader.

    The epoch is ``floor(state.epoch)``: the epoch about to run, also when resuming from a checkpoint in the middle
    of one. Objects without ``set_epoch`` are left alone.
    """

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        epoch = math.floor((state.epoch or 0.0) + 1e-6)
        if train_dataloader is None:
            return
        targets = [unwrap_collator(getattr(train_dataloader, "collate_fn", None))]
        targets += list(_samplers(train_dataloader))
        targets.append(getattr(train_dataloader, "dataset", None))
        for target in targets:
            set_epoch = getattr(target, "set_epoch", None)
            if callable(set_epoch):
                set_epoch(epoch)

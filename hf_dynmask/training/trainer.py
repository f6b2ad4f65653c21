"""Trainer integration: the collator is the switch; :class:`DynMaskTrainer` adds token-budget batches.

The usual case needs nothing from this module: pass an hf_dynmask collator to a stock ``transformers.Trainer``::

    Trainer(model, args, train_dataset=dataset, data_collator=make_collator(tokenizer, task, mode="packed"))

``static``, ``dynamic`` and ``packed`` then train the same model: for the same examples in the same optimizer step
the loss and the gradients are the same (fp32 round-off aside), with gradient accumulation and data-parallel
training too, because the Trainer normalizes token-level losses by ``num_items_in_batch`` (the labels ``!= -100``
of the whole accumulated step, summed over processes) and hf_dynmask's models (and the sequence-classification loss)
honour it.

Token-budget batches (about ``token_budget`` tokens per micro-batch instead of a fixed number of sequences) need the
batch sampler to change, which a collator cannot do. :class:`DynMaskTrainer` with :class:`DynMaskTrainingArguments`
(``token_budget=...``) builds the training DataLoader on :class:`~hf_dynmask.data.packing.TokenBudgetBatchSampler` (a
``datasets.Dataset``: lengths read from the cached ``length`` column) or :class:`~hf_dynmask.data.TokenBudgetStream`
(an ``IterableDataset``, packed on the fly). Everything else is the stock Trainer: evaluation, checkpoints, resume.

Safety. A packed batch is one row ``(1, N)`` whose sequence boundaries are in ``cu_seq_lens_q`` / ``seq_idx``; a
model that ignores them attends across sequences without any error. :func:`~.checks.check_collator_for_model`
refuses such a model (:func:`~.checks.check_packed_support`) and a packed collator whose first position id is not the
model's; an hf_dynmask collator left at ``position_start=None`` is replaced by a copy that follows the model
(:func:`~.checks.collator_for_model`; the collator passed in is not changed). It runs in :class:`DynMaskTrainer` (at
construction and before training, evaluation and prediction) and in :class:`~.callbacks.PaddingStatsCallback` (at
``on_train_begin``). A stock ``Trainer`` without either never shows the
model to hf_dynmask: a DynMask model is safe anyway (it reads the boundaries, and refuses a row whose positions
restart without them), and so is a verified stock family on ``dynmask_varlen`` at the attention level (it refuses
positions that do not restart per sequence), but nothing there can see a head that pools whole rows, so call
``check_packed_support(model)`` yourself or use one of the two.
"""

from __future__ import annotations

import logging
import shutil
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Sampler, SequentialSampler
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import seed_worker

from ..data.packing import TokenBudgetBatchSampler
from ..data.prepare import TokenBudgetStream, dataset_columns, example_length, is_iterable_dataset
from ..data.tasks import TASKS
from ..modeling.attention import ATTN_IMPLEMENTATION
from ..modeling.families import head_of
from ..modeling.modeling_dynmask import DynMaskForTokenClassification
from .callbacks import PaddingStatsCallback, SetEpochCallback
from .checks import (
    PACKED_MODES,
    check_training_labels,
    collator_for_model,
    collator_mode,
    unwrap_collator,
    unwrap_model,
)
from .evaluation import eval_label_names

logger = logging.getLogger(__name__)

__all__ = ["DynMaskTrainer", "DynMaskTrainingArguments"]

# Dataset columns hf_dynmask collators read besides input_ids and attention_mask, over every task.
_COLLATOR_COLUMNS = tuple(dict.fromkeys(column for task in TASKS.values() for column in task.feature_columns))


# --------------------------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class DynMaskTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus token-budget batching; readable by ``HfArgumentParser``.

    With ``token_budget`` set, each training micro-batch holds as many examples as fit the budget (the batch cost is
    set by ``token_budget_cost``) and ``per_device_train_batch_size`` is not used for training. Example lengths come
    from ``length_column_name`` (default ``"length"``, see :func:`hf_dynmask.data.prepare_dataset`), else from the
    ``input_ids`` token lists.
    """

    token_budget: int | None = field(
        default=None,
        metadata={
            "help": "Tokens per training micro-batch and device (token-budget batches); None: "
            "per_device_train_batch_size sequences per batch."
        },
    )
    token_budget_cost: Literal["auto", "packed", "padded"] = field(
        default="auto",
        metadata={
            "help": "How a batch's tokens are counted against token_budget: packed = sum of lengths, padded = "
            "batch size x longest; auto = packed for a packed collator, padded otherwise."
        },
    )
    max_seqs_per_batch: int | None = field(
        default=None, metadata={"help": "Token-budget batches: at most this many sequences per micro-batch."}
    )
    log_padding_stats: bool = field(
        default=True,
        metadata={"help": "Log padding_efficiency and real_tokens_per_second (adds a PaddingStatsCallback)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.token_budget is not None and (isinstance(self.token_budget, bool) or self.token_budget < 1):
            raise ValueError(f"token_budget must be a positive int or None, got {self.token_budget!r}")
        if self.token_budget_cost not in ("auto", "packed", "padded"):
            raise ValueError(f"token_budget_cost must be 'auto', 'packed' or 'padded', got {self.token_budget_cost!r}")
        if self.max_seqs_per_batch is not None and self.max_seqs_per_batch < 1:
            raise ValueError(f"max_seqs_per_batch must be a positive int or None, got {self.max_seqs_per_batch!r}")
        strategy = str(getattr(self, "train_sampling_strategy", "random"))
        if self.token_budget is not None and strategy not in ("random", "TrainSamplingStrategy.RANDOM"):
            raise ValueError(
                f"token_budget makes its own batches and replaces train_sampling_strategy={strategy!r}; "
                "drop one of them"
            )


# --------------------------------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------------------------------


class DynMaskTrainer(Trainer):
    """A ``transformers.Trainer`` with token-budget batches, padding statistics and packed-batch safety checks.

    Takes the Trainer's arguments. On top of the stock Trainer:

    - refuses a packed collator with a model that cannot keep packed sequences apart (:func:`check_packed_support`),
      and a training dataset or batch without the labels its task needs; a packed hf_dynmask collator left at
      ``position_start=None`` becomes a copy numbering positions from the model's start (``trainer.data_collator``;
      the collator passed in is not changed);
    - with ``args.token_budget`` (:class:`DynMaskTrainingArguments`), trains on token-budget batches: a map-style
      dataset through :class:`~hf_dynmask.data.packing.TokenBudgetBatchSampler` (per-epoch reshuffle, disjoint shards
      per process, same number of batches on every process, deterministic so resuming skips to the same batch), an
      ``IterableDataset`` through :class:`~hf_dynmask.data.TokenBudgetStream`;
    - adds :class:`~.callbacks.SetEpochCallback` (static MLM masks per epoch) and, unless
      ``args.log_padding_stats=False``, :class:`~.callbacks.PaddingStatsCallback`, fed with every training
      micro-batch (``trainer.padding_stats.totals()`` for the model card);
    - gathers for ``compute_metrics`` what its collator's evaluation needs: without ``args.label_names`` it uses
      :func:`~.evaluation.eval_label_names` (packed token classification: ``["labels", "seq_idx"]``, the
      boundaries of every packed row), and refuses label names that leave the boundaries out for a model that does
      not return them itself;
    - evaluates in dataset order, whatever ``train_sampling_strategy`` says, when ``compute_metrics`` needs it
      (``compute_metrics.needs_dataset_order``, set by :func:`~.evaluation.question_answering_metrics`, which pairs
      prediction row ``i`` with feature ``i``'s context): the stock Trainer length-groups the evaluation set under
      ``group_by_length`` too;
    - with ``args.torch_compile`` on CPU and the inductor backend, compiles dropout with eager's random ops
      (inductor's ``fallback_random``; settings passed in ``dynamo_plugin.options`` win): inductor's own generated
      random numbers made compiled CPU training steps 11-22% slower than with eager's (BENCHMARKS.md,
      "torch.compile on CPU"), and with eager's ops a compiled step draws the same hidden-state dropout masks as eager.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not any(isinstance(cb, SetEpochCallback) for cb in self.callback_handler.callbacks):
            self.add_callback(SetEpochCallback())
        if getattr(self.args, "log_padding_stats", True) and self.padding_stats is None:
            self.add_callback(PaddingStatsCallback())
        self._check_setup()
        self._set_label_names()
        self._compile_dropout_with_eager_random()
        if self._token_budget is not None and self.train_dataset is not None:
            if not is_iterable_dataset(self.train_dataset):
                self._token_budget_sampler(self.train_dataset)  # fail now on a budget below the longest example

    # -- set-up ------------------------------------------------------------------------------------------------------

    def _compile_dropout_with_eager_random(self) -> None:
        """CPU + ``torch_compile`` + inductor: ``fallback_random=True`` in the options accelerate compiles with."""
        plugin = getattr(self.accelerator.state, "dynamo_plugin", None)
        if not self.args.torch_compile or plugin is None or self.args.device.type != "cpu":
            return
        if str(getattr(plugin.backend, "value", plugin.backend)).lower() != "inductor":
            return
        plugin.options = {"fallback_random": True, **(plugin.options or {})}

    @property
    def padding_stats(self) -> PaddingStatsCallback | None:
        """The :class:`PaddingStatsCallback` of this trainer (None with ``log_padding_stats=False``)."""
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, PaddingStatsCallback):
                return callback
        return None

    @property
    def _token_budget(self) -> int | None:
        return getattr(self.args, "token_budget", None)

    def _check_setup(self, labels: bool = True) -> None:
        if self.model is not None:  # a copy that numbers positions from the model's start, where it needs one
            self.data_collator = collator_for_model(self.model, self.data_collator)
        if labels and self.train_dataset is not None:
            check_training_labels(self.train_dataset, self.data_collator)

    def _set_label_names(self) -> None:
        """The label names the collator's evaluation needs (:func:`~.evaluation.eval_label_names`)."""
        task = getattr(unwrap_collator(self.data_collator), "task", None)
        mode = collator_mode(self.data_collator)
        if task is None or mode is None:
            return
        needed = eval_label_names(task, mode)
        if self.args.label_names is None:
            self.label_names = needed
            return
        missing = [name for name in needed if name not in self.args.label_names]
        if missing and not _returns_seq_idx(unwrap_model(self.model)):
            raise ValueError(
                f"TrainingArguments(label_names={self.args.label_names}) leaves out {missing}, which {mode} "
                f"{task} evaluation needs: compute_metrics would score each packed row as one example. Pass "
                f"label_names={needed} (hf_dynmask.training.evaluation.eval_label_names({task!r}, {mode!r})), or "
                "leave label_names unset"
            )

    def _cost(self) -> str:
        cost = getattr(self.args, "token_budget_cost", "auto")
        if cost == "auto":
            return "packed" if collator_mode(self.data_collator) in PACKED_MODES else "padded"
        return cost

    def _token_budget_sampler(self, dataset: Any) -> TokenBudgetBatchSampler:
        """The sampler over ``dataset``'s lengths: the length column, else the ``input_ids`` token lists."""
        assert self._token_budget is not None
        column = self.args.length_column_name
        names = dataset_columns(dataset)
        if names is not None and column not in names:
            if "input_ids" not in names:
                raise ValueError(
                    f"token-budget batches need each example's length: the dataset has neither a {column!r} column "
                    f"nor 'input_ids' (columns: {names}); tokenize it first (hf_dynmask.data.prepare_dataset adds "
                    f"{column!r})"
                )
            column = "input_ids"
        if _is_datasets_dataset(dataset):
            lengths, length_column = dataset, column
        else:
            lengths, length_column = [example_length(dataset[i], column, i) for i in range(len(dataset))], None
        return TokenBudgetBatchSampler(
            lengths,
            self._token_budget,
            length_column=length_column,
            shuffle=True,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            max_seqs_per_batch=getattr(self.args, "max_seqs_per_batch", None),
            cost=self._cost(),  # type: ignore[arg-type]
            drop_last=self.args.dataloader_drop_last,
            num_replicas=self.args.world_size,
            rank=self.args.process_index,
        )

    # -- data --------------------------------------------------------------------------------------------------------

    def _set_signature_columns_if_needed(self) -> None:
        """Also keep the dataset columns hf_dynmask collators read, which a DynMask ``forward(**kwargs)`` does not
        name (``remove_unused_columns`` would drop ``token_type_ids`` and break sentence pairs)."""
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None:
            extra = [key for key in _COLLATOR_COLUMNS if key not in self._signature_columns]
            self._signature_columns = list(self._signature_columns) + extra

    def get_train_dataloader(self) -> DataLoader:
        """The stock DataLoader, or token-budget batches when ``args.token_budget`` is set."""
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        self._check_setup()  # again: model_init may have made the model since __init__
        if self._token_budget is None:
            return super().get_train_dataloader()
        if is_iterable_dataset(self.train_dataset):
            return self._stream_dataloader(self.train_dataset)
        return self._budget_dataloader(self.train_dataset)

    def get_eval_dataloader(self, eval_dataset: Any = None) -> DataLoader:
        """The stock evaluation DataLoader, after checking that the model can take the collator's batches."""
        self._check_setup(labels=False)
        return super().get_eval_dataloader(eval_dataset)

    def _get_eval_sampler(self, eval_dataset: Any) -> Sampler | None:
        """The stock evaluation sampler; dataset order when ``compute_metrics`` needs it (see the class docstring)."""
        if eval_dataset is None or not getattr(self.compute_metrics, "needs_dataset_order", False):
            return super()._get_eval_sampler(eval_dataset)
        # Several processes: None, as the stock Trainer does; accelerate shards in order and gathers back in order.
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None

    def get_test_dataloader(self, test_dataset: Any) -> DataLoader:
        """The stock prediction DataLoader (batches without labels), after the same check."""
        self._check_setup(labels=False)
        return super().get_test_dataloader(test_dataset)

    def _loader_params(self, collate_fn: Any) -> dict[str, Any]:
        params = {
            "collate_fn": collate_fn,
            "num_workers": self.args.dataloader_num_workers,
            "pin_memory": self.args.dataloader_pin_memory,
            "persistent_workers": self.args.dataloader_persistent_workers,
            "worker_init_fn": partial(
                seed_worker, num_workers=self.args.dataloader_num_workers, rank=self.args.process_index
            ),
        }
        if self.args.dataloader_num_workers > 0:
            params["prefetch_factor"] = self.args.dataloader_prefetch_factor
            params["multiprocessing_context"] = self.args.dataloader_multiprocessing_context
        return params

    def _budget_dataloader(self, dataset: Any) -> DataLoader:
        """Map-style dataset: TokenBudgetBatchSampler, already sharded per process; accelerate only places batches."""
        sampler = self._token_budget_sampler(dataset)
        collate_fn = self.data_collator
        if _is_datasets_dataset(dataset):
            dataset = self._remove_unused_columns(dataset, description="training")
        else:
            collate_fn = self._get_collator_with_removed_columns(self.data_collator, description="training")
        loader = DataLoader(dataset, batch_sampler=sampler, **self._loader_params(collate_fn))
        loader = self.accelerator.prepare(loader)
        # The sampler deals batch i to rank i % world_size itself; make accelerate's BatchSamplerShard a passthrough
        # (as transformers does for its own rank-aware BatchRebalanceSampler) so it does not shard a second time.
        wrapper = getattr(loader, "batch_sampler", None)
        if wrapper is not None and getattr(wrapper, "batch_sampler", None) is sampler:
            wrapper.num_processes, wrapper.process_index = 1, 0
        return loader

    def _stream_dataloader(self, dataset: Any) -> DataLoader:
        """IterableDataset: packed on the fly; each process keeps its share of the batches (not accelerate's
        dispatching, which would concatenate packed rows)."""
        assert self._token_budget is not None
        stream = TokenBudgetStream(
            dataset,
            self._token_budget,
            length_column=self.args.length_column_name,
            cost=self._cost(),  # type: ignore[arg-type]
            max_seqs_per_batch=getattr(self.args, "max_seqs_per_batch", None),
            num_replicas=self.args.world_size,
            rank=self.args.process_index,
            drop_last=self.args.dataloader_drop_last,
        )
        collate_fn = self._get_collator_with_removed_columns(self.data_collator, description="training")
        return DataLoader(stream, batch_size=None, **self._loader_params(collate_fn))

    # -- training ----------------------------------------------------------------------------------------------------

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None):
        label_names = [name for name in self.label_names if name != "seq_idx"]  # seq_idx: boundaries, not labels
        if not any(name in inputs for name in label_names):
            raise ValueError(
                f"a training batch has no labels (looked for {label_names} among {sorted(inputs)}): the "
                "dataset or the collator dropped them. Keep the label column (label or labels), or set "
                "TrainingArguments(label_names=[...]) to the model's label arguments"
            )
        stats = self.padding_stats
        if stats is not None:
            stats.record(inputs)
        return super().training_step(model, inputs, num_items_in_batch)

    # -- saving ----------------------------------------------------------------------------------------------------

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """The Trainer's mid-training Hub push (``push_to_hub=True``, ``hub_strategy="every_save"``), with the model
        code: transformers copies a fixed list of files (config, weights) from the checkpoint into the output folder
        it uploads, and a DynMask ``config.json`` names code files in its ``auto_map``, so copy those first (every
        pushed state then loads with ``trust_remote_code=True``)."""
        if self.is_world_process_zero():
            for source in Path(checkpoint_folder).glob("*.py"):
                shutil.copy(source, Path(self.args.output_dir) / source.name)
        super()._push_from_checkpoint(checkpoint_folder)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The Trainer's log, with ``padding_efficiency`` and ``real_tokens_per_second`` in training logs."""
        stats = self.padding_stats
        if stats is not None:
            stats.update_logs(logs)
        super().log(logs, start_time)


def _returns_seq_idx(model: Any) -> bool:
    """Whether a token classifier returns each packed batch's ``seq_idx`` with its logits itself: DynMask's, and a
    stock one on ``dynmask_varlen`` (:mod:`hf_dynmask.modeling.stock`)."""
    if isinstance(model, DynMaskForTokenClassification):
        return True
    on_varlen = getattr(getattr(model, "config", None), "_attn_implementation", None) == ATTN_IMPLEMENTATION
    return on_varlen and head_of(model) == "token-classification"


def _is_datasets_dataset(dataset: Any) -> bool:
    module = sys.modules.get("datasets")
    return module is not None and isinstance(dataset, module.Dataset)

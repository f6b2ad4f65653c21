"""Trainer integration: token-budget batches, padding statistics, pre-flight checks, evaluation and offline metrics.

Uses :mod:`hf_dynmask.modeling` and :mod:`hf_dynmask.data`; nothing below imports it.

    trainer.py      DynMaskTrainer, DynMaskTrainingArguments
    callbacks.py    PaddingStatsCallback, SetEpochCallback
    checks.py       check_packed_support, check_collator_for_model, collator_for_model, collator_mode,
                    check_training_labels
    evaluation.py   compute_metrics factories that regroup packed predictions per example
    metrics/        offline evaluate modules (accuracy, f1, seqeval, squad)
"""

from .callbacks import PaddingStatsCallback, SetEpochCallback
from .checks import check_collator_for_model, check_packed_support, collator_for_model, collator_mode
from .trainer import DynMaskTrainer, DynMaskTrainingArguments

__all__ = [
    "DynMaskTrainer",
    "DynMaskTrainingArguments",
    "PaddingStatsCallback",
    "SetEpochCallback",
    "check_collator_for_model",
    "check_packed_support",
    "collator_for_model",
    "collator_mode",
]

"""The tasks hf_dynmask knows, one record each: what its collator reads, what a training set must label, what the
Trainer gathers for the metrics, and how a model card names the model.

Every module that needs a fact about a task reads it from the task's :class:`Task` in :data:`TASKS`:

    make_collator (collators.py)        the collator class, the label keys a feature may carry
    prepare_dataset (prepare.py)        the tasks it prepares, the raw columns each needs and reads
    DynMaskTrainer (training/)          the label columns a training set needs, the dataset columns to keep, the
                                        label names evaluation gathers
    model cards (sharing/model_card.py) pipeline tag, Auto class, DynMask class

Records hold facts, not code: the collator class is named here, not imported (``collators.py`` imports this module
and resolves the name), and ``prepare.py`` keeps each task's tokenizing function beside the others, keyed by the
task's name (``tests/data/test_tasks.py`` prepares and collates every task from its record).

>>> TASKS["token-classification"].label_names("packed"), TASKS["token-classification"].label_names("dynamic")
(['labels', 'seq_idx'], ['labels'])
>>> get_task("token-clasification")  # doctest: +ELLIPSIS
Traceback (most recent call last):
ValueError: task must be one of [...], got 'token-clasification'; did you mean 'token-classification'?
"""

from __future__ import annotations

from dataclasses import dataclass

from ..modeling.configuration_dynmask import unknown_choice

__all__ = ["TASKS", "ModelCardNames", "Task", "get_task"]


@dataclass(frozen=True)
class ModelCardNames:
    """How the Hub and transformers name the model of a task (for model cards)."""

    pipeline_tag: str  # the Hub's pipeline tag, e.g. "fill-mask"
    auto_class: str  # the transformers Auto class that loads it, e.g. "AutoModelForMaskedLM"
    model_class: str  # the DynMask class it loads as, e.g. "DynMaskForMaskedLM"


@dataclass(frozen=True)
class Task:
    """Everything hf_dynmask knows about one task."""

    name: str
    #: Class name, in :mod:`hf_dynmask.data.collators`, of the task's collator (what ``make_collator`` builds).
    collator: str
    #: Per-example keys the collator reads besides ``input_ids`` and ``attention_mask``, labels included.
    feature_columns: tuple[str, ...]
    #: Label keys a feature may carry (the first one present wins; without any the batch is collated for inference).
    #: Empty when the collator makes the labels (masked-lm) or always needs them (seq2seq's target ``labels``).
    label_keys: tuple[str, ...]
    #: Label columns a training set must carry, any one of them; empty when the collator makes the labels.
    training_labels: tuple[str, ...]
    #: ``TrainingArguments.label_names`` that make the Trainer gather what evaluation needs, padded batches.
    eval_label_names: tuple[str, ...]
    #: The same for packed batches, where they differ (token classification also needs the boundaries).
    packed_eval_label_names: tuple[str, ...] | None
    #: Raw-column roles ``prepare_dataset`` needs (renamed with ``columns={role: column}``).
    prepare_roles: tuple[str, ...]
    #: Roles it also reads when present (labels, the second text of a pair, the target).
    optional_prepare_roles: tuple[str, ...]
    #: Model-card names; None where model cards do not cover the task (their template describes the encoder family).
    model_card: ModelCardNames | None

    def label_names(self, mode: str) -> list[str]:
        """The ``TrainingArguments.label_names`` for evaluating batches of ``mode`` (static, dynamic, packed)."""
        if mode == "packed" and self.packed_eval_label_names is not None:
            return list(self.packed_eval_label_names)
        return list(self.eval_label_names)


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            name="sequence-classification",
            collator="SequenceClassificationCollator",
            feature_columns=("token_type_ids", "labels", "label"),
            label_keys=("labels", "label"),
            training_labels=("labels", "label"),
            eval_label_names=("labels",),
            packed_eval_label_names=None,
            prepare_roles=("text",),
            optional_prepare_roles=("text_pair", "label"),
            model_card=ModelCardNames(
                "text-classification", "AutoModelForSequenceClassification", "DynMaskForSequenceClassification"
            ),
        ),
        Task(
            name="token-classification",
            collator="TokenClassificationCollator",
            feature_columns=("token_type_ids", "labels"),
            label_keys=("labels",),
            training_labels=("labels",),
            eval_label_names=("labels",),
            packed_eval_label_names=("labels", "seq_idx"),
            prepare_roles=("tokens",),
            optional_prepare_roles=("tags",),
            model_card=ModelCardNames(
                "token-classification", "AutoModelForTokenClassification", "DynMaskForTokenClassification"
            ),
        ),
        Task(
            name="question-answering",
            collator="QuestionAnsweringCollator",
            feature_columns=("token_type_ids", "start_positions", "end_positions"),
            label_keys=("start_positions",),
            training_labels=("start_positions",),
            eval_label_names=("start_positions", "end_positions"),
            packed_eval_label_names=None,
            prepare_roles=("question", "context"),
            optional_prepare_roles=("answers",),
            model_card=ModelCardNames(
                "question-answering", "AutoModelForQuestionAnswering", "DynMaskForQuestionAnswering"
            ),
        ),
        Task(
            name="masked-lm",
            collator="MaskedLMCollator",
            feature_columns=("token_type_ids", "special_tokens_mask", "word_ids"),
            label_keys=(),
            training_labels=(),
            eval_label_names=("labels",),
            packed_eval_label_names=None,
            prepare_roles=("text",),
            optional_prepare_roles=(),
            model_card=ModelCardNames("fill-mask", "AutoModelForMaskedLM", "DynMaskForMaskedLM"),
        ),
        Task(
            name="causal-lm",
            collator="CausalLMCollator",
            feature_columns=("token_type_ids", "labels"),
            label_keys=("labels",),
            training_labels=(),
            eval_label_names=("labels",),
            packed_eval_label_names=None,
            prepare_roles=("text",),
            optional_prepare_roles=(),
            model_card=ModelCardNames("text-generation", "AutoModelForCausalLM", "DynMaskForCausalLM"),
        ),
        Task(
            name="seq2seq",
            collator="Seq2SeqCollator",
            feature_columns=("token_type_ids", "labels"),
            label_keys=(),
            training_labels=("labels",),
            eval_label_names=("labels",),
            packed_eval_label_names=None,
            prepare_roles=("source",),
            optional_prepare_roles=("target",),
            model_card=None,
        ),
    )
}


def get_task(name: str) -> Task:
    """The record of task ``name``; ``ValueError`` naming the tasks (and the closest one) for any other name."""
    if not isinstance(name, str) or name not in TASKS:
        raise ValueError(unknown_choice("task", name, list(TASKS)))
    return TASKS[name]

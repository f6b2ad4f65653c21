"""Model cards for DynMask models, filled from a training run.

A :class:`TrainingSummary` holds what a run measured and how it was set up: the task, the base checkpoint, the batch
layout (static / dynamic padding or packing), the model's ``masking``, the MLM masking style, token totals from which
the padding efficiency and real tokens per second follow, evaluation results, and the installed framework versions.
:func:`make_model_card` turns it into a :class:`huggingface_hub.ModelCard` (YAML metadata through
:class:`~huggingface_hub.ModelCardData`, evaluation results as a ``model-index`` of
:class:`~huggingface_hub.EvalResult`), rendered from the Jinja template ``hf_dynmask/sharing/templates/model_card.md``.

A Trainer callback fills it from a dict of totals with :meth:`TrainingSummary.from_totals`:

>>> summary = TrainingSummary.from_totals(
...     {"real_tokens": 6000, "padded_tokens": 8000, "train_runtime": 2.5, "eval_accuracy": 0.9},
...     model_name="user/tiny-dynmask", task="sequence-classification", mode="dynamic", masking="dynamic",
...     eval_dataset="banking77", versions=FrameworkVersions("5.0", "2.4", "0.1.0", None),
... )
>>> summary.padding_efficiency, summary.real_tokens_per_second
(0.75, 2400.0)
>>> summary.eval_results
(EvalMetric(name='accuracy', value=0.9, dataset='banking77', split='validation', dataset_name=None, config=None),)

Offline, the metadata is checked by parsing it back (``ModelCard(str(card)).data``); the Hub's own check
(``ModelCard.validate``) needs the network.
"""

from __future__ import annotations

import importlib.metadata
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..data.collators import MODES, Mode
from ..data.tasks import TASKS as TASK_RECORDS
from ..data.tasks import ModelCardNames

#: The template rendered by :func:`make_model_card`, shipped as package data.
DEFAULT_TEMPLATE = Path(__file__).resolve().parent / "templates" / "model_card.md"

Task = Literal["masked-lm", "causal-lm", "sequence-classification", "token-classification", "question-answering"]
Masking = Literal["static", "dynamic"]
MASKINGS: tuple[str, ...] = typing.get_args(Masking)


#: How the Hub and transformers name a task's model (pipeline tag, Auto class, DynMask class).
TaskInfo = ModelCardNames

#: The tasks model cards cover, with their names: every task whose record (hf_dynmask.data.tasks) has model-card names.
TASKS: dict[str, TaskInfo] = {
    name: record.model_card for name, record in TASK_RECORDS.items() if record.model_card is not None
}

MODE_TEXT = {
    "static": "static padding (every batch padded to a fixed length)",
    "dynamic": "dynamic padding (every batch padded to its longest sequence)",
    "packed": "sequence packing (sequences laid end to end in one row, attention kept inside each sequence)",
}
MASKING_TEXT = {
    "static": "padding positions are computed and masked out, as in classic BERT",
    "dynamic": "padding is removed before the embeddings; every layer runs on real tokens only",
}
MLM_MASKING_TEXT = {
    "static": "static (BERT): each example keeps a fixed mask per duplicate",
    "dynamic": "dynamic (RoBERTa): a new mask is drawn every time an example is batched",
}

#: ``eval_*`` keys of Trainer metrics that describe the evaluation run, not the model.
_EVAL_RUN_KEYS = ("runtime", "samples_per_second", "steps_per_second", "epoch")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class FrameworkVersions:
    """Versions of the libraries a model was trained with (``None``: not installed)."""

    transformers: str
    torch: str
    hf_dynmask: str
    datasets: str | None

    @classmethod
    def installed(cls) -> FrameworkVersions:
        """The versions installed in this environment."""
        return cls(
            transformers=_version("transformers") or "unknown",
            torch=_version("torch") or "unknown",
            hf_dynmask=_version("hf-dynmask") or "unknown",
            datasets=_version("datasets"),
        )


@dataclass(frozen=True)
class EvalMetric:
    """One evaluation result: ``value`` of metric ``name`` on ``split`` of ``dataset`` (a Hub dataset id)."""

    name: str = field(metadata={"help": "Metric id, e.g. 'accuracy', 'f1', 'exact_match', 'loss'."})
    value: float = field(metadata={"help": "The measured value."})
    dataset: str = field(metadata={"help": "Dataset id on the Hub, e.g. 'banking77'."})
    split: str = field(default="validation", metadata={"help": "Dataset split evaluated."})
    dataset_name: str | None = field(default=None, metadata={"help": "Readable dataset name; defaults to the id."})
    config: str | None = field(default=None, metadata={"help": "Dataset configuration, if any."})

    def __post_init__(self) -> None:
        if not self.name or not self.dataset:
            raise ValueError(
                f"an EvalMetric needs a metric name and a dataset id, got {self.name!r} / {self.dataset!r}"
            )


@dataclass(frozen=True)
class TrainingSummary:
    """What a training run of a DynMask model did and measured; the input of :func:`make_model_card`.

    Token totals are over the whole run: ``real_tokens`` the tokens of the examples, ``padded_tokens`` the size of
    the inputs the model computed, padding included (``hf_dynmask.TokenCounts`` summed over batches; equal
    to ``real_tokens`` for packed batches). ``train_runtime`` is Trainer's metric of that name, in seconds.
    """

    model_name: str = field(metadata={"help": "Repository id (user/name) or name of the trained model."})
    task: Task = field(metadata={"help": f"Training task, one of {list(TASKS)}."})
    mode: Mode = field(metadata={"help": "Batch layout of the collator: static, dynamic (padding) or packed."})
    masking: Masking = field(metadata={"help": "The model's config.masking: how padded batches are computed."})
    real_tokens: int = field(metadata={"help": "Real (non-padding) input tokens seen in training."})
    padded_tokens: int = field(metadata={"help": "Input tokens computed in training, padding included."})
    train_runtime: float = field(metadata={"help": "Training time in seconds."})
    base_model: str | None = field(default=None, metadata={"help": "Checkpoint the training started from."})
    mlm_masking: Masking | None = field(
        default=None, metadata={"help": "Masked-LM only: static (BERT) or dynamic (RoBERTa) token masking."}
    )
    datasets: tuple[str, ...] = field(default=(), metadata={"help": "Training dataset ids."})
    eval_results: tuple[EvalMetric, ...] = field(default=(), metadata={"help": "Evaluation results."})
    train_steps: int | None = field(default=None, metadata={"help": "Optimizer steps."})
    train_loss: float | None = field(default=None, metadata={"help": "Mean training loss."})
    license: str = field(default="apache-2.0", metadata={"help": "License id of the model (a Hub license id)."})
    language: str | None = field(default="en", metadata={"help": "Language code of the training data."})
    versions: FrameworkVersions = field(
        default_factory=FrameworkVersions.installed, metadata={"help": "Framework versions (default: installed)."}
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "datasets", tuple(self.datasets))
        object.__setattr__(self, "eval_results", tuple(self.eval_results))
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; DynMask model cards cover {list(TASKS)}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {list(MODES)} (the collator's mode)")
        if self.masking not in MASKINGS:
            raise ValueError(f"unknown masking {self.masking!r}; choose one of {list(MASKINGS)} (config.masking)")
        if self.task == "masked-lm" and self.mlm_masking not in MASKINGS:
            raise ValueError(f"task='masked-lm' needs mlm_masking, one of {list(MASKINGS)}, got {self.mlm_masking!r}")
        if self.task != "masked-lm" and self.mlm_masking is not None:
            raise ValueError(f"mlm_masking applies to task='masked-lm' only; leave it None for {self.task!r}")
        if self.real_tokens < 1 or self.padded_tokens < self.real_tokens:
            raise ValueError(
                f"need 1 <= real_tokens <= padded_tokens, got real_tokens={self.real_tokens}, "
                f"padded_tokens={self.padded_tokens} (padded_tokens counts padding too)"
            )
        if not self.train_runtime > 0:
            raise ValueError(f"train_runtime must be > 0 seconds, got {self.train_runtime}")

    @property
    def padding_efficiency(self) -> float:
        """Fraction of computed input tokens that were real: ``real_tokens / padded_tokens`` (1.0 when packed)."""
        return self.real_tokens / self.padded_tokens

    @property
    def real_tokens_per_second(self) -> float:
        """Real (non-padding) tokens trained on per second of ``train_runtime``."""
        return self.real_tokens / self.train_runtime

    @classmethod
    def from_totals(
        cls,
        totals: Mapping[str, Any],
        *,
        eval_dataset: str | None = None,
        eval_split: str = "validation",
        **fields: Any,
    ) -> TrainingSummary:
        """A summary from a run's totals plus the set-up ``fields`` (``model_name``, ``task``, ``mode``, ...).

        Read from ``totals``: ``real_tokens``, ``padded_tokens``, ``train_runtime`` (required); ``train_steps`` or
        Trainer's ``global_step``, ``train_loss`` (optional); every ``eval_<metric>`` key of Trainer's evaluation
        metrics except ``eval_runtime`` / ``eval_*_per_second`` / ``eval_epoch`` becomes an :class:`EvalMetric` on
        ``eval_dataset`` / ``eval_split`` (appended to ``fields["eval_results"]``). Other keys are ignored;
        ``fields`` take precedence over ``totals``.
        """
        missing = [key for key in ("real_tokens", "padded_tokens", "train_runtime") if key not in totals]
        if missing:
            raise ValueError(
                f"totals lack {missing}: real_tokens and padded_tokens are hf_dynmask.token_counts summed "
                "over the training batches, train_runtime the training time in seconds"
            )
        values: dict[str, Any] = {
            "real_tokens": int(totals["real_tokens"]),
            "padded_tokens": int(totals["padded_tokens"]),
            "train_runtime": float(totals["train_runtime"]),
        }
        steps = totals.get("train_steps", totals.get("global_step"))
        if steps is not None:
            values["train_steps"] = int(steps)
        if totals.get("train_loss") is not None:
            values["train_loss"] = float(totals["train_loss"])
        metrics = {
            key.removeprefix("eval_"): float(value)
            for key, value in totals.items()
            if key.startswith("eval_") and not key.removeprefix("eval_").endswith(_EVAL_RUN_KEYS)
        }
        if metrics and eval_dataset is None:
            raise ValueError(f"totals hold evaluation metrics {sorted(metrics)}: pass eval_dataset= (a dataset id)")
        evaluated = tuple(EvalMetric(name, value, eval_dataset, eval_split) for name, value in metrics.items())
        values["eval_results"] = tuple(fields.pop("eval_results", ())) + evaluated
        return cls(**{**values, **fields})


def _number(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}f}"


def card_data(summary: TrainingSummary) -> ModelCardData:
    """The YAML metadata of the card: license, library, tags, pipeline tag, base model, datasets, model-index."""
    info = TASKS[summary.task]
    eval_results = [
        EvalResult(
            task_type=info.pipeline_tag,
            dataset_type=metric.dataset,
            dataset_name=metric.dataset_name or metric.dataset,
            dataset_config=metric.config,
            dataset_split=metric.split,
            metric_type=metric.name,
            metric_value=metric.value,
        )
        for metric in summary.eval_results
    ]
    layout_tag = {"static": "static-padding", "dynamic": "dynamic-padding", "packed": "sequence-packing"}[summary.mode]
    metric_names = list(dict.fromkeys(metric.name for metric in summary.eval_results))
    return ModelCardData(
        model_name=summary.model_name,
        base_model=summary.base_model,
        datasets=list(summary.datasets) or None,
        language=summary.language,
        license=summary.license,
        library_name="transformers",
        pipeline_tag=info.pipeline_tag,
        tags=["hf_dynmask", "dynmask", "custom_code", layout_tag],
        metrics=metric_names or None,
        eval_results=eval_results or None,
    )


def template_variables(summary: TrainingSummary, description: str | None = None) -> dict[str, Any]:
    """The variables :func:`make_model_card` renders the template with; numbers already formatted."""
    info = TASKS[summary.task]
    versions = summary.versions
    return {
        "model_name": summary.model_name,
        "description": description,
        "task": summary.task,
        "pipeline_tag": info.pipeline_tag,
        "auto_class": info.auto_class,
        "model_class": info.model_class,
        "base_model": summary.base_model,
        "datasets": list(summary.datasets),
        "mode": summary.mode,
        "mode_text": MODE_TEXT[summary.mode],
        "masking": summary.masking,
        "masking_text": MASKING_TEXT[summary.masking],
        "mlm_masking_text": None if summary.mlm_masking is None else MLM_MASKING_TEXT[summary.mlm_masking],
        "padding_efficiency": f"{summary.padding_efficiency:.1%}",
        "real_tokens": f"{summary.real_tokens:,}",
        "padded_tokens": f"{summary.padded_tokens:,}",
        "real_tokens_per_second": f"{summary.real_tokens_per_second:,.1f}",
        "train_runtime": f"{summary.train_runtime:,.1f}",
        "train_steps": None if summary.train_steps is None else f"{summary.train_steps:,}",
        "train_loss": None if summary.train_loss is None else _number(summary.train_loss),
        "eval_rows": [
            {
                "dataset": metric.dataset_name or metric.dataset,
                "split": metric.split,
                "metric": metric.name,
                "value": _number(metric.value),
            }
            for metric in summary.eval_results
        ],
        "versions": {
            "Transformers": versions.transformers,
            "PyTorch": versions.torch,
            "hf_dynmask": versions.hf_dynmask,
            "Datasets": versions.datasets or "not installed",
        },
    }


def make_model_card(
    summary: TrainingSummary, *, description: str | None = None, template_path: str | Path | None = None
) -> ModelCard:
    """The model card of a trained DynMask model.

    Args:
        summary: the run (see :class:`TrainingSummary`).
        description: a paragraph placed under the title.
        template_path: a Jinja template in the form of ``sharing/templates/model_card.md`` (the default); it gets
            ``card_data`` (the YAML) and the variables of :func:`template_variables`.
    """
    path = Path(template_path) if template_path is not None else DEFAULT_TEMPLATE
    if not path.is_file():
        raise ValueError(
            f"model card template {path} not found; pass template_path= (see hf_dynmask/sharing/templates)"
        )
    return ModelCard.from_template(
        card_data(summary), template_path=str(path), **template_variables(summary, description)
    )


def write_model_card(model_dir: str | Path, summary: TrainingSummary, **card_kwargs: Any) -> Path:
    """Write :func:`make_model_card`'s card as ``model_dir/README.md`` (the Hub's card file); returns the path."""
    path = Path(model_dir) / "README.md"
    make_model_card(summary, **card_kwargs).save(path)
    return path


__all__ = [
    "DEFAULT_TEMPLATE",
    "TASKS",
    "EvalMetric",
    "FrameworkVersions",
    "TaskInfo",
    "TrainingSummary",
    "card_data",
    "make_model_card",
    "template_variables",
    "write_model_card",
]

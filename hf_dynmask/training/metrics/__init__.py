"""Evaluation metrics that load offline: ``accuracy``, ``f1``, ``seqeval`` (entity F1) and ``squad`` (EM / F1).

``evaluate.load("accuracy")`` fetches the metric script from the Hugging Face Hub, which fails without network (and
``HF_HUB_OFFLINE=1`` does not help on a machine that never cached it). hf_dynmask therefore ships its own metric
scripts, one folder per metric following evaluate's layout (``metrics/<name>/<name>.py``, an ``evaluate.Metric``
subclass), written for this package in numpy and the standard library (no scikit-learn, no seqeval). Load them with
:func:`load`, or with ``evaluate.load(str(metric_path("f1")))``; both only read local files.

The scoring functions are plain functions of those scripts, importable without going through evaluate's loader (this
is what :mod:`hf_dynmask.training.evaluation` uses):

    from hf_dynmask.training.metrics.accuracy.accuracy import accuracy_score
    from hf_dynmask.training.metrics.f1.f1 import f1_score
    from hf_dynmask.training.metrics.seqeval.seqeval import entity_chunks, entity_scores
    from hf_dynmask.training.metrics.squad.squad import normalize_answer, squad_scores

>>> metric_path("seqeval").name
'seqeval.py'
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...modeling.configuration_dynmask import did_you_mean

if TYPE_CHECKING:
    import evaluate

__all__ = ["METRIC_NAMES", "load", "metric_path"]

logger = logging.getLogger(__name__)

METRIC_NAMES: tuple[str, ...] = ("accuracy", "f1", "seqeval", "squad")
_HERE = Path(__file__).resolve().parent
_FALLBACK_MODULES_NAME = "hf_dynmask_evaluate_modules"


def metric_path(name: str) -> Path:
    """The script of the shipped metric ``name`` (``.../metrics/<name>/<name>.py``)."""
    if name not in METRIC_NAMES:
        hint = did_you_mean(name, METRIC_NAMES).removeprefix("; ")
        raise ValueError(
            f"unknown metric {name!r}{f' ({hint})' if hint else ''}; hf_dynmask ships {list(METRIC_NAMES)}. For "
            "another metric use evaluate.load('/path/to/script.py') with a local script (the Hub is not reachable "
            "offline)"
        )
    return _HERE / name / f"{name}.py"


def _writable(path: Path) -> bool:
    """Whether ``path`` exists and is writable, or could be created under its nearest existing parent."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate.is_dir() and os.access(candidate, os.W_OK | os.X_OK)
    return False


def _dynamic_modules_path() -> str:
    """Where evaluate copies metric scripts before importing them: its own cache when writable, else a temp folder.

    evaluate imports a metric script from a copy under ``HF_MODULES_CACHE`` (``~/.cache/huggingface/modules``).
    When that is not writable (read-only home, sandbox), the copy goes to ``$TMPDIR/hf_dynmask_evaluate_modules``
    under its own package name, so it cannot shadow evaluate's ``evaluate_modules`` package.
    """
    from evaluate import config
    from evaluate.loading import init_dynamic_modules

    if _writable(Path(config.HF_MODULES_CACHE)):
        return init_dynamic_modules()
    fallback = Path(tempfile.gettempdir()) / _FALLBACK_MODULES_NAME
    logger.info("evaluate's module cache %s is not writable; using %s", config.HF_MODULES_CACHE, fallback)
    return init_dynamic_modules(name=_FALLBACK_MODULES_NAME, hf_modules_cache=fallback)


def load(name: str, **kwargs: Any) -> evaluate.EvaluationModule:
    """Load the shipped metric ``name`` (one of :data:`METRIC_NAMES`) from its local script, without network.

    ``kwargs`` go to the metric's constructor as with ``evaluate.load`` (``config_name``, ``keep_in_memory``,
    ``cache_dir``, ``num_process``, ``process_id``, ``experiment_id``, ...). When ``cache_dir`` is not given and
    evaluate's metrics cache (``HF_METRICS_CACHE``, where ``add_batch`` stores predictions) is not writable, the
    temp folder is used instead; ``keep_in_memory=True`` avoids the disk altogether (single process only).

    Raises ``ValueError`` for a name that is not shipped.
    """
    path = metric_path(name)
    from evaluate import config
    from evaluate.loading import evaluation_module_factory, import_main_class

    module = evaluation_module_factory(str(path), dynamic_modules_path=_dynamic_modules_path())
    metric_class = import_main_class(module.module_path)
    if metric_class is None:  # pragma: no cover - a broken shipped script
        raise ValueError(f"{path} defines no evaluate.EvaluationModule subclass")
    if kwargs.get("cache_dir") is None and not _writable(Path(config.HF_METRICS_CACHE)):
        kwargs["cache_dir"] = str(Path(tempfile.gettempdir()) / "hf_dynmask_evaluate_cache")
    metric = metric_class(hash=module.hash, **kwargs)
    metric.download_and_prepare()
    return metric

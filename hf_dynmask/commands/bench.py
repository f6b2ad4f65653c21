"""Side-by-side speed of batch layouts on one encoder: transformers' padding strategies against hf_dynmask's.

The library side of ``hf-dynmask bench`` (and of ``benchmarks/bench_model.py``). One model directory (a BERT,
RoBERTa or DynMask checkpoint) and one list of texts; every method runs the same model weights:

    hf_static               stock transformers model, ``DataCollatorWithPadding(padding="max_length")``, random order
    hf_dynamic_random       stock model, ``DataCollatorWithPadding`` (pad to the longest of the batch), random order
    hf_length_grouped       stock model, ``DataCollatorWithPadding``, ``LengthGroupedSampler`` order
                            (``TrainingArguments(group_by_length=True)``)
    hf_sorted               stock model, ``DataCollatorWithPadding``, the whole data set sorted by length (not a
                            training order: the least padding fixed-size batches can have)
    hf_flattening           stock model, ``DataCollatorWithFlattening(return_flash_attn_kwargs=True)``: only where it
                            is correct (see :func:`flattening_plan`); otherwise listed as skipped with the reason
    dynmask_static_random   hf_dynmask collator padding to ``max_length``, DynMask model with ``masking="dynamic"``
                            (strips the padding inside the model): the data pipeline of ``hf_static`` unchanged
    dynmask_dynamic_random  hf_dynmask dynamic-padding collator, DynMask model
    dynmask_packed_random   hf_dynmask packed collator (the same batches, back to back in one row), DynMask model

Two steps are timed: ``inference`` (the base model, ``torch.inference_mode``) and ``train`` (sequence classification
with a two-class head, forward + backward; dropout on). Each method orders the whole data set as it would for an epoch
and the same stratified sample of its full batches is timed (``batches`` batches at evenly spaced quantiles of real
tokens per batch). Batches are collated up front, so only the model is timed. Methods are interleaved round by round
and each keeps its best round, so machine noise hits all of them alike.

With ``compile=True`` every method but ``hf_flattening`` is also timed under ``torch.compile`` (``<method>+compile``,
same model object compiled once per family): its warm-up runs every timed batch once, so compilation (reported as
``compile_seconds``) and the recompiles new shapes cause stay out of the timing, and ``speedup_vs_eager`` compares it
with the eager method; ``compile_options`` go to inductor as ``torch.compile(..., options=...)`` (on CPU,
``{"fallback_random": True}`` runs dropout with eager's random ops instead of inductor's generated ones, which a CPU
training step pays for: BENCHMARKS.md, "torch.compile on CPU"). With ``sentence_transformers=True`` the model
also encodes the timed examples as a ``SentenceTransformer``, stock against DynMask
(:func:`~hf_dynmask.integrations.dynmask_sentence_transformer`), in sentence-transformers' own length-sorted
batches and in the random batches of the other methods.

Reported per method: real tokens per second, the ratio to ``hf_static``, the fraction of the FLOP-proportional limit
(:func:`limit_speedup`), the padding fraction of its batches, the peak memory rise over its timed batches (CUDA: the
allocator's peak; CPU: the resident set size sampled every millisecond, after freed memory is handed back to the OS,
Linux only) and the largest difference to ``hf_dynamic_random`` on one fixed batch (hidden states at real tokens for
inference, the loss in eval mode for training): a check that each layout computes the same thing.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from ..data.collators import make_collator, token_counts
from ..modeling.configuration_dynmask import DynMaskConfig, did_you_mean
from ..training.allocator import loaded_allocator
from .atomic import atomic_path
from .padding_waste import batch_orders
from .timing import (
    peak_memory_mib,
    portable_path,
    progress_bar,
    run_once,
    source_commit,
    stratified_batches,
    synchronize,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "MODES",
    "SUPPORTED_MODEL_TYPES",
    "BenchSettings",
    "FlatteningPlan",
    "check_max_length",
    "Method",
    "ModelPair",
    "allocator",
    "check_model_dir",
    "cpu_model",
    "dynamo_totals",
    "environment",
    "flattening_plan",
    "flops_per_sequence",
    "limit_speedup",
    "load_models",
    "make_features",
    "markdown",
    "plot_bench",
    "resolve_device",
    "run_benchmark",
    "run_sentence_transformers",
]

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "dynmask")
MODES = ("inference", "train")
REFERENCE = "hf_dynamic_random"
BASELINE = "hf_static"
COMPILED = "+compile"  # suffix of a method's torch.compile twin


@dataclass(frozen=True)
class Method:
    """One benchmarked method: which model family, which batch layout, which example order."""

    name: str
    family: Literal["hf", "dynmask"]
    layout: Literal["static", "dynamic", "packed", "flattening"]
    order: Literal["random", "grouped", "sorted"]
    description: str


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("hf_static", "hf", "static", "random", "transformers, DataCollatorWithPadding(padding='max_length')"),
        Method("hf_dynamic_random", "hf", "dynamic", "random", "transformers, DataCollatorWithPadding, random order"),
        Method(
            "hf_length_grouped", "hf", "dynamic", "grouped", "transformers, DataCollatorWithPadding, group_by_length"
        ),
        Method("hf_sorted", "hf", "dynamic", "sorted", "transformers, DataCollatorWithPadding, fully length-sorted"),
        Method("hf_flattening", "hf", "flattening", "random", "transformers, DataCollatorWithFlattening"),
        Method(
            "dynmask_static_random",
            "dynmask",
            "static",
            "random",
            "hf_dynmask static collator (pad to max_length), DynMask model strips the padding",
        ),
        Method("dynmask_dynamic_random", "dynmask", "dynamic", "random", "hf_dynmask dynamic padding, DynMask model"),
        Method("dynmask_packed_random", "dynmask", "packed", "random", "hf_dynmask packed rows, DynMask model"),
    )
}
DEFAULT_METHODS = tuple(name for name in METHODS if name != "hf_sorted")


@dataclass(frozen=True)
class BenchSettings:
    """What to run. ``device=None`` picks CUDA when available, else CPU."""

    batch_size: int = 32
    max_length: int = 256
    batches: int = 12
    rounds: int = 3
    seed: int = 0
    modes: tuple[str, ...] = MODES
    methods: tuple[str, ...] = DEFAULT_METHODS
    memory: bool = True
    device: str | None = None
    progress: bool = True
    compile: bool = False  # also time every method (but hf_flattening) under torch.compile
    compile_backend: str = "inductor"
    # torch.compile's ``options`` (inductor settings), e.g. {"fallback_random": True}; empty: inductor's defaults
    compile_options: dict[str, Any] = field(default_factory=dict)
    sentence_transformers: bool = False  # also time SentenceTransformer.encode, stock against DynMask
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in the report's settings, not used

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_length", "batches", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        object.__setattr__(self, "modes", tuple(self.modes))
        object.__setattr__(self, "methods", tuple(self.methods))
        unknown = [m for m in self.modes if m not in MODES]
        if unknown or not self.modes:
            hint = did_you_mean(unknown[0], MODES) if unknown else ""
            raise ValueError(f"unknown mode(s) {unknown}; choose from {list(MODES)}{hint}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            hint = did_you_mean(unknown[0], METHODS) if unknown else ""
            raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}{hint}")
        if BASELINE not in self.methods:
            raise ValueError(f"methods must include {BASELINE!r}: every ratio is taken to it")
        if self.compile_options and not (self.compile and self.compile_backend == "inductor"):
            raise ValueError(
                f"compile_options {self.compile_options} are inductor settings: they need compile=True and "
                f"compile_backend='inductor' (got compile={self.compile}, compile_backend={self.compile_backend!r})"
            )
        resolve_device(self.device)


def resolve_device(name: str | None) -> torch.device:
    """The device ``name`` names, checked to be usable here; ``None``: CUDA when available, else the CPU.

    Raises ``ValueError`` for a name torch does not know (``"tpu"``) or a device this machine or this build of torch
    cannot use (``"cuda"`` on a CPU-only torch, ``"cuda:3"`` with one GPU).
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"unknown device {name!r} ({first}); use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r}: CUDA is not available to this torch ({torch.__version__}, "
                f"built with CUDA {torch.version.cuda}); use --device cpu, or install a CUDA build of torch"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {name!r}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {name!r}: MPS (Apple GPU) is not available here; use --device cpu")
    elif device.type != "cpu":
        try:
            torch.empty(1, device=device)
        except Exception as error:  # each backend raises its own type
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(f"device {name!r} is not usable here ({first}); use --device cpu") from None
    return device


# --------------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------------


class ModelPair(NamedTuple):
    """The same weights as a stock transformers model and as a DynMask model."""

    hf: torch.nn.Module
    dynmask: torch.nn.Module
    model_type: str  # of the directory: bert / roberta / dynmask
    position_start: int  # first position id of every sequence (0 for BERT, padding_idx + 1 for RoBERTa)


def check_model_dir(model_dir: str | Path) -> str:
    """The ``model_type`` of a model directory, checked to be one of :data:`SUPPORTED_MODEL_TYPES`."""
    path = Path(model_dir)
    config_file = path / "config.json"
    if path.exists() and not path.is_dir():
        raise ValueError(f"{str(path)!r} is a file; pass the model's folder (written by save_pretrained)")
    if not path.is_dir():
        raise ValueError(f"model directory {str(path)!r} does not exist; pass a folder written by save_pretrained")
    if not config_file.is_file():
        raise ValueError(f"{str(path)!r} has no config.json; pass a folder written by save_pretrained")
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{config_file} is not valid JSON ({error})") from error
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"unknown model type {model_type!r} in {config_file}: the benchmark compares BERT-style encoders, "
            f"one of {list(SUPPORTED_MODEL_TYPES)}"
        )
    return model_type


def check_max_length(model_dir: str | Path, max_length: int) -> None:
    """Raise ``ValueError`` when sequences of ``max_length`` tokens are longer than the model can number."""
    config = DynMaskConfig.from_pretrained(str(model_dir))
    if max_length > config.max_seqlen:
        raise ValueError(
            f"--max-length {max_length} is longer than the model in {str(model_dir)!r} can number "
            f"(max_position_embeddings={config.max_position_embeddings}: at most {config.max_seqlen} tokens per "
            f"sequence); pass --max-length {config.max_seqlen} or less"
        )


def _renamed(state: dict[str, torch.Tensor], old: str, new: str) -> dict[str, torch.Tensor]:
    return {(new + k[len(old) :] if k.startswith(old) else k): v for k, v in state.items()}


def load_models(model_dir: str | Path, *, train: bool, num_labels: int = 2) -> ModelPair:
    """Load the directory as a stock model and as a DynMask model with identical weights (heads included).

    ``train=False``: base encoders (``BertModel`` / ``RobertaModel`` and ``DynMaskModel``). ``train=True``:
    sequence classification with ``num_labels`` classes; a head missing from the checkpoint is initialised once and
    copied, so both models start equal.
    """
    from transformers import (
        AutoModel,
        AutoModelForSequenceClassification,
        BertConfig,
        BertForSequenceClassification,
        BertModel,
        RobertaConfig,
        RobertaForSequenceClassification,
        RobertaModel,
    )

    model_type = check_model_dir(model_dir)
    path = str(model_dir)
    auto = AutoModelForSequenceClassification if train else AutoModel
    head_kwargs = {"num_labels": num_labels} if train else {}
    if model_type == "dynmask":
        dm_config = DynMaskConfig.from_pretrained(path, masking="dynamic", **head_kwargs)
        dynmask = auto.from_pretrained(path, config=dm_config)
        roberta = dm_config.head_style == "roberta"
        hf_config_cls = RobertaConfig if roberta else BertConfig
        settings = {
            k: v for k, v in dm_config.to_dict().items() if k not in ("model_type", "auto_map", "architectures")
        }
        hf_config = hf_config_cls(**settings)
        hf_config._attn_implementation = "sdpa"
        if train:
            hf = (RobertaForSequenceClassification if roberta else BertForSequenceClassification)(hf_config)
        else:
            hf = (RobertaModel if roberta else BertModel)(hf_config)
        state = dynmask.state_dict()
        hf.load_state_dict(_renamed(state, "bert.", "roberta.") if roberta and train else state, strict=False)
        position_start = dm_config.position_start
    else:
        hf = auto.from_pretrained(path, attn_implementation="sdpa", **head_kwargs)
        dm_config = DynMaskConfig.from_pretrained(path, masking="dynamic", **head_kwargs)
        dynmask = auto.from_pretrained(path, config=dm_config)
        state = hf.state_dict()
        dynmask.load_state_dict(
            _renamed(state, "roberta.", "bert.") if model_type == "roberta" else state, strict=False
        )
        position_start = dm_config.position_start
    _check_same_weights(hf, dynmask)
    return ModelPair(hf, dynmask, model_type, position_start)


def _check_same_weights(hf: torch.nn.Module, dynmask: torch.nn.Module) -> None:
    """Every stock parameter exists in the DynMask model with the same value (``roberta.`` read as ``bert.``)."""
    dynmask_params = dict(dynmask.named_parameters())
    for name, param in hf.named_parameters():
        other = dynmask_params.get(_renamed({name: param}, "roberta.", "bert.").popitem()[0])
        if other is None or other.shape != param.shape or not torch.equal(other, param):
            raise ValueError(
                f"the stock and DynMask models did not load the same weights ({name} differs); is the checkpoint "
                "complete?"
            )


class FlatteningPlan(NamedTuple):
    """Whether ``DataCollatorWithFlattening`` can be benchmarked honestly, and how."""

    attn_implementation: str | None  # the attention to run it with; None: not run
    reason: str


def flattening_plan(train: bool, device: torch.device) -> FlatteningPlan:
    """Decide how (and whether) transformers' flattening collator gives correct results on this set-up.

    A flattened row holds several sequences; the model must keep them apart. On transformers 5.25 BERT's ``sdpa`` and
    ``eager`` masks keep them apart through a dense ``(N, N)`` mask built from the restarting ``position_ids``
    (quadratic in the row length; DistilBERT, ALBERT and ModernBERT build none and mix the sequences: BENCHMARKS.md,
    "Flattened encoder batches"), so the comparison runs the packed attention people use: ``flash_attention_2`` (CUDA,
    flash-attn installed) or hf_dynmask's ``dynmask_varlen`` (any device), both reading ``cu_seq_lens_q`` from
    ``return_flash_attn_kwargs=True``. For training the benchmark uses ``...ForSequenceClassification``, whose head
    pools the first token of each *row*: a flattened row would be scored as one example, so it is not run at all.
    """
    if train:
        return FlatteningPlan(
            None,
            "not run: a stock ...ForSequenceClassification pools the first token of each row, so a flattened row of "
            "several sequences would be scored as one example (hf_dynmask's packed mode pools per sequence)",
        )
    if device.type == "cuda":
        from transformers.utils import is_flash_attn_2_available

        if is_flash_attn_2_available():
            return FlatteningPlan("flash_attention_2", "flash-attn varlen kernels read cu_seq_lens_q")
    return FlatteningPlan(
        "dynmask_varlen",
        "run with attn_implementation='dynmask_varlen' (exact packed attention reading cu_seq_lens_q); on 'sdpa' or "
        "'eager' transformers 5.25 keeps BERT's flattened sequences apart through a dense (N, N) mask, quadratic in "
        "the row length, and does not for DistilBERT, ALBERT or ModernBERT",
    )


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------


def make_features(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[dict[str, Any]]:
    """Tokenize ``texts`` (truncated to ``max_length``, no padding) into features with a dummy two-class ``label``."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    features = []
    for i, ids in enumerate(encoded["input_ids"]):
        feature: dict[str, Any] = {"input_ids": ids, "label": i % 2}
        if "token_type_ids" in encoded:
            feature["token_type_ids"] = encoded["token_type_ids"][i]
        features.append(feature)
    return features


def _collator(method: Method, tokenizer: Any, max_length: int, position_start: int) -> Callable:
    from transformers import DataCollatorWithFlattening, DataCollatorWithPadding

    if method.family == "dynmask":
        options = {"max_length": max_length}
        if method.layout == "packed":
            options["position_start"] = position_start
        return make_collator(tokenizer, "sequence-classification", method.layout, **options)
    if method.layout == "flattening":
        flatten = DataCollatorWithFlattening(return_flash_attn_kwargs=True, position_ids_start=position_start)
        return lambda features: flatten([{"input_ids": f["input_ids"]} for f in features])
    if method.layout == "static":
        pad = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=max_length)
    else:
        pad = DataCollatorWithPadding(tokenizer)

    def hf(features: list[dict[str, Any]]) -> dict[str, Any]:
        keys = ("input_ids", "token_type_ids")
        return pad([{**{k: f[k] for k in keys if k in f}, "labels": f["label"]} for f in features])

    return hf


def _to_device(batch: dict[str, Any], device: torch.device, train: bool, layout: str) -> dict[str, Any]:
    out = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if not train or layout == "flattening":  # flattening's labels are LM labels; the base model takes none
        out.pop("labels", None)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Compilation counts, value checks (timing and memory: .timing)
# --------------------------------------------------------------------------------------------------------------------


def dynamo_totals() -> dict[str, int]:
    """Frames dynamo has compiled (first compiles and recompiles) and graph breaks it has met, so far.

    From dynamo's counters, which only grow: its compilation metrics keep the last 64 compiles only, so their count
    stops moving once a run has compiled that many."""
    from torch._dynamo.utils import counters

    return {"compiles": counters["frames"]["total"], "graph_breaks": sum(counters["graph_break"].values())}


def _real_token_states(output: Any, batch: dict[str, Any]) -> torch.Tensor:
    """``(N, h)`` hidden states of the real tokens, in example order, from a padded or a packed batch."""
    hidden = output.last_hidden_state
    if "attention_mask" in batch:
        return hidden[batch["attention_mask"].bool()]
    return hidden[0]


def _check_value(model: torch.nn.Module, batch: dict[str, Any], train: bool) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        output = model(**batch)
    return output.loss.reshape(1) if train else _real_token_states(output, batch)


# --------------------------------------------------------------------------------------------------------------------
# FLOP limit
# --------------------------------------------------------------------------------------------------------------------


def flops_per_sequence(length: int, hidden: int, intermediate: int, layers: int) -> float:
    """Forward FLOPs of the encoder layers on one sequence of ``length`` tokens (embeddings and heads left out).

    Per layer and token: ``2 * (4 h^2 + 2 h i)`` for the QKV/output projections and the two MLP matrices, plus
    ``4 L h`` for ``QK^T`` and ``PV``.

    >>> flops_per_sequence(1, hidden=2, intermediate=4, layers=1)
    72
    """
    linear = 2 * (4 * hidden * hidden + 2 * hidden * intermediate)
    attention = 4 * length * hidden
    return layers * length * (linear + attention)


def limit_speedup(
    lengths: Sequence[int], max_length: int, hidden: int = 384, intermediate: int = 1536, layers: int = 6
) -> float:
    """``FLOPs(every row at max_length) / FLOPs(real lengths)``: the speed-up of doing real-token work only.

    >>> round(limit_speedup([1, 1], max_length=2, hidden=2, intermediate=4, layers=1), 3)
    2.222
    """
    static = len(lengths) * flops_per_sequence(max_length, hidden, intermediate, layers)
    real = sum(flops_per_sequence(n, hidden, intermediate, layers) for n in lengths)
    return static / real


# --------------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name as ``/proc/cpuinfo`` gives it (Linux), else the processor platform names."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def allocator() -> dict[str, str]:
    """The memory allocator's settings from the environment: a preloaded library (``LD_PRELOAD``: jemalloc,
    tcmalloc; its file name), glibc's ``MALLOC_*`` tunables and PyTorch's ``THP_MEM_ALLOC_ENABLE`` (transparent huge
    pages for CPU allocations of 2 MB or more); and ``loaded``, the replacement allocator actually mapped into the
    process (:func:`~hf_dynmask.training.allocator.loaded_allocator`: one linked in without ``LD_PRELOAD`` too),
    where there is one. Empty for glibc's defaults. Packed batches change size every step, so on CPU the allocator
    moves the timings (BENCHMARKS.md, "The allocator")."""
    found = {name: value for name, value in os.environ.items() if name.startswith("MALLOC_")}
    loaded = loaded_allocator()
    if loaded is not None:
        found["loaded"] = loaded
    if os.environ.get("LD_PRELOAD"):
        found["LD_PRELOAD"] = " ".join(Path(part).name for part in os.environ["LD_PRELOAD"].split())
    if "THP_MEM_ALLOC_ENABLE" in os.environ:
        found["THP_MEM_ALLOC_ENABLE"] = os.environ["THP_MEM_ALLOC_ENABLE"]
    return found


def _installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """What a benchmark ran on, recorded next to its results (every benchmark's JSON, ``"environment"``).

    Keys: ``python``, ``torch``, ``transformers``, ``datasets`` (None where not installed), ``numpy``, ``hf_dynmask``
    (the installed version, None from a bare source tree) and ``hf_dynmask_commit`` (the git checkout this
    hf_dynmask runs from, :func:`~hf_dynmask.commands.timing.source_commit`; None for an installed copy),
    ``platform``, ``cpu_model`` (:func:`cpu_model`), ``processor``, ``cpu_count``, ``pinned_cores`` (the cores the
    process may run on), ``torch_threads``, ``OMP_NUM_THREADS`` (None where unset), ``allocator``
    (:func:`allocator`), ``device``, ``dtype``, and ``gpu`` (its name) on CUDA. Scripts add their own extras.
    """
    import transformers

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": _installed_version("datasets"),
        "numpy": np.__version__,
        "hf_dynmask": _installed_version("hf_dynmask"),
        "hf_dynmask_commit": source_commit(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "pinned_cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "allocator": allocator(),
        "device": str(device),
        "dtype": "float32",
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _descriptions(settings: BenchSettings) -> dict[str, str]:
    descriptions = {name: METHODS[name].description for name in settings.methods}
    if settings.compile:
        for name in settings.methods:
            if METHODS[name].layout != "flattening":
                descriptions[f"{name}{COMPILED}"] = f"{METHODS[name].description}, torch.compile"
    return descriptions


def run_benchmark(
    model_dir: str | Path,
    texts: Sequence[str],
    settings: BenchSettings | None = None,
    *,
    tokenizer: Any | None = None,
    dataset_name: str = "texts",
) -> dict[str, Any]:
    """Benchmark the methods of ``settings`` on ``model_dir`` over ``texts``; returns the report (JSON-ready).

    Report keys: ``environment``, ``model``, ``dataset``, ``flop_limit_speedup``, ``settings``, ``methods``
    (name -> description), ``results`` (mode -> method -> row), ``skipped`` (mode -> method -> reason). A row holds
    ``seconds``, ``real_tokens``, ``real_tokens_per_s``, ``padding_fraction``, ``speedup_vs_static``,
    ``fraction_of_limit``, ``peak_memory_mib`` (None where it cannot be measured) and ``max_abs_diff`` (to
    ``hf_dynamic_random``, None when that method is not run).
    """
    from transformers import AutoTokenizer

    settings = settings or BenchSettings()
    device = resolve_device(settings.device)
    check_model_dir(model_dir)
    check_max_length(model_dir, settings.max_length)
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        except (OSError, ValueError) as error:
            raise ValueError(
                f"no usable tokenizer in {str(model_dir)!r} ({error}); save one next to the model"
            ) from error
    features = make_features(tokenizer, texts, settings.max_length)
    lengths = [len(f["input_ids"]) for f in features]
    if len(features) < settings.batch_size:
        raise ValueError(
            f"{dataset_name} has {len(features)} examples, fewer than batch_size={settings.batch_size}; lower the "
            "batch size or use more data"
        )
    orders = batch_orders(lengths, settings.batch_size, settings.seed)
    sampled = {
        order: stratified_batches(getattr(orders, order), lengths, settings.batch_size, settings.batches)
        for order in ("random", "grouped", "sorted")
    }
    check_batch = list(range(settings.batch_size))

    report: dict[str, Any] = {
        "environment": environment(device),
        "dataset": {
            "name": dataset_name,
            "examples": len(lengths),
            "mean_tokens": float(np.mean(lengths)),
            "padding_fraction_at_max_length": 1 - float(np.mean(lengths)) / settings.max_length,
        },
        "settings": {k: v for k, v in asdict(settings).items() if k != "extra"} | settings.extra,
        "methods": _descriptions(settings),
        "results": {},
        "skipped": {},
    }
    for mode in settings.modes:
        train = mode == "train"
        pair = load_models(model_dir, train=train)
        config = pair.hf.config
        report["model"] = {
            "path": portable_path(model_dir),
            "model_type": pair.model_type,
            "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size,
            "num_hidden_layers": config.num_hidden_layers,
            "vocab_size": config.vocab_size,
        }
        report["flop_limit_speedup"] = limit_speedup(
            lengths, settings.max_length, config.hidden_size, config.intermediate_size, config.num_hidden_layers
        )
        report["results"][mode], report["skipped"][mode] = _run_mode(
            pair, tokenizer, features, sampled, check_batch, settings, train, device
        )
        limit = report["flop_limit_speedup"]
        rows = report["results"][mode]
        for row in rows.values():
            row["speedup_vs_static"] = row["real_tokens_per_s"] / rows[BASELINE]["real_tokens_per_s"]
            row["fraction_of_limit"] = row["speedup_vs_static"] / limit
        del pair
    if settings.sentence_transformers:
        order = sampled["random"]
        report["sentence_transformers"] = run_sentence_transformers(
            model_dir, [[texts[i] for i in batch] for batch in order], settings, device
        )
    return report


def _run_mode(pair, tokenizer, features, sampled, check_batch, settings, train, device):
    plan = flattening_plan(train, device)
    skipped: dict[str, str] = {}
    methods: dict[str, tuple[torch.nn.Module, list[dict[str, Any]], dict[str, Any]]] = {}
    hf = pair.hf.to(device)
    dynmask = pair.dynmask.to(device)
    flat_model = None
    for name in settings.methods:
        method = METHODS[name]
        if method.layout == "flattening":
            if plan.attn_implementation is None:
                skipped[name] = plan.reason
                continue
            flat_model = copy.deepcopy(hf)
            flat_model.set_attn_implementation(plan.attn_implementation)
            model = flat_model
            report_note = {"attn_implementation": plan.attn_implementation, "note": plan.reason}
        else:
            model = hf if method.family == "hf" else dynmask
            report_note = {}
        collate = _collator(method, tokenizer, settings.max_length, pair.position_start)
        batches = [
            _to_device(collate([features[i] for i in idx]), device, train, method.layout)
            for idx in sampled[method.order]
        ]
        check = _to_device(collate([features[i] for i in check_batch]), device, train, method.layout)
        methods[name] = (model, batches, {"check": check, **report_note})

    if settings.compile:
        compiled: dict[int, torch.nn.Module] = {}
        for name in [n for n in methods if METHODS[n].layout != "flattening"]:
            model, batches, extra = methods[name]
            if id(model) not in compiled:
                compiled[id(model)] = torch.compile(
                    model, backend=settings.compile_backend, options=dict(settings.compile_options) or None
                )
            methods[f"{name}{COMPILED}"] = (compiled[id(model)], batches, {**extra, "compiled": True})

    progress = progress_bar(
        len(methods) * (settings.rounds + 1 + int(settings.memory)),
        settings.progress,
        "train" if train else "inference",
    )
    warm_up: dict[str, float] = {}
    compile_stats: dict[str, dict[str, int]] = {}
    with progress:
        for name, (model, batches, extra) in methods.items():
            # Compiled models see every timed batch once here, so compiling stays out of the timing.
            before = dynamo_totals()
            warm_up[name] = run_once(model, batches if extra.get("compiled") else batches[:1], train, device)
            if extra.get("compiled"):
                compile_stats[name] = {k: v - before[k] for k, v in dynamo_totals().items()}
            progress.update()
        timing_start = dynamo_totals()
        best = dict.fromkeys(methods, float("inf"))
        for _ in range(settings.rounds):
            for name, (model, batches, _) in methods.items():
                best[name] = min(best[name], run_once(model, batches, train, device))
                progress.update()
        compiles_while_timing = dynamo_totals()["compiles"] - timing_start["compiles"]
        memory: dict[str, float | None] = dict.fromkeys(methods)
        if settings.memory:
            for name, (model, batches, _) in methods.items():
                memory[name] = peak_memory_mib(model, batches, train, device)
                progress.update()

    reference = None
    if REFERENCE in methods:
        model, _, extra = methods[REFERENCE]
        reference = _check_value(model, extra["check"], train)
    rows: dict[str, dict[str, Any]] = {}
    for name, (model, batches, extra) in methods.items():
        counts = [token_counts(b) for b in batches]
        real = sum(c.real for c in counts)
        padded = sum(c.padded for c in counts)
        diff = None
        if reference is not None:
            diff = float((_check_value(model, extra["check"], train) - reference).abs().max())
        rows[name] = {
            "seconds": best[name],
            "cpu_seconds": best[name].cpu,  # CPU time of the round with the best wall time (rounds >= 1)
            "real_tokens": real,
            "real_tokens_per_s": real / best[name],
            "real_tokens_per_cpu_s": real / best[name].cpu,
            "padding_fraction": 1 - real / padded,
            "peak_memory_mib": memory[name],
            "max_abs_diff": diff,
            **{k: v for k, v in extra.items() if k not in ("check", "compiled")},
        }
        if extra.get("compiled"):
            rows[name]["compile_seconds"] = warm_up[name]
            rows[name].update(compile_stats[name])  # frames compiled and graph breaks during its warm-up
            rows[name]["compiles_while_timing"] = compiles_while_timing  # all compiled methods together
    for name, row in rows.items():
        if name.endswith(COMPILED):
            row["speedup_vs_eager"] = row["real_tokens_per_s"] / rows[name.removesuffix(COMPILED)]["real_tokens_per_s"]
    if "hf_flattening" in settings.methods and plan.attn_implementation is not None:
        skipped["hf_flattening[sdpa]"] = (
            "not run: the padding-free comparison uses packed attention (dynmask_varlen or flash-attn); on 'sdpa' or "
            "'eager' transformers 5.25 builds a dense (N, N) mask for BERT's flattened rows (its cost: BENCHMARKS.md, "
            "Flattened encoder batches)"
        )
    del flat_model
    return rows, skipped


def run_sentence_transformers(
    model_dir: str | Path, batches: list[list[str]], settings: BenchSettings, device: torch.device
) -> dict[str, Any]:
    """``SentenceTransformer.encode`` of the texts of ``batches``, stock against DynMask, best of ``rounds``.

    ``sorted``: one ``encode`` call over all texts (sentence-transformers sorts them by length and batches them
    itself); ``random``: one call per batch of the random order, as a stream of requests would come. Returns the
    seconds of each, the speed-ups and the largest difference between the two models' embeddings.
    """
    from sentence_transformers import SentenceTransformer

    from ..integrations.sentence_transformers import dynmask_sentence_transformer

    stock = SentenceTransformer(str(model_dir), device=str(device))
    dynmask = dynmask_sentence_transformer(model_dir, device=str(device))
    for model in (stock, dynmask):
        model.max_seq_length = settings.max_length
    texts = [text for batch in batches for text in batch]
    runs = {
        "sorted": lambda model: model.encode(texts, batch_size=settings.batch_size),
        "random": lambda model: [model.encode(batch, batch_size=len(batch)) for batch in batches],
    }
    result: dict[str, Any] = {"texts": len(texts)}
    for order, encode in runs.items():
        best = {"stock": float("inf"), "dynmask": float("inf")}
        for model in (stock, dynmask):  # warm-up
            encode(model)
        for _ in range(settings.rounds):
            for name, model in (("stock", stock), ("dynmask", dynmask)):
                synchronize(device)
                start = time.perf_counter()
                encode(model)
                synchronize(device)
                best[name] = min(best[name], time.perf_counter() - start)
        result[order] = {
            "stock_seconds": best["stock"],
            "dynmask_seconds": best["dynmask"],
            "speedup": best["stock"] / best["dynmask"],
        }
    difference = stock.encode(texts, convert_to_tensor=True) - dynmask.encode(texts, convert_to_tensor=True)
    result["max_abs_diff"] = float(difference.abs().max())
    return result


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables, one per mode, with the skipped methods and their reasons below."""
    lines = [f"FLOP-proportional limit on this data: {report['flop_limit_speedup']:.2f}x static"]
    for mode, rows in report["results"].items():
        lines += ["", f"**{mode}**", ""]
        lines += ["| method | real tok/s | per CPU s | padding | vs static | of limit | peak mem | max diff |"]
        lines += ["|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in rows.items():
            mem = "-" if r.get("peak_memory_mib") is None else f"{r['peak_memory_mib']:.0f} MiB"
            diff = "-" if r.get("max_abs_diff") is None else f"{r['max_abs_diff']:.1e}"
            per_cpu = "-" if r.get("real_tokens_per_cpu_s") is None else f"{r['real_tokens_per_cpu_s']:.0f}"
            lines.append(
                f"| {name} | {r['real_tokens_per_s']:.0f} | {per_cpu} | {r['padding_fraction']:.1%} | "
                f"{r['speedup_vs_static']:.2f}x | {r['fraction_of_limit']:.0%} | {mem} | {diff} |"
            )
        for name, reason in report.get("skipped", {}).get(mode, {}).items():
            lines.append(f"\n{name}: {reason}")
        compiled = [(n, r) for n, r in rows.items() if n.endswith(COMPILED)]
        if compiled:
            lines += ["", "| compiled method | vs eager | compile (warm-up) | frames compiled | graph breaks |"]
            lines += ["|---|---:|---:|---:|---:|"]
            lines += [
                f"| {n} | {r['speedup_vs_eager']:.2f}x | {r['compile_seconds']:.0f} s | {r['compiles']} | "
                f"{r['graph_breaks']} |"
                for n, r in compiled
            ]
    st = report.get("sentence_transformers")
    if st:
        lines += ["", "**SentenceTransformer.encode**", "", "| batches | stock s | DynMask s | speed-up |"]
        lines += ["|---|---:|---:|---:|"]
        for order in ("sorted", "random"):
            r = st[order]
            lines.append(f"| {order} | {r['stock_seconds']:.3f} | {r['dynmask_seconds']:.3f} | {r['speedup']:.2f}x |")
        lines.append(f"\nlargest embedding difference: {st['max_abs_diff']:.1e}")
    return "\n".join(lines)


def plot_bench(report: dict[str, Any], path: str | Path) -> Path:
    """A PNG with real tokens per second of each method, one panel per mode. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(report["results"])
    figure, axes = plt.subplots(1, len(modes), figsize=(7 * len(modes), 4.5), squeeze=False)
    for axis, mode in zip(axes[0], modes, strict=True):
        rows = report["results"][mode]
        names = list(rows)
        colours = ["#4c72b0" if METHODS[n].family == "hf" else "#55a868" for n in names]
        axis.barh(names, [rows[n]["real_tokens_per_s"] for n in names], color=colours)
        axis.invert_yaxis()
        axis.set_xlabel("real tokens / s")
        axis.set_title(f"{mode} (limit {report['flop_limit_speedup']:.2f}x static)")
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    return path

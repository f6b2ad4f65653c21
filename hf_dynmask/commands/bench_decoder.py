"""Side-by-side speed of batch layouts on a stock decoder: transformers' padding and flattening against packed rows on
``attn_implementation="dynmask_varlen"``.

The library side of ``hf-dynmask bench-decoder``. One causal LM (a folder of a verified decoder family, or by default a
randomly initialised grouped-query Llama of a given shape) and one list of texts; every method runs the same weights:

    hf_padded_random    stock model on SDPA, ``DataCollatorForLanguageModeling(mlm=False)`` (pad to the longest of
                        the batch, labels -100 at padding), batches of ``batch_size`` in random order
    hf_length_grouped   the same, in ``LengthGroupedSampler`` order (``TrainingArguments(group_by_length=True)``)
    hf_flattening       stock model on SDPA, ``DataCollatorWithFlattening()`` (the same random batches as one row,
                        sequences marked by restarting ``position_ids``), ``use_cache=False``: transformers detects
                        the packing and builds a dense ``(N, N)`` block-diagonal mask
    dynmask_packed      stock model on ``dynmask_varlen``, hf_dynmask's packed causal-LM collator, token-budget
                        batches (:class:`~hf_dynmask.data.packing.TokenBudgetBatchSampler`, shuffled)

Two steps are timed: ``inference`` (the causal LM's forward, ``torch.inference_mode``) and ``train`` (forward and
backward of the causal-LM loss). Timing, memory and ordering work as in :mod:`.bench` (whose helpers this module
uses): each method times the same number of batches sampled at evenly spaced quantiles of real tokens per batch,
methods take turns round by round and keep their best round, peak memory is measured over a separate pass. The
sample must be large (16 batches by default): length-grouped order pads little except in the few batches where its
megabatches mix short and long examples, and a small sample over-represents those (each row also reports the padding
of the method's whole epoch next to the sample's).

Reported per method: real tokens per second, the ratio to ``hf_padded_random``, the FLOP-proportional limit of that
ratio (the FLOPs ``hf_padded_random`` computes per real token over the FLOPs of real-token work alone on the
method's own batches, see :func:`decoder_flops`) and the fraction of it reached, the padding fraction, the peak
memory rise, and the largest difference to ``hf_padded_random`` on one fixed batch (logits at real tokens for
inference, the loss in eval mode for training). :data:`GOALS` are checked against the training step and the packed
inference.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.collators import make_collator, token_counts
from ..data.packing import TokenBudgetBatchSampler
from ..modeling.families import VERIFIED_FAMILIES
from .bench import Method, environment
from .padding_waste import batch_orders
from .timing import peak_memory_mib, portable_path, progress_bar, run_once, stratified_batches

logger = logging.getLogger(__name__)

__all__ = [
    "DECODER_METHODS",
    "GOALS",
    "DecoderBenchSettings",
    "DecoderShape",
    "decoder_flops",
    "decoder_markdown",
    "load_decoder",
    "packed_sample",
    "run_decoder_benchmark",
    "token_budget",
]

REFERENCE = "hf_padded_random"

DECODER_METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("hf_padded_random", "hf", "dynamic", "random", "transformers sdpa, pad to the longest, random order"),
        Method(
            "hf_length_grouped", "hf", "dynamic", "grouped", "transformers sdpa, pad to the longest, group_by_length"
        ),
        Method(
            "hf_flattening",
            "hf",
            "flattening",
            "random",
            "transformers sdpa, DataCollatorWithFlattening() (position_ids), use_cache=False: dense (N, N) mask",
        ),
        Method(
            "dynmask_packed", "dynmask", "packed", "random", "dynmask_varlen, hf_dynmask packed rows, token budget"
        ),
    )
}

#: (mode, what is compared, method, other method or None, threshold): the issue's targets for packed rows.
GOALS: tuple[tuple[str, str, str, str | None, float], ...] = (
    ("train", "speedup", "dynmask_packed", "hf_flattening", 2.0),
    ("train", "speedup", "dynmask_packed", "hf_padded_random", 1.3),
    ("train", "speedup", "dynmask_packed", "hf_length_grouped", 1.2),
    ("train", "memory", "dynmask_packed", None, 1.0),
    ("inference", "fraction_of_limit", "dynmask_packed", None, 0.95),
)


@dataclass(frozen=True)
class DecoderShape:
    """The randomly initialised decoder benchmarked when no model folder is given (a Llama-style config)."""

    model_type: str = "llama"
    hidden_size: int = 512
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    intermediate_size: int = 1408

    def __post_init__(self) -> None:
        if self.model_type not in VERIFIED_FAMILIES or not VERIFIED_FAMILIES[self.model_type].decoder:
            decoders = sorted(name for name, family in VERIFIED_FAMILIES.items() if family.decoder)
            raise ValueError(
                f"model_type must be a verified decoder family, one of {decoders}; got {self.model_type!r}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_key_value_heads ({self.num_key_value_heads}) must divide num_attention_heads "
                f"({self.num_attention_heads})"
            )


@dataclass(frozen=True)
class DecoderBenchSettings:
    """What to run. ``token_budget=None``: :func:`token_budget` (``batch_size`` times the mean length, rounded up to
    a multiple of 256, at least the longest example), so packed batches hold about as many real tokens as padded
    ones."""

    batch_size: int = 16
    token_budget: int | None = None
    max_length: int = 512
    batches: int = 16  # fewer misrepresent length-grouped order: its few mixed batches dominate a small sample
    rounds: int = 2
    seed: int = 0
    modes: tuple[str, ...] = ("inference", "train")
    methods: tuple[str, ...] = tuple(DECODER_METHODS)
    memory: bool = True
    device: str | None = None
    progress: bool = True
    shape: DecoderShape = field(default_factory=DecoderShape)
    vocab_size: int = 8000  # of the tokenizer trained on the texts when the model folder has none
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in the report's settings, not used

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_length", "batches", "rounds", "vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.token_budget is not None and self.token_budget < 1:
            raise ValueError(f"token_budget must be >= 1, got {self.token_budget}")
        object.__setattr__(self, "modes", tuple(self.modes))
        object.__setattr__(self, "methods", tuple(self.methods))
        unknown = [m for m in self.modes if m not in ("inference", "train")]
        if unknown or not self.modes:
            raise ValueError(f"unknown mode(s) {unknown}; choose from ['inference', 'train']")
        unknown = [m for m in self.methods if m not in DECODER_METHODS]
        if unknown or not self.methods:
            raise ValueError(f"unknown method(s) {unknown}; choose from {list(DECODER_METHODS)}")
        if REFERENCE not in self.methods:
            raise ValueError(f"methods must include {REFERENCE!r}: every ratio is taken to it")


# --------------------------------------------------------------------------------------------------------------------
# Model and data
# --------------------------------------------------------------------------------------------------------------------


def load_decoder(model_dir: str | Path | None, settings: DecoderBenchSettings, vocab_size: int) -> torch.nn.Module:
    """The causal LM on SDPA: ``model_dir`` (a verified decoder family), or a new one of ``settings.shape``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if model_dir is not None:
        config_file = Path(model_dir) / "config.json"
        if not config_file.is_file():
            raise ValueError(f"{str(model_dir)!r} has no config.json; pass a folder written by save_pretrained")
        model_type = str(json.loads(config_file.read_text(encoding="utf-8")).get("model_type")).replace("-", "_")
        if model_type not in VERIFIED_FAMILIES or not VERIFIED_FAMILIES[model_type].decoder:
            decoders = sorted(name for name, family in VERIFIED_FAMILIES.items() if family.decoder)
            raise ValueError(
                f"{config_file}: model_type {model_type!r} is not a verified decoder family ({decoders}); use "
                "hf-dynmask bench for BERT-style encoders"
            )
        return AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation="sdpa")
    shape = asdict(settings.shape)
    config = AutoConfig.for_model(
        shape.pop("model_type"),
        **shape,
        vocab_size=vocab_size,
        max_position_embeddings=max(settings.max_length, 512),
        pad_token_id=0,
    )
    torch.manual_seed(settings.seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def _features(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[dict[str, Any]]:
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    return [{"input_ids": ids} for ids in encoded if len(ids) > 0]


def _collator(method: Method, tokenizer: Any) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    from transformers import DataCollatorForLanguageModeling, DataCollatorWithFlattening

    if method.layout == "packed":
        return make_collator(tokenizer, "causal-lm", "packed")
    if method.layout == "flattening":
        return DataCollatorWithFlattening(return_tensors="pt")
    return DataCollatorForLanguageModeling(tokenizer, mlm=False, return_tensors="pt")


def _prepare(batch: dict[str, Any], device: torch.device, train: bool) -> dict[str, Any]:
    out = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if not train:
        out.pop("labels", None)
    out["use_cache"] = False  # a training-style forward: no KV cache for the whole batch
    return out


def _padding_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    """Padding of a whole epoch of batches, each padded to its longest example."""
    real = sum(lengths[i] for batch in batches for i in batch)
    computed = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    return 1 - real / computed


def token_budget(lengths: Sequence[int], batch_size: int) -> int:
    """Real tokens per packed batch to match padded batches of ``batch_size``: ``batch_size`` times the mean length,
    rounded up to a multiple of 256, and at least the longest example."""
    return max(max(lengths), -(-int(batch_size * np.mean(lengths)) // 256) * 256)


def packed_sample(lengths: list[int], budget: int, count: int, seed: int) -> list[list[int]]:
    """One shuffled epoch of token-budget batches; ``count`` of them at evenly spaced quantiles of real tokens."""
    batches = [list(b) for b in TokenBudgetBatchSampler(lengths, budget, shuffle=True, seed=seed)]
    ranked = sorted(batches, key=lambda b: sum(lengths[i] for i in b))
    picks = np.linspace(0, len(ranked) - 1, num=min(count, len(ranked))).round().astype(int)
    return [ranked[p] for p in picks]


# --------------------------------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------------------------------


def decoder_flops(num_tokens: int, context: int, config: Any) -> float:
    """Forward FLOPs of ``num_tokens`` tokens that each attend over ``context`` keys, for a decoder ``config``.

    Per layer and token: ``2 * (2 h^2 + 2 h k + 3 h i)`` for the query/output and grouped key/value projections and a
    gated MLP (``k = num_key_value_heads * head_dim``), plus ``4 * context * h`` for ``QK^T`` and ``PV``; plus
    ``2 h V`` for the LM head. Embeddings, norms and softmax are left out.

    >>> from types import SimpleNamespace
    >>> c = SimpleNamespace(hidden_size=4, num_attention_heads=2, num_key_value_heads=1, intermediate_size=8,
    ...                     num_hidden_layers=1, vocab_size=10)
    >>> decoder_flops(1, 1, c)
    384.0
    """
    hidden, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", config.num_attention_heads) * head_dim
    linear = 2 * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * config.intermediate_size)
    attention = 4 * context * hidden
    return float(num_tokens * (layers * (linear + attention) + 2 * hidden * config.vocab_size))


def _batch_flops(method: Method, lengths: list[int], config: Any) -> tuple[float, float]:
    """(FLOPs the method computes, FLOPs of real-token work alone) for one batch of sequences of ``lengths``."""
    real = sum(decoder_flops(n, n, config) for n in lengths)
    if method.layout == "dynamic":  # every row padded to the longest, attending over the padded length
        longest = max(lengths)
        return len(lengths) * decoder_flops(longest, longest, config), real
    if method.layout == "flattening":  # one row, a dense mask over the whole row
        total = sum(lengths)
        return decoder_flops(total, total, config), real
    return real, real


# --------------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------------


def _real_logits(output: Any, batch: dict[str, Any]) -> torch.Tensor:
    logits = output.logits
    if "attention_mask" in batch:
        return logits[batch["attention_mask"].bool()]
    return logits[0]


def _check_value(model: torch.nn.Module, batch: dict[str, Any], train: bool) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        output = model(**batch)
    return output.loss.reshape(1) if train else _real_logits(output, batch)


def run_decoder_benchmark(
    texts: Sequence[str],
    settings: DecoderBenchSettings | None = None,
    *,
    model_dir: str | Path | None = None,
    tokenizer: Any | None = None,
    dataset_name: str = "texts",
) -> dict[str, Any]:
    """Benchmark the methods of ``settings`` on a decoder over ``texts``; returns the report (JSON-ready).

    Report keys: ``environment``, ``model``, ``dataset``, ``settings``, ``methods``, ``results`` (mode -> method ->
    row), ``goals``. A row holds ``seconds``, ``real_tokens``, ``real_tokens_per_s``, ``padding_fraction``,
    ``speedup_vs_padded_random``, ``limit_vs_padded_random``, ``fraction_of_limit``, ``peak_memory_mib``,
    ``max_abs_diff`` and ``epoch_padding_fraction`` (the padding of the method's whole epoch, next to its timed
    sample's ``padding_fraction``).
    """
    from .demo import train_tokenizer

    settings = settings or DecoderBenchSettings()
    device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if tokenizer is None and model_dir is not None and (Path(model_dir) / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer is None:
        tokenizer = train_tokenizer(list(texts), vocab_size=settings.vocab_size)
    features = _features(tokenizer, texts, settings.max_length)
    lengths = [len(f["input_ids"]) for f in features]
    if len(features) < settings.batch_size:
        raise ValueError(f"{dataset_name} has {len(features)} examples, fewer than batch_size={settings.batch_size}")
    budget = settings.token_budget
    if budget is None:
        budget = token_budget(lengths, settings.batch_size)
    orders = batch_orders(lengths, settings.batch_size, settings.seed)
    sampled = {
        "random": stratified_batches(orders.random, lengths, settings.batch_size, settings.batches),
        "grouped": stratified_batches(orders.grouped, lengths, settings.batch_size, settings.batches),
        "packed": packed_sample(lengths, budget, settings.batches, settings.seed),
    }
    epoch_padding = {
        "random": _padding_fraction(orders.random, lengths),
        "grouped": _padding_fraction(orders.grouped, lengths),
    }
    check_batch = list(range(settings.batch_size))
    stock = load_decoder(model_dir, settings, len(tokenizer))
    config = stock.config
    report: dict[str, Any] = {
        "environment": environment(device),
        "model": {
            "path": portable_path(model_dir),
            "model_type": config.model_type,
            "parameters": sum(p.numel() for p in stock.parameters()),
            **{
                name: getattr(config, name, None)
                for name in (
                    "hidden_size",
                    "num_hidden_layers",
                    "num_attention_heads",
                    "num_key_value_heads",
                    "intermediate_size",
                    "vocab_size",
                )
            },
        },
        "dataset": {
            "name": dataset_name,
            "examples": len(lengths),
            "mean_tokens": float(np.mean(lengths)),
            "median_tokens": float(np.median(lengths)),
            "p99_tokens": float(np.percentile(lengths, 99)),
            "max_tokens": int(max(lengths)),
        },
        "settings": {k: v for k, v in asdict(settings).items() if k != "extra"}
        | {"token_budget": budget}
        | settings.extra,
        "methods": {name: DECODER_METHODS[name].description for name in settings.methods},
        "results": {},
    }
    for mode in settings.modes:
        train = mode == "train"
        rows = _run_mode(stock, tokenizer, features, lengths, sampled, check_batch, settings, train, device)
        for name, row in rows.items():
            method = DECODER_METHODS[name]
            row["epoch_padding_fraction"] = epoch_padding[method.order] if method.layout == "dynamic" else 0.0
        report["results"][mode] = rows
    report["goals"] = evaluate_goals(report)
    return report


def _run_mode(stock, tokenizer, features, lengths, sampled, check_batch, settings, train, device):
    config = stock.config
    hf = copy.deepcopy(stock).to(device)
    varlen = copy.deepcopy(stock).to(device)
    varlen.set_attn_implementation("dynmask_varlen")
    methods: dict[str, tuple[torch.nn.Module, list[dict[str, Any]], dict[str, Any]]] = {}
    for name in settings.methods:
        method = DECODER_METHODS[name]
        model = varlen if method.family == "dynmask" else hf
        collate = _collator(method, tokenizer)
        picked = sampled["packed" if method.layout == "packed" else method.order]
        batches = [_prepare(collate([features[i] for i in idx]), device, train) for idx in picked]
        flops = [_batch_flops(method, [lengths[i] for i in idx], config) for idx in picked]
        check = _prepare(collate([features[i] for i in check_batch]), device, train)
        extra = {"check": check, "flops": sum(f[0] for f in flops), "real_flops": sum(f[1] for f in flops)}
        methods[name] = (model, batches, extra)

    progress = progress_bar(
        len(methods) * (settings.rounds + 1 + int(settings.memory)),
        settings.progress,
        "train" if train else "inference",
    )
    with progress:
        for model, batches, _ in methods.values():  # warm-up
            run_once(model, batches[:1], train, device)
            progress.update()
        best = dict.fromkeys(methods, float("inf"))
        for _ in range(settings.rounds):
            for name, (model, batches, _) in methods.items():
                best[name] = min(best[name], run_once(model, batches, train, device))
                progress.update()
        memory: dict[str, float | None] = dict.fromkeys(methods)
        if settings.memory:
            for name, (model, batches, _) in methods.items():
                memory[name] = peak_memory_mib(model, batches, train, device)
                progress.update()

    ref_model, _, ref_extra = methods[REFERENCE]
    reference = _check_value(ref_model, ref_extra["check"], train)
    rows: dict[str, dict[str, Any]] = {}
    for name, (model, batches, extra) in methods.items():
        counts = [token_counts(b) for b in batches]
        real = sum(c.real for c in counts)
        padded = sum(c.padded for c in counts)
        rows[name] = {
            "seconds": best[name],
            "cpu_seconds": best[name].cpu,  # CPU time of the round with the best wall time (rounds >= 1)
            "real_tokens": real,
            "real_tokens_per_s": real / best[name],
            "real_tokens_per_cpu_s": real / best[name].cpu,
            "padding_fraction": 1 - real / padded,
            "flops_per_real_token": extra["flops"] / real,
            "real_flops_per_real_token": extra["real_flops"] / real,
            "peak_memory_mib": memory[name],
            "max_abs_diff": float((_check_value(model, extra["check"], train) - reference).abs().max()),
        }
    ref = rows[REFERENCE]
    for row in rows.values():
        row["speedup_vs_padded_random"] = row["real_tokens_per_s"] / ref["real_tokens_per_s"]
        # The speed-up of real-token work alone on this method's batches at the reference's FLOP rate.
        row["limit_vs_padded_random"] = ref["flops_per_real_token"] / row["real_flops_per_real_token"]
        row["fraction_of_limit"] = row["speedup_vs_padded_random"] / row["limit_vs_padded_random"]
    del hf, varlen
    return rows


def evaluate_goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each of :data:`GOALS` that the report has the methods for, with the measured value and whether it is met."""
    goals = []
    for mode, kind, method, other, threshold in GOALS:
        rows = report["results"].get(mode, {})
        if method not in rows or (other is not None and other not in rows):
            continue
        row = rows[method]
        if kind == "speedup":
            value = row["real_tokens_per_s"] / rows[other]["real_tokens_per_s"]
            text = f"{mode}: {method} >= {threshold}x {other}"
            met = value >= threshold
        elif kind == "memory":
            others = [r["peak_memory_mib"] for name, r in rows.items() if name != method]
            if row["peak_memory_mib"] is None or any(m is None for m in others):
                continue
            value = row["peak_memory_mib"] / max(min(others), 1e-9)
            text = f"{mode}: {method} peak memory <= every other method's"
            met = row["peak_memory_mib"] <= min(others)
        else:
            value = row["fraction_of_limit"]
            text = f"{mode}: {method} >= {threshold:.0%} of the FLOP-proportional limit"
            met = value >= threshold
        goals.append({"goal": text, "value": value, "met": bool(met)})
    return goals


def decoder_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables, one per mode, then the goals."""
    model = report["model"]
    lines = [
        f"{model['model_type']} {model['parameters'] / 1e6:.1f}M parameters (hidden {model['hidden_size']}, "
        f"{model['num_hidden_layers']} layers, {model['num_attention_heads']} heads, "
        f"{model['num_key_value_heads']} KV heads); {report['dataset']['examples']} examples, mean "
        f"{report['dataset']['mean_tokens']:.0f} tokens; token budget {report['settings']['token_budget']}"
    ]
    for mode, rows in report["results"].items():
        lines += ["", f"**{mode}**", ""]
        lines += [
            "| method | real tok/s | per CPU s | padding (epoch) | vs padded random | limit | of limit | peak mem "
            "| max diff |"
        ]
        lines += ["|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in rows.items():
            mem = "-" if r.get("peak_memory_mib") is None else f"{r['peak_memory_mib']:.0f} MiB"
            per_cpu = "-" if r.get("real_tokens_per_cpu_s") is None else f"{r['real_tokens_per_cpu_s']:.0f}"
            lines.append(
                f"| {name} | {r['real_tokens_per_s']:.0f} | {per_cpu} | {r['padding_fraction']:.1%} "
                f"({r['epoch_padding_fraction']:.1%}) | "
                f"{r['speedup_vs_padded_random']:.2f}x | {r['limit_vs_padded_random']:.2f}x | "
                f"{r['fraction_of_limit']:.0%} | {mem} | {r['max_abs_diff']:.1e} |"
            )
    if report.get("goals"):
        lines += ["", "**goals**", ""]
        for goal in report["goals"]:
            lines.append(f"- {'met' if goal['met'] else 'NOT met'}: {goal['goal']} (measured {goal['value']:.2f})")
    return "\n".join(lines)

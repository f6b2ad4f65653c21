"""Seq2seq on the real corpora: a small BART- or Marian-shaped model trained from scratch in every mode, side by side.

No pretrained seq2seq weights can be downloaded here, so each run first trains a BPE tokenizer (``tokenizers``) on
the training split (sources and targets together, one shared vocabulary) and initializes one stock model from a
config (seed fixed): BART-shaped for summarization (scitldr_a), Marian-shaped for translation (ntrex_en_de), or
``--style``. Every mode then trains those same initial weights on the same examples:

    hf_random      the stock model (BartForConditionalGeneration / MarianMTModel), Seq2SeqTrainer, transformers'
                   DataCollatorForSeq2Seq, random order
    hf_grouped     the same with train_sampling_strategy="group_by_length" (source lengths): transformers' best
    static         DynMask (masking="static"), hf_dynmask's collator padding to --max-length, random order
    dynamic        DynMask (masking="dynamic"), padding to the batch's longest, stripped inside the model
    packed         DynMask, packed batches (cross-attention target s -> source s only), random order
    packed_budget  DynMask, packed token-budget batches (DynMaskTrainer, --token-budget source + target tokens)

hf_random, static, dynamic and packed see the same batches in the same order, so their loss curves must coincide
(dropout is off by default for that reason); hf_grouped and packed_budget see other batches of the same data.
Reported per mode: real (source + target) tokens per second of training, the padding computed on each side, the
peak memory rise during training, the loss curve, the validation loss, and ROUGE (summarization) or BLEU / chrF
(translation) of greedy generations on validation examples, with sacrebleu and rouge-score (offline).

    python benchmarks/bench_seq2seq.py --dataset ntrex_en_de --max-examples 64 --eval-examples 8 --json /tmp/x.json
    flock /tmp/bench.lock taskset -c 1 env OMP_NUM_THREADS=1 python benchmarks/bench_seq2seq.py \
        --dataset scitldr_a --json benchmarks/results/seq2seq_scitldr_a.json

The modes train interleaved by default (``--schedule interleaved``): each on its own thread, taking turns of one
optimizer step with finetune.py's :class:`TakeTurns` (each keeps its own random state, so it trains as it would
alone), and each timed by the CPU time of its own thread next to wall time, so a busy machine slows every mode alike.
Speeds compare CPU time. ``--schedule sequential`` runs one mode after another and measures each one's peak memory:
the resident set size sampled every millisecond above its level before training (freed heap memory handed back
first), with hf-dynmask bench's sampler; on CUDA the allocator's peak. Interleaved runs hold every model at once, so
they report no peak.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import datasets
import torch

from hf_dynmask import DynMaskSeq2SeqConfig, make_collator, prepare_dataset
from hf_dynmask.commands.bench import environment, resolve_device
from hf_dynmask.commands.timing import portable_path
from hf_dynmask.modeling.input_checks import IGNORE_INDEX

sys.path.insert(0, str(Path(__file__).parent))
from finetune import TakeTurns, TimeTraining, run_in_turns  # noqa: E402  (the interleaved schedule)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).parent / "results"
RECORDED_PATHS = ("data_dir", "json", "plot")  # recorded relative to the repository
DATASETS = {
    # name: (task, source/target max length, greedy generation budget, model style)
    "scitldr_a": ("summarization", 384, 64, "bart"),
    "ntrex_en_de": ("translation", 128, 96, "marian"),
}
MODES = ("hf_random", "hf_grouped", "static", "dynamic", "packed", "packed_budget")
SPECIALS = ["<pad>", "</s>", "<unk>"]
PAD, EOS = 0, 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--max-examples", type=int, default=None, help="first N training pairs")
    parser.add_argument("--eval-examples", type=int, default=100, help="first N validation pairs (loss, generation)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--token-budget", type=int, default=None, help="packed_budget: tokens per batch")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--style", choices=["bart", "marian"], default=None, help="default: by dataset")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=3, help="encoder and decoder layers each")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ffn", type=int, default=1024)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--logging-steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--schedule", choices=["interleaved", "sequential"], default="interleaved")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="default benchmarks/results/seq2seq_<dataset>.json")
    parser.add_argument("--plot", type=Path, default=None, help="default: the JSON's path with .png")
    args = parser.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    args.task, args.max_length, args.max_new_tokens, default_style = DATASETS[args.dataset]
    args.style = args.style or default_style
    if args.json is None:
        args.json = RESULTS / f"seq2seq_{args.dataset}.json"
    if args.plot is None:
        args.plot = args.json.with_suffix(".png")
    return args


# --------------------------------------------------------------------------------------------------------------------
# Data, tokenizer, initial model
# --------------------------------------------------------------------------------------------------------------------


def read_split(args: argparse.Namespace, split: str, limit: int | None) -> datasets.Dataset:
    path = args.data_dir / args.dataset / f"{split}.jsonl"
    if not path.exists():
        raise SystemExit(f"{path} not found; pass --data-dir (the folder holding {args.dataset}/)")
    raw = datasets.load_dataset("json", data_files=str(path), split="train")
    return raw.select(range(min(limit, len(raw)))) if limit is not None else raw


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level-free BPE over whitespace-marked words (Metaspace), trained on ``texts``; ``</s>`` appended."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, min_frequency=2, show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", EOS)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def stock_class(style: str):
    from transformers import BartForConditionalGeneration, MarianMTModel

    return BartForConditionalGeneration if style == "bart" else MarianMTModel


def initial_model(args: argparse.Namespace, vocab_size: int, directory: Path) -> Path:
    """A stock BART- or Marian-shaped model from a config (shared vocabulary), saved as a checkpoint folder.

    BART: learned positions, an embedding layer norm, decoding starts with ``</s>``. Marian: sinusoidal positions,
    scaled embeddings, decoding starts with ``<pad>``.
    """
    from transformers import BartConfig, MarianConfig

    sizes = dict(
        vocab_size=vocab_size,
        d_model=args.d_model,
        encoder_layers=args.layers,
        decoder_layers=args.layers,
        encoder_attention_heads=args.heads,
        decoder_attention_heads=args.heads,
        encoder_ffn_dim=args.ffn,
        decoder_ffn_dim=args.ffn,
        max_position_embeddings=512,
        dropout=args.dropout,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=PAD,
        eos_token_id=EOS,
        forced_eos_token_id=EOS,
    )
    if args.style == "bart":
        config = BartConfig(**sizes, bos_token_id=None, decoder_start_token_id=EOS)
    else:
        config = MarianConfig(**sizes, decoder_vocab_size=vocab_size, scale_embedding=True, decoder_start_token_id=PAD)
    torch.manual_seed(args.seed)
    stock_class(args.style)(config).save_pretrained(directory)
    return directory


# --------------------------------------------------------------------------------------------------------------------
# One mode
# --------------------------------------------------------------------------------------------------------------------


class CountingCollator:
    """Counts, per side, the real tokens and the positions the model is handed (real + padding)."""

    def __init__(self, collator):
        self.collator = collator
        self.counts = {"source_real": 0, "source_computed": 0, "target_real": 0, "target_computed": 0}

    def __call__(self, features):
        batch = self.collator(features)
        mask = batch.get("attention_mask")
        self.counts["source_computed"] += batch["input_ids"].numel()
        self.counts["source_real"] += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        self.counts["target_computed"] += batch["labels"].numel()
        self.counts["target_real"] += int((batch["labels"] != IGNORE_INDEX).sum())
        return batch


def _rss_peak():
    from hf_dynmask.commands.timing import PeakRSS, release_freed_memory  # the benchmarks' RSS sampler

    release_freed_memory()
    return PeakRSS()


def training_arguments(args, output_dir: Path, mode: str):
    from transformers import Seq2SeqTrainingArguments

    from hf_dynmask.training import DynMaskTrainingArguments

    values = dict(
        output_dir=str(output_dir),
        use_cpu=not torch.cuda.is_available(),
        report_to=[],
        save_strategy="no",
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        logging_steps=args.logging_steps,
        seed=args.seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    if mode == "hf_grouped":
        values.update(train_sampling_strategy="group_by_length", length_column_name="length")
    if mode == "packed_budget":
        return DynMaskTrainingArguments(**values, token_budget=args.token_budget, token_budget_cost="packed")
    return Seq2SeqTrainingArguments(**values)


def run_mode(
    args, mode: str, init_dir: Path, tokenizer, train_set, eval_set, raw_eval, work: Path, turns: TakeTurns | None
) -> dict[str, Any]:
    import transformers
    from transformers import AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq, Seq2SeqTrainer

    from hf_dynmask.training import DynMaskTrainer

    if mode.startswith("hf_"):
        model = stock_class(args.style).from_pretrained(init_dir)
        collator = DataCollatorForSeq2Seq(tokenizer, model=model)
        eval_collator = collator
    else:
        config = DynMaskSeq2SeqConfig.from_pretrained(init_dir, masking="static" if mode == "static" else "dynamic")
        model = AutoModelForSeq2SeqLM.from_pretrained(init_dir, config=config)
        layout = "packed" if mode.startswith("packed") else mode
        options = {"max_length": args.max_length} if layout == "static" else {}
        start = config.decoder_start_token_id
        collator = make_collator(tokenizer, "seq2seq", layout, decoder_start_token_id=start, **options)
        eval_collator = make_collator(tokenizer, "seq2seq", "dynamic", decoder_start_token_id=start)
    counting = CountingCollator(collator)
    trainer_class = DynMaskTrainer if mode == "packed_budget" else Seq2SeqTrainer
    keep = ["input_ids", "labels", "length"]
    timer = TimeTraining(mode, turns)
    trainer = trainer_class(
        model=model,
        args=training_arguments(args, work / mode, mode),
        train_dataset=train_set.remove_columns([c for c in train_set.column_names if c not in keep]),
        data_collator=counting,
        callbacks=[timer],
    )
    transformers.logging.set_verbosity_error()
    device = model.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    if turns is None:
        with _rss_peak() as peak:
            output = trainer.train()
        memory = (torch.cuda.max_memory_allocated(device) - before) / 2**20 if device.type == "cuda" else peak.rise_mib
    else:
        output, memory = trainer.train(), None  # every model is resident at once: no per-mode peak
    counts = counting.counts
    real = counts["source_real"] + counts["target_real"]
    curve = [(log["step"], log["loss"]) for log in trainer.state.log_history if "loss" in log]
    examples_per_step = len(train_set) * args.epochs / max(output.global_step, 1)
    result = {
        "mode": mode,
        "train_seconds": timer.total.wall,
        "train_cpu_seconds": timer.total.cpu,
        "train_steps": output.global_step,
        "train_loss": output.training_loss,
        "real_tokens": real,
        "computed_tokens": counts["source_computed"] + counts["target_computed"],
        "real_tokens_per_second": real / timer.total.wall,
        "real_tokens_per_cpu_second": real / timer.total.cpu,
        "source_padding": 1 - counts["source_real"] / counts["source_computed"],
        "target_padding": 1 - counts["target_real"] / counts["target_computed"],
        "peak_memory_mib": memory,
        "loss_curve": curve,
        "examples_per_step": examples_per_step,
    }
    model.eval()
    result["eval_loss"] = evaluation_loss(model, eval_set, eval_collator, args.batch_size)
    result.update(generation_scores(args, model, tokenizer, eval_set, raw_eval, eval_collator))
    return result


def run_modes(args, **shared: Any) -> dict[str, dict[str, Any]]:
    """Every mode once: on one thread each, taking turns of one optimizer step (``--schedule interleaved``; a mode
    keeps the turn through its evaluation, which is not timed), or one after another (``sequential``)."""

    def train(mode: str, turns: TakeTurns | None) -> dict[str, Any]:
        torch.set_num_threads(args.threads)
        result = run_mode(args, mode, turns=turns, **shared)
        print(json.dumps({k: v for k, v in result.items() if k != "loss_curve"}), flush=True)
        return result

    return run_in_turns(args.modes, args.schedule == "interleaved", train, "seq2seq")


@torch.no_grad()
def evaluation_loss(model, eval_set, collator, batch_size: int) -> float:
    """Mean cross-entropy over every validation target token (teacher forcing)."""
    total, count = 0.0, 0
    rows = [{"input_ids": ex["input_ids"], "labels": ex["labels"]} for ex in eval_set]
    for i in range(0, len(rows), batch_size):
        batch = collator(rows[i : i + batch_size])
        n = int((batch["labels"] != IGNORE_INDEX).sum())
        total += float(model(**batch).loss) * n
        count += n
    return total / count


@torch.no_grad()
def generation_scores(args, model, tokenizer, eval_set, raw_eval, collator) -> dict[str, float]:
    """Greedy generations on the validation pairs, scored against the references."""
    import sacrebleu
    from rouge_score import rouge_scorer

    hypotheses = []
    rows = [{"input_ids": ex["input_ids"], "labels": ex["labels"]} for ex in eval_set]
    for i in range(0, len(rows), args.batch_size):
        batch = collator(rows[i : i + args.batch_size])
        generated = model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            max_new_tokens=args.max_new_tokens,
            num_beams=1,
            do_sample=False,
        )
        hypotheses += tokenizer.batch_decode(generated, skip_special_tokens=True)
    references = list(raw_eval["target"])
    scores = {
        "bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
        "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
    }
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    per_pair = [scorer.score(ref, hyp) for ref, hyp in zip(references, hypotheses, strict=True)]
    for key in ("rouge1", "rouge2", "rougeL"):
        scores[key] = 100 * sum(s[key].fmeasure for s in per_pair) / len(per_pair)
    scores["example"] = {"source": raw_eval[0]["source"][:300], "reference": references[0], "output": hypotheses[0]}
    return scores


# --------------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------------


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    fig, (curves, speed) = plt.subplots(1, 2, figsize=(12, 4.2))
    for mode, result in results.items():
        steps, losses = zip(*result["loss_curve"], strict=True) if result["loss_curve"] else ((), ())
        seen = [s * result["examples_per_step"] for s in steps]
        style = "--" if mode.startswith("hf_") else "-"
        curves.plot(seen, losses, style, label=mode, alpha=0.85)
    curves.set_xlabel("training pairs seen")
    curves.set_ylabel("training loss")
    curves.set_title(f"{report['settings']['dataset']}: loss curves")
    curves.legend()
    modes = list(results)
    speeds = [results[m].get("real_tokens_per_cpu_second", results[m]["real_tokens_per_second"]) for m in modes]
    bars = speed.bar(modes, speeds, color=["#999999" if m.startswith("hf_") else "#3b75af" for m in modes])
    for bar, mode in zip(bars, modes, strict=True):
        memory = results[mode]["peak_memory_mib"]
        label = f"{bar.get_height():.0f}" + (f"\n{memory:.0f} MiB" if memory is not None else "")
        speed.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    speed.set_ylabel("real tokens / CPU second (training)")
    speed.set_title(
        "speed" + (" (peak memory rise above the bars)" if report["settings"]["schedule"] == "sequential" else "")
    )
    speed.tick_params(axis="x", rotation=20)
    speed.set_ylim(0, max(speeds) * 1.25)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    raw_train = read_split(args, "train", args.max_examples)
    raw_eval = read_split(args, "validation", args.eval_examples)
    tokenizer = train_tokenizer(list(raw_train["source"]) + list(raw_train["target"]), args.vocab_size)
    train_set = prepare_dataset(raw_train, tokenizer, "seq2seq", max_length=args.max_length)
    eval_set = prepare_dataset(raw_eval, tokenizer, "seq2seq", max_length=args.max_length)
    source_tokens, target_tokens = sum(train_set["length"]), sum(len(t) for t in train_set["labels"])
    if args.token_budget is None:  # as many tokens as an average batch of --batch-size pairs
        args.token_budget = max(round(args.batch_size * source_tokens / len(train_set)), max(train_set["length"]))
    report: dict[str, Any] = {
        "command": "python benchmarks/bench_seq2seq.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "environment": environment(resolve_device(None)),
        "settings": {
            k: portable_path(v, RESULTS.parents[1]) if k in RECORDED_PATHS else v for k, v in vars(args).items()
        },
        "data": {
            "train_pairs": len(train_set),
            "eval_pairs": len(eval_set),
            "vocab_size": len(tokenizer),
            "mean_source_tokens": source_tokens / len(train_set),
            "mean_target_tokens": target_tokens / len(train_set),
            "max_source_tokens": max(train_set["length"]),
            "max_target_tokens": max(len(t) for t in train_set["labels"]),
        },
        "results": {},
    }
    print(json.dumps(report["data"]), flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        init_dir = initial_model(args, len(tokenizer), work / "init")
        report["data"]["parameters"] = sum(
            p.numel() for p in stock_class(args.style).from_pretrained(init_dir).parameters()
        )
        report["results"] = run_modes(
            args,
            init_dir=init_dir,
            tokenizer=tokenizer,
            train_set=train_set,
            eval_set=eval_set,
            raw_eval=raw_eval,
            work=work,
        )
    results = report["results"]
    if "hf_grouped" in results:
        grouped = results["hf_grouped"]
        # Token-proportional limit: the speed-up of doing only the real-token work at hf_grouped's cost per token.
        report["limit_vs_hf_grouped"] = grouped["computed_tokens"] / grouped["real_tokens"]
        for mode in ("packed", "packed_budget"):
            if mode in results:  # speed from CPU time; memory where measured (sequential runs)
                ours = results[mode]
                report[f"{mode}_vs_hf_grouped"] = {
                    "speed": ours["real_tokens_per_cpu_second"] / grouped["real_tokens_per_cpu_second"],
                    "wall_speed": ours["real_tokens_per_second"] / grouped["real_tokens_per_second"],
                    "memory": ours["peak_memory_mib"] / grouped["peak_memory_mib"]
                    if ours["peak_memory_mib"] and grouped["peak_memory_mib"]
                    else None,
                }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.plot)
    return report


if __name__ == "__main__":
    main()

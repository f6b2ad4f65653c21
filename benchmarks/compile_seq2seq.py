"""The DynMask seq2seq family under ``torch.compile`` against itself eager, next to the stock model doing the same.

The model is ``bench_seq2seq.py``'s: a small Marian- (translation) or BART-shaped (summarization) model initialised
from a config with a BPE tokenizer trained on the training pairs, loaded once as the stock model and once as DynMask
seq2seq (the same weights). Batches of ``--batch-size`` pairs in random order, ``--batches`` of them at evenly spaced
quantiles of real tokens, are timed in three methods:

    dynmask_packed   hf_dynmask's packed seq2seq collator, DynMask model
    dynmask_dynamic  hf_dynmask's dynamic padding, DynMask model (padding stripped inside)
    hf_dynamic       the stock model with transformers' DataCollatorForSeq2Seq (how HF users batch today)

For each method and mode (a training step: forward and backward; inference: a teacher-forced forward), the compiled
model's warm-up runs every timed batch once (the compile time, reported with the frames compiled); then eager and
compiled take turns over ``--rounds`` rounds and each keeps its best pass by CPU time
(``compile_decoder.compare_compiled``).

    taskset -c 1 env OMP_NUM_THREADS=1 python benchmarks/compile_seq2seq.py --dataset ntrex_en_de \\
        --json benchmarks/results/compile_cpu/seq2seq_ntrex_en_de.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from hf_dynmask import DynMaskSeq2SeqConfig, make_collator, prepare_dataset
from hf_dynmask.commands.bench import environment
from hf_dynmask.commands.padding_waste import batch_orders
from hf_dynmask.commands.timing import portable_path, stratified_batches

sys.path.insert(0, str(Path(__file__).parent))
from bench_seq2seq import DATA, DATASETS, initial_model, read_split, stock_class, train_tokenizer  # noqa: E402
from compile_decoder import compare_compiled, print_row  # noqa: E402

METHODS = ("dynmask_packed", "dynmask_dynamic", "hf_dynamic")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="ntrex_en_de")
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--limit", type=int, default=1000, help="first N training pairs read")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=3, help="encoder and decoder layers each")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ffn", type=int, default=1024)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="train,inference")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--fallback-random", action="store_true", help="inductor's fallback_random (with --dropout)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.methods.split(",")) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    args.task, args.max_length, _, args.style = DATASETS[args.dataset]
    return args


def load_pair(args: argparse.Namespace, vocab_size: int, directory: Path):
    """The stock model and the DynMask seq2seq model with the same initial weights."""
    from transformers import AutoModelForSeq2SeqLM

    init_dir = initial_model(args, vocab_size, directory)
    stock = stock_class(args.style).from_pretrained(init_dir)
    config = DynMaskSeq2SeqConfig.from_pretrained(init_dir, masking="dynamic")
    dynmask = AutoModelForSeq2SeqLM.from_pretrained(init_dir, config=config)
    return stock, dynmask


def run(args: argparse.Namespace) -> dict:
    from transformers import DataCollatorForSeq2Seq

    raw = read_split(args, "train", args.limit)
    tokenizer = train_tokenizer(list(raw["source"]) + list(raw["target"]), args.vocab_size)
    pairs = prepare_dataset(raw, tokenizer, "seq2seq", max_length=args.max_length)
    features = [{"input_ids": row["input_ids"], "labels": row["labels"]} for row in pairs]
    lengths = [len(f["input_ids"]) + len(f["labels"]) for f in features]
    shuffled = batch_orders(lengths, args.batch_size, args.seed).random
    sample = stratified_batches(shuffled, lengths, args.batch_size, args.batches)
    report = {
        "environment": environment(torch.device("cpu")),
        "settings": {
            **vars(args),
            "data_dir": portable_path(args.data_dir),
            "json": args.json and portable_path(args.json),
        },
        "real_tokens": sum(lengths[i] for b in sample for i in b),
        "results": {},
    }
    options = {"fallback_random": True} if args.fallback_random else None
    with tempfile.TemporaryDirectory() as scratch:
        stock, dynmask = load_pair(args, len(tokenizer), Path(scratch) / "init")
    start = dynmask.config.decoder_start_token_id
    for method in args.methods.split(","):
        if method == "hf_dynamic":
            model, collate = stock, DataCollatorForSeq2Seq(tokenizer, model=stock)
        else:
            model = dynmask
            layout = method.removeprefix("dynmask_")
            collate = make_collator(tokenizer, "seq2seq", layout, decoder_start_token_id=start)
        for mode in args.modes.split(","):
            train = mode == "train"
            batches = []
            for b in sample:
                batch = dict(collate([features[i] for i in b]))
                if not train:
                    batch.pop("labels")
                batches.append(batch)
            row = compare_compiled(model, batches, train, args.rounds, args.backend, options)
            report["results"].setdefault(method, {})[mode] = row
            print_row(f"{method} {mode}", row)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    report = run(args)
    report["command"] = "python benchmarks/compile_seq2seq.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

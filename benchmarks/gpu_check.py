"""The GPU check in one call: the CUDA equivalence tests, then a short benchmark, into one JSON.

For a lent GPU machine (a few minutes of device time): run from the repository root with hf_dynmask installed,

    python benchmarks/gpu_check.py --json "$OUT/gpu_check.json"      # about 5 minutes on one H100

1. **Equivalences**: ``tests/modeling/test_gpu.py`` (``pytest -m gpu``): the varlen kernel (SDPA length groups and
   torch's varlen flash kernel ``kernel="torch_varlen"``) against each sequence alone in fp32 and bf16 (flash-attn's
   reference-error rule), gradients; DynMask's encoder on every CUDA backend against stock BERT; a stock Llama on
   ``dynmask_varlen`` packed against each sequence alone. Every test's outcome goes into the JSON.
2. **Benchmark**: a training step (forward, backward) of a stock grouped-query Llama (hidden 512, 8 layers) on packed
   rows of real scitldr_a text (``--data-dir``), bf16, methods interleaved, CUDA synchronized around each timing:
   ``dynmask_varlen`` with SDPA length groups, ``dynmask_varlen`` with torch's varlen kernel (the same model with
   the kernel switched), transformers' ``DataCollatorWithFlattening`` + ``flash_attention_2`` (only where flash-attn
   is installed), and padded batches in ``group_by_length`` order on stock ``sdpa``; real tokens per second, peak
   memory, and the packed paths' loss against the padded one.

Nothing here runs in CI; on a CPU-only machine the tests skip and the benchmark is refused.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class _Outcomes:
    """A pytest plugin that records every test's outcome."""

    def __init__(self) -> None:
        self.results: dict[str, str] = {}

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            self.results[report.nodeid] = report.outcome


def run_tests() -> dict:
    import pytest

    outcomes = _Outcomes()
    code = pytest.main(["-q", "-p", "no:cacheprovider", "-m", "gpu", str(ROOT / "tests/modeling/test_gpu.py")],
                       plugins=[outcomes])  # fmt: skip
    counts: dict[str, int] = {}
    for outcome in outcomes.results.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    return {"exit_code": int(code), "counts": counts, "tests": outcomes.results}


def run_benchmark(
    data_dir: Path,
    steps: int,
    rounds: int,
    row_tokens: int,
    device_name: str = "cuda",
    hidden: int = 512,
    layers: int = 8,
) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, DataCollatorWithFlattening
    from transformers.utils import is_flash_attn_2_available

    import hf_dynmask
    import hf_dynmask.modeling.attention as attention

    device = torch.device(device_name)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    rows = [json.loads(line) for line in (data_dir / "scitldr_a" / "train.jsonl").read_text().splitlines()]
    rng = random.Random(0)
    rng.shuffle(rows)
    texts = [str(row["source"]) for row in rows]
    vocab = 32000
    sequences = [[3 + (hash(w) % (vocab - 3)) for w in text.split()][:1024] for text in texts if text.split()]
    rows_of = []  # packed rows of about row_tokens tokens, next-fit
    current: list[list[int]] = []
    for seq in sequences:
        if current and sum(map(len, current)) + len(seq) > row_tokens:
            rows_of.append(current)
            current = []
        current.append(seq)
        if len(rows_of) >= steps:
            break
    config = AutoConfig.for_model(
        "llama", hidden_size=hidden, intermediate_size=hidden * 11 // 4, num_hidden_layers=layers,
        num_attention_heads=8, num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=2048, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    models = {"sdpa": AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=dtype)}
    # One config object per model: transformers' from_config keeps the object, and attn_implementation lives on it.
    models["varlen"] = AutoModelForCausalLM.from_config(
        copy.deepcopy(config), attn_implementation="dynmask_varlen", dtype=dtype
    )
    models["varlen"].load_state_dict(models["sdpa"].state_dict())
    if cuda and is_flash_attn_2_available():
        models["flash"] = AutoModelForCausalLM.from_config(
            copy.deepcopy(config), attn_implementation="flash_attention_2", dtype=dtype
        )
        models["flash"].load_state_dict(models["sdpa"].state_dict())
    for model in models.values():
        model.to(device).train()
    packed = hf_dynmask.make_collator(_Tokenizer(), "causal-lm", "packed")
    flattening = DataCollatorWithFlattening(return_flash_attn_kwargs=True)
    padded = hf_dynmask.make_collator(_Tokenizer(), "causal-lm", "dynamic")
    batches = {
        "packed": [packed([{"input_ids": s} for s in row]) for row in rows_of],
        "flattening": [flattening([{"input_ids": s} for s in row]) for row in rows_of],
        "grouped": [padded([{"input_ids": s} for s in sorted(row, key=len)]) for row in rows_of],
    }
    original = attention.varlen_attention
    methods = {"dynmask_varlen[sdpa groups]": ("varlen", "packed", "sdpa")}
    if cuda:
        methods["dynmask_varlen[torch_varlen]"] = ("varlen", "packed", "torch_varlen")
    methods["hf_grouped[sdpa]"] = ("sdpa", "grouped", None)
    if "flash" in models:
        methods["hf_flattening[flash_attention_2]"] = ("flash", "flattening", None)

    def step(name: str, batch: dict) -> float:
        model_key, _, kernel = methods[name]
        if kernel is not None:
            attention.varlen_attention = functools.partial(original, kernel=kernel)
        try:
            inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
            loss = models[model_key](**inputs, use_cache=False).loss
            loss.backward()
        finally:
            attention.varlen_attention = original
        models[model_key].zero_grad(set_to_none=True)
        return float(loss.detach())

    losses = {name: [step(name, b) for b in batches[methods[name][1]]] for name in methods}  # warm-up + losses
    synchronize = torch.cuda.synchronize if cuda else (lambda: None)
    timings = {name: [] for name in methods}
    for _ in range(rounds):
        for name in methods:  # interleaved
            synchronize()
            start = time.perf_counter()
            for batch in batches[methods[name][1]]:
                step(name, batch)
            synchronize()
            timings[name].append(time.perf_counter() - start)
    memory = {}
    for name in methods:
        if not cuda:
            break
        torch.cuda.reset_peak_memory_stats()
        step(name, batches[methods[name][1]][0])
        memory[name] = torch.cuda.max_memory_allocated() / 2**20
    tokens = sum(sum(map(len, row)) for row in rows_of)
    return {
        "rows": len(rows_of),
        "real_tokens": tokens,
        "results": {
            name: {
                "real_tokens_per_s": tokens / min(timings[name]),
                "peak_memory_mib": memory.get(name),
                "mean_loss": sum(losses[name]) / len(losses[name]),
            }
            for name in methods
        },
    }


class _Tokenizer:
    """What hf_dynmask's collators read from a tokenizer (the ids above need no vocabulary)."""

    pad_token_id = 0
    padding_side = "right"
    truncation_side = "right"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--steps", type=int, default=8, help="packed rows per method and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--row-tokens", type=int, default=8192)
    parser.add_argument("--skip-benchmark", action="store_true")
    parser.add_argument("--device", default="cuda", help="cuda; 'cpu' runs a smoke test of the script")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_check.json")
    args = parser.parse_args(argv)
    import torch

    from hf_dynmask.commands.bench import environment

    report: dict = {
        "command": " ".join(["python", "benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
        "environment": {
            **environment(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
            "cuda": torch.version.cuda,
        },
        "tests": run_tests(),
    }
    if not args.skip_benchmark:
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            report["benchmark"] = "not run: no CUDA device"
        else:
            report["benchmark"] = run_benchmark(
                args.data_dir, args.steps, args.rounds, args.row_tokens, args.device, args.hidden, args.layers
            )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"tests": report["tests"]["counts"], "benchmark": report.get("benchmark")}, indent=2)[:4000])
    return 0 if report["tests"]["exit_code"] in (0, 5) else 1


if __name__ == "__main__":
    sys.exit(main())

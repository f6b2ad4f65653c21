"""Data-parallel training on 2 CPU processes (torchrun, gloo) ends where the single-process run of the same global
batches ends, in every batch layout, with fixed-size and token-budget batches.

The ranks see different numbers of label tokens; the loss is still normalized by the label tokens of the whole
accumulated step over both processes (transformers' ``average_tokens_across_devices`` and ``num_items_in_batch``),
so the averaged gradients equal the single-process ones.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("distributed_train.py")
ATOL = 1e-5


def load_script():
    spec = importlib.util.spec_from_file_location("distributed_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ddp") / "results.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(SCRIPT),
        str(out),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def script():
    return load_script()


@pytest.fixture(scope="module")
def one_process_results(script, tmp_path_factory) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tok = script.tokenizer()
    out = str(tmp_path_factory.mktemp("single"))
    try:
        return {name: script.train_run(name, world_size=1, output_dir=out, tok=tok) for name in script.RUNS}
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "name", ["token-static", "token-dynamic", "token-packed", "sequence-packed", "budget-packed", "budget-dynamic"]
)
def test_two_processes_train_like_one(two_process_results, one_process_results, name):
    two, one = two_process_results[name], one_process_results[name]
    for key in one["params"]:
        torch.testing.assert_close(two["params"][key], one["params"][key], atol=ATOL, rtol=0)
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-5)
    # The padding-stat totals are summed over the processes: the same tokens as the single process saw.
    assert two["real_tokens"] == one["real_tokens"]
    # The ranks saw different numbers of label tokens (the normalization above is not trivially even).
    per_rank = two["label_tokens_per_rank"]
    if name != "sequence-packed":
        assert per_rank[0] != per_rank[1]
    assert sum(per_rank) == one["label_tokens"]


def test_layouts_agree_on_two_processes(two_process_results):
    reference = two_process_results["token-static"]["params"]
    for name in ("token-dynamic", "token-packed"):
        for key, value in two_process_results[name]["params"].items():
            torch.testing.assert_close(value, reference[key], atol=ATOL, rtol=0)
    budget = two_process_results["budget-packed"]["params"]
    for key, value in two_process_results["budget-dynamic"]["params"].items():
        torch.testing.assert_close(value, budget[key], atol=ATOL, rtol=0)

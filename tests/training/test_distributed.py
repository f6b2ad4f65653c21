"""Data-parallel training on 2 CPU processes (torchrun, gloo) ends where the single-process run of the same global
batches ends, in every batch layout, with fixed-size and token-budget batches.

The ranks see different numbers of label tokens; the loss is still normalized by the label tokens of the whole
accumulated step over both processes (transformers' ``average_tokens_across_devices`` and ``num_items_in_batch``),
so the averaged gradients equal the single-process ones. The launch and the references are in ``conftest.py``
(shared with the FSDP tests, test_fsdp.py).
"""

from __future__ import annotations

import pytest
import torch

ATOL = 1e-5
DDP_RUNS = ["token-static", "token-dynamic", "token-packed", "sequence-packed", "budget-packed", "budget-dynamic"]


@pytest.mark.parametrize("name", DDP_RUNS)
def test_two_processes_train_like_one(two_process_results, one_process_result, name):
    two, one = two_process_results[name], one_process_result(name)
    assert two["distributed_type"] == "DistributedType.MULTI_CPU" and not two["fsdp_sharded"]
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

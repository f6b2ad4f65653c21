"""Fully sharded training (FSDP2) on 2 CPU processes ends where the single-process run of the same global batches
ends: a stock grouped-query decoder (Llama, ``attn_implementation="dynmask_varlen"``) and a DynMask encoder, in
static, dynamic and packed batches, with token-budget batches, gradient accumulation and activation checkpointing;
sharded checkpoints resume on the same loss curve, and the final save loads with ``from_pretrained``.

Launched once for this file and test_distributed.py (``conftest.py``)::

    OMP_NUM_THREADS=1 python -m torch.distributed.run --standalone --nproc_per_node 2 \\
        tests/training/distributed_train.py OUT_DIR

FSDP comes from the Trainer's own arguments, ``TrainingArguments(fsdp=True, fsdp_config={"version": 2, ...})``.
accelerate honours them only on accelerator devices and falls back to DDP on CPU; the script sets the FSDP state a
GPU launch gets (``LabelCountingTrainer.create_accelerator_and_postprocess``), and every test here checks that the
model really was sharded, so a silent fall-back to DDP fails them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

import hf_dynmask  # noqa: F401  (registers the dynmask_varlen attention)

ATOL = 1e-5
FSDP_RUNS = [
    "fsdp-encoder-static",
    "fsdp-encoder-dynamic",
    "fsdp-encoder-packed",
    "fsdp-encoder-packed-checkpointing",
    "fsdp-decoder-static",
    "fsdp-decoder-dynamic",
    "fsdp-decoder-packed",
    "fsdp-decoder-packed-checkpointing",
]


def assert_sharded(result: dict) -> None:
    """FSDP2 really ran: every parameter a DTensor shard, each rank holding about half of them."""
    assert result["distributed_type"] == "DistributedType.FSDP"
    assert result["fsdp_sharded"]
    assert result["fsdp_fraction_held"] < 0.6


def assert_same_params(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, atol=ATOL, rtol=0, msg=key)


def test_every_fsdp_run_is_listed(script):
    assert sorted(FSDP_RUNS) == sorted(name for name, run in script.RUNS.items() if run.fsdp)


@pytest.mark.parametrize("name", FSDP_RUNS)
def test_fsdp_trains_like_one_process(script, two_process_results, one_process_result, name):
    run, two, one = script.RUNS[name], two_process_results[name], one_process_result(name)
    assert_sharded(two)
    assert two["fsdp_checkpoint_wrapped"] == (run.checkpointing == "fsdp")
    assert two["gradient_checkpointing"] == (run.checkpointing == "trainer")
    assert not (one["fsdp_sharded"] or one["fsdp_checkpoint_wrapped"] or one["gradient_checkpointing"])
    assert_same_params(two["params"], one["params"])
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-5)
    assert len(two["losses"]) == script.STEPS
    assert two["real_tokens"] == one["real_tokens"]
    # The ranks saw different numbers of label tokens, and together those of the single process: the loss of each
    # step is normalized by the label tokens of the whole step over both ranks, not per rank.
    per_rank = two["label_tokens_per_rank"]
    assert per_rank[0] != per_rank[1]
    assert sum(per_rank) == one["label_tokens"]


@pytest.mark.parametrize("model", ["encoder", "decoder"])
def test_fsdp_layouts_agree(two_process_results, model):
    """Static, dynamic and packed batches (the same examples per step) train the same model under FSDP."""
    packed = two_process_results[f"fsdp-{model}-packed"]["params"]
    for mode in ("static", "dynamic"):
        assert_same_params(two_process_results[f"fsdp-{model}-{mode}"]["params"], packed)


def test_sharded_checkpoint_resumes_on_the_same_loss_curve(script, two_process_results):
    result = two_process_results["checkpoint"]
    assert_sharded(result)
    # Sharded: each rank wrote its own part of the model and of the optimizer (torch.distributed.checkpoint), and
    # no whole-model file.
    files = result["checkpoint_files"]
    for folder in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert {f"{folder}/__0_0.distcp", f"{folder}/__1_0.distcp", f"{folder}/.metadata"} <= set(files)
    assert not any(name.endswith((".safetensors", ".bin")) for name in files)
    straight, resumed = result["straight_losses"], result["resumed_losses"]
    steps = list(range(1, script.CHECKPOINT_STEPS + 1))
    assert sorted(straight) == sorted(resumed) == steps
    # The resumed trainer started from a differently initialised model and computed the steps after the checkpoint
    # itself (AdamW moments, the linear schedule and the batch order came from the checkpoint).
    assert [resumed[s] for s in steps] == pytest.approx([straight[s] for s in steps], abs=1e-5)
    assert_same_params(result["resumed_params"], result["straight_params"])


def test_final_save_loads_like_any_model(script, two_process_dir, two_process_results):
    trained = two_process_results["checkpoint"]["resumed_params"]
    model = AutoModelForCausalLM.from_pretrained(two_process_dir / "fsdp-final", attn_implementation="dynmask_varlen")
    assert type(model) is LlamaForCausalLM
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    assert_same_params(model.state_dict(), trained)
    # It trains and predicts as any stock model: a packed batch gives the loss of the padded one.
    tok = script.tokenizer()
    features = [dict(row) for row in script.dataset("causal-lm").select(range(6))]
    losses = {}
    for mode in ("dynamic", "packed"):
        batch = script.make_collator(tok, "causal-lm", mode)(features)
        with torch.no_grad():
            losses[mode] = model(**batch).loss.item()
    assert losses["packed"] == pytest.approx(losses["dynamic"], abs=1e-5)


def test_readme_quotes_the_launch(script):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert f"OMP_NUM_THREADS=1 {script.LAUNCH} OUT_DIR" in readme

"""Seq2seq training with transformers' Seq2SeqTrainer and with DynMaskTrainer (token budgets): the same parameters in
every mode, and ``predict_with_generate`` evaluation.

A tiny DynMask encoder-decoder (Marian-style, dropout 0) trains a few SGD steps with gradient accumulation on
random pairs; static, dynamic and packed batches of the same examples must end with the same parameters (fp32
round-off, atol 1e-5), which holds only if every accumulated step's loss is normalized over the same labels.
"""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

from hf_dynmask import DynMaskSeq2SeqConfig, DynMaskSeq2SeqForConditionalGeneration, make_collator
from hf_dynmask.training.checks import check_packed_support
from hf_dynmask.training.trainer import DynMaskTrainer, DynMaskTrainingArguments

ATOL = 1e-5
PAD, EOS, START = 1, 2, 0
MODES = ("static", "dynamic", "packed")
MAX_SOURCE, MAX_TARGET = 20, 12
CONFIG = dict(
    seq2seq_style="marian",
    vocab_size=40,
    d_model=16,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    encoder_ffn_dim=32,
    decoder_ffn_dim=32,
    max_position_embeddings=32,
    dropout=0.0,
    scale_embedding=True,
    pad_token_id=PAD,
    eos_token_id=EOS,
    bos_token_id=None,
    decoder_start_token_id=START,
    forced_eos_token_id=None,
)
TOKENIZER = SimpleNamespace(pad_token_id=PAD, padding_side="right", truncation_side="right", pad_token_type_id=0)


pytestmark = pytest.mark.usefixtures("one_thread")


def pairs_dataset(n: int = 32, seed: int = 0) -> datasets.Dataset:
    """Sources of 1..20 tokens, targets of 1..12 tokens ending in EOS (a reversed, shifted copy of the source)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        source = [rng.randrange(3, 40) for _ in range(rng.randint(1, MAX_SOURCE - 1))] + [EOS]
        target = [(t + 1) % 37 + 3 for t in reversed(source[:-1])][: MAX_TARGET - 1] + [EOS]
        rows.append({"input_ids": source, "labels": target, "length": len(source)})
    return datasets.Dataset.from_list(rows)


def model_for(mode: str) -> DynMaskSeq2SeqForConditionalGeneration:
    torch.manual_seed(0)
    config = DynMaskSeq2SeqConfig(**CONFIG, masking="static" if mode == "static" else "dynamic")
    return DynMaskSeq2SeqForConditionalGeneration(config)


def collator_for(mode: str):
    options = {"max_length": MAX_SOURCE, "max_target_length": MAX_TARGET} if mode == "static" else {}
    return make_collator(TOKENIZER, "seq2seq", mode=mode, decoder_start_token_id=START, **options)


def args_values(tmp_path: Path, **overrides) -> dict:
    values = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        max_steps=3,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
    )
    values.update(overrides)
    return values


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=ATOL, rtol=0, msg=lambda m, key=key: f"{key}: {m}")


def losses(trainer) -> list[float]:
    return [log["loss"] for log in trainer.state.log_history if "loss" in log]


@pytest.mark.parametrize("trainer_name", ["Seq2SeqTrainer", "DynMaskTrainer"])
def test_every_mode_trains_the_same_parameters(tmp_path, trainer_name):
    """Seq2SeqTrainer with batches of 4 pairs, DynMaskTrainer with token-budget batches (the same pairs in every
    mode: the budget counts real source tokens), both with gradient accumulation."""
    initial = params(model_for("dynamic"))
    results, curves = {}, {}
    for mode in MODES:
        model = model_for(mode)
        if trainer_name == "Seq2SeqTrainer":
            args = Seq2SeqTrainingArguments(**args_values(tmp_path))
            trainer = Seq2SeqTrainer(
                model=model, args=args, train_dataset=pairs_dataset(), data_collator=collator_for(mode)
            )
        else:
            args = DynMaskTrainingArguments(**args_values(tmp_path, token_budget=48, token_budget_cost="packed"))
            trainer = DynMaskTrainer(
                model=model, args=args, train_dataset=pairs_dataset(), data_collator=collator_for(mode)
            )
        trainer.train()
        results[mode], curves[mode] = params(model), losses(trainer)
    moved = max((results["packed"][k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 1e-3  # the test can fail: training changed the parameters
    assert_same_params(results["static"], results["dynamic"])
    assert_same_params(results["static"], results["packed"])
    np.testing.assert_allclose(curves["static"], curves["packed"], atol=1e-5)
    np.testing.assert_allclose(curves["dynamic"], curves["packed"], atol=1e-5)
    assert len(curves["packed"]) == 3


def test_gradient_accumulation_normalizes_over_the_whole_step(tmp_path):
    """2 accumulated micro-batches of 4 pairs == one batch of 8: the loss is divided by the labels of the step."""
    trained = {}
    for mode, overrides in (
        ("packed", {}),
        ("dynamic", dict(per_device_train_batch_size=8, gradient_accumulation_steps=1)),
    ):
        model = model_for(mode)
        args = Seq2SeqTrainingArguments(**args_values(tmp_path, **overrides))
        Seq2SeqTrainer(model=model, args=args, train_dataset=pairs_dataset(), data_collator=collator_for(mode)).train()
        trained[mode] = params(model)
    assert_same_params(trained["packed"], trained["dynamic"])


def test_predict_with_generate_evaluation(tmp_path):
    """Evaluation by generation with a padded collator: the trainer's predictions are the model's own generate()
    on the same batches; packed batches refuse generation with a clear error (evaluate them with a padded collator)."""
    model = model_for("dynamic")
    eval_data = pairs_dataset(n=10, seed=1)
    seen = {}

    def compute_metrics(prediction):
        seen["predictions"], seen["labels"] = prediction.predictions, prediction.label_ids
        return {
            "exact": float(
                np.mean(
                    [
                        np.array_equal(p, lab)
                        for p, lab in zip(prediction.predictions, prediction.label_ids, strict=True)
                    ]
                )
            )
        }

    values = args_values(tmp_path, predict_with_generate=True, generation_max_length=8, per_device_eval_batch_size=4)
    trainer = Seq2SeqTrainer(
        model=model,
        args=Seq2SeqTrainingArguments(**values),
        train_dataset=pairs_dataset(),
        eval_dataset=eval_data,
        data_collator=collator_for("packed"),
        compute_metrics=compute_metrics,
    )
    trainer.train()
    with pytest.raises(ValueError, match="generate\\(\\) takes padded input"):
        trainer.evaluate()
    trainer.data_collator = collator_for("dynamic")
    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_exact"} <= set(metrics)
    assert seen["predictions"].shape[0] == len(eval_data)
    batch = collator_for("dynamic")([eval_data[i] for i in range(4)])
    model.eval()
    expected = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_length=8)
    got = seen["predictions"][:4, : expected.shape[1]]
    np.testing.assert_array_equal(got, expected.numpy())
    # the evaluation loss is the same with packed batches (no generation)
    loss_only = Seq2SeqTrainer(
        model=model,
        args=Seq2SeqTrainingArguments(**args_values(tmp_path, per_device_eval_batch_size=4)),
        eval_dataset=eval_data,
        data_collator=collator_for("packed"),
    ).evaluate()
    np.testing.assert_allclose(loss_only["eval_loss"], metrics["eval_loss"], atol=1e-5)


def test_packed_batches_need_the_dynmask_family(tmp_path):
    """DynMaskTrainer takes a packed seq2seq collator with a DynMask model, and refuses it with a stock BART (which
    would attend across the pairs of a packed row)."""
    from transformers import BartConfig, BartForConditionalGeneration

    check_packed_support(model_for("packed"))
    sizes = {k: v for k, v in CONFIG.items() if k not in ("seq2seq_style",)}
    stock = BartForConditionalGeneration(BartConfig(**sizes))
    args = DynMaskTrainingArguments(**args_values(tmp_path))
    with pytest.raises(ValueError, match="cannot take packed batches"):
        DynMaskTrainer(model=stock, args=args, train_dataset=pairs_dataset(), data_collator=collator_for("packed"))

"""hf_dynmask.training.checks: which models and collators may meet, decided before the first step.

Accepted: every verified family x tested head on ``dynmask_varlen`` (built on the meta device: nothing is computed,
only classes and configs are read). Refused, each with what to use instead: DeBERTa-v2, T5, BART, Marian and unknown
models; stock sequence-classification heads (with or without labels, in ``DynMaskTrainer`` and in a stock ``Trainer``
with ``PaddingStatsCallback``); stock attention; encoders under a collator that marks sequences only by restarting
``position_ids``; a collator whose first position is not the model's (RoBERTa numbers from ``padding_idx + 1``).
"""

from __future__ import annotations

from types import SimpleNamespace

import datasets
import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    DataCollatorWithFlattening,
    Trainer,
    TrainingArguments,
)

import hf_dynmask  # noqa: F401  (registers dynmask_varlen)
from hf_dynmask import DynMaskConfig, make_collator
from hf_dynmask.modeling.families import VERIFIED_FAMILIES, head_of, position_start_of
from hf_dynmask.modeling.modeling_dynmask import DynMaskForTokenClassification
from hf_dynmask.training.callbacks import PaddingStatsCallback
from hf_dynmask.training.checks import (
    check_collator_for_model,
    check_packed_support,
    collator_for_model,
    collator_mode,
    unwrap_collator,
)
from hf_dynmask.training.trainer import DynMaskTrainer

AUTO_CLASSES = {
    "base": AutoModel,
    "causal-lm": AutoModelForCausalLM,
    "masked-lm": AutoModelForMaskedLM,
    "token-classification": AutoModelForTokenClassification,
}
MODEL_TYPES = {"xlm_roberta": "xlm-roberta", "deberta_v2": "deberta-v2"}  # model folder -> model_type
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100)
SEQ2SEQ = dict(
    d_model=32,
    encoder_layers=1,
    decoder_layers=1,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    vocab_size=100,
    decoder_vocab_size=100,
    pad_token_id=0,
)


def on_meta(family: str, auto=AutoModel, attn: str = "dynmask_varlen", **settings) -> torch.nn.Module:
    """A model of ``family`` at its default size, on the meta device (no memory, no compute)."""
    config = AutoConfig.for_model(MODEL_TYPES.get(family, family), **settings)
    with torch.device("meta"):
        return auto.from_config(config, attn_implementation=attn)


class _Tokenizer(SimpleNamespace):
    """What a collator reads from a tokenizer, for token ids that need no vocabulary."""

    pad_token_id = 0
    padding_side = "right"
    truncation_side = "right"


def args(tmp_path, **kwargs) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        max_steps=1,
        per_device_train_batch_size=4,
        save_strategy="no",
        **kwargs,
    )


def token_rows(n: int = 8) -> datasets.Dataset:
    generator = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        ids = torch.randint(3, 100, (3 + i % 5,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": [i % 3] * len(ids), "label": i % 2})
    return datasets.Dataset.from_list(rows)


# --------------------------------------------------------------------------------------------------------------------
# check_packed_support
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(VERIFIED_FAMILIES))
def test_every_verified_head_is_accepted_and_pooling_heads_are_not(family):
    info = VERIFIED_FAMILIES[family]
    for head in info.heads:
        model = on_meta(family, AUTO_CLASSES[head], num_hidden_layers=1)
        assert head_of(model) == head
        check_packed_support(model)
        if info.decoder:
            check_packed_support(model, boundaries="position_ids")
        else:
            with pytest.raises(ValueError, match="is an encoder: its packed rows need stated boundaries"):
                check_packed_support(model, boundaries="position_ids")
    pooled = on_meta(family, AutoModelForSequenceClassification, num_hidden_layers=1)
    with pytest.raises(ValueError, match="pools or indexes whole rows.*Use dynamic padding"):
        check_packed_support(pooled)


@pytest.mark.parametrize(
    "family, settings, reason",
    [
        ("deberta_v2", SMALL, "never calls transformers' attention interface"),
        ("t5", dict(d_model=32, d_kv=8, num_heads=4, num_layers=1, d_ff=64, vocab_size=100), "relative position bias"),
        ("bart", SEQ2SEQ, "numbered over the whole row"),
        ("marian", SEQ2SEQ, "numbered over the whole row"),
        ("opt", dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, ffn_dim=64), "not verified"),
    ],
)
def test_unverified_families_are_refused_with_what_to_do(family, settings, reason):
    # Loaded with dynmask_varlen they are refused at load (tests/modeling/test_attention.py); the Trainer's check
    # sees the same models on their stock backends.
    with pytest.raises(ValueError, match=f"is not verified on .*({reason}|varlen kernel does not honour)"):
        on_meta(family, **settings)
    model = on_meta(family, attn="eager", **settings)
    with pytest.raises(ValueError, match=f"{reason}.*Use dynamic padding instead: make_collator"):
        check_packed_support(model)


def test_models_it_cannot_see_into_are_refused():
    class Custom(torch.nn.Module):
        config = SimpleNamespace(_attn_implementation="dynmask_varlen")

    with pytest.raises(ValueError, match="neither a DynMask model nor a stock transformers model"):
        check_packed_support(Custom())
    # A subclass that changes forward is not the tested head.
    base = type(on_meta("llama", AutoModelForCausalLM, num_hidden_layers=1))
    changed = type("MyLlama", (base,), {"forward": lambda self, **kwargs: None})
    with torch.device("meta"):
        model = changed(AutoConfig.for_model("llama", num_hidden_layers=1))
    model.config._attn_implementation = "dynmask_varlen"
    assert head_of(model) is None
    with pytest.raises(ValueError, match="pools or indexes whole rows"):
        check_packed_support(model)


def test_wrapped_models_are_seen_through():
    model = on_meta("qwen2", AutoModelForCausalLM, num_hidden_layers=1)
    check_packed_support(torch.compile(model))
    with pytest.raises(ValueError, match="Qwen2ForSequenceClassification cannot take packed batches"):
        check_packed_support(torch.compile(on_meta("qwen2", AutoModelForSequenceClassification, num_hidden_layers=1)))


def test_stock_attention_is_refused():
    with pytest.raises(ValueError, match="attn_implementation='sdpa' ignores the boundaries"):
        check_packed_support(on_meta("llama", AutoModelForCausalLM, attn="sdpa", num_hidden_layers=1))


# --------------------------------------------------------------------------------------------------------------------
# Collators: packed, flattened, position starts
# --------------------------------------------------------------------------------------------------------------------


def test_flattening_without_boundaries_is_not_packed():
    """Without return_flash_attn_kwargs a flattened row marks sequences by restarting position_ids only: a causal
    decoder on dynmask_varlen reads them exactly; an encoder never guesses them, and a DynMask model refuses them."""
    bare, stated = DataCollatorWithFlattening(), DataCollatorWithFlattening(return_flash_attn_kwargs=True)
    assert (collator_mode(bare), collator_mode(stated)) == ("flattened", "packed")
    decoder = on_meta("llama", AutoModelForCausalLM, num_hidden_layers=1)
    check_collator_for_model(decoder, bare)
    check_collator_for_model(decoder, stated)
    encoder = on_meta("bert", AutoModelForTokenClassification, num_hidden_layers=1)
    check_collator_for_model(encoder, stated)
    with pytest.raises(ValueError, match="encoder: its packed rows need stated boundaries"):
        check_collator_for_model(encoder, bare)
    dynmask = DynMaskForTokenClassification(DynMaskConfig(**SMALL, num_labels=3))
    check_collator_for_model(dynmask, stated)
    with pytest.raises(ValueError, match="refuses rows marked only by restarting position_ids"):
        check_collator_for_model(dynmask, bare)
    with pytest.raises(ValueError, match="return_position_ids=False"):
        check_collator_for_model(decoder, DataCollatorWithFlattening(return_position_ids=False))


def test_trl_padding_free_collator_is_flattened():
    trl = pytest.importorskip("trl")
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    assert trl.__version__
    assert collator_mode(DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)) == "flattened"
    assert collator_mode(DataCollatorForLanguageModeling(pad_token_id=0)) == "dynamic"


def test_roberta_position_start_follows_the_model_or_is_refused():
    roberta = on_meta("roberta", AutoModelForTokenClassification, num_hidden_layers=1, pad_token_id=1)
    assert position_start_of(roberta.config) == 2
    collator = make_collator(_Tokenizer(), "token-classification", "packed")
    assert check_collator_for_model(roberta, collator) == 2  # the model's first position, returned
    assert collator.position_start is None  # the check changes nothing
    for_model = collator_for_model(roberta, collator)
    assert collator.position_start is None and for_model is not collator and for_model.position_start == 2
    features = [{"input_ids": [5, 6, 7], "labels": [0, 1, 2]}, {"input_ids": [8, 9], "labels": [1, 1]}]
    assert for_model(features)["position_ids"].tolist() == [[2, 3, 4, 2, 3]]
    assert collator(features)["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    given = make_collator(_Tokenizer(), "token-classification", "packed", position_start=2)
    assert collator_for_model(roberta, given) is given  # nothing to change: the same object
    assert check_collator_for_model(roberta, make_collator(_Tokenizer(), "token-classification")) is None
    wrong = make_collator(_Tokenizer(), "token-classification", "packed", position_start=0)
    with pytest.raises(
        ValueError, match="numbers positions from 0 but RobertaForTokenClassification numbers them from 2"
    ):
        check_collator_for_model(roberta, wrong)
    with pytest.raises(ValueError, match="set position_ids_start=2"):
        check_collator_for_model(roberta, DataCollatorWithFlattening(return_flash_attn_kwargs=True))
    check_collator_for_model(roberta, DataCollatorWithFlattening(return_flash_attn_kwargs=True, position_ids_start=2))
    bert = on_meta("bert", AutoModelForTokenClassification, num_hidden_layers=1)
    with pytest.raises(
        ValueError, match="numbers positions from 2 but BertForTokenClassification numbers them from 0"
    ):
        check_collator_for_model(bert, make_collator(_Tokenizer(), "token-classification", "packed", position_start=2))


# --------------------------------------------------------------------------------------------------------------------
# In the Trainer, before the first step
# --------------------------------------------------------------------------------------------------------------------


def tiny(family: str, auto, **settings) -> torch.nn.Module:
    config = AutoConfig.for_model(MODEL_TYPES.get(family, family), **{**SMALL, "num_labels": 3, **settings})
    torch.manual_seed(0)
    return auto.from_config(config, attn_implementation="dynmask_varlen")


@pytest.mark.parametrize("with_labels", [True, False], ids=["labels", "no-labels"])
def test_stock_sequence_classification_refuses_a_packed_collator(tmp_path, with_labels):
    model = tiny("llama", AutoModelForSequenceClassification, num_key_value_heads=2, pad_token_id=0)
    collator = make_collator(_Tokenizer(), "sequence-classification", "packed")
    data = token_rows().remove_columns(["labels"] + ([] if with_labels else ["label"]))
    kwargs = {"train_dataset": data} if with_labels else {"eval_dataset": data}
    with pytest.raises(ValueError, match="LlamaForSequenceClassification cannot take packed batches.*dynamic"):
        DynMaskTrainer(model=model, args=args(tmp_path), data_collator=collator, **kwargs)


def test_a_stock_trainer_with_the_callback_refuses_a_position_mismatch(tmp_path):
    model = tiny("roberta", AutoModelForTokenClassification, pad_token_id=1, max_position_embeddings=64)
    collator = make_collator(_Tokenizer(), "token-classification", "packed", position_start=0)
    trainer = Trainer(
        model=model,
        args=args(tmp_path),
        train_dataset=token_rows().remove_columns("label"),
        data_collator=collator,
        callbacks=[PaddingStatsCallback()],
    )
    with pytest.raises(ValueError, match="numbers positions from 0 but RobertaForTokenClassification"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_dynmask_trainer_gives_an_unset_position_start_the_models(tmp_path):
    """RoBERTa trains packed with the collator's default: the trainer numbers positions from padding_idx + 1 (with 0
    the attention would refuse the first batch), with a copy of the collator; the caller's is not changed."""
    model = tiny("roberta", AutoModelForTokenClassification, pad_token_id=1, max_position_embeddings=64)
    collator = make_collator(_Tokenizer(), "token-classification", "packed")
    trainer = DynMaskTrainer(
        model=model, args=args(tmp_path), train_dataset=token_rows().remove_columns("label"), data_collator=collator
    )
    assert unwrap_collator(trainer.data_collator).position_start == 2
    trainer.train()
    assert trainer.state.global_step == 1
    assert collator.position_start is None


def test_a_stock_trainer_with_the_callback_numbers_positions_from_the_models_start(tmp_path):
    """The callback gives the training DataLoader a collator that follows the model, through the Trainer's wrappers
    and PaddingStatsCallback.wrap, and leaves the caller's collator (and its wrapper) unchanged."""
    model = tiny("roberta", AutoModelForTokenClassification, pad_token_id=1, max_position_embeddings=64)
    collator = make_collator(_Tokenizer(), "token-classification", "packed")
    stats = PaddingStatsCallback()
    wrapped = stats.wrap(collator)
    trainer = Trainer(
        model=model,
        args=args(tmp_path),
        train_dataset=token_rows().remove_columns("label"),
        data_collator=wrapped,
        callbacks=[stats],
    )
    trainer.train()
    assert trainer.state.global_step == 1
    assert collator.position_start is None and wrapped.collator is collator
    assert stats.real_tokens > 0  # the copied wrapper still counts into the callback

"""hf_dynmask.training (trainer, callbacks, checks): one training in every mode, token budgets, resume, errors.

A tiny DynMask model (hidden 32, 2 layers, dropout 0) trains for a few SGD steps with gradient accumulation; the
final parameters must agree across static / dynamic / packed batches (fp32 round-off, atol 1e-5), which holds only
if the loss of every accumulated step is normalized the same way in every layout.
"""

from __future__ import annotations

import logging
import platform
import random
from pathlib import Path

import datasets
import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertTokenizer,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
)

import hf_dynmask  # noqa: F401  (registers the dynmask_varlen attention)
from hf_dynmask import DynMaskConfig, make_collator
from hf_dynmask.data.packing import TokenBudgetBatchSampler
from hf_dynmask.modeling.modeling_dynmask import (
    DynMaskForMaskedLM,
    DynMaskForSequenceClassification,
    DynMaskForTokenClassification,
)
from hf_dynmask.sharing.model_card import FrameworkVersions, TrainingSummary
from hf_dynmask.training.callbacks import PaddingStatsCallback, SetEpochCallback
from hf_dynmask.training.checks import check_packed_support, check_training_labels, collator_mode, unwrap_collator
from hf_dynmask.training.trainer import DynMaskTrainer, DynMaskTrainingArguments

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(60)]
PAD, CLS, SEP = 0, 2, 3
NUM_LABELS = 3
MAX_LEN = 20
ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> BertTokenizer:
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(VOCAB))
    return BertTokenizer(vocab_file=str(path))


def make_rows(n: int = 48, seed: int = 0) -> list[dict]:
    """Examples of 3..20 tokens ([CLS] words [SEP]) with per-token labels (-100 on specials) and a class label."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.randint(1, MAX_LEN - 2)
        ids = [CLS] + [rng.randrange(5, len(VOCAB)) for _ in range(words)] + [SEP]
        tags = [-100] + [rng.randrange(NUM_LABELS) for _ in range(words)] + [-100]
        rows.append({"input_ids": ids, "tags": tags, "label": rng.randrange(NUM_LABELS), "length": len(ids)})
    return rows


def dataset_for(task: str, n: int = 48) -> datasets.Dataset:
    rows = make_rows(n)
    if task == "token-classification":
        rows = [{"input_ids": r["input_ids"], "labels": r["tags"], "length": r["length"]} for r in rows]
    elif task == "sequence-classification":
        rows = [{"input_ids": r["input_ids"], "label": r["label"], "length": r["length"]} for r in rows]
    else:
        rows = [{"input_ids": r["input_ids"], "length": r["length"]} for r in rows]
    return datasets.Dataset.from_list(rows)


CONFIG = dict(
    vocab_size=len(VOCAB),
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    max_position_embeddings=64,
    num_labels=NUM_LABELS,
)
MODEL_CLASSES = {
    "token-classification": DynMaskForTokenClassification,
    "sequence-classification": DynMaskForSequenceClassification,
    "masked-lm": DynMaskForMaskedLM,
}


def dynmask_model(task: str, **config) -> torch.nn.Module:
    torch.manual_seed(0)
    return MODEL_CLASSES[task](DynMaskConfig(**{**CONFIG, **config}))


def training_args(tmp_path: Path, **overrides) -> DynMaskTrainingArguments:
    values = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        max_steps=3,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=0.1,
        optim="sgd",
        lr_scheduler_type="constant",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
    )
    values.update(overrides)
    return DynMaskTrainingArguments(**values)


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=ATOL, rtol=0, msg=lambda m, key=key: f"{key}: {m}")


def train(
    tok, tmp_path, task: str, mode: str, *, trainer_cls=DynMaskTrainer, model=None, collator_options=None, **args
):
    model = model if model is not None else dynmask_model(task)
    collator = make_collator(tok, task, mode, max_length=MAX_LEN, **(collator_options or {}))
    trainer = trainer_cls(
        model=model, args=training_args(tmp_path, **args), train_dataset=dataset_for(task), data_collator=collator
    )
    trainer.train()
    return trainer, params(model)


# --------------------------------------------------------------------------------------------------------------------
# The same training in every mode
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["token-classification", "sequence-classification", "masked-lm"])
def test_modes_train_the_same_parameters(tok, tmp_path, task):
    options = {"mlm_masking": "static"} if task == "masked-lm" else None
    initial = params(dynmask_model(task))
    results = {
        mode: train(tok, tmp_path, task, mode, collator_options=options)[1] for mode in ("static", "dynamic", "packed")
    }
    moved = max((results["static"][k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 1e-3  # the test can fail: training changed the parameters
    assert_same_params(results["static"], results["dynamic"])
    assert_same_params(results["static"], results["packed"])


def test_stock_trainer_one_argument_switch(tok, tmp_path):
    """A stock transformers.Trainer: only the collator changes between runs."""
    results = {
        mode: train(tok, tmp_path, "token-classification", mode, trainer_cls=Trainer)[1]
        for mode in ("static", "dynamic", "packed")
    }
    assert_same_params(results["static"], results["dynamic"])
    assert_same_params(results["static"], results["packed"])


def test_gradient_accumulation_normalizes_over_the_whole_step(tok, tmp_path):
    """2 accumulated micro-batches of 4 == one batch of 8: the loss is divided by the labels of the whole step."""
    _, accumulated = train(tok, tmp_path, "token-classification", "packed")
    _, whole = train(
        tok, tmp_path, "token-classification", "dynamic", per_device_train_batch_size=8, gradient_accumulation_steps=1
    )
    assert_same_params(accumulated, whole)


def test_stock_bert_keeps_working_static_and_dynamic(tok, tmp_path):
    config = BertConfig(**CONFIG)
    results = {}
    for mode in ("static", "dynamic"):
        torch.manual_seed(0)
        model = BertForSequenceClassification(config)
        results[mode] = train(tok, tmp_path, "sequence-classification", mode, trainer_cls=Trainer, model=model)[1]
    assert_same_params(results["static"], results["dynamic"])


# --------------------------------------------------------------------------------------------------------------------
# Token-budget batches
# --------------------------------------------------------------------------------------------------------------------


def test_token_budget_batches_same_training_in_every_mode(tok, tmp_path):
    """With the same token-budget batches (cost 'packed'), padded and packed layouts train the same parameters."""
    trainers, results = {}, {}
    for mode in ("static", "dynamic", "packed"):
        trainers[mode], results[mode] = train(
            tok, tmp_path, "token-classification", mode, token_budget=32, token_budget_cost="packed"
        )
    assert_same_params(results["packed"], results["dynamic"])
    assert_same_params(results["packed"], results["static"])
    loader = trainers["packed"].get_train_dataloader()
    sampler = loader.batch_sampler
    assert isinstance(sampler, TokenBudgetBatchSampler)
    lengths = dataset_for("token-classification")["length"]
    batches = sampler.epoch_batches(0)
    assert sorted(i for b in batches for i in b) == list(range(48))  # every example once per epoch
    assert all(sum(lengths[i] for i in b) <= 32 for b in batches)
    assert max(sum(lengths[i] for i in b) for b in batches) > 20  # more than one sequence per batch
    for batch in loader:
        assert batch["input_ids"].shape[0] == 1 and batch["input_ids"].shape[1] <= 32
        assert "attention_mask" not in batch


def test_token_budget_cost_follows_the_collator(tok, tmp_path):
    data = dataset_for("token-classification")
    for mode, cost in (("packed", "packed"), ("dynamic", "padded")):
        trainer = DynMaskTrainer(
            model=dynmask_model("token-classification"),
            args=training_args(tmp_path, token_budget=40),
            train_dataset=data,
            data_collator=make_collator(tok, "token-classification", mode),
        )
        sampler = trainer.get_train_dataloader().batch_sampler
        assert sampler.cost == cost
        if mode == "dynamic":
            for batch in trainer.get_train_dataloader():
                assert batch["input_ids"].numel() <= 40


def test_token_budget_length_from_input_ids_without_length_column(tok, tmp_path):
    data = dataset_for("token-classification").remove_columns("length")
    trainer = DynMaskTrainer(
        model=dynmask_model("token-classification"),
        args=training_args(tmp_path, token_budget=32),
        train_dataset=data,
        data_collator=make_collator(tok, "token-classification", "packed"),
    )
    expected = [len(ids) for ids in data["input_ids"]]
    assert trainer.get_train_dataloader().batch_sampler.lengths.tolist() == expected


def test_streaming_dataset_packs_on_the_fly(tok, tmp_path):
    """An IterableDataset: token-budget batches in stream order, the same training packed or padded."""
    results = {}
    for mode in ("packed", "dynamic"):
        stream = dataset_for("token-classification").remove_columns("length").to_iterable_dataset()
        trainer = DynMaskTrainer(
            model=dynmask_model("token-classification"),
            args=training_args(tmp_path, token_budget=32, token_budget_cost="packed"),
            train_dataset=stream,
            data_collator=make_collator(tok, "token-classification", mode),
        )
        trainer.train()
        results[mode] = params(trainer.model)
        assert trainer.state.global_step == 3
        if mode == "packed":
            first = next(iter(trainer.get_train_dataloader()))
            lengths = [len(ids) for ids in dataset_for("token-classification")["input_ids"]]
            expected, total = 0, 0
            for n in lengths:  # greedy next-fit in stream order
                if total + n > 32:
                    break
                expected, total = expected + 1, total + n
            assert first["input_ids"].shape == (1, total)
            assert first["cu_seq_lens_q"].numel() == expected + 1
    assert_same_params(results["packed"], results["dynamic"])


# --------------------------------------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------------------------------------


def test_packed_resume_continues_the_same_data_and_loss(tok, tmp_path):
    """A packed token-budget run stopped at a checkpoint and resumed ends where the uninterrupted run ends.

    24 examples at a budget of 32 make about 9 batches, 4 optimizer steps per epoch: the checkpoint at step 5 is in
    the second epoch, so the resumed run must also restore the epoch's order, not only skip batches.
    """
    data = dataset_for("token-classification", n=24)
    common = dict(token_budget=32, max_steps=7, save_strategy="steps", save_steps=5)

    def run(output: str, resume: str | None = None):
        trainer = DynMaskTrainer(
            model=dynmask_model("token-classification"),
            args=training_args(tmp_path, **{**common, "output_dir": str(tmp_path / output)}),
            train_dataset=data,
            data_collator=make_collator(tok, "token-classification", "packed"),
        )
        trainer.train(resume_from_checkpoint=resume)
        losses = {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}
        return trainer, losses

    full, full_losses = run("full")
    steps_per_epoch = len(full.get_train_dataloader()) // 2
    assert steps_per_epoch < 5 < 2 * steps_per_epoch  # the checkpoint is inside epoch 1
    resumed, resumed_losses = run("resumed", resume=str(tmp_path / "full" / "checkpoint-5"))
    assert_same_params(params(full.model), params(resumed.model))
    assert sorted(resumed_losses) == list(range(1, 8))  # steps 1-5 from the checkpoint's log history
    for step in range(1, 8):
        assert resumed_losses[step] == pytest.approx(full_losses[step], abs=1e-6)
    # The callback's totals are checkpointed: the resumed run's totals cover the whole run.
    assert resumed.padding_stats.totals()["real_tokens"] == full.padding_stats.totals()["real_tokens"]
    assert resumed.padding_stats.totals()["train_steps"] == 7


# --------------------------------------------------------------------------------------------------------------------
# Visibility: the callback
# --------------------------------------------------------------------------------------------------------------------


def test_padding_stats_in_every_training_log(tok, tmp_path):
    padded, _ = train(tok, tmp_path, "token-classification", "static")
    packed, _ = train(tok, tmp_path, "token-classification", "packed")
    for trainer, efficiency in ((padded, None), (packed, 1.0)):
        logs = [e for e in trainer.state.log_history if "loss" in e]
        assert len(logs) == 3
        for entry in logs:
            assert entry["real_tokens_per_second"] > 0
            if efficiency is None:
                assert 0 < entry["padding_efficiency"] < 1
            else:
                assert entry["padding_efficiency"] == efficiency
    # 3 steps x 2 micro-batches x 4 examples = the first 24 examples of the shuffled order, in both runs.
    lengths = dataset_for("token-classification")["length"]
    real = packed.padding_stats.totals()["real_tokens"]
    assert padded.padding_stats.totals()["real_tokens"] == real
    assert padded.padding_stats.totals()["padded_tokens"] == 6 * 4 * MAX_LEN  # static: 4 rows of 20 per batch
    assert packed.padding_stats.totals()["padded_tokens"] == real
    assert sum(sorted(lengths)[:24]) <= real <= sum(sorted(lengths)[-24:])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the hint is for glibc's malloc")
def test_packed_cpu_training_hints_at_the_allocator_once(tok, tmp_path, monkeypatch, caplog):
    from hf_dynmask.training import allocator, callbacks

    monkeypatch.setattr(allocator, "loaded_allocator", lambda maps=None: None)  # as if nothing were preloaded
    callbacks._warn_once.cache_clear()  # as in a fresh process
    with caplog.at_level(logging.WARNING, logger="hf_dynmask.training.callbacks"):
        train(tok, tmp_path, "token-classification", "dynamic")
        assert "LD_PRELOAD=" not in caplog.text  # padded batches: no hint
        train(tok, tmp_path, "token-classification", "packed")
        train(tok, tmp_path, "token-classification", "packed")
    assert caplog.text.count("LD_PRELOAD=") == 1  # once per process


def test_totals_feed_the_model_card(tok, tmp_path):
    trainer, _ = train(tok, tmp_path, "token-classification", "dynamic")
    totals = trainer.padding_stats.totals()
    assert totals["train_steps"] == 3 and totals["train_loss"] is not None
    summary = TrainingSummary.from_totals(
        totals,
        model_name="tiny",
        task="token-classification",
        mode="dynamic",
        masking="dynamic",
        versions=FrameworkVersions("5", "2", "0.1", None),
    )
    assert summary.real_tokens == totals["real_tokens"]
    assert summary.padding_efficiency == pytest.approx(totals["padding_efficiency"])


def test_stock_trainer_with_wrapped_collator_counts(tok, tmp_path):
    stats = PaddingStatsCallback()
    collator = make_collator(tok, "token-classification", "dynamic")
    trainer = Trainer(
        model=dynmask_model("token-classification"),
        args=training_args(tmp_path),
        train_dataset=dataset_for("token-classification"),
        data_collator=stats.wrap(collator),
        callbacks=[stats],
    )
    trainer.train()
    totals = stats.totals()
    assert 0 < totals["real_tokens"] < totals["padded_tokens"]
    assert collator_mode(trainer.data_collator) == "dynamic"


def test_static_mlm_masks_change_per_epoch(tok, tmp_path):
    """SetEpochCallback: the static-masking collator gets the epoch (its mask index) at each epoch start."""
    seen = []
    collator = make_collator(tok, "masked-lm", "packed", mlm_masking="static", num_duplicates=10)
    original = collator.set_epoch

    def spy(epoch):
        seen.append(epoch)
        original(epoch)

    collator.set_epoch = spy
    trainer = DynMaskTrainer(
        model=dynmask_model("masked-lm"),
        args=training_args(tmp_path, max_steps=-1, num_train_epochs=3, per_device_train_batch_size=16),
        train_dataset=dataset_for("masked-lm"),
        data_collator=collator,
    )
    trainer.train()
    assert seen == [0, 1, 2]
    assert collator.duplicate_index == 2
    assert any(isinstance(cb, SetEpochCallback) for cb in trainer.callback_handler.callbacks)


# --------------------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------------------


def test_packed_collator_with_a_model_that_cannot_take_packed_batches(tok, tmp_path):
    bert = BertConfig(**CONFIG)
    collator = make_collator(tok, "token-classification", "packed")
    data = dataset_for("token-classification")
    with pytest.raises(ValueError, match="ignores the boundaries of a packed batch"):
        DynMaskTrainer(
            model=BertForTokenClassification(bert),
            args=training_args(tmp_path),
            train_dataset=data,
            data_collator=collator,
        )
    seq_collator = make_collator(tok, "sequence-classification", "packed")
    varlen = BertForSequenceClassification(BertConfig(**CONFIG, attn_implementation="dynmask_varlen"))
    with pytest.raises(ValueError, match="cannot take packed batches"):
        DynMaskTrainer(
            model=varlen,
            args=training_args(tmp_path),
            train_dataset=dataset_for("sequence-classification"),
            data_collator=seq_collator,
        )
    # A stock Trainer with the callback refuses before the first step.
    trainer = Trainer(
        model=BertForTokenClassification(bert),
        args=training_args(tmp_path),
        train_dataset=data,
        data_collator=collator,
        callbacks=[PaddingStatsCallback()],
    )
    with pytest.raises(ValueError, match="ignores the boundaries"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_check_packed_support_accepts_models_that_keep_sequences_apart():
    check_packed_support(dynmask_model("sequence-classification"))
    check_packed_support(BertForTokenClassification(BertConfig(**CONFIG, attn_implementation="dynmask_varlen")))
    with pytest.raises(ValueError, match="sdpa"):
        check_packed_support(BertForTokenClassification(BertConfig(**CONFIG, attn_implementation="sdpa")))


def test_stock_bert_with_dynmask_varlen_trains_packed_like_padded(tok, tmp_path):
    """A stock token-level model with attn_implementation='dynmask_varlen' passes the check and matches padding."""
    results = {}
    for mode in ("dynamic", "packed"):
        torch.manual_seed(0)
        model = BertForTokenClassification(BertConfig(**CONFIG, attn_implementation="dynmask_varlen"))
        results[mode] = train(tok, tmp_path, "token-classification", mode, model=model)[1]
    assert_same_params(results["dynamic"], results["packed"])


def stock_args(tmp_path: Path, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(tmp_path / "stock"), use_cpu=True, report_to=[], save_strategy="no", max_steps=2,
        per_device_train_batch_size=4, per_device_eval_batch_size=8, disable_tqdm=True, seed=0,
    )  # fmt: skip
    return TrainingArguments(**{**values, **overrides})


def test_a_pooling_head_refuses_packed_rows_at_the_forward(tok, tmp_path):
    """A stock sequence classifier on dynmask_varlen scored a whole pack as one row, with no error, under a plain
    forward and a stock Trainer (which never shows the model to hf_dynmask): both now refuse; padded rows still run."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**CONFIG, attn_implementation="dynmask_varlen"))
    data = dataset_for("sequence-classification")
    packed = make_collator(tok, "sequence-classification", "packed")
    with pytest.raises(ValueError, match="pools or indexes whole rows"):
        model(**packed(list(data)[:4]))
    trainer = Trainer(model=model, args=stock_args(tmp_path), train_dataset=data, data_collator=packed)
    with pytest.raises(ValueError, match="pools or indexes whole rows"):
        trainer.train()
    assert trainer.state.global_step == 0
    with torch.no_grad():
        padded = make_collator(tok, "sequence-classification", "dynamic")(list(data)[:4])
        assert model(**padded).logits.shape == (4, NUM_LABELS)


def test_a_stock_token_classifier_scores_packed_evaluation_like_padded(tok, tmp_path):
    """Under a stock Trainer a stock token classifier's packed predictions carry each token's sequence (seq_idx),
    so entity F1 is scored per example, as on padded batches (a pack scored as one row joins entities across
    sequences)."""
    from transformers import EvalPrediction

    from hf_dynmask.training.evaluation import token_classification_metrics

    compute = token_classification_metrics(["O", "B-X", "I-X"], task="ner")
    torch.manual_seed(0)
    model = BertForTokenClassification(BertConfig(**CONFIG, attn_implementation="dynmask_varlen"))
    data = dataset_for("token-classification")
    scores, predictions = {}, {}
    for mode in ("dynamic", "packed"):
        trainer = Trainer(
            model=model,
            args=stock_args(tmp_path),
            eval_dataset=data,
            data_collator=make_collator(tok, "token-classification", mode),
            compute_metrics=compute,
        )
        scores[mode] = trainer.evaluate()
        predictions[mode] = trainer.predict(data)
    for key in ("eval_f1", "eval_precision", "eval_recall", "eval_accuracy"):
        assert scores["packed"][key] == pytest.approx(scores["dynamic"][key], abs=1e-12), key
    assert scores["packed"]["eval_loss"] == pytest.approx(scores["dynamic"]["eval_loss"], abs=1e-5)
    logits, seq_idx = predictions["packed"].predictions
    assert seq_idx.shape == logits.shape[:2]
    # Without the boundaries the same predictions score otherwise: the test can tell.
    rows_as_examples = compute(EvalPrediction(predictions=logits, label_ids=predictions["packed"].label_ids))
    assert rows_as_examples["f1"] != pytest.approx(scores["dynamic"]["eval_f1"], abs=1e-9)


def test_token_budget_smaller_than_the_longest_example(tok, tmp_path):
    with pytest.raises(ValueError, match=r"> token_budget 16 .*longest 20\); raise token_budget to at least 20"):
        DynMaskTrainer(
            model=dynmask_model("token-classification"),
            args=training_args(tmp_path, token_budget=16),
            train_dataset=dataset_for("token-classification"),
            data_collator=make_collator(tok, "token-classification", "packed"),
        )


def test_labels_missing_for_a_training_run(tok, tmp_path):
    data = dataset_for("token-classification").remove_columns("labels")
    collator = make_collator(tok, "token-classification", "packed")
    with pytest.raises(ValueError, match="no label column"):
        DynMaskTrainer(
            model=dynmask_model("token-classification"),
            args=training_args(tmp_path),
            train_dataset=data,
            data_collator=collator,
        )
    with pytest.raises(ValueError, match="no label column"):  # a typed stream lists its columns too
        DynMaskTrainer(
            model=dynmask_model("token-classification"),
            args=training_args(tmp_path, token_budget=32),
            train_dataset=data.to_iterable_dataset(),
            data_collator=collator,
        )
    # A plain torch stream does not list its columns: the first batch is refused.
    trainer = DynMaskTrainer(
        model=dynmask_model("token-classification"),
        args=training_args(tmp_path, token_budget=32),
        train_dataset=TorchStream(list(data)),
        data_collator=collator,
    )
    with pytest.raises(ValueError, match="a training batch has no labels"):
        trainer.train()
    assert trainer.state.global_step == 0
    check_training_labels(dataset_for("masked-lm"), make_collator(tok, "masked-lm", "packed"))  # makes its own


class TorchStream(torch.utils.data.IterableDataset):
    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def __iter__(self):
        return iter(self.rows)


def test_streaming_dataset_without_lengths(tok, tmp_path):
    stream = datasets.Dataset.from_list([{"text": "w1 w2", "labels": [0]}] * 4).to_iterable_dataset()
    trainer = DynMaskTrainer(
        model=dynmask_model("token-classification"),
        args=training_args(tmp_path, token_budget=32),
        train_dataset=stream,
        data_collator=make_collator(tok, "token-classification", "packed"),
    )
    with pytest.raises(ValueError, match="neither a 'length' column nor 'input_ids'.*tokenize the stream first"):
        trainer.train()


def test_arguments_are_validated_and_parsed(tmp_path):
    with pytest.raises(ValueError, match="token_budget must be a positive int"):
        training_args(tmp_path, token_budget=0)
    with pytest.raises(ValueError, match="replaces train_sampling_strategy"):
        training_args(tmp_path, token_budget=64, train_sampling_strategy="group_by_length")
    (args,) = HfArgumentParser(DynMaskTrainingArguments).parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--token_budget",
            "64",
            "--token_budget_cost",
            "padded",
            "--max_seqs_per_batch",
            "8",
            "--use_cpu",
            "--report_to",
            "none",
        ]
    )
    assert (args.token_budget, args.token_budget_cost, args.max_seqs_per_batch) == (64, "padded", 8)
    assert isinstance(args, TrainingArguments)


def qa_evaluation_set() -> tuple[datasets.Dataset, list[str], list[list]]:
    """48 QA features of 3..20 tokens, each with its own context: token k of row r reads ``r{r}t{k}``."""
    rows, contexts, offsets = [], [], []
    for r, row in enumerate(make_rows()):
        n = row["length"]
        words = [f"r{r}t{k}" for k in range(1, n - 1)]
        starts = [sum(len(w) + 1 for w in words[:k]) for k in range(len(words))]
        contexts.append(" ".join(words))
        offsets.append([None] + [(a, a + len(w)) for a, w in zip(starts, words, strict=True)] + [None])
        rows.append({"input_ids": row["input_ids"], "start_positions": 1, "end_positions": 1, "length": n})
    return datasets.Dataset.from_list(rows), contexts, offsets


def test_question_answering_evaluation_stays_in_dataset_order_under_group_by_length(tok, tmp_path):
    """Under ``group_by_length`` the stock Trainer length-groups the evaluation set too; QA post-processing pairs row i
    with feature i's context, so DynMaskTrainer evaluates in order. References: the answers of an in-order predict."""
    from hf_dynmask.modeling.modeling_dynmask import DynMaskForQuestionAnswering
    from hf_dynmask.training.evaluation import answer_text, best_span, question_answering_metrics

    evaluation, contexts, offsets = qa_evaluation_set()
    torch.manual_seed(0)
    model = DynMaskForQuestionAnswering(DynMaskConfig(**{**CONFIG, "num_labels": 2}))
    collator = make_collator(tok, "question-answering", "dynamic", max_length=MAX_LEN)
    in_order = DynMaskTrainer(model=model, args=training_args(tmp_path), data_collator=collator)
    starts, ends = in_order.predict(evaluation).predictions
    answers = []
    for row, (context, mapping) in enumerate(zip(contexts, offsets, strict=True)):
        allowed = torch.zeros(starts.shape[1], dtype=torch.bool)
        allowed[[k for k, o in enumerate(mapping) if o is not None]] = True
        answers.append([answer_text(best_span(starts[row], ends[row], allowed=allowed), mapping, context)])
    grouped = dict(train_sampling_strategy="group_by_length", per_device_eval_batch_size=4)
    scores = {}
    for name, trainer_cls in (("dynmask", DynMaskTrainer), ("stock", Trainer)):
        trainer = trainer_cls(
            model=model,
            args=training_args(tmp_path, **grouped),
            data_collator=collator,
            compute_metrics=question_answering_metrics(contexts, offsets, answers),
        )
        scores[name] = trainer.evaluate(evaluation)["eval_f1"]
    assert scores["dynmask"] == 100.0
    assert scores["stock"] < 50.0  # the stock Trainer's length-grouped evaluation: what DynMaskTrainer avoids


def test_collator_mode_sees_through_wrappers(tok):
    from transformers import DataCollatorWithFlattening
    from transformers.trainer_utils import RemoveColumnsCollator

    collator = make_collator(tok, "token-classification", "packed")
    wrapped = RemoveColumnsCollator(PaddingStatsCallback().wrap(collator), signature_columns=["input_ids"])
    assert unwrap_collator(wrapped) is collator
    assert collator_mode(wrapped) == "packed"
    assert collator_mode(DataCollatorWithFlattening(return_flash_attn_kwargs=True)) == "packed"
    assert collator_mode(DataCollatorWithFlattening()) == "flattened"  # boundaries only in position_ids
    assert collator_mode(lambda features: features) is None


def test_token_type_ids_survive_remove_unused_columns(tok, tmp_path):
    """DynMask forward() takes **kwargs; the trainer keeps the feature columns the collator reads anyway."""
    data = dataset_for("token-classification")
    data = data.add_column("token_type_ids", [[1] * n for n in data["length"]]).add_column("junk", [0] * len(data))
    trainer = DynMaskTrainer(
        model=dynmask_model("token-classification"),
        args=training_args(tmp_path),
        train_dataset=data,
        data_collator=make_collator(tok, "token-classification", "packed"),
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert "token_type_ids" in batch and bool((batch["token_type_ids"] == 1).all())
    assert "junk" not in batch


# --------------------------------------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------------------------------------


def test_cpu_compile_draws_dropout_with_eager_random_ops(tok, tmp_path):
    """On CPU, ``torch_compile`` with inductor compiles with ``fallback_random`` (eager's random ops, faster there);
    options the user set win; other backends and the stock Trainer are left as they are."""
    task = "sequence-classification"

    def plugin(trainer_cls=DynMaskTrainer, **args):
        trainer = trainer_cls(
            model=dynmask_model(task), args=training_args(tmp_path, **args), train_dataset=dataset_for(task),
            data_collator=make_collator(tok, task, "packed", max_length=MAX_LEN),
        )  # fmt: skip
        return trainer.accelerator.state.dynamo_plugin

    assert plugin(torch_compile=True).options == {"fallback_random": True}
    assert not plugin(trainer_cls=Trainer, torch_compile=True).options  # the stock Trainer: inductor's own random
    assert not plugin(torch_compile=True, torch_compile_backend="aot_eager").options
    assert not plugin().options  # no compile


def test_compiled_training_on_cpu_matches_eager_with_dropout(tok, tmp_path):
    """A DynMaskTrainer compiled with inductor trains to eager's parameters with hidden dropout on: the same masks
    are drawn (with inductor's own random ops the parameters differ by 2.2e-3 here)."""
    task = "sequence-classification"
    dropout = {"hidden_dropout_prob": 0.1}
    _, eager = train(tok, tmp_path, task, "packed", model=dynmask_model(task, **dropout), max_steps=2)
    torch._dynamo.reset()
    _, compiled = train(
        tok, tmp_path, task, "packed", model=dynmask_model(task, **dropout), max_steps=2, torch_compile=True
    )
    torch._dynamo.reset()
    assert_same_params(eager, compiled)

"""Tests for hf_dynmask.data.collators and hf_dynmask.data.mlm with a tiny offline WordPiece tokenizer."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import BertTokenizer

from hf_dynmask.data.collators import (
    MODES,
    TASKS,
    CausalLMCollator,
    MaskedLMCollator,
    QuestionAnsweringCollator,
    Seq2SeqCollator,
    SequenceClassificationCollator,
    TokenClassificationCollator,
    TokenCounts,
    align_labels_with_tokens,
    make_collator,
    token_counts,
    tokenize_and_align,
)
from hf_dynmask.data.mlm import MaskingRecipe, TokenMasker

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "##s", "run", "##ning", "big"]
FILLER = [f"w{i}" for i in range(200)]
PAD, UNK, CLS, SEP, MASK = range(5)


def make_tokenizer(padding_side: str = "right", truncation_side: str = "right") -> BertTokenizer:
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS + FILLER)}
    tokenizer = BertTokenizer(vocab=vocab)
    tokenizer.padding_side = padding_side
    tokenizer.truncation_side = truncation_side
    return tokenizer


@pytest.fixture(scope="module")
def tok() -> BertTokenizer:
    return make_tokenizer()


@pytest.fixture(scope="module", params=["right", "left"])
def tok_side(request) -> BertTokenizer:
    return make_tokenizer(padding_side=request.param)


# Three sequences of lengths 3, 6, 2 with [CLS] ... [SEP] (ids 5.. are words).
IDS = [[CLS, 5, SEP], [CLS, 6, 7, 8, 9, SEP], [CLS, SEP]]
TYPES = [[0, 0, 0], [0, 0, 0, 1, 1, 1], [0, 1]]


def features_for(task: str) -> list[dict]:
    """Small features of every task (lists), lengths 3, 6, 2."""
    base = [
        {"input_ids": list(ids), "token_type_ids": list(t), "attention_mask": [1] * len(ids)}
        for ids, t in zip(IDS, TYPES, strict=True)
    ]
    if task == "sequence-classification":
        return [{**f, "labels": label} for f, label in zip(base, [2, 0, 1], strict=True)]
    if task == "token-classification":
        return [
            {**f, "labels": [-100] + [10 * s + k for k in range(len(f["input_ids"]) - 2)] + [-100]}
            for s, f in enumerate(base)
        ]
    if task in ("masked-lm", "causal-lm"):
        return base
    if task == "question-answering":
        return [
            {**f, "start_positions": s, "end_positions": e}
            for f, (s, e) in zip(base, [(1, 1), (2, 4), (0, 0)], strict=True)
        ]
    if task == "seq2seq":
        targets = [[20, 21, SEP], [22, SEP], [23, 24, 25, 26, SEP]]
        return [{**f, "labels": t} for f, t in zip(base, targets, strict=True)]
    raise AssertionError(task)


def options_for(task: str, mode: str) -> dict:
    options = {}
    if mode == "static":
        options["max_length"] = 8
    if task == "seq2seq":
        options["decoder_start_token_id"] = PAD
    if task == "masked-lm":
        options["mlm_masking"] = "static"
    return options


def as_kind(features: list[dict], kind: str) -> list[dict]:
    convert = {"list": lambda v: v, "torch": torch.tensor, "numpy": np.array}[kind]
    return [{k: convert(v) if isinstance(v, list) else v for k, v in f.items()} for f in features]


def rows_of_padded(batch: dict, key: str, mask_key: str = "attention_mask") -> list[list]:
    """The real tokens of each row of a padded batch."""
    return [row[mask.bool()].tolist() for row, mask in zip(batch[key], batch[mask_key], strict=True)]


def rows_of_packed(batch: dict, key: str, cu_key: str = "cu_seq_lens_q") -> list[list]:
    """The tokens of each sequence of a packed batch."""
    cu = batch[cu_key].tolist()
    flat = batch[key][0].tolist()
    return [flat[a:b] for a, b in zip(cu[:-1], cu[1:], strict=True)]


PADDED_INPUT_KEYS = {"input_ids", "attention_mask", "token_type_ids"}
PACKED_INPUT_KEYS = {
    "input_ids",
    "token_type_ids",
    "position_ids",
    "seq_idx",
    "cu_seq_lens_q",
    "cu_seq_lens_k",
    "max_length_q",
    "max_length_k",
}
TASK_KEYS = {
    ("sequence-classification", "padded"): {"labels"},
    ("token-classification", "padded"): {"labels"},
    ("masked-lm", "padded"): {"labels"},
    ("causal-lm", "padded"): {"labels"},
    ("question-answering", "padded"): {"start_positions", "end_positions"},
    ("seq2seq", "padded"): {"labels", "decoder_input_ids", "decoder_attention_mask"},
    ("sequence-classification", "packed"): {"labels"},
    ("token-classification", "packed"): {"labels"},
    ("masked-lm", "packed"): {"labels"},
    ("causal-lm", "packed"): {"labels"},
    ("question-answering", "packed"): {"start_positions", "end_positions"},
    ("seq2seq", "packed"): {
        "labels",
        "decoder_input_ids",
        "decoder_position_ids",
        "decoder_seq_idx",
        "decoder_cu_seq_lens",
        "decoder_max_length",
    },
}


# ----------------------------------------------------------------------------------------------------------------
# Exact values
# ----------------------------------------------------------------------------------------------------------------


def test_sequence_classification_dynamic_right_exact(tok):
    batch = SequenceClassificationCollator(tok)(features_for("sequence-classification"))
    assert batch["input_ids"].tolist() == [
        [CLS, 5, SEP, PAD, PAD, PAD],
        [CLS, 6, 7, 8, 9, SEP],
        [CLS, SEP, PAD, PAD, PAD, PAD],
    ]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0], [1] * 6, [1, 1, 0, 0, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1], [0, 1, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [2, 0, 1]
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == batch["labels"].dtype == torch.int64


def test_sequence_classification_left_static_exact():
    tok = make_tokenizer(padding_side="left")
    batch = SequenceClassificationCollator(tok, mode="static", max_length=7)(features_for("sequence-classification"))
    assert batch["input_ids"].tolist() == [
        [PAD] * 4 + [CLS, 5, SEP],
        [PAD, CLS, 6, 7, 8, 9, SEP],
        [PAD] * 5 + [CLS, SEP],
    ]
    assert batch["attention_mask"].tolist() == [[0] * 4 + [1] * 3, [0] + [1] * 6, [0] * 5 + [1] * 2]


def test_packed_exact(tok):
    batch = SequenceClassificationCollator(tok, mode="packed")(features_for("sequence-classification"))
    assert batch["input_ids"].tolist() == [[CLS, 5, SEP, CLS, 6, 7, 8, 9, SEP, CLS, SEP]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 4, 5, 0, 1]]
    assert batch["seq_idx"].tolist() == [[0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2]]
    assert batch["seq_idx"].dtype == torch.int32
    assert batch["cu_seq_lens_q"].tolist() == batch["cu_seq_lens_k"].tolist() == [0, 3, 9, 11]
    assert batch["cu_seq_lens_q"].dtype == batch["cu_seq_lens_k"].dtype == torch.int32
    assert batch["max_length_q"] == batch["max_length_k"] == 6
    assert type(batch["max_length_q"]) is int
    assert batch["labels"].tolist() == [2, 0, 1]
    assert "attention_mask" not in batch


def test_packed_position_start(tok):
    batch = SequenceClassificationCollator(tok, mode="packed", position_start=2)(
        features_for("sequence-classification")
    )
    assert batch["position_ids"].tolist() == [[2, 3, 4, 2, 3, 4, 5, 6, 7, 2, 3]]


def test_pad_to_multiple_of(tok):
    batch = SequenceClassificationCollator(tok, pad_to_multiple_of=4)(features_for("sequence-classification"))
    assert batch["input_ids"].shape == (3, 8)


def test_float_and_multilabel_sequence_labels(tok):
    feats = [{"input_ids": ids, "label": float(i) / 2} for i, ids in enumerate(IDS)]
    assert SequenceClassificationCollator(tok)(feats)["labels"].dtype == torch.float32
    feats = [{"input_ids": ids, "labels": [1.0, 0.0]} for ids in IDS]
    labels = SequenceClassificationCollator(tok, mode="packed")(feats)["labels"]
    assert labels.shape == (3, 2) and labels.dtype == torch.float32


def test_token_classification_exact(tok_side):
    batch = TokenClassificationCollator(tok_side)(features_for("token-classification"))
    if tok_side.padding_side == "right":
        assert batch["labels"].tolist() == [
            [-100, 0, -100, -100, -100, -100],
            [-100, 10, 11, 12, 13, -100],
            [-100, -100, -100, -100, -100, -100],
        ]
    else:
        assert batch["labels"][0].tolist() == [-100, -100, -100, -100, 0, -100]
    packed = TokenClassificationCollator(tok_side, mode="packed")(features_for("token-classification"))
    assert packed["labels"].tolist() == [[-100, 0, -100, -100, 10, 11, 12, 13, -100, -100, -100]]


def test_causal_lm_exact(tok):
    feats = features_for("causal-lm")
    batch = CausalLMCollator(tok)(feats)
    assert batch["labels"].tolist() == [
        [CLS, 5, SEP, -100, -100, -100],
        [CLS, 6, 7, 8, 9, SEP],
        [CLS, SEP, -100, -100, -100, -100],
    ]
    packed = CausalLMCollator(tok, mode="packed")(feats)
    # -100 exactly at the first token of every sequence (flat positions 0, 3, 9); everything else kept.
    assert packed["labels"].tolist() == [[-100, 5, SEP, -100, 6, 7, 8, 9, SEP, -100, SEP]]


def test_causal_lm_own_labels_and_pad_is_eos():
    tok = make_tokenizer()
    feats = [{"input_ids": [5, 6, SEP], "labels": [-100, 6, SEP]}, {"input_ids": [7, SEP]}]
    with pytest.raises(ValueError, match="feature 1 has no 'labels'"):
        CausalLMCollator(tok)(feats)
    feats[1]["labels"] = [7, SEP]
    batch = CausalLMCollator(tok)(feats)
    assert batch["labels"].tolist() == [[-100, 6, SEP], [7, SEP, -100]]


def test_question_answering_left_padding_shifts_positions():
    for side, expected_start, expected_end in [("right", [1, 2, 0], [1, 4, 0]), ("left", [4, 2, 4], [4, 4, 4])]:
        tok = make_tokenizer(padding_side=side)
        batch = QuestionAnsweringCollator(tok)(features_for("question-answering"))
        assert batch["start_positions"].tolist() == expected_start
        assert batch["end_positions"].tolist() == expected_end
        rows = batch["input_ids"]
        # the positions point at the same tokens whatever the padding side
        assert [int(rows[b, p]) for b, p in enumerate(batch["start_positions"])] == [5, 7, CLS]
    packed = QuestionAnsweringCollator(make_tokenizer("left"), mode="packed")(features_for("question-answering"))
    assert packed["start_positions"].tolist() == [1, 2, 0]
    assert packed["end_positions"].tolist() == [1, 4, 0]


def test_question_answering_truncation():
    feats = [{"input_ids": [CLS, 5, 6, 7, 8, SEP], "start_positions": 4, "end_positions": 4}]
    feats.append({"input_ids": [CLS, 5, 6, 7, 8, SEP], "start_positions": 1, "end_positions": 2})
    right = QuestionAnsweringCollator(make_tokenizer(), max_length=4, truncation=True)(feats)
    assert right["start_positions"].tolist() == [0, 1] and right["end_positions"].tolist() == [0, 2]
    left = QuestionAnsweringCollator(make_tokenizer(truncation_side="left"), max_length=4, truncation=True)(feats)
    assert left["input_ids"].tolist() == [[6, 7, 8, SEP]] * 2
    assert left["start_positions"].tolist() == [2, 0] and left["end_positions"].tolist() == [2, 0]
    with pytest.raises(ValueError, match="outside its 6 tokens"):
        QuestionAnsweringCollator(make_tokenizer())([{**feats[0], "end_positions": 6}])


def test_seq2seq_exact(tok):
    feats = features_for("seq2seq")
    batch = Seq2SeqCollator(tok, decoder_start_token_id=PAD)(feats)
    assert batch["labels"].tolist() == [
        [20, 21, SEP, -100, -100],
        [22, SEP, -100, -100, -100],
        [23, 24, 25, 26, SEP],
    ]
    assert batch["decoder_input_ids"].tolist() == [
        [PAD, 20, 21, PAD, PAD],
        [PAD, 22, PAD, PAD, PAD],
        [PAD, 23, 24, 25, 26],
    ]
    assert batch["decoder_attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1] * 5]
    packed = Seq2SeqCollator(tok, mode="packed", decoder_start_token_id=SEP)(feats)
    assert packed["labels"].tolist() == [[20, 21, SEP, 22, SEP, 23, 24, 25, 26, SEP]]
    assert packed["decoder_input_ids"].tolist() == [[SEP, 20, 21, SEP, 22, SEP, 23, 24, 25, 26]]
    assert packed["decoder_cu_seq_lens"].tolist() == [0, 3, 5, 10]
    assert packed["decoder_cu_seq_lens"].dtype == torch.int32
    assert packed["decoder_position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3, 4]]
    assert packed["decoder_seq_idx"].tolist() == [[0, 0, 0, 1, 1, 2, 2, 2, 2, 2]]
    assert packed["decoder_max_length"] == 5
    assert packed["cu_seq_lens_q"].tolist() == [0, 3, 9, 11]


def test_seq2seq_ignored_labels_become_pad_in_decoder_inputs(tok):
    batch = Seq2SeqCollator(tok, decoder_start_token_id=CLS)([{"input_ids": [5, 6], "labels": [7, -100, 8]}])
    assert batch["decoder_input_ids"].tolist() == [[CLS, 7, PAD]]
    assert batch["labels"].tolist() == [[7, -100, 8]]


# ----------------------------------------------------------------------------------------------------------------
# Every task x mode: key sets, packed == dynamic per sequence, immutability, input kinds
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("mode", MODES)
def test_exact_key_sets(tok, task, mode):
    batch = make_collator(tok, task, mode, **options_for(task, mode))(features_for(task))
    layout = "packed" if mode == "packed" else "padded"
    base = PACKED_INPUT_KEYS if layout == "packed" else PADDED_INPUT_KEYS
    assert set(batch) == base | TASK_KEYS[(task, layout)]
    # without token_type_ids in the features, none in the batch
    feats = [{k: v for k, v in f.items() if k != "token_type_ids"} for f in features_for(task)]
    assert "token_type_ids" not in make_collator(tok, task, mode, **options_for(task, mode))(feats)


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["list", "torch", "numpy"])
def test_never_mutates_and_input_kinds_agree(tok_side, task, mode, kind):
    collator = make_collator(tok_side, task, mode, **options_for(task, mode))
    feats = as_kind(features_for(task), kind)
    before = copy.deepcopy(feats)
    batch = collator(feats)
    for f, g in zip(feats, before, strict=True):
        assert f.keys() == g.keys()
        for key in f:
            assert type(f[key]) is type(g[key])
            assert np.array_equal(np.asarray(f[key]), np.asarray(g[key]))
    reference = collator(features_for(task))
    assert batch.keys() == reference.keys()
    for key in batch:
        if isinstance(batch[key], torch.Tensor):
            assert torch.equal(batch[key], reference[key]), key
        else:
            assert batch[key] == reference[key]
    # mutating the batch never reaches the features
    batch["input_ids"].fill_(99)
    for f, g in zip(feats, before, strict=True):
        assert np.array_equal(np.asarray(f["input_ids"]), np.asarray(g["input_ids"]))


@pytest.mark.parametrize("task", sorted(TASKS))
def test_packed_and_padded_carry_the_same_tokens(tok_side, task):
    feats = features_for(task)
    dynamic = make_collator(tok_side, task, "dynamic", **options_for(task, "dynamic"))(feats)
    static = make_collator(tok_side, task, "static", **options_for(task, "static"))(feats)
    packed = make_collator(tok_side, task, "packed", **options_for(task, "packed"))(feats)
    for key in ("input_ids", "token_type_ids"):
        assert rows_of_padded(dynamic, key) == rows_of_packed(packed, key) == rows_of_padded(static, key)
    assert rows_of_padded(dynamic, "input_ids") == IDS or task == "masked-lm"
    if task in ("token-classification", "masked-lm"):
        assert (
            rows_of_padded(dynamic, "labels") == rows_of_packed(packed, "labels") == rows_of_padded(static, "labels")
        )
    if task == "causal-lm":
        padded_rows = rows_of_padded(dynamic, "labels")
        assert [row[1:] for row in padded_rows] == [row[1:] for row in rows_of_packed(packed, "labels")]
        assert [row[0] for row in rows_of_packed(packed, "labels")] == [-100] * 3
    if task == "sequence-classification":
        assert dynamic["labels"].tolist() == packed["labels"].tolist() == static["labels"].tolist()
    if task == "question-answering":
        for batch in (dynamic, static):
            shift = batch["attention_mask"].shape[1] - batch["attention_mask"].sum(1)
            if tok_side.padding_side == "right":
                shift = torch.zeros_like(shift)
            assert (batch["start_positions"] - shift).tolist() == packed["start_positions"].tolist()
            assert (batch["end_positions"] - shift).tolist() == packed["end_positions"].tolist()
    if task == "seq2seq":
        for key in ("labels", "decoder_input_ids"):
            padded_rows = rows_of_padded(dynamic, key, "decoder_attention_mask")
            assert padded_rows == rows_of_packed(packed, key, "decoder_cu_seq_lens")
            assert padded_rows == rows_of_padded(static, key, "decoder_attention_mask")


@settings(max_examples=25, deadline=None)
@given(
    lens=st.lists(st.integers(1, 9), min_size=1, max_size=6),
    side=st.sampled_from(["left", "right"]),
    multiple=st.sampled_from([None, 1, 4]),
)
def test_property_packed_equals_unpadded_dynamic(lens, side, multiple):
    tok = make_tokenizer(padding_side=side)
    rng = np.random.default_rng(len(lens) * 100 + sum(lens))
    feats = [{"input_ids": rng.integers(5, 200, n).tolist(), "labels": rng.integers(-1, 5, n).tolist()} for n in lens]
    dynamic = TokenClassificationCollator(tok, pad_to_multiple_of=multiple)(feats)
    packed = TokenClassificationCollator(tok, mode="packed")(feats)
    assert (
        rows_of_padded(dynamic, "input_ids") == rows_of_packed(packed, "input_ids") == [f["input_ids"] for f in feats]
    )
    assert rows_of_padded(dynamic, "labels") == rows_of_packed(packed, "labels") == [f["labels"] for f in feats]
    assert (dynamic["labels"][dynamic["attention_mask"] == 0] == -100).all()
    assert packed["cu_seq_lens_q"].tolist() == np.concatenate([[0], np.cumsum(lens)]).tolist()
    assert token_counts(dynamic).real == token_counts(packed).real == sum(lens)


# ----------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------


def test_unknown_task_mode_option(tok):
    with pytest.raises(ValueError, match="task must be one of .*question-answering.*got 'summarization'"):
        make_collator(tok, "summarization")
    with pytest.raises(ValueError, match=r"mode must be one of \['static', 'dynamic', 'packed'\]"):
        make_collator(tok, "causal-lm", "ragged")
    with pytest.raises(ValueError, match="mode must be one of"):
        CausalLMCollator(tok, mode="ragged")
    with pytest.raises(ValueError, match="valid options: .*max_length"):
        make_collator(tok, "causal-lm", max_lenght=3)


def test_option_validation(tok):
    with pytest.raises(ValueError, match="pass max_length"):
        make_collator(tok, "token-classification", "static")
    with pytest.raises(ValueError, match="truncation=True needs max_length"):
        make_collator(tok, "token-classification", truncation=True)
    with pytest.raises(ValueError, match="only applies to mode='dynamic'"):
        make_collator(tok, "token-classification", "packed", pad_to_multiple_of=8)
    with pytest.raises(ValueError, match="decoder_start_token_id"):
        make_collator(tok, "seq2seq")
    with pytest.raises(ValueError, match="mlm_masking"):
        make_collator(tok, "masked-lm", mlm_masking="sometimes")
    with pytest.raises(ValueError, match="<= 1"):
        make_collator(tok, "masked-lm", mask_replace_prob=0.9, random_replace_prob=0.2)


def test_no_pad_token():
    tok = make_tokenizer()
    tok.pad_token = None
    assert tok.pad_token_id is None
    for mode in ("static", "dynamic"):
        with pytest.raises(ValueError, match="tokenizer.pad_token = tokenizer.eos_token"):
            make_collator(tok, "causal-lm", mode, max_length=8)
    batch = make_collator(tok, "causal-lm", "packed")(features_for("causal-lm"))  # packed needs no pad token
    assert batch["input_ids"].shape == (1, 11)


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("mode", MODES)
def test_empty_batch_and_empty_sequence(tok, task, mode):
    collator = make_collator(tok, task, mode, **options_for(task, mode))
    with pytest.raises(ValueError, match="empty batch"):
        collator([])
    feats = features_for(task)
    feats[1] = {**feats[1], "input_ids": [], "token_type_ids": [], "attention_mask": []}
    if task == "token-classification":
        feats[1]["labels"] = []
    with pytest.raises(ValueError, match="feature 1 has an empty 'input_ids'"):
        collator(feats)


@pytest.mark.parametrize("mode", MODES)
def test_label_length_mismatch(tok, mode):
    feats = features_for("token-classification")
    feats[2] = {**feats[2], "labels": [0, 0, 0]}
    with pytest.raises(ValueError, match="feature 2: 'labels' has 3 values for 2 tokens.*align_labels_with_tokens"):
        make_collator(tok, "token-classification", mode, max_length=8)(feats)
    feats = features_for("causal-lm")
    feats[0] = {**feats[0], "labels": [1]}
    for f in feats[1:]:
        f["labels"] = f["input_ids"]
    with pytest.raises(ValueError, match="feature 0: 'labels' has 1 values"):
        make_collator(tok, "causal-lm", mode, max_length=8)(feats)


def test_static_too_long_and_truncation():
    tok = make_tokenizer()
    feats = features_for("token-classification")
    with pytest.raises(ValueError, match="feature 1 has 6 tokens .*max_length=4.*truncation=True"):
        TokenClassificationCollator(tok, mode="static", max_length=4)(feats)
    with pytest.raises(ValueError, match="feature 1 has 6 tokens"):
        TokenClassificationCollator(tok, mode="packed", max_length=4)(feats)
    batch = TokenClassificationCollator(tok, mode="static", max_length=4, truncation=True)(feats)
    assert batch["input_ids"][1].tolist() == [CLS, 6, 7, 8]
    assert batch["labels"][1].tolist() == [-100, 10, 11, 12]
    tok_left = make_tokenizer(truncation_side="left")
    packed = TokenClassificationCollator(tok_left, mode="packed", max_length=4, truncation=True)(feats)
    assert rows_of_packed(packed, "input_ids")[1] == [7, 8, 9, SEP]
    assert rows_of_packed(packed, "labels")[1] == [11, 12, 13, -100]


@pytest.mark.parametrize("mode", MODES)
def test_prepadded_attention_mask_rejected(tok, mode):
    feats = features_for("sequence-classification")
    feats[0] = {**feats[0], "input_ids": [CLS, 5, SEP, PAD], "attention_mask": [1, 1, 1, 0], "token_type_ids": [0] * 4}
    with pytest.raises(ValueError, match=r"features \[0\] carry an attention_mask with zeros.*without padding"):
        make_collator(tok, "sequence-classification", mode, max_length=8)(feats)


def test_two_dimensional_feature_and_batch_dict(tok):
    with pytest.raises(ValueError, match="must be 1-D"):
        SequenceClassificationCollator(tok)([{"input_ids": torch.tensor([[CLS, SEP]])}])
    with pytest.raises(ValueError, match="list of per-example dicts"):
        SequenceClassificationCollator(tok)({"input_ids": [[CLS, SEP]]})
    with pytest.raises(ValueError, match="has no 'input_ids'"):
        SequenceClassificationCollator(tok)([{"text": "hi"}])


def test_missing_keys_in_some_features(tok):
    feats = features_for("sequence-classification")
    del feats[1]["token_type_ids"]
    with pytest.raises(ValueError, match="feature 1 has no 'token_type_ids'"):
        SequenceClassificationCollator(tok)(feats)
    feats = features_for("sequence-classification")
    del feats[2]["labels"]
    with pytest.raises(ValueError, match="feature 2 has no 'labels'"):
        SequenceClassificationCollator(tok)(feats)


def test_masked_lm_rejects_labels_and_needs_mask_token(tok):
    with pytest.raises(ValueError, match="makes its own"):
        MaskedLMCollator(tok)(features_for("token-classification"))
    no_mask = make_tokenizer()
    no_mask.mask_token = None
    with pytest.raises(ValueError, match="mask token"):
        MaskedLMCollator(no_mask)


# ----------------------------------------------------------------------------------------------------------------
# Masked LM
# ----------------------------------------------------------------------------------------------------------------


def random_mlm_features(num: int, seed: int = 0, low: int = 3, high: int = 40) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {"input_ids": [CLS, *rng.integers(5, 216, int(rng.integers(low, high))).tolist(), SEP]} for _ in range(num)
    ]


@pytest.mark.parametrize("mlm_masking", ["dynamic", "static"])
def test_mlm_frequencies(tok, mlm_masking):
    feats = random_mlm_features(400, seed=1)  # about 8600 maskable tokens
    batch = MaskedLMCollator(tok, mlm_masking=mlm_masking, seed=3)(feats)
    original = torch.full_like(batch["input_ids"], PAD)
    for b, f in enumerate(feats):
        original[b, : len(f["input_ids"])] = torch.tensor(f["input_ids"])
    real = batch["attention_mask"].bool()
    maskable = real & (original >= 5)
    selected = batch["labels"] != -100
    assert torch.equal(batch["labels"][selected], original[selected])
    rate = selected.sum() / maskable.sum()
    assert 0.13 < rate < 0.17
    n = selected.sum()
    as_mask = (batch["input_ids"] == MASK) & selected
    unchanged = (batch["input_ids"] == original) & selected
    other = selected & ~as_mask & ~unchanged  # random replacements that changed the token
    assert 0.76 < as_mask.sum() / n < 0.84
    assert 0.07 < other.sum() / n < 0.13  # random ids land on the original 1/216 of the time
    assert 0.07 < unchanged.sum() / n < 0.14
    assert not selected[~maskable].any()  # special tokens and padding never selected
    assert torch.equal(batch["input_ids"][~selected], original[~selected])


def test_mlm_special_tokens_never_masked_even_at_probability_one(tok):
    feats = [{"input_ids": [CLS, 5, 6, SEP, 7, SEP]}, {"input_ids": [CLS, MASK, UNK, 8, SEP]}]
    for mode in MODES:
        batch = MaskedLMCollator(tok, mode=mode, max_length=8, mlm_probability=1.0)(feats)
        ids = rows_of_padded(batch, "labels") if mode != "packed" else rows_of_packed(batch, "labels")
        assert ids == [[-100, 5, 6, -100, 7, -100], [-100, -100, -100, 8, -100]]
    # an explicit special_tokens_mask wins over the tokenizer's special ids
    feats = [{"input_ids": [CLS, 5, 6, SEP], "special_tokens_mask": [0, 1, 0, 0]}]
    batch = MaskedLMCollator(tok, mlm_probability=1.0)(feats)
    assert batch["labels"].tolist() == [[CLS, -100, 6, SEP]]


def _mlm(tok, mode="dynamic", **options):
    return MaskedLMCollator(tok, mode=mode, max_length=48 if mode == "static" else None, **options)


def _masked_rows(batch):
    key = "cu_seq_lens_q"
    if key in batch:
        return rows_of_packed(batch, "input_ids"), rows_of_packed(batch, "labels")
    return rows_of_padded(batch, "input_ids"), rows_of_padded(batch, "labels")


def test_static_masking_is_a_function_of_the_example(tok):
    feats = random_mlm_features(12, seed=4)
    collator = _mlm(tok, mlm_masking="static", seed=7)
    ids, labels = _masked_rows(collator(feats))
    # same call again, other modes, other batch composition and positions: identical per example
    for mode in MODES:
        again_ids, again_labels = _masked_rows(_mlm(tok, mode, mlm_masking="static", seed=7)(feats))
        assert again_ids == ids and again_labels == labels
    order = [5, 0, 11, 3]
    sub_ids, sub_labels = _masked_rows(_mlm(tok, "packed", mlm_masking="static", seed=7)([feats[i] for i in order]))
    assert sub_ids == [ids[i] for i in order] and sub_labels == [labels[i] for i in order]
    assert _masked_rows(collator(feats)) == (ids, labels)
    # another epoch (duplicate index) or seed: another mask; epoch + num_duplicates: the same one again
    collator.set_epoch(1)
    assert _masked_rows(collator(feats))[1] != labels
    collator.set_epoch(10)
    assert collator.duplicate_index == 0 and _masked_rows(collator(feats))[1] == labels
    assert _masked_rows(_mlm(tok, mlm_masking="static", seed=8)(feats))[1] != labels


def test_dynamic_masking_differs_per_call_and_is_reproducible(tok):
    feats = random_mlm_features(12, seed=5)
    collator = _mlm(tok, seed=7)
    first, second = _masked_rows(collator(feats))[1], _masked_rows(collator(feats))[1]
    assert first != second
    fresh = _mlm(tok, seed=7)
    assert _masked_rows(fresh(feats))[1] == first and _masked_rows(fresh(feats))[1] == second
    # same random stream in every mode: the flat tokens are masked before padding or packing
    for mode in ("static", "packed"):
        assert _masked_rows(_mlm(tok, mode, seed=7)(feats))[1] == first


def test_whole_word_masking_wordpiece_and_word_ids(tok):
    # "the cats running" -> [CLS] the cat ##s run ##ning [SEP]; words: the | cat ##s | run ##ning
    encoding = tok(["the", "cats", "running"] * 30, is_split_into_words=True)
    ids = encoding["input_ids"]
    starts = [w is not None and (i == 0 or encoding.word_ids()[i - 1] != w) for i, w in enumerate(encoding.word_ids())]
    for feats in ([{"input_ids": ids}], [{"input_ids": ids, "word_ids": encoding.word_ids()}]):
        for seed in range(5):
            batch = MaskedLMCollator(tok, whole_word_masking=True, seed=seed)(feats)
            selected = (batch["labels"][0] != -100).tolist()
            word_ids = encoding.word_ids()
            by_word = {}
            for flag, w in zip(selected, word_ids, strict=True):
                if w is not None:
                    by_word.setdefault(w, set()).add(flag)
            assert all(len(flags) == 1 for flags in by_word.values())
            assert any(selected)
            assert sum(starts) == 90
    # word_ids tell words apart even where '##' would not: here each token is its own word
    feats = [{"input_ids": [CLS, 6, 12, SEP], "word_ids": [None, 0, 1, None]}]
    masker = TokenMasker(tok, MaskingRecipe(), whole_word=True)
    assert masker.word_starts(torch.tensor([CLS, 6, 12, SEP]), [4], torch.tensor([-1, 0, 1, -1])).tolist() == [
        True,
        True,
        True,
        True,
    ]
    assert masker.word_starts(torch.tensor([CLS, 6, 12, SEP]), [4]).tolist() == [True, True, False, True]
    assert MaskedLMCollator(tok, whole_word_masking=True, mode="packed")(feats)["input_ids"].shape == (1, 4)


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


def test_align_labels_with_tokens():
    assert align_labels_with_tokens([1, 2, 3], [None, 0, 1, 1, 1, 2, None]) == [-100, 1, 2, -100, -100, 3, -100]
    assert align_labels_with_tokens([1, 2], [None, 0, 1, 1, None], label_all_subwords=True) == [-100, 1, 2, 2, -100]
    with pytest.raises(ValueError, match="word id 2 has no label"):
        align_labels_with_tokens([1, 2], [0, 1, 2])


def test_tokenize_and_align(tok):
    single = tokenize_and_align(tok, ["the", "cats", "running"], [1, 2, 3], return_word_ids=True)
    assert single["input_ids"] == [CLS, 5, 6, 12, 13, 14, SEP]
    assert single["labels"] == [-100, 1, 2, -100, 3, -100, -100]
    assert single["word_ids"] == [-1, 0, 1, 1, 2, 2, -1]
    batched = tokenize_and_align(tok, [["the"], ["cats", "sat"]], [[4], [5, 6]], label_all_subwords=True)
    assert batched["labels"] == [[-100, 4, -100], [-100, 5, 5, 6, -100]]
    with pytest.raises(ValueError, match="2 words but 1 tags"):
        tokenize_and_align(tok, ["the", "cat"], [1])
    batch = TokenClassificationCollator(tok, mode="packed")([single])
    assert batch["labels"].tolist() == [single["labels"]]


def test_token_counts(tok):
    feats = features_for("sequence-classification")
    assert token_counts(SequenceClassificationCollator(tok)(feats)) == TokenCounts(real=11, padded=18)
    assert token_counts(SequenceClassificationCollator(tok, mode="static", max_length=8)(feats)) == (11, 24)
    assert token_counts(SequenceClassificationCollator(tok, mode="packed")(feats)) == TokenCounts(11, 11)
    with pytest.raises(ValueError, match="no attention_mask"):
        token_counts({"input_ids": torch.ones(2, 3)})

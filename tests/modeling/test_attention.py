"""hf_dynmask.modeling.attention: the varlen kernel against per-sequence references, and ``dynmask_varlen`` on stock
transformers families against each sequence run alone through the stock model on SDPA.

Kernel: self- and cross-attention (different query and key boundaries), causal and not, grouped-query heads, sliding
windows both ways, softcap, every bucketing ratio, lengths 1 to 40, gradients included. Stock families: a packed row
of lengths 1, 3, 17, 40, 9, 25 (boundaries from ``cu_seq_lens_q/k``, and for decoders from restarting
``position_ids`` alone), in eval and train mode, with and without a cache, with gradient checkpointing; outputs at
every real token and parameter gradients equal the per-sequence reference (fp32, atol 1e-5).
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoConfig, AutoModel

import hf_dynmask  # noqa: F401  (registers dynmask_varlen)
from hf_dynmask.modeling.attention import plan_varlen, varlen_attention
from hf_dynmask.modeling.families import VERIFIED_FAMILIES, check_verified_family, family_of
from hf_dynmask.modeling.layout import cu_seqlens_from_seq_lens, position_ids_from_cu_seqlens

ATOL = 1e-5
LENS = [1, 3, 17, 40, 9, 25]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------------------------
# The kernel against an explicit per-sequence reference
# --------------------------------------------------------------------------------------------------------------------


def reference(q, k, v, lens_q, lens_k, *, causal, window, softcap, scaling):
    """Each (query, key) sequence pair alone: explicit scores, mask, float32 softmax. (N, H, D) packed in and out."""
    outs = []
    starts_q, starts_k = [0], [0]
    for lq, lk in zip(lens_q, lens_k, strict=True):
        starts_q.append(starts_q[-1] + lq)
        starts_k.append(starts_k[-1] + lk)
    groups = q.shape[1] // k.shape[1]
    for s, (lq, lk) in enumerate(zip(lens_q, lens_k, strict=True)):
        qs = q[starts_q[s] : starts_q[s] + lq].transpose(0, 1)  # (H, lq, D)
        ks = k[starts_k[s] : starts_k[s] + lk].transpose(0, 1).repeat_interleave(groups, 0)
        vs = v[starts_k[s] : starts_k[s] + lk].transpose(0, 1).repeat_interleave(groups, 0)
        scores = qs @ ks.transpose(-1, -2) * scaling
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        distance = (torch.arange(lq)[:, None] + (lk - lq)) - torch.arange(lk)[None, :]
        allowed = torch.ones(lq, lk, dtype=torch.bool)
        if causal:
            allowed &= distance >= 0
        if window is not None:
            allowed &= distance.abs() < window
        scores = scores.masked_fill(~allowed, float("-inf"))
        outs.append((scores.softmax(-1) @ vs).transpose(0, 1))
    return torch.cat(outs)


KERNEL_CASES = [
    # (lens_q, lens_k, heads, kv_heads, causal, window, softcap)
    (LENS, LENS, 4, 4, False, None, None),
    (LENS, LENS, 4, 4, True, None, None),
    (LENS, LENS, 4, 2, True, None, None),
    (LENS, LENS, 4, 1, False, None, None),
    (LENS, LENS, 4, 2, True, 5, None),
    (LENS, LENS, 2, 2, False, 4, None),
    (LENS, LENS, 4, 2, True, 8, 5.0),
    ([2, 7, 1, 12], [5, 3, 9, 1], 4, 2, False, None, None),  # cross-attention: target s sees source s only
    ([2, 3, 1, 12], [5, 3, 9, 12], 2, 2, True, None, None),  # queries over a cache: bottom-right causal
    ([2, 3, 1, 12], [5, 3, 9, 12], 2, 1, True, 4, None),
]


@pytest.mark.parametrize("bucket_ratio", [0.0, 0.8, 1.0])
@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
@pytest.mark.parametrize("case", KERNEL_CASES, ids=str)
def test_kernel_matches_sequences_alone(case, kernel, bucket_ratio):
    lens_q, lens_k, heads, kv_heads, causal, window, softcap = case
    torch.manual_seed(0)
    q = torch.randn(sum(lens_q), heads, 6, requires_grad=True)
    k = torch.randn(sum(lens_k), kv_heads, 6, requires_grad=True)
    v = torch.randn(sum(lens_k), kv_heads, 6, requires_grad=True)
    cu_q, cu_k = cu_seqlens_from_seq_lens(lens_q), cu_seqlens_from_seq_lens(lens_k)
    plan = plan_varlen(cu_q, cu_k if lens_k != lens_q else None, bucket_ratio=bucket_ratio)
    kwargs = dict(causal=causal, window=window, softcap=softcap, scaling=0.4)
    out = varlen_attention(
        q, k, v, plan, scaling=0.4, is_causal=causal, sliding_window=window, softcap=softcap, kernel=kernel
    )
    expected = reference(q, k, v, lens_q, lens_k, **kwargs)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum(), (q, k, v))
    expected_grads = torch.autograd.grad((expected * weights).sum(), (q, k, v))
    for got, want in zip(grads, expected_grads, strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-5)


def test_cross_attention_never_reaches_another_pair():
    """Changing one source leaves every other target's output bit-identical."""
    torch.manual_seed(0)
    lens_q, lens_k = [4, 2, 6], [3, 8, 5]
    q, k, v = torch.randn(12, 2, 4), torch.randn(16, 2, 4), torch.randn(16, 2, 4)
    plan = plan_varlen(cu_seqlens_from_seq_lens(lens_q), cu_seqlens_from_seq_lens(lens_k))
    before = varlen_attention(q, k, v, plan, scaling=0.5)
    k2, v2 = k.clone(), v.clone()
    k2[3:11] += 1.0  # source 1
    v2[3:11] -= 2.0
    after = varlen_attention(q, k2, v2, plan, scaling=0.5)
    assert torch.equal(before[:4], after[:4]) and torch.equal(before[6:], after[6:])
    assert not torch.equal(before[4:6], after[4:6])


def test_plan_groups_exact():
    plan = plan_varlen(cu_seqlens_from_seq_lens([3, 10, 2, 9]), bucket_ratio=0.6)
    assert [(g.num_seqs, g.q_len, g.k_len) for g in plan.groups] == [(2, 10, 10), (2, 3, 3)]
    # Outputs come group by group (sequences 1 and 3, then 0 and 2); inverse puts token t back at position t.
    assert plan.inverse.tolist() == [19, 20, 21, *range(0, 10), 22, 23, *range(10, 19)]
    single = plan_varlen(cu_seqlens_from_seq_lens([3, 10, 2, 9]), bucket_ratio=0.0)
    assert [(g.num_seqs, g.q_len) for g in single.groups] == [(4, 10)]


@pytest.mark.parametrize(
    "cu_q, cu_k, message",
    [
        (torch.tensor([0, 3, 3]), None, "strictly increase"),
        (torch.tensor([1, 3]), None, "start at 0"),
        (torch.tensor([0, 3, 5]), torch.tensor([0, 4]), "each query sequence needs its own key sequence"),
        (torch.tensor([[0, 3]]), None, "1-D"),
    ],
)
def test_plan_refuses_bad_boundaries(cu_q, cu_k, message):
    with pytest.raises(ValueError, match=message):
        plan_varlen(cu_q, cu_k)


def test_kernel_refuses_mismatched_tokens_and_heads():
    plan = plan_varlen(cu_seqlens_from_seq_lens([2, 3]))
    with pytest.raises(ValueError, match="belong to another batch"):
        varlen_attention(torch.randn(6, 2, 4), torch.randn(6, 2, 4), torch.randn(6, 2, 4), plan, scaling=1.0)
    with pytest.raises(ValueError, match="cannot share 2 key/value heads"):
        varlen_attention(torch.randn(5, 3, 4), torch.randn(5, 2, 4), torch.randn(5, 2, 4), plan, scaling=1.0)


# --------------------------------------------------------------------------------------------------------------------
# Stock families: a packed row against each sequence alone on stock SDPA
# --------------------------------------------------------------------------------------------------------------------

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100)
FAMILY_CONFIGS = {
    "llama": dict(model_type="llama", num_key_value_heads=2, max_position_embeddings=128),
    "mistral": dict(model_type="mistral", num_key_value_heads=2, sliding_window=8, max_position_embeddings=128),
    "qwen2": dict(
        model_type="qwen2",
        num_key_value_heads=2,
        use_sliding_window=True,
        sliding_window=8,
        max_window_layers=1,
        max_position_embeddings=128,
    ),  # fmt: skip
    "gemma2": dict(  # a softcap small enough to matter at tiny-model scores (50 would be a no-op here)
        model_type="gemma2",
        num_key_value_heads=2,
        head_dim=8,
        sliding_window=8,
        max_position_embeddings=128,
        attn_logit_softcapping=0.5,
        query_pre_attn_scalar=4,
    ),  # fmt: skip
    "bert": dict(model_type="bert", max_position_embeddings=128),
    "modernbert": dict(
        model_type="modernbert",
        local_attention=8,
        global_attn_every_n_layers=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        cls_token_id=1,
        sep_token_id=2,
    ),  # fmt: skip
}
DECODERS = ("llama", "mistral", "qwen2", "gemma2")
# The stock implementation each family is compared with: SDPA, or eager where the family has no SDPA (softcap).
REFERENCE_ATTENTION = {"gemma2": "eager"}


def make_stock(family: str) -> torch.nn.Module:
    settings = dict(FAMILY_CONFIGS[family])
    model_type = settings.pop("model_type")
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **{**SMALL, **settings})
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout", "embedding_dropout",
                 "mlp_dropout", "hidden_dropout"):  # fmt: skip
        if hasattr(config, name):
            setattr(config, name, 0.0)
    return AutoModel.from_config(config, attn_implementation=REFERENCE_ATTENTION.get(family, "sdpa"))


def pair(family: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    stock = make_stock(family)
    varlen = copy.deepcopy(stock)
    varlen.set_attn_implementation("dynmask_varlen")
    return stock, varlen


def packed_inputs(ids: list[torch.Tensor], boundaries: str) -> dict:
    cu = cu_seqlens_from_seq_lens([len(x) for x in ids])
    batch = {"input_ids": torch.cat(ids)[None], "position_ids": position_ids_from_cu_seqlens(cu)[None]}
    if boundaries == "cu_seq_lens":
        longest = max(len(x) for x in ids)
        batch.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)
    return batch


def sequences() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(3, 100, (n,), generator=generator) for n in LENS]


def run_alone(model, ids: list[torch.Tensor], **kwargs) -> torch.Tensor:
    outs = [model(input_ids=x[None], position_ids=torch.arange(len(x))[None], **kwargs) for x in ids]
    return torch.cat([out.last_hidden_state[0] for out in outs])


def boundary_modes(family: str) -> list[str]:
    return ["cu_seq_lens", "position_ids"] if family in DECODERS else ["cu_seq_lens"]


CASES = [(f, b) for f in FAMILY_CONFIGS for b in boundary_modes(f)]


@pytest.mark.parametrize("family, boundaries", CASES)
def test_stock_family_packed_eval_matches_each_sequence_alone(family, boundaries):
    stock, varlen = pair(family)
    stock.eval(), varlen.eval()
    ids = sequences()
    extra = [{"use_cache": False}, {"use_cache": True}] if family in DECODERS else [{}]
    with torch.no_grad():
        expected = run_alone(stock, ids, **extra[0])
        for kwargs in extra:
            out = varlen(**packed_inputs(ids, boundaries), **kwargs).last_hidden_state[0]
            torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("family, boundaries", CASES)
def test_stock_family_packed_training_gradients(family, boundaries, checkpointing):
    stock, varlen = pair(family)
    stock.train(), varlen.train()
    if checkpointing:
        enable = getattr(varlen, "activation_checkpointing_enable", None) or varlen.gradient_checkpointing_enable
        enable()
    ids = sequences()
    kwargs = {"use_cache": False} if family in DECODERS else {}
    expected = run_alone(stock, ids, **kwargs)
    out = varlen(**packed_inputs(ids, boundaries), **kwargs).last_hidden_state[0]
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    weights = torch.randn_like(out)
    (expected * weights).sum().backward()
    (out * weights).sum().backward()
    for (name, p_ref), (_, p) in zip(stock.named_parameters(), varlen.named_parameters(), strict=True):
        if p_ref.grad is None:
            assert p.grad is None or not p.grad.any(), name
            continue
        # Gradients sum over every token in another order: fp32 round-off scales with the gradient's size (Gemma's
        # scaled embeddings give gradients near 1e3), so the tolerance is relative to it.
        scale = max(1.0, p_ref.grad.abs().max().item())
        torch.testing.assert_close(p.grad, p_ref.grad, atol=ATOL * scale, rtol=1e-4, msg=name)


@pytest.mark.parametrize("family", FAMILY_CONFIGS)
def test_stock_family_padded_batch_matches_sdpa(family):
    """Padded batches (either side) go through the stock mask: same outputs as stock SDPA at real tokens."""
    stock, varlen = pair(family)
    stock.eval(), varlen.eval()
    ids = sequences()
    longest = max(len(x) for x in ids)
    for side in ("right", "left"):
        input_ids = torch.zeros(len(ids), longest, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for row, x in enumerate(ids):
            span = slice(0, len(x)) if side == "right" else slice(longest - len(x), longest)
            input_ids[row, span], mask[row, span] = x, 1
        with torch.no_grad():
            want = stock(input_ids=input_ids, attention_mask=mask).last_hidden_state
            got = varlen(input_ids=input_ids, attention_mask=mask).last_hidden_state
        real = mask.bool()
        torch.testing.assert_close(got[real], want[real], atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", DECODERS)
def test_stock_decoder_generation_with_cache_matches_sdpa(family):
    """Greedy decoding over a cache (queries shorter than keys, windows over the cache): the same logits."""
    from transformers import AutoModelForCausalLM

    settings = dict(FAMILY_CONFIGS[family])
    # Larger weights than the default init, so that attention differences reach the logits of a 2-layer model.
    config = AutoConfig.for_model(settings.pop("model_type"), **{**SMALL, **settings, "initializer_range": 0.3})
    torch.manual_seed(0)
    stock = AutoModelForCausalLM.from_config(config, attn_implementation=REFERENCE_ATTENTION.get(family, "sdpa"))
    stock.eval()
    varlen = copy.deepcopy(stock)
    varlen.set_attn_implementation("dynmask_varlen")
    prompt = torch.randint(3, 100, (2, 12))
    padded = torch.ones_like(prompt)
    padded[1, :3] = 0  # left padding in the second row
    for mask in (None, padded):  # no mask: windows over the cache go through the varlen kernel
        kwargs = dict(max_new_tokens=14, do_sample=False, output_scores=True, return_dict_in_generate=True)
        want = stock.generate(prompt, attention_mask=mask, **kwargs, pad_token_id=0)
        got = varlen.generate(prompt, attention_mask=mask, **kwargs, pad_token_id=0)
        assert torch.equal(got.sequences, want.sequences)
        for a, b in zip(got.scores, want.scores, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_no_dense_mask_for_a_packed_row(monkeypatch):
    """The mask interface never builds the (N, N) mask transformers' sdpa builds for a packed decoder row."""
    import transformers.masking_utils as masking_utils

    calls = []
    original = masking_utils.sdpa_mask

    def spy(*args, **kwargs):
        calls.append(kwargs.get("q_length"))
        return original(*args, **kwargs)

    monkeypatch.setattr(masking_utils, "sdpa_mask", spy)
    _, varlen = pair("llama")
    varlen.eval()
    with torch.no_grad():
        varlen(**packed_inputs(sequences(), "position_ids"), use_cache=False)
    assert calls == []


def test_unverified_family_and_unknown_arguments_are_refused():
    config = AutoConfig.for_model("gpt_neox", **SMALL)
    model = AutoModel.from_config(config, attn_implementation="dynmask_varlen")
    with pytest.raises(ValueError, match="not verified on GPTNeoXAttention.*attn_implementation='sdpa'"):
        model(input_ids=torch.randint(3, 100, (1, 5)))
    _, varlen = pair("llama")
    attention = varlen.layers[0].self_attn
    q = torch.randn(1, 4, 5, 8)
    k = v = torch.randn(1, 2, 5, 8)
    from hf_dynmask.modeling.attention import varlen_attention_forward

    with pytest.raises(ValueError, match=r"does not know the attention argument\(s\) \['score_mod'\]"):
        varlen_attention_forward(attention, q, k, v, None, score_mod=lambda s: s)
    with pytest.raises(ValueError, match="attention sinks"):
        varlen_attention_forward(attention, q, k, v, None, s_aux=torch.zeros(4))
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    with pytest.raises(ValueError, match="relative position bias"):
        varlen_attention_forward(attention, q, k, v, None, cu_seq_lens_q=cu, position_bias=torch.zeros(1, 4, 5, 5))


def test_encoder_rows_with_restarting_positions_need_stated_boundaries():
    _, varlen = pair("bert")
    attention = varlen.encoder.layer[0].attention.self
    from hf_dynmask.modeling.attention import varlen_attention_forward

    q = k = v = torch.randn(1, 4, 5, 8)
    with pytest.raises(ValueError, match="boundaries are never guessed"):
        varlen_attention_forward(attention, q, k, v, None, position_ids=torch.tensor([[0, 1, 0, 1, 2]]))


def test_family_of_and_verified_table():
    _, varlen = pair("llama")
    assert family_of(varlen.layers[0].self_attn) == "llama"
    assert check_verified_family(varlen.layers[0].self_attn) == "llama"
    assert set(FAMILY_CONFIGS) <= set(VERIFIED_FAMILIES), "every verified family needs its equivalence test here"
    assert set(VERIFIED_FAMILIES) <= set(FAMILY_CONFIGS), "a family in the table without a test here"

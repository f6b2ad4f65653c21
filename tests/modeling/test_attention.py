"""hf_dynmask.modeling.attention: the varlen kernel against per-sequence references, and what the transformers entry
points refuse.

Kernel: self- and cross-attention (different query and key boundaries), causal and not, grouped-query heads, sliding
windows both ways, softcap, every bucketing ratio, lengths 1 to 40, gradients included. Entry points: no dense mask for
a packed row; unverified families, unknown arguments, attention sinks, position biases, guessed encoder boundaries,
packed rows over a cache and positions not restarting per sequence are refused. The stock families against each
sequence alone are in ``test_families.py``.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModel

import hf_dynmask  # noqa: F401  (registers dynmask_varlen)
from hf_dynmask.modeling.attention import plan_varlen, rows_plan, varlen_attention, varlen_attention_forward
from hf_dynmask.modeling.batch import BatchRules, describe_batch
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
    ([4, 2, 6], [2, 5, 6], 2, 2, False, 3, None),  # 2 queries beyond the keys, each within the window of 3
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
    # One gather for every block: sequences 1 and 3 padded to 10 (padding slots repeat the first token), then 0 and 2
    # padded to 3; out_index puts token t back at position t from the concatenated blocks.
    assert plan.q_index.tolist() == [*range(3, 13), *range(15, 24), 15, 0, 1, 2, 13, 14, 13]
    assert plan.k_index is plan.q_index
    assert plan.out_index.tolist() == [20, 21, 22, *range(0, 10), 23, 24, *range(10, 19)]
    single = plan_varlen(cu_seqlens_from_seq_lens([3, 10, 2, 9]), bucket_ratio=0.0)
    assert [(g.num_seqs, g.q_len) for g in single.groups] == [(4, 10)]


@pytest.mark.parametrize("max_groups", [1, 2, 3, None])
def test_groups_are_bounded_and_merged_where_they_waste_least(max_groups):
    lens = [40, 38, 20, 19, 18, 5, 4, 1]
    plan = plan_varlen(cu_seqlens_from_seq_lens(lens), bucket_ratio=0.9, max_groups=max_groups)
    unbounded = plan_varlen(cu_seqlens_from_seq_lens(lens), bucket_ratio=0.9, max_groups=None)
    assert len(plan.groups) == (len(unbounded.groups) if max_groups is None else min(max_groups, 5))
    assert sum(g.num_seqs for g in plan.groups) == len(lens)
    if max_groups == 2:  # the cheapest merge keeps the two long ones apart from the rest
        assert [(g.num_seqs, g.q_len) for g in plan.groups] == [(2, 40), (6, 20)]
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(sum(lens), 2, 4, generator=generator) for _ in range(3))
    torch.testing.assert_close(
        varlen_attention(q, k, v, plan, scaling=0.5),
        varlen_attention(q, k, v, unbounded, scaling=0.5),
        atol=ATOL,
        rtol=0,
    )


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


@pytest.mark.parametrize("kernel", ["sdpa", "eager", "torch_varlen"])
@pytest.mark.parametrize("causal, window", [(True, None), (True, 8), (False, 2)])
def test_kernel_refuses_queries_that_would_see_no_key(kernel, causal, window):
    """Bottom-right aligned, the first queries of a sequence with 2 queries beyond its keys see no key when causal, or
    past a window of 2: flash-attn returns zeros there, the eager softmax uniform weights over padding slots.
    Refused."""
    plan = plan_varlen(cu_seqlens_from_seq_lens([4, 3]), cu_seqlens_from_seq_lens([2, 5]))
    assert plan.query_surplus == 2
    q, k, v = torch.randn(7, 2, 4), torch.randn(7, 2, 4), torch.randn(7, 2, 4)
    with pytest.raises(ValueError, match="2 more queries than keys.*at least as many keys as queries"):
        varlen_attention(q, k, v, plan, scaling=1.0, is_causal=causal, sliding_window=window, kernel=kernel)
    assert rows_plan(2, 3, 1).query_surplus == 2 and rows_plan(2, 1, 3).query_surplus == 0


def test_kernel_refuses_mismatched_tokens_and_heads():
    plan = plan_varlen(cu_seqlens_from_seq_lens([2, 3]))
    with pytest.raises(ValueError, match="belong to another batch"):
        varlen_attention(torch.randn(6, 2, 4), torch.randn(6, 2, 4), torch.randn(6, 2, 4), plan, scaling=1.0)
    with pytest.raises(ValueError, match="cannot share 2 key/value heads"):
        varlen_attention(torch.randn(5, 3, 4), torch.randn(5, 2, 4), torch.randn(5, 2, 4), plan, scaling=1.0)


# --------------------------------------------------------------------------------------------------------------------
# The AttentionInterface / AttentionMaskInterface entries (the family matrix is in test_families.py)
# --------------------------------------------------------------------------------------------------------------------

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100)


def stock_model(model_type: str, **settings) -> torch.nn.Module:
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **{**SMALL, "max_position_embeddings": 128, **settings})
    return AutoModel.from_config(config, attn_implementation="dynmask_varlen").eval()


def packed_row(lens: list[int], position_start: int = 0) -> dict:
    cu = cu_seqlens_from_seq_lens(lens)
    return {
        "input_ids": torch.randint(3, 100, (1, sum(lens)), generator=torch.Generator().manual_seed(1)),
        "position_ids": position_ids_from_cu_seqlens(cu, position_start)[None],
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": max(lens),
        "max_length_k": max(lens),
    }


def test_no_dense_mask_for_a_packed_row(monkeypatch):
    """The mask interface never builds the (N, N) mask transformers' sdpa builds for a packed decoder row."""
    import transformers.masking_utils as masking_utils

    calls = []
    original = masking_utils.sdpa_mask

    def spy(*args, **kwargs):
        calls.append(kwargs.get("q_length"))
        return original(*args, **kwargs)

    monkeypatch.setattr(masking_utils, "sdpa_mask", spy)
    model = stock_model("llama", num_key_value_heads=2)
    batch = packed_row(LENS)
    with torch.no_grad():
        model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
        model(**batch, use_cache=False)
    assert calls == []


def test_unverified_families_are_refused_at_load():
    """A family that is not verified is refused when it is loaded with dynmask_varlen, or switched to it, before any
    batch: DeBERTa-v2's attention never calls the interface (a packed row would silently attend across sequences),
    BART numbers positions over the whole row (the DynMask seq2seq family packs it)."""
    bart = AutoConfig.for_model(
        "bart", d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=100,
    )  # fmt: skip
    with pytest.raises(
        ValueError, match="not verified on BartModel.*DynMaskSeq2SeqConfig.*attn_implementation='sdpa'"
    ):
        AutoModel.from_config(bart, attn_implementation="dynmask_varlen")
    deberta = AutoConfig.for_model("deberta-v2", **SMALL, max_position_embeddings=128)
    with pytest.raises(ValueError, match="not verified on DebertaV2Model.*never calls transformers' attention"):
        AutoModel.from_config(deberta, attn_implementation="dynmask_varlen")
    model = AutoModel.from_config(bart, attn_implementation="sdpa")
    with pytest.raises(ValueError, match="not verified on BartModel"):
        model.set_attn_implementation("dynmask_varlen")


def test_the_load_check_is_the_only_patch_and_can_be_undone():
    from transformers import PreTrainedModel

    from hf_dynmask.modeling import stock

    wrapped = PreTrainedModel._check_and_adjust_attn_implementation
    assert getattr(wrapped, "__dynmask_original__", None) is not None
    stock.uninstall_load_check()
    try:
        assert PreTrainedModel._check_and_adjust_attn_implementation is wrapped.__dynmask_original__
        # Without the check a stock model's batches go unchecked, so its attention refuses to run.
        model = stock_model("bert")
        with pytest.raises(ValueError, match="never checked the batch"), torch.no_grad():
            model(input_ids=torch.randint(3, 100, (1, 5)))
    finally:
        assert stock.install_load_check()
    assert PreTrainedModel._check_and_adjust_attn_implementation is not wrapped  # a new wrapper, same original
    assert PreTrainedModel._check_and_adjust_attn_implementation.__dynmask_original__ is wrapped.__dynmask_original__


DISTILBERT = {"dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64}


def test_a_config_shared_with_a_dynmask_varlen_model_keeps_its_backend():
    """transformers keeps the attention backend on the config object and ``from_config`` does not copy it: a second
    model built from the same object with ``sdpa`` used to switch the first one too, which then ran a packed row
    through stock DistilBERT attention and mixed its sequences (7.7e-3 from each sequence alone). Now the second model
    is refused with what to do, a deep copy works, and the first model stays exact."""
    import copy

    config = AutoConfig.for_model("distilbert", **{**SMALL, **DISTILBERT})
    torch.manual_seed(0)
    model = AutoModel.from_config(config, attn_implementation="dynmask_varlen").eval()
    with pytest.raises(ValueError, match=r"would switch that model to 'sdpa' too.*copy\.deepcopy\(config\)"):
        AutoModel.from_config(config, attn_implementation="sdpa")
    assert config._attn_implementation == "dynmask_varlen"
    reference = AutoModel.from_config(copy.deepcopy(config), attn_implementation="eager").eval()
    reference.load_state_dict(model.state_dict())
    assert model.config._attn_implementation == "dynmask_varlen"
    batch = packed_row([2, 3])
    ids = batch["input_ids"]
    with torch.no_grad():
        packed = model(**batch).last_hidden_state
        alone = torch.cat([reference(input_ids=ids[:, :2]).last_hidden_state,
                           reference(input_ids=ids[:, 2:]).last_hidden_state], dim=1)  # fmt: skip
    torch.testing.assert_close(packed, alone, rtol=0, atol=1e-6)


def test_a_model_switched_off_dynmask_varlen_refuses_packed_rows():
    """``set_attn_implementation`` on the model itself is allowed (its own sub-models follow), and it then runs padded
    batches as stock does, but a packed row's boundaries, which stock attention ignores, are refused."""
    model = stock_model("distilbert", **DISTILBERT)
    model.set_attn_implementation("sdpa")
    ids = torch.randint(3, 100, (1, 5))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=torch.tensor([[1, 1, 1, 1, 0]]))
        with pytest.raises(ValueError, match=r"packed row \(cu_seq_lens_q, cu_seq_lens_k\).*now runs "
                           r"attn_implementation='sdpa'.*set_attn_implementation\('dynmask_varlen'\)"):  # fmt: skip
            model(**packed_row([2, 3]))
        model.set_attn_implementation("dynmask_varlen")
        model(**packed_row([2, 3]))


def test_a_dynmask_varlen_model_built_on_an_unchecked_models_config_names_the_cause():
    """The other order: the first model (sdpa) is not prepared for dynmask_varlen, yet its config now says so; its
    attention refuses to run and says how that can happen."""
    config = AutoConfig.for_model("bert", **{**SMALL, "max_position_embeddings": 128})
    first = AutoModel.from_config(config, attn_implementation="sdpa").eval()
    AutoModel.from_config(config, attn_implementation="dynmask_varlen")
    with pytest.raises(ValueError, match=r"never checked the batch.*copy\.deepcopy\(config\)"), torch.no_grad():
        first(input_ids=torch.randint(3, 100, (1, 5)))


def test_unknown_attention_arguments_are_refused():
    attention = stock_model("llama", num_key_value_heads=2).layers[0].self_attn
    q = torch.randn(1, 4, 5, 8)
    k = v = torch.randn(1, 2, 5, 8)
    rows = describe_batch((1, 5), rules=BatchRules())
    with pytest.raises(ValueError, match=r"does not know the attention argument\(s\) \['score_mod'\]"):
        varlen_attention_forward(attention, q, k, v, None, score_mod=lambda s: s, dynmask_layout=rows)
    with pytest.raises(ValueError, match="attention sinks"):
        varlen_attention_forward(attention, q, k, v, None, s_aux=torch.zeros(4), dynmask_layout=rows)
    packed = describe_batch((1, 5), rules=BatchRules(), cu_seq_lens_q=torch.tensor([0, 2, 5]))
    with pytest.raises(ValueError, match="relative position bias"):
        varlen_attention_forward(
            attention, q, k, v, None, position_bias=torch.zeros(1, 4, 5, 5), dynmask_layout=packed,
            dynmask_plan=plan_varlen(packed.cu_seqlens),
        )  # fmt: skip


def test_encoder_rows_with_restarting_positions_need_stated_boundaries():
    model = stock_model("bert")
    with pytest.raises(ValueError, match="position_ids start a new sequence inside a row"), torch.no_grad():
        model(input_ids=torch.randint(3, 100, (1, 5)), position_ids=torch.tensor([[0, 1, 0, 1, 2]]))


def test_position_derived_pack_over_a_cache_is_refused():
    """Restarting positions over a cache: the boundaries of the cached keys are unknown."""
    model = stock_model("llama", num_key_value_heads=2)
    with torch.no_grad():
        cache = model(input_ids=torch.randint(3, 100, (1, 4)), use_cache=True).past_key_values
        with pytest.raises(ValueError, match="a packed row over a cache"):
            model(
                input_ids=torch.randint(3, 100, (1, 5)),
                position_ids=torch.tensor([[4, 5, 0, 1, 2]]),
                past_key_values=cache,
            )


@pytest.mark.parametrize(
    "model_type, settings, start, positions, message",
    [
        # RoBERTa numbers positions from padding_idx + 1: a packed row numbered from 0 is refused.
        ("roberta", {"pad_token_id": 1}, 2, "from_zero", "must restart at 2 in every sequence"),
        ("bert", {}, 0, "over_row", "must restart at 0 in every sequence"),
        ("distilbert", {"dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64}, 0, "over_row", "must restart at 0"),
        ("gpt2", {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 128}, 0, "shifted", "must restart at 0"),
    ],
)
def test_packed_rows_need_positions_per_sequence(model_type, settings, start, positions, message):
    """Positions numbered over the whole row, or from the wrong start, would change every sequence's outputs (a packed
    row without position_ids gets each sequence's own: test_families.py)."""
    model = stock_model(model_type, **settings)
    batch = packed_row([3, 5, 2], position_start=start)
    if positions == "from_zero":
        batch["position_ids"] = batch["position_ids"] - start
    elif positions == "over_row":
        batch["position_ids"] = torch.arange(10)[None]
    elif positions == "shifted":
        batch["position_ids"] = batch["position_ids"] + 1
    with pytest.raises(ValueError, match=message), torch.no_grad():
        model(**batch)


def test_position_derived_pack_must_start_at_the_first_position():
    """GPT-2 learns absolute positions: a row whose sequences restart at 1 is refused, not run shifted."""
    model = stock_model("gpt2", n_embd=32, n_layer=2, n_head=4, n_positions=128)
    with pytest.raises(ValueError, match="must restart at 0"), torch.no_grad():
        model(input_ids=torch.randint(3, 100, (1, 5)), position_ids=torch.tensor([[1, 2, 3, 1, 2]]), use_cache=False)

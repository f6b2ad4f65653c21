"""hf_dynmask.modeling.masks: exact small masks, composition, and agreement of the bool / additive / flex forms."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_dynmask.modeling.layout import cu_seqlens_from_seq_lens, seq_idx_from_cu_seqlens
from hf_dynmask.modeling.masks import (
    VarlenArgs,
    and_masks,
    bidirectional,
    causal,
    document,
    draw,
    or_masks,
    padding,
    padding_to_bool_4d,
    prefix_lm,
    sliding_window,
    to_additive,
    to_block_mask,
    to_bool,
    varlen_args_from_cu_seqlens,
    varlen_args_from_seq_idx,
)

T = torch.tensor


def rows(*lines: str) -> torch.Tensor:
    """A hand-written 2-D mask: '1' attend, '.' blocked, one string per query row."""
    return T([[ch == "1" for ch in line] for line in lines])


# --------------------------------------------------------------------------------------------------------------------
# Exact masks
# --------------------------------------------------------------------------------------------------------------------


def test_causal_exact():
    allowed = to_bool(causal(), 2, 4, 4)
    expected = rows("1...", "11..", "111.", "1111")
    assert allowed.dtype == torch.bool and allowed.shape == (2, 1, 4, 4)
    assert torch.equal(allowed[0, 0], expected) and torch.equal(allowed[1, 0], expected)


def test_bidirectional_exact():
    allowed = to_bool(bidirectional(), 1, 3, 5)
    assert allowed.shape == (1, 1, 3, 5) and bool(allowed.all())


def test_padding_exact_right_and_left():
    attention_mask = T([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
    allowed = to_bool(padding(attention_mask), 2, 5, 5)
    assert torch.equal(allowed[0, 0], rows(*["111.."] * 5))
    assert torch.equal(allowed[1, 0], rows(*["..111"] * 5))


def test_document_exact_2d_per_row():
    seq_idx = T([[0, 0, 1, 1, 1], [0, 1, 1, 2, 2]])
    allowed = to_bool(document(seq_idx), 2, 5, 5)
    assert torch.equal(allowed[0, 0], rows("11...", "11...", "..111", "..111", "..111"))
    assert torch.equal(allowed[1, 0], rows("1....", ".11..", ".11..", "...11", "...11"))


def test_document_1d_is_shared_by_every_row():
    allowed = to_bool(document(T([0, 1, 1])), 3, 3, 3)
    expected = rows("1..", ".11", ".11")
    assert allowed.shape == (3, 1, 3, 3)
    for b in range(3):
        assert torch.equal(allowed[b, 0], expected)


def test_sliding_window_exact():
    assert torch.equal(to_bool(sliding_window(2), 1, 4, 4)[0, 0], rows("11..", "111.", ".111", "..11"))
    assert torch.equal(to_bool(sliding_window(1), 1, 3, 3)[0, 0], torch.eye(3, dtype=torch.bool))
    causal_window = to_bool(and_masks(causal(), sliding_window(3)), 1, 5, 5)[0, 0]
    assert torch.equal(causal_window, rows("1....", "11...", "111..", ".111.", "..111"))


def test_sliding_window_causal_matches_transformers():
    from transformers.masking_utils import sliding_window_causal_mask_function

    for window in (1, 2, 5):
        ours = to_bool(and_masks(causal(), sliding_window(window)), 1, 6, 6)
        theirs = to_bool(sliding_window_causal_mask_function(window), 1, 6, 6)
        assert torch.equal(ours, theirs)


def test_prefix_lm_exact():
    allowed = to_bool(prefix_lm(T([3, 0])), 2, 5, 5)
    assert torch.equal(allowed[0, 0], rows("111..", "111..", "111..", "1111.", "11111"))
    assert torch.equal(allowed[1, 0], rows("1....", "11...", "111..", "1111.", "11111"))


def test_composition_and_or():
    seq_idx = T([[0, 0, 0, 1, 1]])
    attention_mask = T([[1, 1, 1, 1, 0]])
    allowed = to_bool(and_masks(causal(), document(seq_idx), padding(attention_mask)), 1, 5, 5)[0, 0]
    assert torch.equal(allowed, rows("1....", "11...", "111..", "...1.", "...1."))
    union = to_bool(or_masks(document(seq_idx), sliding_window(2)), 1, 5, 5)[0, 0]
    assert torch.equal(union, rows("111..", "111..", "1111.", "..111", "...11"))
    # and/or are associative with themselves and agree with element-wise logic on the bool forms.
    a, b, c = causal(), sliding_window(2), document(seq_idx)
    ba, bb, bc = (to_bool(fn, 1, 5, 5) for fn in (a, b, c))
    assert torch.equal(to_bool(and_masks(a, b, c), 1, 5, 5), ba & bb & bc)
    assert torch.equal(to_bool(or_masks(a, and_masks(b, c)), 1, 5, 5), ba | (bb & bc))


def test_q_len_and_kv_len_may_differ():
    allowed = to_bool(and_masks(causal(), padding(T([[1, 1, 1, 1, 0, 0]]))), 1, 2, 6)
    assert allowed.shape == (1, 1, 2, 6)
    assert torch.equal(allowed[0, 0], rows("1.....", "11...."))


def test_draw():
    assert draw(T([[True, False], [False, True]])) == "■ ⬚\n⬚ ■"
    with pytest.raises(ValueError, match="2-D"):
        draw(torch.ones(1, 1, 2, 2, dtype=torch.bool))


@pytest.mark.parametrize(
    "make",
    [
        lambda: padding(T([1, 1, 0])),
        lambda: document(torch.zeros(1, 2, 3, dtype=torch.long)),
        lambda: prefix_lm(T([[1]])),
        lambda: sliding_window(0),
        lambda: and_masks(causal(), "causal"),
        lambda: or_masks(),
        lambda: to_additive(T([1, 0]), torch.float32),
        lambda: to_additive(T([True]), torch.int64),
        lambda: padding_to_bool_4d(T([1, 1, 0])),
        lambda: padding_to_bool_4d(T([[1, 1]]), q_len=3),
        lambda: to_bool(lambda b, h, q, kv: q - kv, 1, 2, 2),
        lambda: varlen_args_from_seq_idx(T([1, 0])),
        lambda: varlen_args_from_cu_seqlens(T([1, 3])),
    ],
)
def test_bad_input_raises_value_error(make):
    with pytest.raises(ValueError):
        make()


# --------------------------------------------------------------------------------------------------------------------
# padding_to_bool_4d
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("is_causal", [False, True])
def test_padding_to_bool_4d_matches_predicates(is_causal):
    attention_mask = T([[1, 1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    fn = and_masks(causal(), padding(attention_mask)) if is_causal else padding(attention_mask)
    fast = padding_to_bool_4d(attention_mask, causal=is_causal)
    assert fast.dtype == torch.bool and fast.shape == (3, 1, 7, 7)
    assert torch.equal(fast, to_bool(fn, 3, 7, 7))


def test_padding_to_bool_4d_queries_are_the_last_keys():
    fast = padding_to_bool_4d(T([[0, 1, 1, 1, 1]]), q_len=2, causal=True)
    assert torch.equal(fast[0, 0], rows(".111.", ".1111"))
    assert torch.equal(padding_to_bool_4d(T([[0, 1, 1]]), q_len=1)[0, 0], rows(".11"))


# --------------------------------------------------------------------------------------------------------------------
# Additive form
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_additive_is_exactly_zero_or_finfo_min(dtype):
    allowed = to_bool(and_masks(causal(), padding(T([[1, 1, 1, 0], [0, 1, 1, 1]]))), 2, 4, 4)
    additive_bias = to_additive(allowed, dtype)
    assert additive_bias.dtype == dtype and additive_bias.shape == (2, 1, 4, 4)
    assert bool((additive_bias[allowed] == 0).all())
    assert bool((additive_bias[~allowed] == torch.finfo(dtype).min).all())
    assert torch.isfinite(additive_bias).all()
    values = set(additive_bias.unique().tolist())
    assert values == {0.0, torch.finfo(dtype).min}


# --------------------------------------------------------------------------------------------------------------------
# The forms of one mask give the same attention output
# --------------------------------------------------------------------------------------------------------------------

BATCH, HEADS, SEQ, HEAD_DIM = 2, 3, 7, 5
ATOL = 1e-5  # fp32 on CPU


def _sdpa(q, k, v, attn_mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def _eager(q, k, v, additive_bias):
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + additive_bias  # (B, H, Q, KV)
    return torch.softmax(scores, dim=-1) @ v


def _flex(q, k, v, block_mask):
    from torch.nn.attention.flex_attention import flex_attention

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()": expected on CPU tests
        return flex_attention(q, k, v, block_mask=block_mask)


@pytest.fixture(scope="module")
def flex_available():
    """Whether FlexAttention runs here (eager, CPU); decided once on a tiny causal mask."""
    try:
        block_mask = to_block_mask(causal(), 1, 3, 3)
        q = torch.randn(1, 1, 3, 4)
        out = _flex(q, q, q, block_mask)
        ref = _sdpa(q, q, q, to_bool(causal(), 1, 3, 3))
        return bool(torch.allclose(out, ref, atol=ATOL))
    except Exception:  # any failure means "not usable in this torch"; the tests then skip
        return False


MASK_CASES = {
    "padding_right_left": lambda: padding(T([[1, 1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1, 1]])),
    "causal": causal,
    "causal_padding": lambda: and_masks(causal(), padding(T([[1, 1, 1, 1, 1, 0, 0], [1] * 7]))),
    "document": lambda: document(T([[0, 0, 0, 1, 2, 2, 2], [0, 1, 1, 1, 1, 1, 1]])),
    "document_causal": lambda: and_masks(causal(), document(T([0, 0, 1, 1, 1, 2, 2]))),
    "document_padding": lambda: and_masks(
        document(T([[0, 0, 1, 1, 1, 2, 2], [0, 0, 0, 0, 0, 1, 1]])), padding(T([[1] * 7, [1, 1, 1, 1, 1, 0, 0]]))
    ),
    "sliding_window": lambda: sliding_window(3),
    "sliding_window_causal": lambda: and_masks(causal(), sliding_window(2)),
    "prefix_lm": lambda: prefix_lm(T([3, 5])),
}


@pytest.mark.parametrize("case", sorted(MASK_CASES))
def test_all_forms_give_the_same_attention(case, flex_available):
    torch.manual_seed(0)
    mask_fn = MASK_CASES[case]()
    q, k, v = (torch.randn(BATCH, HEADS, SEQ, HEAD_DIM) for _ in range(3))
    allowed = to_bool(mask_fn, BATCH, SEQ, SEQ)  # (B, 1, Q, KV)
    additive_bias = to_additive(allowed, torch.float32)
    has_key = allowed.any(-1).expand(BATCH, HEADS, SEQ)  # (B, H, Q): rows with something to attend to

    outputs = {
        "sdpa_bool": _sdpa(q, k, v, allowed),
        "sdpa_additive": _sdpa(q, k, v, additive_bias),
        "eager": _eager(q, k, v, additive_bias),
    }
    reference = outputs.pop("eager")
    for name, out in outputs.items():
        torch.testing.assert_close(out[has_key], reference[has_key], atol=ATOL, rtol=0, msg=f"{case}: {name}")

    if not flex_available:
        pytest.skip("FlexAttention is unavailable or does not run on CPU in this torch")
    block_mask = to_block_mask(mask_fn, BATCH, SEQ, SEQ)
    assert tuple(block_mask.shape) == (BATCH, 1, SEQ, SEQ)
    out = _flex(q, k, v, block_mask)
    torch.testing.assert_close(out[has_key], reference[has_key], atol=ATOL, rtol=0, msg=f"{case}: flex")


# --------------------------------------------------------------------------------------------------------------------
# Document mask == each sequence run alone
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("is_causal", [False, True])
def test_document_mask_equals_sequences_run_alone(is_causal):
    torch.manual_seed(1)
    seq_lens = [3, 1, 5, 2]
    seq_idx = seq_idx_from_cu_seqlens(cu_seqlens_from_seq_lens(seq_lens))  # (N,)
    total = int(sum(seq_lens))
    q, k, v = (torch.randn(1, HEADS, total, HEAD_DIM) for _ in range(3))

    mask_fn = and_masks(causal(), document(seq_idx)) if is_causal else document(seq_idx)
    packed = _sdpa(q, k, v, to_bool(mask_fn, 1, total, total))

    varlen = varlen_args_from_seq_idx(seq_idx)
    assert varlen.cu_seqlens.tolist() == [0, 3, 4, 9, 11] and varlen.max_seqlen == 5
    starts, ends = varlen.cu_seqlens[:-1].tolist(), varlen.cu_seqlens[1:].tolist()
    alone = torch.cat(
        [
            F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=is_causal)
            for s, e in zip(starts, ends, strict=True)
        ],
        dim=2,
    )
    torch.testing.assert_close(packed, alone, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------------------------------------------
# Varlen arguments
# --------------------------------------------------------------------------------------------------------------------


def test_varlen_args_exact():
    args = varlen_args_from_seq_idx(T([0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2]))
    assert isinstance(args, VarlenArgs)
    assert args.cu_seqlens.dtype == torch.int32
    assert args.cu_seqlens.tolist() == [0, 3, 9, 16] and args.max_seqlen == 7
    # Two packed rows: the id 0 that starts row 1 is a new sequence, not the continuation of row 0's last one.
    args = varlen_args_from_seq_idx(T([[0, 0, 1, 1], [0, 0, 0, 1]]))
    assert args.cu_seqlens.tolist() == [0, 2, 4, 7, 8] and args.max_seqlen == 3
    args = varlen_args_from_cu_seqlens(T([0, 2, 7], dtype=torch.int64))
    assert args.cu_seqlens.dtype == torch.int32 and args.cu_seqlens.tolist() == [0, 2, 7] and args.max_seqlen == 5


# --------------------------------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------------------------------

length_lists = st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(seq_lens=length_lists)
def test_document_mask_is_same_sequence_relation(seq_lens):
    cu_seqlens = cu_seqlens_from_seq_lens(seq_lens)
    seq_idx = seq_idx_from_cu_seqlens(cu_seqlens)  # (N,)
    total = seq_idx.numel()
    expected = seq_idx[:, None] == seq_idx[None, :]  # (N, N)
    assert torch.equal(to_bool(document(seq_idx), 1, total, total)[0, 0], expected)
    assert torch.equal(to_bool(document(seq_idx[None]), 1, total, total)[0, 0], expected)
    args = varlen_args_from_seq_idx(seq_idx)
    assert torch.equal(args.cu_seqlens, cu_seqlens) and args.max_seqlen == max(seq_lens)


@settings(max_examples=60, deadline=None)
@given(
    real_lens=st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=4),
    left=st.booleans(),
    is_causal=st.booleans(),
    q_len=st.integers(min_value=1, max_value=6),
)
def test_padding_to_bool_4d_equals_reference(real_lens, left, is_causal, q_len):
    kv_len = 6
    attention_mask = torch.zeros(len(real_lens), kv_len, dtype=torch.long)
    for b, n in enumerate(real_lens):
        if left:
            attention_mask[b, kv_len - n :] = 1
        else:
            attention_mask[b, :n] = 1
    fast = padding_to_bool_4d(attention_mask, q_len=q_len, causal=is_causal)
    expected = torch.zeros(len(real_lens), 1, q_len, kv_len, dtype=torch.bool)
    for b in range(len(real_lens)):
        for qi in range(q_len):
            position = kv_len - q_len + qi  # the queries are the last q_len tokens
            for kv in range(kv_len):
                expected[b, 0, qi, kv] = bool(attention_mask[b, kv]) and (not is_causal or kv <= position)
    assert torch.equal(fast, expected)

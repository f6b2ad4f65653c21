import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_dynmask.modeling.layout import (
    cu_seqlens_from_seq_idx,
    cu_seqlens_from_seq_lens,
    packed_layout,
    pad_index_from_cu_seqlens,
    repad,
    seq_lens_from_cu_seqlens,
    unpad,
    unpad_index,
)

lengths = st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=12)


def padded_mask(seq_lens, padding_side="right", seqlen=None):
    seqlen = seqlen or max(seq_lens)
    mask = torch.zeros(len(seq_lens), seqlen, dtype=torch.long)
    for row, n in enumerate(seq_lens):
        if padding_side == "right":
            mask[row, :n] = 1
        else:
            mask[row, seqlen - n :] = 1
    return mask


def test_exact_layout():
    layout = packed_layout([3, 6, 7])
    assert layout.cu_seqlens.dtype == torch.int32
    assert layout.cu_seqlens.tolist() == [0, 3, 9, 16]
    assert layout.max_seqlen == 7
    assert layout.position_ids.tolist() == [0, 1, 2] + list(range(6)) + list(range(7))
    assert layout.seq_idx.tolist() == [0] * 3 + [1] * 6 + [2] * 7
    assert layout.num_seqs == 3 and layout.num_tokens == 16
    assert layout.seq_lens.tolist() == [3, 6, 7]


def test_roberta_position_start():
    layout = packed_layout([2, 1], position_start=2)
    assert layout.position_ids.tolist() == [2, 3, 2]


@pytest.mark.parametrize("bad", [[], [3, 0], [[1, 2]]])
def test_bad_lengths_raise(bad):
    with pytest.raises(ValueError):
        packed_layout(bad)


def test_empty_row_raises():
    with pytest.raises(ValueError, match="no real token"):
        unpad_index(torch.tensor([[1, 1], [0, 0]]))


def test_seq_idx_must_be_sorted():
    with pytest.raises(ValueError, match="non-decreasing"):
        cu_seqlens_from_seq_idx(torch.tensor([0, 1, 0]))


@settings(max_examples=60, deadline=None)
@given(lengths)
def test_layout_round_trips(seq_lens):
    layout = packed_layout(seq_lens)
    assert seq_lens_from_cu_seqlens(layout.cu_seqlens).tolist() == seq_lens
    assert cu_seqlens_from_seq_idx(layout.seq_idx).tolist() == layout.cu_seqlens.tolist()
    assert cu_seqlens_from_seq_lens(seq_lens).tolist() == layout.cu_seqlens.tolist()
    assert layout.num_tokens == sum(seq_lens)


@settings(max_examples=60, deadline=None)
@given(lengths, st.sampled_from(["left", "right"]), st.integers(0, 3))
def test_unpad_repad_round_trip(seq_lens, padding_side, extra):
    mask = padded_mask(seq_lens, padding_side, max(seq_lens) + extra)
    index = unpad_index(mask)
    assert index.seq_lens.tolist() == seq_lens
    padded = torch.randn(*mask.shape, 3) * mask[..., None]
    packed = unpad(padded, index)
    assert packed.shape == (sum(seq_lens), 3)
    torch.testing.assert_close(repad(packed, index), padded, rtol=0, atol=0)
    # Packed -> one row per sequence -> packed is exact too.
    per_seq = pad_index_from_cu_seqlens(index.cu_seqlens)
    assert torch.equal(unpad(repad(packed, per_seq), per_seq), packed)


def test_unpad_repad_keep_autograd():
    mask = padded_mask([2, 3], "left")
    index = unpad_index(mask)
    padded = torch.randn(2, 3, 4, requires_grad=True)
    (repad(unpad(padded, index) * 2, index)).sum().backward()
    # Gradient flows to real tokens only.
    torch.testing.assert_close(padded.grad, 2.0 * mask[..., None].float().expand(2, 3, 4))

"""hf_dynmask: dynamic padding, sequence packing and static/dynamic MLM masking for Hugging Face Transformers."""

from .layout import (
    PackedLayout,
    UnpadIndex,
    cu_seqlens_from_seq_idx,
    cu_seqlens_from_seq_lens,
    pad_index_from_cu_seqlens,
    packed_layout,
    position_ids_from_cu_seqlens,
    repad,
    seq_idx_from_cu_seqlens,
    seq_lens_from_cu_seqlens,
    unpad,
    unpad_index,
)

__version__ = "0.1.0"

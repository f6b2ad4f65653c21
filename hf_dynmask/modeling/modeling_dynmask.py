"""The DynMask model family: BERT/RoBERTa-compatible encoders whose attention skips padding.

Model-side module: imports only torch, transformers and relative siblings (it is saved next to a model as remote
code and loads where hf_dynmask is not installed).

Dimension legend:
    B  padded batch rows    T  padded length    N  real (packed) tokens    S  sequences    h  hidden size
    H  heads                D  head dim         V  vocabulary              C  classes

Three ways a batch reaches the encoder, all giving the same values at real tokens:

- **static** (``config.masking="static"``, padded input): every position is computed, padding included, with a
  ``(B, 1, T, T)`` mask, as classic BERT does;
- **dynamic** (``config.masking="dynamic"``, padded input): the padding is stripped once, before the embeddings;
  every layer runs on the ``N`` real tokens and the output is scattered back to ``(B, T, ...)`` (zeros at padding);
- **packed** (input of shape ``(1, N)`` with ``cu_seq_lens_q``, from hf_dynmask's packed collator): no padding
  anywhere; outputs keep the packed shape, per-sequence outputs (pooled, QA logits) have one row per sequence.

Attention backends (``attn_implementation``): ``"eager"`` (explicit softmax over an additive mask, the reference),
``"sdpa"`` and ``"dynmask_varlen"`` (SDPA; packed tokens go through :func:`~.attention.varlen_attention`),
``"flash_attention_2"`` (flash-attn varlen kernels, CUDA) and ``"flex_attention"`` (a document ``BlockMask``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    CausalLMOutput,
    MaskedLMOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging

from .attention import (
    ATTN_IMPLEMENTATION,
    VarlenPlan,
    flex_attention,
    plan_varlen,
    register_attention,
    varlen_attention,
)
from .batching import check_max_position, check_packed_row, eager_attention, reject_unmarked_packing
from .configuration_dynmask import DynMaskConfig
from .layout import (
    UnpadIndex,
    cu_seqlens_from_seq_idx,
    pad_index_from_cu_seqlens,
    position_ids_from_cu_seqlens,
    repad,
    seq_idx_from_cu_seqlens,
    unpad,
    unpad_index,
)
from .masks import document, padding_to_bool_4d, to_additive, to_block_mask

logger = logging.get_logger(__name__)

register_attention()

FLASH_IMPLEMENTATIONS = ("flash_attention_2", "flash_attention_3", "flash_attention_4")
SUPPORTED_IMPLEMENTATIONS = ("eager", "sdpa", ATTN_IMPLEMENTATION, "flex_attention", *FLASH_IMPLEMENTATIONS)


class EncoderBatch(NamedTuple):
    """What every layer needs to know about the batch, resolved once per forward.

    ``packed``: hidden states are ``(N, h)`` and attention follows ``cu_seqlens`` (``plan`` for the SDPA/eager
    kernels, ``block_mask`` for flex). Otherwise hidden states are ``(B, T, h)`` and ``attention_mask`` is the
    backend's 4-D form (bool ``(B, 1, T, T)``, True = may attend, for SDPA; additive for eager; a ``BlockMask`` for
    flex; the 2-D ``(B, T)`` mask for flash-attn, which unpads it itself).
    """

    packed: bool
    cu_seqlens: torch.Tensor | None = None  # int32 (S + 1,)
    max_seqlen: int = 0
    plan: VarlenPlan | None = None
    block_mask: object | None = None
    attention_mask: torch.Tensor | None = None


@dataclass
class DynMaskModelOutput(BaseModelOutputWithPooling):
    """[`BaseModelOutputWithPooling`] plus the hidden state of every sequence's first token.

    Shapes: ``last_hidden_state`` follows the input, ``(B, T, h)`` padded (zeros at padding under dynamic masking)
    or ``(1, N, h)`` packed; ``first_token_state`` and ``pooler_output`` are ``(B or S, h)``, one row per sequence
    (its first real token, whatever the padding side). Under dynamic masking, ``packed_hidden_state`` ``(N, h)`` and
    ``unpad_index`` also give the real tokens before they were scattered back, so per-token heads run on real tokens
    only (:meth:`DynMaskPreTrainedModel._per_token`).
    """

    first_token_state: torch.Tensor | None = None
    packed_hidden_state: torch.Tensor | None = None
    unpad_index: UnpadIndex | None = None


def _check_implementation(config: DynMaskConfig) -> str:
    name = config._attn_implementation or "sdpa"
    if name not in SUPPORTED_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation={name!r} is not supported by DynMask; choose one of {SUPPORTED_IMPLEMENTATIONS}"
        )
    return name


class DynMaskEmbeddings(nn.Module):
    """Word + position + token-type embeddings (BERT's module names, so BERT/RoBERTa weights load unchanged)."""

    def __init__(self, config: DynMaskConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        position_padding_idx = config.pad_token_id if config.head_style == "roberta" else None
        self.position_embeddings = nn.Embedding(
            config.max_position_embeddings, config.hidden_size, padding_idx=position_padding_idx
        )
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, inputs_embeds, position_ids, token_type_ids):
        """All arguments share one leading shape, ``(N,)`` or ``(B, T)``."""
        embeddings = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(position_ids)
        embeddings = embeddings + self.token_type_embeddings(token_type_ids) + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings))


class DynMaskSelfAttention(nn.Module):
    def __init__(self, config: DynMaskConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = bool(config.is_decoder)
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, batch: EncoderBatch) -> torch.Tensor:
        heads_shape = (*hidden_states.shape[:-1], self.num_heads, self.head_dim)
        q, k, v = (proj(hidden_states).view(heads_shape) for proj in (self.query, self.key, self.value))
        dropout = self.dropout.p if self.training else 0.0
        name = _check_implementation(self.config)

        if batch.packed:  # q, k, v: (N, H, D)
            if name == "flex_attention":
                qkv = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # (1, H, N, D)
                out = flex_attention(*qkv, batch.block_mask, scaling=self.scaling)[0]
            elif name in FLASH_IMPLEMENTATIONS:
                attention = ALL_ATTENTION_FUNCTIONS[name]
                out, _ = attention(
                    self,
                    *(t.transpose(0, 1).unsqueeze(0) for t in (q, k, v)),  # (1, H, N, D)
                    batch.block_mask,
                    dropout=dropout,
                    scaling=self.scaling,
                    is_causal=self.is_causal,
                    cu_seq_lens_q=batch.cu_seqlens,
                    cu_seq_lens_k=batch.cu_seqlens,
                    max_length_q=batch.max_seqlen,
                    max_length_k=batch.max_seqlen,
                )
                out = out[0]  # (N, H, D)
            else:
                out = varlen_attention(
                    q,
                    k,
                    v,
                    batch.plan,
                    scaling=self.scaling,
                    dropout_p=dropout,
                    is_causal=self.is_causal,
                    kernel="eager" if name == "eager" else "sdpa",
                    training=self.training,
                )
            return out.reshape(*hidden_states.shape)

        # Padded: (B, H, T, D), transformers' attention functions.
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if name == "flex_attention":
            return flex_attention(q, k, v, batch.attention_mask, scaling=self.scaling).reshape(*hidden_states.shape)
        attention = eager_attention if name == "eager" else ALL_ATTENTION_FUNCTIONS[name]
        out, _ = attention(self, q, k, v, batch.attention_mask, dropout=dropout, scaling=self.scaling)
        return out.reshape(*hidden_states.shape)


class DynMaskSelfOutput(nn.Module):
    def __init__(self, config: DynMaskConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class DynMaskAttention(nn.Module):
    def __init__(self, config: DynMaskConfig):
        super().__init__()
        self.self = DynMaskSelfAttention(config)
        self.output = DynMaskSelfOutput(config)

    def forward(self, hidden_states: torch.Tensor, batch: EncoderBatch) -> torch.Tensor:
        return self.output(self.self(hidden_states, batch), hidden_states)


class DynMaskIntermediate(nn.Module):
    def __init__(self, config: DynMaskConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class DynMaskOutput(DynMaskSelfOutput):
    def __init__(self, config: DynMaskConfig):
        super().__init__(config)
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)


class DynMaskLayer(GradientCheckpointingLayer):
    def __init__(self, config: DynMaskConfig):
        super().__init__()
        self.attention = DynMaskAttention(config)
        self.intermediate = DynMaskIntermediate(config)
        self.output = DynMaskOutput(config)

    def forward(self, hidden_states: torch.Tensor, batch: EncoderBatch) -> torch.Tensor:
        attention_output = self.attention(hidden_states, batch)
        return self.output(self.intermediate(attention_output), attention_output)


class DynMaskEncoder(nn.Module):
    def __init__(self, config: DynMaskConfig):
        super().__init__()
        self.layer = nn.ModuleList([DynMaskLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, hidden_states, batch, output_hidden_states=False):
        all_hidden = [hidden_states] if output_hidden_states else None
        for layer in self.layer:
            hidden_states = layer(hidden_states, batch)
            if output_hidden_states:
                all_hidden.append(hidden_states)
        return hidden_states, all_hidden


class DynMaskPooler(nn.Module):
    def __init__(self, config: DynMaskConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, first_token_state: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(first_token_state))


class DynMaskPreTrainedModel(PreTrainedModel):
    config_class = DynMaskConfig
    config: DynMaskConfig
    base_model_prefix = "bert"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["DynMaskEmbeddings", "DynMaskLayer"]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, (DynMaskBertLMHead, DynMaskRobertaLMHead)):
            module.bias.zero_()

    def _encode(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, kwargs):
        """The heads' encoder call. Each head names these inputs in its own ``forward``, because transformers'
        ``Trainer(remove_unused_columns=True)`` keeps only the dataset columns a signature names."""
        return self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )

    @staticmethod
    def _per_token(outputs: DynMaskModelOutput, head, labels: torch.Tensor | None, shift: bool = False):
        """Apply a per-token head and line its labels up with its logits.

        Under dynamic masking the head runs on the ``N`` real tokens only (a vocabulary projection at padding is the
        most expensive waste of all) and the loss is taken there; the logits are scattered back to ``(B, T, C)``
        for the output. ``shift=True`` (causal LM) shifts the labels inside each padded row first, so no label is
        predicted across sequences. Returns ``(output logits, loss logits, loss labels, shift_labels)``.
        """
        if outputs.unpad_index is None:
            logits = head(outputs.last_hidden_state)
            return logits, logits, labels, None
        index = outputs.unpad_index
        packed_logits = head(outputs.packed_hidden_state)  # (N, C)
        loss_labels = shift_labels = None
        if labels is not None:
            if labels.shape != (index.batch_size, index.seqlen):
                raise ValueError(
                    f"labels {tuple(labels.shape)} must match the tokens {(index.batch_size, index.seqlen)}"
                )
            if shift:
                shifted = nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
                shift_labels = unpad(shifted, index)
            else:
                loss_labels = unpad(labels, index)
        return repad(packed_logits, index), packed_logits, loss_labels, shift_labels

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        """transformers' check, with errors that name what to install or which names exist."""
        if requested_attention is not None and requested_attention not in SUPPORTED_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_implementation={requested_attention!r} is not supported by DynMask; choose one of "
                f"{SUPPORTED_IMPLEMENTATIONS}"
            )
        try:
            return super().get_correct_attn_implementation(requested_attention, is_init_check)
        except ImportError as error:
            raise ImportError(
                f"attn_implementation={requested_attention!r} needs flash-attn on a CUDA GPU: "
                "pip install 'hf-dynmask[flash]'. On other devices use 'dynmask_varlen' (exact packed attention "
                f"without flash-attn). ({error})"
            ) from error

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' ``from_pretrained``, also reading RoBERTa checkpoints (``roberta.`` weight prefix)."""
        kwargs.setdefault("key_mapping", {r"^roberta\.": "bert."})
        return super().from_pretrained(*args, **kwargs)


class DynMaskModel(DynMaskPreTrainedModel):
    """The encoder. Accepts padded batches (``attention_mask`` ``(B, T)``) and packed ones (``cu_seq_lens_q``)."""

    def __init__(self, config: DynMaskConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = DynMaskEmbeddings(config)
        self.encoder = DynMaskEncoder(config)
        self.pooler = DynMaskPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cu_seq_lens_q: torch.Tensor | None = None,
        cu_seq_lens_k: torch.Tensor | None = None,
        max_length_q: int | None = None,
        max_length_k: int | None = None,
        seq_idx: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> DynMaskModelOutput:
        r"""
        Args:
            input_ids: ``(B, T)`` padded or ``(1, N)`` packed.
            attention_mask: ``(B, T)``, 1 at real tokens, 0 at padding (either side). Not for packed batches.
            position_ids: optional; by default positions restart at ``config.position_start`` at the first real
                token of every sequence. Packed batches are checked against their boundaries.
            cu_seq_lens_q / cu_seq_lens_k: int32 ``(S + 1,)`` boundaries of a packed row (transformers' names for
                ``cu_seqlens``). ``seq_idx`` ``(1, N)`` states the same boundaries and is accepted instead.
            max_length_q / max_length_k: the longest sequence of a packed row (recomputed from the boundaries).
        """
        output_hidden_states = bool(output_hidden_states)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        reference = input_ids if input_ids is not None else inputs_embeds[..., 0]
        if reference.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq_len), got shape {tuple(reference.shape)}")
        if cu_seq_lens_k is not None and cu_seq_lens_q is not None and not torch.equal(cu_seq_lens_k, cu_seq_lens_q):
            raise ValueError("DynMask is an encoder with self-attention: cu_seq_lens_k must equal cu_seq_lens_q")
        cu_seqlens = cu_seq_lens_q if cu_seq_lens_q is not None else cu_seq_lens_k
        if cu_seqlens is None and seq_idx is not None:
            cu_seqlens = cu_seqlens_from_seq_idx(seq_idx)

        if cu_seqlens is not None:
            return self._forward_packed(
                input_ids,
                inputs_embeds,
                attention_mask,
                token_type_ids,
                position_ids,
                cu_seqlens,
                output_hidden_states,
            )
        reject_unmarked_packing(position_ids, attention_mask)
        if attention_mask is None:
            attention_mask = torch.ones_like(reference, dtype=torch.long)
        if attention_mask.shape != reference.shape:
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} must match input_ids {tuple(reference.shape)}"
            )
        if self.config.masking == "dynamic" or _check_implementation(self.config) in FLASH_IMPLEMENTATIONS:
            return self._forward_dynamic(
                input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids, output_hidden_states
            )
        return self._forward_static(
            input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids, output_hidden_states
        )

    # -- the three paths -------------------------------------------------------------------------------------------

    def _forward_static(self, input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids, output_hidden):
        """Every position computed, padding included; ``attention_mask`` ``(B, T)`` is validated by the caller."""
        real = attention_mask.bool()
        if not bool(real.any(dim=1).all()):
            raise ValueError("a row of attention_mask has no real token; drop empty examples before batching")
        if position_ids is None:
            # Positions restart at every sequence's first real token, so left and right padding agree.
            position_ids = (real.long().cumsum(1) - 1).clamp(min=0) + self.config.position_start
        self._check_positions(position_ids[real])
        hidden = self.embeddings(input_ids, inputs_embeds, position_ids, token_type_ids)
        batch = EncoderBatch(packed=False, attention_mask=self._padded_mask(real, hidden.dtype))
        hidden, all_hidden = self.encoder(hidden, batch, output_hidden)
        first = real.long().argmax(dim=1)  # first real token of each row, either padding side
        first_token_state = hidden[torch.arange(hidden.shape[0], device=hidden.device), first]
        return self._output(hidden, first_token_state, all_hidden)

    def _forward_dynamic(self, input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids, output_hidden):
        """Padding stripped before the embeddings, restored at the output (zeros at padding)."""
        index = unpad_index(attention_mask)
        packed_positions = None if position_ids is None else unpad(position_ids, index)
        packed = self._run_packed(
            None if input_ids is None else unpad(input_ids, index),
            None if inputs_embeds is None else unpad(inputs_embeds, index),
            None if token_type_ids is None else unpad(token_type_ids, index),
            packed_positions,
            index.cu_seqlens,
            index.max_seqlen,
            output_hidden,
        )
        hidden, first_token_state, all_hidden = packed
        output = self._output(
            repad(hidden, index),
            first_token_state,
            None if all_hidden is None else [repad(h, index) for h in all_hidden],
        )
        output.packed_hidden_state, output.unpad_index = hidden, index
        return output

    def _forward_packed(
        self, input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids, cu_seqlens, output_hidden
    ):
        reference = input_ids if input_ids is not None else inputs_embeds[..., 0]
        cu_seqlens, max_seqlen = check_packed_row(reference, attention_mask, cu_seqlens)
        squeeze = lambda t: None if t is None else t[0]  # noqa: E731
        hidden, first_token_state, all_hidden = self._run_packed(
            squeeze(input_ids),
            squeeze(inputs_embeds),
            squeeze(token_type_ids),
            squeeze(position_ids),
            cu_seqlens,
            max_seqlen,
            output_hidden,
        )
        unsqueeze = lambda t: t.unsqueeze(0)  # noqa: E731
        return self._output(
            unsqueeze(hidden), first_token_state, None if all_hidden is None else [unsqueeze(h) for h in all_hidden]
        )

    def _run_packed(
        self, input_ids, inputs_embeds, token_type_ids, position_ids, cu_seqlens, max_seqlen, output_hidden
    ):
        """Embeddings + encoder over ``N`` packed tokens. Returns ``(N, h)``, ``(S, h)`` first tokens, all hidden."""
        expected = position_ids_from_cu_seqlens(cu_seqlens, self.config.position_start)
        if position_ids is None:
            position_ids = expected
        elif not torch.equal(position_ids, expected):
            raise ValueError(
                "position_ids do not restart at each sequence of the packed batch at "
                f"config.position_start={self.config.position_start}; build the batch with hf_dynmask's packed "
                "collator (position_start=config.position_start) or leave position_ids out"
            )
        self._check_positions(position_ids)
        hidden = self.embeddings(input_ids, inputs_embeds, position_ids, token_type_ids)  # (N, h)
        batch = self._packed_batch(cu_seqlens, max_seqlen, hidden.device)
        hidden, all_hidden = self.encoder(hidden, batch, output_hidden)
        first_token_state = hidden.index_select(0, cu_seqlens[:-1].long())
        return hidden, first_token_state, all_hidden

    # -- helpers ---------------------------------------------------------------------------------------------------

    def _output(self, hidden, first_token_state, all_hidden):
        pooled = self.pooler(first_token_state) if self.pooler is not None else None
        return DynMaskModelOutput(
            last_hidden_state=hidden,
            pooler_output=pooled,
            hidden_states=None if all_hidden is None else tuple(all_hidden),
            first_token_state=first_token_state,
        )

    def _check_positions(self, position_ids: torch.Tensor) -> None:
        check_max_position(position_ids, self.config.max_position_embeddings, self.config.max_seqlen)

    def _padded_mask(self, real: torch.Tensor, dtype: torch.dtype):
        """The ``(B, T)`` padding mask in the form the backend takes (see :class:`EncoderBatch`)."""
        name = _check_implementation(self.config)
        causal = bool(self.config.is_decoder)
        if name == "flex_attention":
            from .masks import and_masks, padding
            from .masks import causal as causal_fn

            mask_fn = and_masks(padding(real), causal_fn()) if causal else padding(real)
            return to_block_mask(mask_fn, real.shape[0], real.shape[1], real.shape[1], device=real.device)
        allowed = padding_to_bool_4d(real, causal=causal)  # (B, 1, T, T), True = may attend
        return to_additive(allowed, dtype) if name == "eager" else allowed

    def _packed_batch(self, cu_seqlens: torch.Tensor, max_seqlen: int, device) -> EncoderBatch:
        name = _check_implementation(self.config)
        if name == "flex_attention":
            from .masks import and_masks
            from .masks import causal as causal_fn

            seq_idx = seq_idx_from_cu_seqlens(cu_seqlens)
            mask_fn = document(seq_idx)
            if self.config.is_decoder:
                mask_fn = and_masks(mask_fn, causal_fn())
            num_tokens = seq_idx.numel()
            block_mask = to_block_mask(mask_fn, 1, num_tokens, num_tokens, device=device)
            return EncoderBatch(True, cu_seqlens, max_seqlen, block_mask=block_mask)
        if name in FLASH_IMPLEMENTATIONS:
            return EncoderBatch(True, cu_seqlens, max_seqlen)
        ratio = 0.0 if name == "eager" else self.config.varlen_bucket_ratio
        return EncoderBatch(True, cu_seqlens, max_seqlen, plan=plan_varlen(cu_seqlens, bucket_ratio=ratio))


# ---------------------------------------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------------------------------------


class DynMaskBertLMHead(nn.Module):
    """BERT's ``cls.predictions`` (transform.dense, transform.LayerNorm, decoder, bias)."""

    def __init__(self, config: DynMaskConfig):
        super().__init__()
        self.transform = nn.Module()
        self.transform.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform.transform_act_fn = ACT2FN[config.hidden_act]
        self.transform.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        t = self.transform
        return self.decoder(t.LayerNorm(t.transform_act_fn(t.dense(hidden_states))))


class DynMaskRobertaLMHead(nn.Module):
    """RoBERTa's ``lm_head`` (dense, layer_norm, decoder, bias)."""

    def __init__(self, config: DynMaskConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.act = ACT2FN["gelu"]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.layer_norm(self.act(self.dense(hidden_states))))


def _lm_head_and_ties(config: DynMaskConfig):
    if config.head_style == "roberta":
        return "lm_head", DynMaskRobertaLMHead(config)
    holder = nn.Module()
    holder.predictions = DynMaskBertLMHead(config)
    return "cls", holder


class _DynMaskLMBase(DynMaskPreTrainedModel):
    def __init__(self, config: DynMaskConfig):
        super().__init__(config)
        self.bert = DynMaskModel(config, add_pooling_layer=False)
        name, head = _lm_head_and_ties(config)
        setattr(self, name, head)
        self._head_name = name
        # Which module holds the LM head depends on head_style, so the tie is declared per instance.
        self._tied_weights_keys = _tied_keys("cls.predictions" if name == "cls" else "lm_head")
        self.post_init()

    @property
    def _lm_head(self) -> nn.Module:
        head = getattr(self, self._head_name)
        return head.predictions if self._head_name == "cls" else head

    def get_output_embeddings(self):
        return self._lm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self._lm_head.decoder = new_embeddings
        self._lm_head.bias = new_embeddings.bias


def _tied_keys(head_path: str) -> dict[str, str]:
    return {
        f"{head_path}.decoder.weight": "bert.embeddings.word_embeddings.weight",
        f"{head_path}.decoder.bias": f"{head_path}.bias",
    }


class DynMaskForMaskedLM(_DynMaskLMBase):
    """Masked-LM head. Loss: mean over real (non ``-100``) labels, or a sum over ``num_items_in_batch``."""

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> MaskedLMOutput:
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        outputs = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, kwargs)
        logits, loss_logits, loss_labels, _ = self._per_token(outputs, self._lm_head, labels)  # (B, T, V) / (1, N, V)
        loss = None
        if labels is not None:
            loss = self.loss_function(
                loss_logits, loss_labels, self.config.vocab_size, num_items_in_batch=num_items_in_batch
            )
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class DynMaskForCausalLM(_DynMaskLMBase):
    """Causal-LM head (``config.is_decoder=True``). Labels are the inputs; the loss shifts them by one.

    Packed batches from hf_dynmask's causal-LM collator carry ``-100`` at the first token of every sequence, so no
    token is trained to predict across a boundary.
    """

    def __init__(self, config: DynMaskConfig):
        if not config.is_decoder:
            raise ValueError("DynMaskForCausalLM needs config.is_decoder=True (causal self-attention)")
        super().__init__(config)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutput:
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        outputs = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, kwargs)
        logits, loss_logits, _, shift_labels = self._per_token(outputs, self._lm_head, labels, shift=True)
        loss = None
        if labels is not None:
            loss = self.loss_function(
                loss_logits,
                None if shift_labels is not None else labels,
                self.config.vocab_size,
                num_items_in_batch=num_items_in_batch,
                shift_labels=shift_labels,
            )
        return CausalLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class DynMaskClassificationHead(nn.Module):
    """RoBERTa's sequence head (``classifier.dense`` + tanh + ``classifier.out_proj`` on the first token)."""

    def __init__(self, config: DynMaskConfig, dropout: float):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, first_token_state: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.dense(self.dropout(first_token_state)))
        return self.out_proj(self.dropout(x))


class DynMaskForSequenceClassification(DynMaskPreTrainedModel):
    """One prediction per sequence: ``logits`` is ``(B, C)`` padded or ``(S, C)`` packed, pooled at each sequence's
    first real token (never at padding, whatever the padding side)."""

    def __init__(self, config: DynMaskConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        if config.head_style == "roberta":
            self.bert = DynMaskModel(config, add_pooling_layer=False)
            self.classifier = DynMaskClassificationHead(config, dropout)
        else:
            self.bert = DynMaskModel(config, add_pooling_layer=True)
            self.dropout = nn.Dropout(dropout)
            self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        outputs = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, kwargs)
        if self.config.head_style == "roberta":
            logits = self.classifier(outputs.first_token_state)
        else:
            logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None
        if labels is not None:
            if labels.shape[0] != logits.shape[0]:
                raise ValueError(
                    f"{logits.shape[0]} sequences in the batch but {labels.shape[0]} labels; a packed batch needs one "
                    "label per sequence (hf_dynmask's sequence-classification collator)"
                )
            loss = self._sequence_loss(labels, logits, num_items_in_batch)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)

    def _sequence_loss(self, labels, logits, num_items_in_batch):
        """transformers' sequence loss; with ``num_items_in_batch`` (the Trainer's count of labelled sequences over
        an accumulated step) a sum divided by it, so token-budget batches with varying sequence counts weigh every
        sequence alike under gradient accumulation."""
        single_label = self.config.problem_type in (None, "single_label_classification") and self.num_labels > 1
        if num_items_in_batch is None or not single_label or labels.dtype not in (torch.long, torch.int):
            return self.loss_function(labels, logits, self.config)
        self.config.problem_type = "single_label_classification"
        total = nn.functional.cross_entropy(logits.float().view(-1, self.num_labels), labels.view(-1), reduction="sum")
        return total / torch.as_tensor(num_items_in_batch, device=total.device)


class DynMaskForTokenClassification(DynMaskPreTrainedModel):
    """One prediction per token; ``logits`` follows the input shape. Loss: mean over real (non ``-100``) labels."""

    def __init__(self, config: DynMaskConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = DynMaskModel(config, add_pooling_layer=False)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> TokenClassifierOutput:
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        outputs = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, kwargs)
        if labels is not None and labels.shape != outputs.last_hidden_state.shape[:-1]:
            raise ValueError(
                f"labels {tuple(labels.shape)} must match the tokens {tuple(outputs.last_hidden_state.shape[:-1])}"
            )
        logits, loss_logits, loss_labels, _ = self._per_token(
            outputs, lambda hidden: self.classifier(self.dropout(hidden)), labels
        )
        loss = None
        if labels is not None:
            loss = self.loss_function(loss_logits, loss_labels, self.config, num_items_in_batch=num_items_in_batch)
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class DynMaskForQuestionAnswering(DynMaskPreTrainedModel):
    """Extractive QA.

    ``start_logits`` / ``end_logits`` are ``(B, T)`` padded or ``(S, max_seqlen)`` packed, one row per sequence, with
    ``torch.finfo(dtype).min`` at padding so the answer softmax covers real tokens only and the loss is the same in
    every mode (transformers' ``BertForQuestionAnswering`` scores padding positions too, so its loss changes with the
    padded length). ``start_positions`` / ``end_positions`` ``(B,)`` / ``(S,)`` count from each sequence's first
    token in packed mode and index the padded row otherwise.
    """

    def __init__(self, config: DynMaskConfig):
        super().__init__(config)
        if config.num_labels != 2:
            raise ValueError(
                f"question answering predicts a start and an end logit: num_labels must be 2, got {config.num_labels}"
            )
        self.bert = DynMaskModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        **kwargs,
    ) -> QuestionAnsweringModelOutput:
        kwargs.pop("num_items_in_batch", None)
        outputs = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, kwargs)
        logits = self.qa_outputs(outputs.last_hidden_state)  # (B, T, 2) or (1, N, 2)
        cu_seqlens = kwargs.get("cu_seq_lens_q")
        if cu_seqlens is None and kwargs.get("seq_idx") is not None:
            cu_seqlens = cu_seqlens_from_seq_idx(kwargs["seq_idx"])
        min_value = torch.finfo(logits.dtype).min
        if cu_seqlens is not None:
            logits = repad(logits[0], pad_index_from_cu_seqlens(cu_seqlens), pad_value=min_value)  # (S, L, 2)
        else:
            reference = input_ids if input_ids is not None else inputs_embeds[..., 0]
            real = torch.ones_like(reference, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
            logits = logits.masked_fill(~real[..., None], min_value)
        start_logits, end_logits = logits.unbind(dim=-1)
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = self.loss_function(start_logits, end_logits, start_positions, end_positions)
        return QuestionAnsweringModelOutput(
            loss=loss, start_logits=start_logits, end_logits=end_logits, hidden_states=outputs.hidden_states
        )


__all__ = [
    "DynMaskForCausalLM",
    "DynMaskForMaskedLM",
    "DynMaskForQuestionAnswering",
    "DynMaskForSequenceClassification",
    "DynMaskForTokenClassification",
    "DynMaskModel",
    "DynMaskModelOutput",
    "DynMaskPreTrainedModel",
]

"""The DynMask encoder-decoder family: BART- and Marian-compatible seq2seq models whose attention skips padding.

Model-side module: imports only torch, transformers and relative siblings (it is saved next to a model as remote
code and loads where hf_dynmask is not installed).

Dimension legend:
    B  pairs (rows of a padded batch)     T / Tt  padded source / target length     S  pairs of a packed batch
    N / Nt  real source / target tokens   h  d_model    H  heads    D  head dim    V  target vocabulary
    P  target positions already in the cache (generation)

Three ways a batch reaches the model, all giving the same values at real target tokens as each pair run alone
through the stock BART / Marian model:

- **static** (``config.masking="static"``, padded input): every position of both sides is computed, padding
  included, with ``(B, 1, T, T)``-style masks, as the stock model does;
- **dynamic** (``config.masking="dynamic"``, padded input): the padding of both sides is stripped once, before the
  embeddings; the encoder runs on the ``N`` real source tokens, the decoder on the ``Nt`` real target tokens
  (``decoder_attention_mask`` says which; without it, the tail of ``-100`` labels of each row, as transformers'
  ``DataCollatorForSeq2Seq`` pads them, :func:`~.batch.target_padding_from_labels`), the LM head and the loss on
  those only, and the outputs are scattered back to ``(B, Tt, ...)`` (zeros at padding). Where nothing states the
  target's padding (no mask, no labels), or a cache is kept (``use_cache``, generation), the decoder runs on the
  padded target, as the stock model does;
- **packed** (``input_ids`` ``(1, N)`` with ``cu_seq_lens_q``, and ``labels`` / ``decoder_input_ids`` ``(1, Nt)``
  with ``decoder_cu_seq_lens``, from hf_dynmask's seq2seq collator): no padding anywhere. Encoder self-attention
  stays inside each source, decoder causal self-attention inside each target, and cross-attention goes from target
  ``s`` to source ``s`` only (the varlen kernel with ``cu_seqlens_q`` of the targets and ``cu_seqlens_k`` of the
  sources). Positions restart at 0 for every sequence on both sides. For training and scoring; ``generate`` takes
  padded input.

Positions are each sequence's own on every path (they restart at its first real token, so left padding is exact
too), where the stock models number the columns of the padded row.

Attention backends (``attn_implementation``): ``"eager"`` (explicit softmax, the reference), ``"sdpa"`` and
``"dynmask_varlen"`` (SDPA on padded tensors; packed tokens always go through :func:`~.attention.varlen_attention`).
Other backends are refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.loss.loss_utils import ForMaskedLMLoss
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput, Seq2SeqModelOutput
from transformers.utils import logging

from .attention import AttentionLayout, attend, compiled_plan, dense_mask, plan_varlen
from .backends import AttentionBackendHooks, backend_of
from .batch import (
    DECODER_NAMES,
    BatchLayout,
    BatchRules,
    check_pairs,
    describe_batch,
    refuse_unknown_arguments,
    rows_as_packed,
    target_padding_from_labels,
)
from .configuration_dynmask_seq2seq import DynMaskSeq2SeqConfig
from .input_checks import IGNORE_INDEX
from .layout import UnpadIndex, cu_seqlens_from_seq_idx, repad, unpad
from .masks import padding_to_bool_4d
from .saving import add_auto_map, register_for_auto_classes
from .stock import register_attention

logger = logging.get_logger(__name__)

register_attention()


#: What the family's forwards take (for the did-you-mean of unknown arguments).
SEQ2SEQ_ARGUMENTS = (
    "input_ids",
    "attention_mask",
    "decoder_input_ids",
    "decoder_attention_mask",
    "encoder_outputs",
    "cache",
    "past_key_values",
    "inputs_embeds",
    "decoder_inputs_embeds",
    "labels",
    "use_cache",
    "position_ids",
    "decoder_position_ids",
    "cu_seq_lens_q",
    "cu_seq_lens_k",
    "max_length_q",
    "max_length_k",
    "seq_idx",
    "decoder_cu_seq_lens",
    "decoder_seq_idx",
    "decoder_max_length",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "num_items_in_batch",
)

#: Keys of a packed batch (hf_dynmask's seq2seq collator). ``generate`` refuses them: it works on padded input.
PACKED_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "seq_idx", "decoder_cu_seq_lens", "decoder_seq_idx")


# ---------------------------------------------------------------------------------------------------------------------
# How a batch is laid out, resolved once per forward
# ---------------------------------------------------------------------------------------------------------------------


def batch_rules(config: DynMaskSeq2SeqConfig, unpad: bool, decoder: bool = False) -> BatchRules:
    """What the family reads from either side of a batch (:class:`~.batch.BatchRules`): positions from 0, each
    sequence's own (given ones must agree), inside the position table; ``unpad`` strips the padding."""
    return BatchRules(
        max_positions=config.max_position_embeddings,
        given_positions="checked",
        unpad=unpad,
        names=DECODER_NAMES if decoder else BatchRules().names,
    )


@torch.compiler.disable  # plans read the lengths on the host: kept out of compiled graphs
def _self_layout(
    side: BatchLayout, kernel: str, ratio: float, causal: bool, weights: bool, device, compiling: bool = False
) -> AttentionLayout:
    """Self-attention of one side: the varlen plan when it runs packed, else the backend's mask over its padding
    (a decoder's queries being the last ``T`` of ``P + T`` keys over a cache). ``weights``: every mask whole, for the
    eager kernel (:func:`~.attention.dense_mask`). ``compiling`` (read by the caller, in the traced frame): a plan of
    at most ``COMPILED_GROUPS`` structures (:func:`~.attention.compiled_plan`); the decoder's cross plan takes the
    same groups (:func:`_cross_layout`), so the decoder's graph meets no more structures than the encoder's."""
    if side.runs_packed:
        if weights:
            seq_idx = side.seq_idx.view(side.batch_size, -1)  # (B, T)
            length = seq_idx.shape[1]
            mask = dense_mask(side.batch_size, length, length, device=device, is_causal=causal, seq_idx=seq_idx)
            return AttentionLayout("eager", packed=True, mask=mask)
        if compiling:
            plan = compiled_plan(side.cu_seqlens)
        else:
            plan = plan_varlen(side.cu_seqlens, bucket_ratio=ratio)
        return AttentionLayout(kernel, packed=True, plan=plan)
    real = side.real  # bool (B, P + T), None when no key is padding
    q_len, k_len = side.seqlen, side.past + side.seqlen
    if not causal:
        return AttentionLayout(kernel, mask=None if real is None else real[:, None, None, :])  # (B, 1, 1, K)
    if real is None:
        if q_len == 1:
            return AttentionLayout(kernel)  # one new token sees every cached one
        if q_len == k_len and kernel == "sdpa":
            return AttentionLayout(kernel, is_causal=True)
        return AttentionLayout(kernel, mask=dense_mask(1, q_len, k_len, device=device, is_causal=True))
    # Query rows at padding positions may attend to every key (their outputs are never used), so no row is fully
    # masked: a fully masked row gives NaN in some kernels.
    allowed = padding_to_bool_4d(real, q_len=q_len, causal=True) | ~real[:, None, -q_len:, None]  # (B, 1, Q, K)
    return AttentionLayout(kernel, mask=allowed)


@torch.compiler.disable
def _cross_layout(
    target: BatchLayout, source: BatchLayout, kernel: str, ratio: float, weights: bool, device, compiling: bool = False
) -> AttentionLayout:
    """Cross-attention: target ``s`` attends to source ``s`` only (packed), or to the source row's real tokens."""
    if target.runs_packed:
        if weights:
            target_seq, source_seq = target.seq_idx.view(1, -1), source.seq_idx.view(1, -1)
            mask = dense_mask(
                1, target_seq.shape[1], source_seq.shape[1], device=device, seq_idx=target_seq, key_seq_idx=source_seq
            )
            return AttentionLayout("eager", packed=True, mask=mask)
        if compiling:
            plan = compiled_plan(target.cu_seqlens, source.cu_seqlens, group_by_keys=False)  # the self plan's groups
        else:
            plan = plan_varlen(target.cu_seqlens, source.cu_seqlens, ratio)
        return AttentionLayout(kernel, packed=True, plan=plan)
    return AttentionLayout(kernel, mask=None if source.real is None else source.real[:, None, None, :])


# ---------------------------------------------------------------------------------------------------------------------
# Layers (BART's / Marian's module names, so their weights load unchanged)
# ---------------------------------------------------------------------------------------------------------------------


class DynMaskSeq2SeqScaledEmbedding(nn.Embedding):
    """BART's token embedding: the table times ``embed_scale`` (``sqrt(d_model)`` with ``scale_embedding``)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None, embed_scale: float = 1.0):
        super().__init__(num_embeddings, embedding_dim, padding_idx)
        self.embed_scale = embed_scale

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(input_ids) * self.embed_scale


class DynMaskSeq2SeqLearnedPositions(nn.Embedding):
    """BART's learned positions: position ``p`` is row ``p + 2`` of a ``(max_position_embeddings + 2, h)`` table."""

    offset = 2

    def __init__(self, num_positions: int, embedding_dim: int):
        super().__init__(num_positions + self.offset, embedding_dim)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(position_ids + self.offset)


class DynMaskSeq2SeqSinusoidalPositions(nn.Embedding):
    """Marian's sinusoidal positions (sines in the first half of the vector, cosines in the second), kept as stock
    Marian keeps them, so training and saving change the same numbers.

    The table is the parameter ``weight`` (Marian's key), filled with the sinusoids at initialization. As in
    transformers' ``MarianSinusoidalPositionalEmbedding``, it is created frozen (``requires_grad=False``, a model built
    from a config leaves it out of training), and ``from_pretrained`` makes it trainable again (transformers loads
    every floating-point parameter with ``requires_grad=True``): a model loaded from a checkpoint trains it, as stock
    Marian does. Whether it is saved follows stock Marian too (see :class:`DynMaskSeq2SeqPreTrainedModel`).
    """

    def __init__(self, num_positions: int, embedding_dim: int):
        super().__init__(num_positions, embedding_dim, _freeze=True)

    def create_weight(self) -> torch.Tensor:
        """The table Marian computes (in float64, then cast), here with torch instead of NumPy."""
        num_positions, dim = self.weight.shape
        pair = torch.div(torch.arange(dim, dtype=torch.float64), 2, rounding_mode="floor")
        angles = torch.arange(num_positions, dtype=torch.float64)[:, None] / torch.pow(10000.0, 2 * pair / dim)
        table = torch.empty(num_positions, dim, dtype=self.weight.dtype)
        sentinel = dim // 2 if dim % 2 == 0 else dim // 2 + 1
        table[:, :sentinel] = torch.sin(angles[:, 0::2]).to(table.dtype)
        table[:, sentinel:] = torch.cos(angles[:, 1::2]).to(table.dtype)
        return table


def _position_embedding(config: DynMaskSeq2SeqConfig) -> nn.Module:
    if config.seq2seq_style == "marian":
        return DynMaskSeq2SeqSinusoidalPositions(config.max_position_embeddings, config.d_model)
    return DynMaskSeq2SeqLearnedPositions(config.max_position_embeddings, config.d_model)


class DynMaskSeq2SeqAttention(nn.Module):
    """Multi-head attention (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``), packed or padded, with a cache on the
    padded decoder side."""

    def __init__(
        self,
        config: DynMaskSeq2SeqConfig,
        num_heads: int,
        is_causal: bool = False,
        is_cross: bool = False,
        layer_idx=0,
    ):
        super().__init__()
        self.embed_dim = config.d_model
        self.num_heads = num_heads
        self.head_dim = config.d_model // num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        self.is_causal = is_causal
        self.is_cross = is_cross
        self.layer_idx = layer_idx
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(
        self,
        hidden_states: torch.Tensor,
        layout: AttentionLayout,
        key_value_states: torch.Tensor | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``hidden_states``: ``(N, h)`` packed or ``(B, Tq, h)`` padded; ``key_value_states`` the same for the keys
        of cross-attention (the encoder output). Returns the output in the same shape, and the weights."""
        kv_input = hidden_states if key_value_states is None else key_value_states
        if layout.packed:
            q, k, v = (
                proj(states).view(-1, self.num_heads, self.head_dim)
                for proj, states in ((self.q_proj, hidden_states), (self.k_proj, kv_input), (self.v_proj, kv_input))
            )  # (N, H, D), (Nk, H, D)
        else:
            q = self._heads(self.q_proj, hidden_states)  # (B, H, Tq, D)
            k, v = self._keys_values(kv_input, cache)  # (B, H, K, D)
        out, weights = attend(
            self,
            q,
            k,
            v,
            layout,
            scaling=self.scaling,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.is_causal,
            output_attentions=output_attentions,
        )
        return self.out_proj(out.reshape(*hidden_states.shape[:-1], self.embed_dim)), weights

    def _heads(self, proj: nn.Linear, states: torch.Tensor) -> torch.Tensor:
        return proj(states).view(*states.shape[:2], self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, K, D)

    def _keys_values(self, states: torch.Tensor, cache: Cache | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``(B, H, K, D)``; with a cache, the cached ones too (cross-attention computes its keys
        once per generation)."""
        if cache is None:
            return self._heads(self.k_proj, states), self._heads(self.v_proj, states)
        if not isinstance(cache, EncoderDecoderCache):
            raise ValueError(
                f"the decoder's cache must be an EncoderDecoderCache (self- and cross-attention), got {type(cache)}"
            )
        layer_cache = cache.cross_attention_cache if self.is_cross else cache.self_attention_cache
        if self.is_cross and cache.is_updated.get(self.layer_idx):
            layer = layer_cache.layers[self.layer_idx]
            return layer.keys, layer.values
        keys, values = self._heads(self.k_proj, states), self._heads(self.v_proj, states)
        keys, values = layer_cache.update(keys, values, self.layer_idx)
        if self.is_cross:
            cache.is_updated[self.layer_idx] = True
        return keys, values


class _FeedForward(nn.Module):
    """The shared tail of both layer kinds: ``fc1`` -> activation -> ``fc2``, residual, ``final_layer_norm``."""

    def _feed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self.activation_fn(self.fc1(hidden_states))
        hidden_states = F.dropout(hidden_states, p=self.activation_dropout, training=self.training)
        hidden_states = F.dropout(self.fc2(hidden_states), p=self.dropout, training=self.training)
        return self.final_layer_norm(residual + hidden_states)

    def _sublayer(self, residual, hidden_states, norm) -> torch.Tensor:
        return norm(residual + F.dropout(hidden_states, p=self.dropout, training=self.training))


class DynMaskSeq2SeqEncoderLayer(_FeedForward, GradientCheckpointingLayer):
    def __init__(self, config: DynMaskSeq2SeqConfig):
        super().__init__()
        self.self_attn = DynMaskSeq2SeqAttention(config, config.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.dropout = config.dropout
        self.activation_fn = ACT2FN[config.activation_function]
        self.activation_dropout = config.activation_dropout
        self.fc1 = nn.Linear(config.d_model, config.encoder_ffn_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_dim, config.d_model)
        self.final_layer_norm = nn.LayerNorm(config.d_model)

    def forward(self, hidden_states: torch.Tensor, layout: AttentionLayout, output_attentions: bool = False):
        attended, weights = self.self_attn(hidden_states, layout, output_attentions=output_attentions)
        hidden_states = self._feed_forward(self._sublayer(hidden_states, attended, self.self_attn_layer_norm))
        if hidden_states.dtype == torch.float16 and not torch.isfinite(hidden_states).all():
            clamp_value = torch.finfo(hidden_states.dtype).max - 1000  # as BART / Marian do in float16
            hidden_states = torch.clamp(hidden_states, min=-clamp_value, max=clamp_value)
        return hidden_states, weights


class DynMaskSeq2SeqDecoderLayer(_FeedForward, GradientCheckpointingLayer):
    def __init__(self, config: DynMaskSeq2SeqConfig, layer_idx: int):
        super().__init__()
        heads = config.decoder_attention_heads
        self.self_attn = DynMaskSeq2SeqAttention(config, heads, is_causal=True, layer_idx=layer_idx)
        self.dropout = config.dropout
        self.activation_fn = ACT2FN[config.activation_function]
        self.activation_dropout = config.activation_dropout
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.encoder_attn = DynMaskSeq2SeqAttention(config, heads, is_cross=True, layer_idx=layer_idx)
        self.encoder_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.fc1 = nn.Linear(config.d_model, config.decoder_ffn_dim)
        self.fc2 = nn.Linear(config.decoder_ffn_dim, config.d_model)
        self.final_layer_norm = nn.LayerNorm(config.d_model)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        self_layout: AttentionLayout,
        cross_layout: AttentionLayout,
        cache: Cache | None = None,
        output_attentions: bool = False,
    ):
        """Returns the layer's output and, with ``output_attentions``, its self- and cross-attention weights."""
        attended, self_weights = self.self_attn(
            hidden_states, self_layout, cache=cache, output_attentions=output_attentions
        )
        hidden_states = self._sublayer(hidden_states, attended, self.self_attn_layer_norm)
        attended, cross_weights = self.encoder_attn(
            hidden_states, cross_layout, key_value_states=encoder_hidden_states, cache=cache,
            output_attentions=output_attentions,
        )  # fmt: skip
        hidden_states = self._sublayer(hidden_states, attended, self.encoder_attn_layer_norm)
        return self._feed_forward(hidden_states), self_weights, cross_weights


class _Stack(nn.Module):
    """Token + position embeddings (and BART's ``layernorm_embedding``) in front of a stack of layers."""

    def __init__(self, config: DynMaskSeq2SeqConfig, vocab_size: int, decoder: bool):
        super().__init__()
        self.config = config
        self.dropout = config.dropout
        self.layerdrop = config.decoder_layerdrop if decoder else config.encoder_layerdrop
        scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        if config.seq2seq_style == "bart":  # the scale lives in the embedding module, as in BART
            self.embed_tokens = DynMaskSeq2SeqScaledEmbedding(vocab_size, config.d_model, config.pad_token_id, scale)
            self.token_scale, self.embeds_scale = 1.0, 1.0
        else:  # Marian scales outside, and its decoder scales given inputs_embeds too
            self.embed_tokens = nn.Embedding(vocab_size, config.d_model, config.pad_token_id)
            self.token_scale, self.embeds_scale = scale, (scale if decoder else 1.0)
        self.embed_positions = _position_embedding(config)
        self.layernorm_embedding = nn.LayerNorm(config.d_model) if config.seq2seq_style == "bart" else None

    def _embed(self, input_ids, inputs_embeds, position_ids) -> torch.Tensor:
        """Inputs and positions of one shape, ``(N,)`` or ``(B, T)`` (checked by the batch contract); returns the
        layers' input."""
        if inputs_embeds is None:
            embeds = self.embed_tokens(input_ids) * self.token_scale
        else:
            embeds = inputs_embeds * self.embeds_scale
        hidden = embeds + self.embed_positions(position_ids).to(embeds.dtype)
        if self.layernorm_embedding is not None:
            hidden = self.layernorm_embedding(hidden)
        return F.dropout(hidden, p=self.dropout, training=self.training)

    def _skip_layer(self) -> bool:
        """LayerDrop, drawn as BART and Marian draw it."""
        return self.training and self.layerdrop > 0.0 and bool(torch.rand([]) < self.layerdrop)


class DynMaskSeq2SeqEncoder(_Stack):
    """The encoder. Called with padded ``(B, T)`` or packed ``(1, N)`` (``cu_seq_lens_q``) input; ``generate``
    calls it once through ``get_encoder()``."""

    main_input_name = "input_ids"

    def __init__(self, config: DynMaskSeq2SeqConfig):
        super().__init__(config, config.vocab_size, decoder=False)
        self.layers = nn.ModuleList([DynMaskSeq2SeqEncoderLayer(config) for _ in range(config.encoder_layers)])

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cu_seq_lens_q: torch.Tensor | None = None,
        cu_seq_lens_k: torch.Tensor | None = None,
        max_length_q: int | None = None,
        max_length_k: int | None = None,
        seq_idx: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutput:
        """``last_hidden_state`` follows the input: ``(B, T, h)`` (zeros at padding under dynamic masking) or
        ``(1, N, h)`` packed."""
        config = self.config
        output_attentions = bool(config.output_attentions if output_attentions is None else output_attentions)
        output_hidden = bool(config.output_hidden_states if output_hidden_states is None else output_hidden_states)
        source = resolve_source(
            config,
            input_ids,
            inputs_embeds,
            attention_mask,
            position_ids,
            cu_seq_lens_q,
            cu_seq_lens_k,
            seq_idx,
            unpad=config.masking == "dynamic" and not output_attentions,
        )
        hidden, all_hidden, all_weights = self.encode(
            source, input_ids, inputs_embeds, output_hidden, output_attentions
        )
        output = BaseModelOutput(
            last_hidden_state=source.output(hidden),
            hidden_states=None if all_hidden is None else tuple(source.output(h) for h in all_hidden),
            attentions=None if all_weights is None else tuple(all_weights),
        )
        return output if (config.return_dict if return_dict is None else return_dict) else output.to_tuple()

    def encode(
        self,
        source: BatchLayout,
        input_ids,
        inputs_embeds,
        output_hidden: bool = False,
        output_attentions: bool = False,
    ):
        """Embeddings and layers in the source's layout. Returns ``(N, h)`` or ``(B, T, h)``, every layer's input and
        output when ``output_hidden``, and every layer's weights when ``output_attentions``."""
        hidden = self._embed(source.flat(input_ids), source.flat(inputs_embeds), source.position_ids)
        name = backend_of(self.config, "seq2seq")
        kernel = "eager" if name == "eager" or output_attentions else "sdpa"
        ratio = 0.0 if kernel == "eager" else self.config.varlen_bucket_ratio
        compiling = torch.compiler.is_compiling()
        layout = _self_layout(source, kernel, ratio, False, output_attentions, hidden.device, compiling)
        all_hidden = [hidden] if output_hidden else None
        all_weights = [] if output_attentions else None
        for layer in self.layers:
            if not self._skip_layer():
                hidden, weights = layer(hidden, layout, output_attentions)
                if output_attentions:
                    all_weights.append(weights)
            if output_hidden:
                all_hidden.append(hidden)
        return hidden, all_hidden, all_weights


class DynMaskSeq2SeqDecoder(_Stack):
    """The decoder. Driven by [`DynMaskSeq2SeqModel`], which resolves the layouts of both sides once per forward."""

    def __init__(self, config: DynMaskSeq2SeqConfig):
        super().__init__(config, config.decoder_vocab_size, decoder=True)
        self.layers = nn.ModuleList(
            [DynMaskSeq2SeqDecoderLayer(config, layer_idx=i) for i in range(config.decoder_layers)]
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        self_layout: AttentionLayout,
        cross_layout: AttentionLayout,
        cache: Cache | None = None,
        output_hidden: bool = False,
        output_attentions: bool = False,
    ):
        """``hidden_states`` are the embedded targets (:meth:`_embed`) in the layout ``self_layout`` describes.
        Returns the output, every layer's input and output (``output_hidden``), and every layer's self- and
        cross-attention weights (``output_attentions``)."""
        all_hidden = [hidden_states] if output_hidden else None
        self_weights, cross_weights = ([], []) if output_attentions else (None, None)
        for layer in self.layers:
            if not self._skip_layer():
                hidden_states, layer_self, layer_cross = layer(
                    hidden_states, encoder_hidden_states, self_layout, cross_layout, cache=cache,
                    output_attentions=output_attentions,
                )  # fmt: skip
                if output_attentions:
                    self_weights.append(layer_self)
                    cross_weights.append(layer_cross)
            if output_hidden:
                all_hidden.append(hidden_states)
        return hidden_states, all_hidden, self_weights, cross_weights


def resolve_source(
    config, input_ids, inputs_embeds, attention_mask, position_ids, cu_q, cu_k, seq_idx, unpad: bool
) -> BatchLayout:
    """The source side's layout (the batch contract, :mod:`.batch`): packed (boundaries given), stripped
    (``unpad``: dynamic masking) or padded."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    reference = input_ids if input_ids is not None else inputs_embeds[..., 0]
    if reference.dim() != 2:
        raise ValueError(f"input_ids must be (batch, seq_len), got shape {tuple(reference.shape)}")
    return describe_batch(
        tuple(reference.shape),
        rules=batch_rules(config, unpad),
        attention_mask=attention_mask,
        position_ids=position_ids,
        cu_seq_lens_q=cu_q,
        cu_seq_lens_k=cu_k,
        seq_idx=seq_idx,
        device=reference.device,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class DynMaskSeq2SeqModelOutput(Seq2SeqModelOutput):
    """[`Seq2SeqModelOutput`] plus, when the decoder ran on stripped padding (dynamic masking), its output at the
    real target tokens ``packed_hidden_state`` ``(Nt, h)`` and ``decoder_unpad_index``, so the LM head runs on real
    tokens only."""

    packed_hidden_state: torch.Tensor | None = None
    decoder_unpad_index: UnpadIndex | None = None


class DynMaskSeq2SeqPreTrainedModel(AttentionBackendHooks, PreTrainedModel):
    config_class = DynMaskSeq2SeqConfig
    config: DynMaskSeq2SeqConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _dynmask_family = "seq2seq"
    _no_split_modules = ["DynMaskSeq2SeqEncoderLayer", "DynMaskSeq2SeqDecoderLayer"]
    _keys_to_ignore_on_load_unexpected = [r"encoder\.version", r"decoder\.version"]

    def __init__(self, config: DynMaskSeq2SeqConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        if config.seq2seq_style == "marian":
            # Marian's sinusoids, as stock Marian handles them: rebuilt when a checkpoint lacks them (loaded when it
            # has them), and left out of the saved weights by the LM model only (MarianMTModel drops them, MarianModel
            # writes them), so a trained table is saved or dropped exactly where stock's is.
            base = isinstance(self, DynMaskSeq2SeqModel)
            prefix = "" if base else "model."
            positions = [f"{prefix}encoder.embed_positions.weight", f"{prefix}decoder.embed_positions.weight"]
            if not base:
                self._keys_to_ignore_on_save = positions
            self._keys_to_ignore_on_load_missing = [*(self._keys_to_ignore_on_load_missing or []), *positions]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, DynMaskSeq2SeqSinusoidalPositions):
            init.copy_(module.weight, module.create_weight())
        elif isinstance(module, DynMaskSeq2SeqForConditionalGeneration):
            init.zeros_(module.final_logits_bias)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' ``save_pretrained``, writing a folder that also loads where hf_dynmask is not installed.

        As the encoder family does: transformers copies this module and its siblings next to the weights (every class
        of :data:`SEQ2SEQ_AUTO_CLASS_NAMES` is registered for its Auto class), and ``config.auto_map`` names the config
        and both classes, so ``AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True)`` loads the folder
        with torch and transformers alone. ``push_to_hub`` and the Trainers save through here.
        """
        add_auto_map(self, DynMaskSeq2SeqConfig, SEQ2SEQ_AUTO_CLASS_NAMES)
        return super().save_pretrained(save_directory, *args, **kwargs)


class DynMaskSeq2SeqModel(DynMaskSeq2SeqPreTrainedModel):
    """The encoder-decoder, without the LM head. Accepts padded batches (``attention_mask`` ``(B, T)``,
    ``decoder_attention_mask`` ``(B, Tt)``) and packed ones (``cu_seq_lens_q`` and ``decoder_cu_seq_lens``)."""

    # A base model loaded from an LM checkpoint leaves the head out (its bias, and its weights when untied).
    _keys_to_ignore_on_load_unexpected = [
        *DynMaskSeq2SeqPreTrainedModel._keys_to_ignore_on_load_unexpected,
        r"^final_logits_bias$",
        r"^lm_head\.weight$",
    ]

    def __init__(self, config: DynMaskSeq2SeqConfig):
        super().__init__(config)
        if config.share_encoder_decoder_embeddings:
            if config.seq2seq_style == "bart":
                scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
                self.shared = DynMaskSeq2SeqScaledEmbedding(
                    config.vocab_size, config.d_model, config.pad_token_id, scale
                )
            else:
                self.shared = nn.Embedding(config.vocab_size, config.d_model, config.pad_token_id)
            self._tied_weights_keys = {
                "decoder.embed_tokens.weight": "shared.weight",
                "encoder.embed_tokens.weight": "shared.weight",
            }
        else:
            self._tied_weights_keys = None
        self.encoder = DynMaskSeq2SeqEncoder(config)
        self.decoder = DynMaskSeq2SeqDecoder(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.shared if self.config.share_encoder_decoder_embeddings else self.encoder.embed_tokens

    def strips_target_padding(self, output_attentions: bool | None = None, cache: Cache | None = None) -> bool:
        """Whether a padded target's padding is stripped before the decoder: under dynamic masking, unless attention
        weights are asked for (they keep the padded layout) or a cache is kept (the padded decoder of generation)."""
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        return self.config.masking == "dynamic" and not output_attentions and cache is None

    def set_input_embeddings(self, value):
        if self.config.share_encoder_decoder_embeddings:
            self.shared = self.encoder.embed_tokens = self.decoder.embed_tokens = value
        else:
            self.encoder.embed_tokens = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        position_ids: torch.Tensor | None = None,
        decoder_position_ids: torch.Tensor | None = None,
        cu_seq_lens_q: torch.Tensor | None = None,
        cu_seq_lens_k: torch.Tensor | None = None,
        max_length_q: int | None = None,
        max_length_k: int | None = None,
        seq_idx: torch.Tensor | None = None,
        decoder_cu_seq_lens: torch.Tensor | None = None,
        decoder_seq_idx: torch.Tensor | None = None,
        decoder_max_length: int | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> DynMaskSeq2SeqModelOutput:
        r"""
        Args:
            input_ids: source ``(B, T)`` padded or ``(1, N)`` packed; ``attention_mask`` ``(B, T)`` (padded only).
            decoder_input_ids: target inputs ``(B, Tt)`` or ``(1, Nt)`` (the labels shifted right per sequence);
                ``decoder_attention_mask`` ``(B, Tt)``, 1 at real target tokens: under dynamic masking the decoder
                skips the rest. Without it the LM model reads the target's padding from ``labels`` padded with
                ``-100`` (:func:`~.batch.target_padding_from_labels`); where nothing states it, every target position
                is computed, as in the stock model.
            encoder_outputs: a previous encoder output for the same source (``generate`` passes it), padded.
            cache: an ``EncoderDecoderCache`` (padded targets only); ``use_cache`` makes one.
            cu_seq_lens_q / cu_seq_lens_k: int32 ``(S + 1,)`` source boundaries of a packed row (equal: they describe
                the source's self-attention; ``seq_idx`` ``(1, N)`` states the same).
            decoder_cu_seq_lens: int32 ``(S + 1,)`` target boundaries of the packed target row (or
                ``decoder_seq_idx``); target ``s`` attends to source ``s`` only.
            position_ids / decoder_position_ids: optional; checked against each sequence's own positions (from 0).
            max_length_q / max_length_k / decoder_max_length: the longest sequence (recomputed from the
                boundaries).
        """
        cache = _pop_cache_alias(cache, kwargs)
        refuse_unknown_arguments(kwargs, SEQ2SEQ_ARGUMENTS, type(self).__name__)
        config = self.config
        output_attentions = bool(config.output_attentions if output_attentions is None else output_attentions)
        output_hidden = bool(config.output_hidden_states if output_hidden_states is None else output_hidden_states)
        use_cache = config.use_cache if use_cache is None else use_cache
        name = backend_of(config, "seq2seq")
        kernel = "eager" if name == "eager" or output_attentions else "sdpa"
        ratio = 0.0 if kernel == "eager" else config.varlen_bucket_ratio
        unpad = config.masking == "dynamic" and not output_attentions  # weights keep the padded layout (both sides)

        # -- the target side (a padded decoder keeps a cache when asked) ------------------------------------------
        if (decoder_input_ids is None) == (decoder_inputs_embeds is None):
            raise ValueError(
                "pass exactly one of decoder_input_ids or decoder_inputs_embeds (or labels to the LM model, which "
                "shifts them)"
            )
        target_ref = decoder_input_ids if decoder_input_ids is not None else decoder_inputs_embeds[..., 0]
        if target_ref.dim() != 2:
            raise ValueError(f"decoder_input_ids must be (batch, seq_len), got shape {tuple(target_ref.shape)}")
        packed_target = decoder_cu_seq_lens is not None or decoder_seq_idx is not None
        if packed_target:
            if cache is not None:
                raise ValueError("a packed target has no cache: packed batches are for training and scoring")
            use_cache = False
        elif cache is None and use_cache:
            cache = EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))
        past = cache.get_seq_length() if cache is not None else 0
        # The target's padding is stripped where it is known (a decoder_attention_mask, given or read from the labels
        # by the LM model); without it every position is real and the decoder runs padded, as the stock model does.
        strip_target = self.strips_target_padding(output_attentions, cache) and decoder_attention_mask is not None
        target = describe_batch(
            tuple(target_ref.shape),
            rules=batch_rules(config, strip_target, decoder=True),
            attention_mask=decoder_attention_mask,
            position_ids=decoder_position_ids,
            cu_seq_lens_q=decoder_cu_seq_lens,
            seq_idx=decoder_seq_idx,
            past=past,
            device=target_ref.device,
        )

        # -- the source side, encoded here or given ------------------------------------------------------------------
        encoder_weights = None
        if encoder_outputs is None:
            source = resolve_source(
                config, input_ids, inputs_embeds, attention_mask, position_ids, cu_seq_lens_q, cu_seq_lens_k, seq_idx,
                unpad=unpad,
            )  # fmt: skip
            encoded, encoder_all, encoder_weights = self.encoder.encode(
                source, input_ids, inputs_embeds, output_hidden, output_attentions
            )
            encoder_outputs = BaseModelOutput(
                last_hidden_state=source.output(encoded),
                hidden_states=None if encoder_all is None else tuple(source.output(h) for h in encoder_all),
                attentions=None if encoder_weights is None else tuple(encoder_weights),
            )
        else:
            if not isinstance(encoder_outputs, BaseModelOutput):
                encoder_outputs = BaseModelOutput(
                    last_hidden_state=encoder_outputs[0],
                    hidden_states=encoder_outputs[1] if len(encoder_outputs) > 1 else None,
                )
            states = encoder_outputs.last_hidden_state[..., 0]  # (B, T) or (1, N)
            source = describe_batch(
                tuple(states.shape),
                rules=batch_rules(config, target.runs_packed),
                attention_mask=attention_mask,
                position_ids=position_ids,
                cu_seq_lens_q=cu_seq_lens_q,
                cu_seq_lens_k=cu_seq_lens_k,
                seq_idx=seq_idx,
                device=states.device,
            )
            encoded = source.flat(encoder_outputs.last_hidden_state)

        # -- both sides alike: packed with packed, a padded decoder reading the padded encoder output ----------------
        check_pairs(source, target)
        if source.runs_packed and not target.runs_packed:  # dynamic encoder, cached (or unpadded) decoder
            encoded = source.output(encoded)  # (B, T, h), zeros at padding
            source = describe_batch(
                tuple(encoded.shape[:2]), rules=batch_rules(config, False), attention_mask=attention_mask,
                device=encoded.device,
            )  # fmt: skip
        elif target.runs_packed and not source.runs_packed:  # stripped targets, sources without padding
            source = rows_as_packed(source)
            encoded = source.flat(encoded)  # (B * T, h): equal rows, one sequence each

        # -- the decoder ---------------------------------------------------------------------------------------------
        hidden = self.decoder._embed(
            target.flat(decoder_input_ids), target.flat(decoder_inputs_embeds), target.position_ids
        )
        compiling = torch.compiler.is_compiling()
        self_layout = _self_layout(target, kernel, ratio, True, output_attentions, hidden.device, compiling)
        cross_layout = _cross_layout(target, source, kernel, ratio, output_attentions, hidden.device, compiling)
        hidden, decoder_all, self_weights, cross_weights = self.decoder(
            hidden, encoded, self_layout, cross_layout, cache, output_hidden, output_attentions
        )

        output = DynMaskSeq2SeqModelOutput(
            last_hidden_state=target.output(hidden),
            cache=cache if use_cache and target.kind == "padded" else None,
            decoder_hidden_states=None if decoder_all is None else tuple(target.output(h) for h in decoder_all),
            decoder_attentions=None if self_weights is None else tuple(self_weights),
            cross_attentions=None if cross_weights is None else tuple(cross_weights),
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )
        if target.kind == "unpadded":
            output.packed_hidden_state, output.decoder_unpad_index = hidden, target.index
        return output if (config.return_dict if return_dict is None else return_dict) else output.to_tuple()


def _pop_cache_alias(cache, kwargs: dict) -> Cache | None:
    """``past_key_values`` is transformers' older name for ``cache``."""
    legacy = kwargs.pop("past_key_values", None)
    if legacy is not None and cache is not None:
        raise ValueError("pass the cache once, as cache= (past_key_values is its older name)")
    return cache if cache is not None else legacy


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int, cu_seqlens=None):
    """Decoder inputs from labels: shifted right by one inside each sequence, ``decoder_start_token_id`` first,
    ``-100`` replaced by the pad token. ``labels`` ``(B, Tt)`` (each row one target) or ``(1, Nt)`` with
    ``cu_seqlens`` (a packed row: every target starts anew).

    >>> shift_tokens_right(torch.tensor([[5, 6, 7, 8, 9]]), 1, 2, torch.tensor([0, 3, 5])).tolist()
    [[2, 5, 6, 2, 8]]
    """
    if pad_token_id is None:
        raise ValueError("config.pad_token_id must be set to replace -100 labels in the decoder inputs")
    shifted = labels.roll(1, dims=-1)
    if cu_seqlens is None:
        shifted[:, 0] = decoder_start_token_id
    else:
        shifted[0, cu_seqlens[:-1].long()] = decoder_start_token_id
    return shifted.masked_fill(shifted == IGNORE_INDEX, pad_token_id)


class DynMaskSeq2SeqForConditionalGeneration(DynMaskSeq2SeqPreTrainedModel, GenerationMixin):
    """The encoder-decoder with BART's / Marian's LM head (``lm_head`` + ``final_logits_bias``), for translation and
    summarization.

    Loss: cross-entropy over the real (non ``-100``) labels, their mean, or their sum divided by
    ``num_items_in_batch`` (the Trainer's count over an accumulated step). ``logits`` follow the target's shape:
    ``(B, Tt, V)`` padded (zeros at padding under dynamic masking: the head runs on real tokens only) or
    ``(1, Nt, V)`` packed. ``generate`` runs the stock generation machinery (greedy, beam search, ...) on padded
    input with a cache.
    """

    _keys_to_ignore_on_load_missing = ["final_logits_bias"]

    def __init__(self, config: DynMaskSeq2SeqConfig):
        super().__init__(config)
        self.model = DynMaskSeq2SeqModel(config)
        if config.share_encoder_decoder_embeddings:
            self._tied_weights_keys = {
                "lm_head.weight": "model.shared.weight",
                "model.decoder.embed_tokens.weight": "model.shared.weight",
                "model.encoder.embed_tokens.weight": "model.shared.weight",
            }
        else:
            self._tied_weights_keys = {"lm_head.weight": "model.decoder.embed_tokens.weight"}
        self.register_buffer("final_logits_bias", torch.zeros((1, config.target_vocab_size)))
        self.lm_head = nn.Linear(config.d_model, config.target_vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True):
        """transformers' resizing, with ``final_logits_bias`` resized alike (shared vocabularies only)."""
        if not self.config.share_encoder_decoder_embeddings:
            raise ValueError(
                "resize_token_embeddings resizes one shared vocabulary; this model has separate source and target "
                "vocabularies (share_encoder_decoder_embeddings=False)"
            )
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        self.config.decoder_vocab_size = embeddings.weight.shape[0]
        old = self.final_logits_bias
        size = embeddings.weight.shape[0]
        if size <= old.shape[-1]:
            new_bias = old[:, :size]
        else:
            new_bias = torch.cat([old, old.new_zeros((1, size - old.shape[-1]))], dim=1)
        self.register_buffer("final_logits_bias", new_bias)
        return embeddings

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden) + self.final_logits_bias.to(hidden.dtype)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        position_ids: torch.Tensor | None = None,
        decoder_position_ids: torch.Tensor | None = None,
        cu_seq_lens_q: torch.Tensor | None = None,
        cu_seq_lens_k: torch.Tensor | None = None,
        max_length_q: int | None = None,
        max_length_k: int | None = None,
        seq_idx: torch.Tensor | None = None,
        decoder_cu_seq_lens: torch.Tensor | None = None,
        decoder_seq_idx: torch.Tensor | None = None,
        decoder_max_length: int | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> Seq2SeqLMOutput:
        r"""The arguments of [`DynMaskSeq2SeqModel.forward`], plus ``labels`` (``(B, Tt)`` padded with ``-100``, or
        ``(1, Nt)`` packed): without ``decoder_input_ids`` they are shifted right per target to make them. Without a
        ``decoder_attention_mask`` (transformers' ``DataCollatorForSeq2Seq`` sends none), dynamic masking strips each
        row's tail of ``-100`` labels from the decoder (:func:`~.batch.target_padding_from_labels`): the loss and its
        gradients are unchanged, the logits there are zeros."""
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                target_cu = decoder_cu_seq_lens
                if target_cu is None and decoder_seq_idx is not None:
                    target_cu = cu_seqlens_from_seq_idx(decoder_seq_idx)
                decoder_input_ids = shift_tokens_right(
                    labels, self.config.pad_token_id, self.config.decoder_start_token_id, target_cu
                )
            given_cache = cache if cache is not None else kwargs.get("past_key_values")
            if decoder_attention_mask is None and self.model.strips_target_padding(output_attentions, given_cache):
                target = decoder_input_ids if decoder_input_ids is not None else decoder_inputs_embeds
                decoder_attention_mask = target_padding_from_labels(
                    labels,
                    tuple(target.shape[:2]),
                    packed=decoder_cu_seq_lens is not None or decoder_seq_idx is not None,
                )  # DataCollatorForSeq2Seq's labels: the tail of -100 of each row is padding
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            cache=cache,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            position_ids=position_ids,
            decoder_position_ids=decoder_position_ids,
            cu_seq_lens_q=cu_seq_lens_q,
            cu_seq_lens_k=cu_seq_lens_k,
            max_length_q=max_length_q,
            max_length_k=max_length_k,
            seq_idx=seq_idx,
            decoder_cu_seq_lens=decoder_cu_seq_lens,
            decoder_seq_idx=decoder_seq_idx,
            decoder_max_length=decoder_max_length,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        index = outputs.decoder_unpad_index
        if index is not None:  # dynamic: the head and the loss at the Nt real target tokens only
            loss_logits = self._logits(outputs.packed_hidden_state)  # (Nt, V)
            logits = repad(loss_logits, index)  # (B, Tt, V)
            loss_labels = None
            if labels is not None:
                if labels.shape != (index.batch_size, index.seqlen):
                    raise ValueError(
                        f"labels {tuple(labels.shape)} must match the decoder inputs "
                        f"{(index.batch_size, index.seqlen)}"
                    )
                loss_labels = unpad(labels, index)
                if int((loss_labels != IGNORE_INDEX).sum()) != int((labels != IGNORE_INDEX).sum()):
                    raise ValueError(
                        "labels at positions where decoder_attention_mask is 0 must be -100 (they would never be "
                        "scored): pad labels with -100, as hf_dynmask's seq2seq collator does"
                    )
        else:
            logits = loss_logits = self._logits(outputs.last_hidden_state)  # (B, Tt, V) or (1, Nt, V)
            loss_labels = labels
            if labels is not None and labels.shape != logits.shape[:-1]:
                raise ValueError(
                    f"labels {tuple(labels.shape)} must match the decoder inputs {tuple(logits.shape[:-1])}"
                )
        loss = None
        if labels is not None:
            loss = ForMaskedLMLoss(
                loss_logits, loss_labels, self.config.target_vocab_size, num_items_in_batch=num_items_in_batch
            )
        output = Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )
        return output if (self.config.return_dict if return_dict is None else return_dict) else output.to_tuple()

    def generate(self, inputs: torch.Tensor | None = None, **kwargs: Any):
        """transformers' ``generate`` (greedy, beam search, sampling, ...) on padded input.

        A packed batch is refused: it is for training and scoring. For ``Seq2SeqTrainer(predict_with_generate=True)``
        evaluate with a padded collator (``make_collator(tokenizer, "seq2seq", mode="dynamic", ...)``).
        """
        packed = sorted(key for key in PACKED_KEYS if kwargs.get(key) is not None)
        if packed:
            raise ValueError(
                f"generate() takes padded input (input_ids (B, T) with attention_mask), got a packed batch "
                f"({packed}); "
                "packed batches are for training and scoring. Collate generation inputs with "
                "make_collator(tokenizer, 'seq2seq', mode='dynamic', ...) (for Seq2SeqTrainer(predict_with_generate="
                "True), evaluate with that collator)"
            )
        return super().generate(inputs, **kwargs)


#: The Auto class of each model class (see :mod:`.saving`); ``auto.py`` registers the same pairs with transformers.
SEQ2SEQ_AUTO_CLASS_NAMES: dict[type[DynMaskSeq2SeqPreTrainedModel], str] = {
    DynMaskSeq2SeqModel: "AutoModel",
    DynMaskSeq2SeqForConditionalGeneration: "AutoModelForSeq2SeqLM",
}
register_for_auto_classes(SEQ2SEQ_AUTO_CLASS_NAMES)


__all__ = [
    "SEQ2SEQ_AUTO_CLASS_NAMES",
    "DynMaskSeq2SeqForConditionalGeneration",
    "DynMaskSeq2SeqModel",
    "DynMaskSeq2SeqModelOutput",
    "DynMaskSeq2SeqPreTrainedModel",
    "shift_tokens_right",
]

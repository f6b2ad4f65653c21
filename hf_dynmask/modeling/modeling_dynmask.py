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
import transformers.utils
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
from .backends import AttentionBackendHooks
from .batching import eager_attention
from .configuration_dynmask import DynMaskConfig, did_you_mean
from .input_checks import (
    check_answer_positions,
    check_encoder_inputs,
    check_padded_values,
    check_sequence_labels,
    check_token_labels,
    read_packed_boundaries,
)
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
from .saving import add_auto_map, auto_map_of, register_for_auto_classes

logger = logging.get_logger(__name__)

register_attention()

FLASH_IMPLEMENTATIONS = ("flash_attention_2", "flash_attention_3", "flash_attention_4")
SUPPORTED_IMPLEMENTATIONS = ("eager", "sdpa", ATTN_IMPLEMENTATION, "flex_attention", *FLASH_IMPLEMENTATIONS)


def _refuse_unsupported(attn_implementation: str | None) -> None:
    if attn_implementation is not None and attn_implementation not in SUPPORTED_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation={attn_implementation!r} is not supported by DynMask; choose one of "
            f"{SUPPORTED_IMPLEMENTATIONS}" + did_you_mean(attn_implementation, SUPPORTED_IMPLEMENTATIONS)
        )


def _flash_attn_available(attn_implementation: str) -> bool:
    """transformers' own availability check of the flash-attn package the name asks for (and a device for it)."""
    check = getattr(transformers.utils, f"is_flash_attn_{attn_implementation[-1]}_available", None)
    return bool(check is not None and check())


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

    Every field is indexed by the rows of the input, as transformers' outputs are (pipelines and the Trainer split
    and stack them per row): ``last_hidden_state`` follows the input, ``(B, T, h)`` padded (zeros at padding under
    dynamic masking) or ``(1, N, h)`` packed; ``first_token_state`` and ``pooler_output`` are ``(B, h)`` padded (each
    row's first real token, whatever the padding side) or ``(S, h)`` packed, one row per sequence.
    """

    first_token_state: torch.Tensor | None = None


class EncoderResult(NamedTuple):
    """What the encoder hands its heads (:meth:`DynMaskModel._encode_inputs`); internal, never a model output.

    Under dynamic masking of a padded batch, ``packed_hidden_state`` ``(N, h)`` and ``unpad_index`` are the real
    tokens before they were scattered back to ``(B, T, h)``, so per-token heads run on real tokens only
    (:meth:`DynMaskPreTrainedModel._per_token`); None otherwise. ``seq_idx`` is set for packed batches.
    """

    output: DynMaskModelOutput
    packed_hidden_state: torch.Tensor | None = None  # (N, h)
    unpad_index: UnpadIndex | None = None
    seq_idx: torch.Tensor | None = None  # int32 (N,): a packed batch's sequence of each token


class PaddedLayout(NamedTuple):
    """A padded batch computed in full (static masking), checked once per forward."""

    real: torch.Tensor  # bool (B, T): True at real tokens
    position_ids: torch.Tensor  # int64 (B, T)
    allowed: torch.Tensor | object  # bool (B, 1, T, T), True = may attend; a BlockMask for flex
    inputs: tuple  # (input_ids, inputs_embeds, token_type_ids), see _marked


class UnpaddedLayout(NamedTuple):
    """A padded batch whose padding is stripped before the embeddings (dynamic masking), checked once per forward."""

    index: UnpadIndex
    position_ids: torch.Tensor  # int64 (N,)
    batch: EncoderBatch
    inputs: tuple  # (input_ids, inputs_embeds, token_type_ids), see _marked


class PackedBatchLayout(NamedTuple):
    """A packed row, checked once per forward."""

    cu_seqlens: torch.Tensor  # int32 (S + 1,)
    position_ids: torch.Tensor  # int64 (N,)
    seq_idx: torch.Tensor  # int32 (N,)
    batch: EncoderBatch
    inputs: tuple  # (input_ids, inputs_embeds, token_type_ids), see _marked


@dataclass
class DynMaskTokenClassifierOutput(TokenClassifierOutput):
    """[`TokenClassifierOutput`]; for a packed batch also ``seq_idx`` ``(1, N)`` int32, the sequence of every token.

    The Trainer gathers every output next to the logits, so ``compute_metrics`` gets each packed row's boundaries
    with its predictions (:func:`hf_dynmask.training.evaluation.per_example_tokens`) and never scores a pack of
    sequences as one example. None for padded batches.
    """

    seq_idx: torch.Tensor | None = None


def _mark_dynamic(tensor: torch.Tensor | None, *dims: int) -> None:
    """Tell torch.compile that these dimensions change from batch to batch (no recompiles for new sizes)."""
    if tensor is not None:
        torch._dynamo.maybe_mark_dynamic(tensor, list(dims))


def _marked(inputs: tuple, compiling: bool, *dims: int) -> tuple:
    """The model inputs for the compiled graph after the layout call: under compile, views of them with ``dims``
    marked dynamic (marking the caller's own tensors would make the frames that already saw them recompile when
    the same tensors come back); as given otherwise."""
    if not compiling:
        return inputs
    views = tuple(None if t is None else t.view_as(t) for t in inputs)
    for view in views:
        _mark_dynamic(view, *dims)
    return views


def _check_implementation(config: DynMaskConfig) -> str:
    name = config._attn_implementation or "sdpa"
    if name not in SUPPORTED_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation={name!r} is not supported by DynMask; choose one of {SUPPORTED_IMPLEMENTATIONS}"
            + did_you_mean(name, SUPPORTED_IMPLEMENTATIONS)
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


class DynMaskPreTrainedModel(AttentionBackendHooks, PreTrainedModel):
    config_class = DynMaskConfig
    config: DynMaskConfig
    base_model_prefix = "bert"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["DynMaskEmbeddings", "DynMaskLayer"]
    # BERT / RoBERTa checkpoints of older transformers versions store the ``position_ids`` buffer of their embeddings,
    # which DynMask does not keep (positions are computed per batch); the stock models skip it silently too.
    _keys_to_ignore_on_load_unexpected = [r"(^|\.)embeddings\.position_ids$"]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, (DynMaskBertLMHead, DynMaskRobertaLMHead)):
            module.bias.zero_()

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' ``save_pretrained``, writing a folder that also loads where hf_dynmask is not installed.

        Every DynMask class is registered for its Auto class (``register_for_auto_class``, see
        :data:`AUTO_CLASS_NAMES`), so transformers itself copies this module and the siblings it imports next to the
        weights (``custom_object_save``). Here ``config.auto_map`` also names the config and every other head, so any
        ``AutoModelFor....from_pretrained(folder, trust_remote_code=True)`` loads the folder with torch and
        transformers alone; where hf_dynmask is imported, its registered classes load it instead (transformers prefers
        a registered class to an ``auto_map``). ``push_to_hub``, ``Trainer.save_model``, Trainer checkpoints and
        ``Trainer.push_to_hub`` all save through here.
        """
        add_auto_map(self, DynMaskConfig, AUTO_CLASS_NAMES)
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _encode(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, kwargs) -> EncoderResult:
        """The heads' encoder call. Each head names these inputs in its own ``forward``, because transformers'
        ``Trainer(remove_unused_columns=True)`` keeps only the dataset columns a signature names."""
        return self.bert._encode_inputs(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )

    @staticmethod
    def _per_token(encoded: EncoderResult, head, labels: torch.Tensor | None, shift: bool = False):
        """Apply a per-token head and line its labels up with its logits.

        Under dynamic masking the head runs on the ``N`` real tokens only (a vocabulary projection at padding is the
        most expensive waste of all) and the loss is taken there; the logits are scattered back to ``(B, T, C)``
        for the output. ``shift=True`` (causal LM) shifts the labels inside each padded row first, so no label is
        predicted across sequences. Returns ``(output logits, loss logits, loss labels, shift_labels)``.
        """
        if encoded.unpad_index is None:
            logits = head(encoded.output.last_hidden_state)
            return logits, logits, labels, None
        batch_size, seqlen = encoded.output.last_hidden_state.shape[:2]  # symbolic under torch.compile
        index = encoded.unpad_index._replace(batch_size=batch_size, seqlen=seqlen)
        packed_logits = head(encoded.packed_hidden_state)  # (N, C)
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

    def _refuse_attn_implementation(self, attn_implementation: str | None) -> None:
        """Unknown names, Hub kernels, and flash without the flash-attn package (transformers would fetch a Hub
        kernel instead): DynMask's flash path is tested with the flash-attn package only."""
        _refuse_unsupported(attn_implementation)
        if attn_implementation in FLASH_IMPLEMENTATIONS and not _flash_attn_available(attn_implementation):
            raise ImportError(
                f"attn_implementation={attn_implementation!r} needs flash-attn on a CUDA GPU, which this environment "
                "lacks: pip install 'hf-dynmask[flash]' (Hub flash kernels are not verified with DynMask). On other "
                "devices use 'dynmask_varlen' (exact packed attention without flash-attn)."
            )

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' ``from_pretrained``, also reading RoBERTa checkpoints (``roberta.`` weight prefix)."""
        kwargs.setdefault("key_mapping", {r"^roberta\.": "bert."})
        return super().from_pretrained(*args, **kwargs)


class DynMaskModel(DynMaskPreTrainedModel):
    """The encoder. Accepts padded batches (``attention_mask`` ``(B, T)``) and packed ones (``cu_seq_lens_q``).

    Works under ``torch.compile(model)`` with batches of changing shapes: the checks, index maps and attention plan
    that depend on the values of the boundaries or the mask are built in one call per forward kept out of the
    compiled graphs (``_layout_*``, ``torch.compiler.disable``), their varying dimensions are marked dynamic, and
    under compile the packed attention plan has one structure for every batch (a single length group, every field
    filled), so the graph after that call is reused for new shapes.
    """

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

        Inputs are checked once per forward, before any layer (:mod:`.input_checks`): ids inside their tables,
        positions inside the position table and never restarting between real tokens of a padded row (several
        sequences in one row need boundaries), padding on one side of each row.
        """
        return self._encode_inputs(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            inputs_embeds,
            cu_seq_lens_q=cu_seq_lens_q,
            cu_seq_lens_k=cu_seq_lens_k,
            seq_idx=seq_idx,
            output_hidden_states=output_hidden_states,
        ).output

    def _encode_inputs(
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
    ) -> EncoderResult:
        """:meth:`forward` for the heads: the output plus what per-token heads need (:class:`EncoderResult`)."""
        output_hidden_states = bool(output_hidden_states)
        reference = check_encoder_inputs(
            self.config,
            input_ids,
            inputs_embeds,
            attention_mask,
            token_type_ids,
            position_ids,
            cu_seq_lens_q,
            cu_seq_lens_k,
            seq_idx,
        )
        compiling = torch.compiler.is_compiling()
        inputs = (input_ids, inputs_embeds, token_type_ids)
        if cu_seq_lens_q is not None or cu_seq_lens_k is not None or seq_idx is not None:
            layout = self._layout_packed(
                reference, attention_mask, position_ids, cu_seq_lens_q, cu_seq_lens_k, seq_idx, inputs, compiling
            )
            return self._forward_packed(*layout.inputs, layout, output_hidden_states)
        if attention_mask is None:
            attention_mask = torch.ones_like(reference, dtype=torch.long)
        if position_ids is not None:
            position_ids = position_ids.expand(reference.shape)  # a (1, T) row serves every row
        if self.config.masking == "dynamic" or _check_implementation(self.config) in FLASH_IMPLEMENTATIONS:
            layout = self._layout_unpadded(attention_mask, position_ids, inputs, compiling)
            return self._forward_dynamic(*layout.inputs, layout, output_hidden_states)
        layout = self._layout_padded(attention_mask, position_ids, inputs, compiling)
        return self._forward_static(*layout.inputs, layout, output_hidden_states)

    # -- the three paths -------------------------------------------------------------------------------------------

    def _forward_static(self, input_ids, inputs_embeds, token_type_ids, layout: PaddedLayout, output_hidden):
        """Every position computed, padding included, with a ``(B, 1, T, T)`` mask."""
        if inputs_embeds is not None:
            # Padding is computed here but never attended to; zeros keep a non-finite value there (which the
            # dynamic path never reads) from reaching real tokens through the attention's values.
            inputs_embeds = inputs_embeds.masked_fill(~layout.real[..., None], 0.0)
        hidden = self.embeddings(input_ids, inputs_embeds, layout.position_ids, token_type_ids)  # (B, T, h)
        name = _check_implementation(self.config)
        mask = to_additive(layout.allowed, hidden.dtype) if name == "eager" else layout.allowed
        hidden, all_hidden = self.encoder(hidden, EncoderBatch(packed=False, attention_mask=mask), output_hidden)
        first = layout.real.long().argmax(dim=1)  # first real token of each row, either padding side
        first_token_state = hidden[torch.arange(hidden.shape[0], device=hidden.device), first]
        return EncoderResult(self._output(hidden, first_token_state, all_hidden))

    def _forward_dynamic(self, input_ids, inputs_embeds, token_type_ids, layout: UnpaddedLayout, output_hidden):
        """Padding stripped before the embeddings, restored at the output (zeros at padding)."""
        # The padded shape read from the input (symbolic under torch.compile) rather than the index's ints.
        batch_size, seqlen = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        index = layout.index._replace(batch_size=batch_size, seqlen=seqlen)
        hidden = self.embeddings(
            None if input_ids is None else unpad(input_ids, index),
            None if inputs_embeds is None else unpad(inputs_embeds, index),
            layout.position_ids,
            None if token_type_ids is None else unpad(token_type_ids, index),
        )  # (N, h)
        hidden, all_hidden = self.encoder(hidden, layout.batch, output_hidden)
        first_token_state = hidden.index_select(0, index.cu_seqlens[:-1].long())
        output = self._output(
            repad(hidden, index),
            first_token_state,
            None if all_hidden is None else [repad(h, index) for h in all_hidden],
        )
        return EncoderResult(output, hidden, index)

    def _forward_packed(self, input_ids, inputs_embeds, token_type_ids, layout: PackedBatchLayout, output_hidden):
        """One row of ``N`` packed tokens; outputs keep the packed shape, one pooled row per sequence."""
        hidden = self.embeddings(
            None if input_ids is None else input_ids[0],
            None if inputs_embeds is None else inputs_embeds[0],
            layout.position_ids,
            None if token_type_ids is None else token_type_ids[0],
        )  # (N, h)
        hidden, all_hidden = self.encoder(hidden, layout.batch, output_hidden)
        first_token_state = hidden.index_select(0, layout.cu_seqlens[:-1].long())
        all_hidden = None if all_hidden is None else [h.unsqueeze(0) for h in all_hidden]
        return EncoderResult(self._output(hidden.unsqueeze(0), first_token_state, all_hidden), seq_idx=layout.seq_idx)

    # -- the per-batch layouts: every check and data-dependent index of a forward, out of compiled graphs ----------

    @torch.compiler.disable
    def _layout_padded(self, attention_mask, position_ids, inputs, compiling: bool) -> PaddedLayout:
        check_padded_values(self.config, inputs[0], inputs[2], position_ids, attention_mask)
        real = attention_mask.bool()
        if position_ids is None:
            # Positions restart at every sequence's first real token, so left and right padding agree.
            position_ids = (real.long().cumsum(1) - 1).clamp(min=0) + self.config.position_start
        causal = bool(self.config.is_decoder)
        if _check_implementation(self.config) == "flex_attention":
            from .masks import and_masks, padding
            from .masks import causal as causal_fn

            mask_fn = and_masks(padding(real), causal_fn()) if causal else padding(real)
            allowed = to_block_mask(mask_fn, real.shape[0], real.shape[1], real.shape[1], device=real.device)
        else:
            allowed = padding_to_bool_4d(real, causal=causal)  # (B, 1, T, T), True = may attend
            if compiling:
                _mark_dynamic(allowed, 0, 2, 3)
        if compiling:
            real, position_ids = real.view_as(real), position_ids.view_as(position_ids)
            _mark_dynamic(real, 0, 1)
            _mark_dynamic(position_ids, 0, 1)
        return PaddedLayout(real, position_ids, allowed, _marked(inputs, compiling, 0, 1))

    @torch.compiler.disable
    def _layout_unpadded(self, attention_mask, position_ids, inputs, compiling: bool) -> UnpaddedLayout:
        check_padded_values(self.config, inputs[0], inputs[2], position_ids, attention_mask)
        index = unpad_index(attention_mask)
        if position_ids is None:
            packed_positions = position_ids_from_cu_seqlens(index.cu_seqlens, self.config.position_start)
        else:  # the padded batch's own positions (checked above), as static masking and stock BERT use them
            packed_positions = unpad(position_ids, index)
        batch = self._packed_batch(index.cu_seqlens, index.max_seqlen, attention_mask.device, compiling)
        if compiling:
            for tensor in (index.indices, index.cu_seqlens, packed_positions):
                _mark_dynamic(tensor, 0)
        return UnpaddedLayout(index, packed_positions, batch, _marked(inputs, compiling, 0, 1))

    @torch.compiler.disable
    def _layout_packed(
        self, reference, attention_mask, position_ids, cu_seq_lens_q, cu_seq_lens_k, seq_idx, inputs, compiling: bool
    ) -> PackedBatchLayout:
        if cu_seq_lens_k is not None and cu_seq_lens_q is not None and not torch.equal(cu_seq_lens_k, cu_seq_lens_q):
            raise ValueError("DynMask is an encoder with self-attention: cu_seq_lens_k must equal cu_seq_lens_q")
        cu_seqlens = cu_seq_lens_q if cu_seq_lens_q is not None else cu_seq_lens_k
        if cu_seqlens is None:
            cu_seqlens = cu_seqlens_from_seq_idx(seq_idx)
        if reference.shape[0] != 1:
            raise ValueError(
                f"a packed batch is one row of concatenated sequences (input_ids of shape (1, total_tokens)), got "
                f"shape {tuple(reference.shape)}; use hf_dynmask's packed collator"
            )
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ValueError(
                "packed batch (cu_seq_lens_q) with a padding attention_mask: a packed row has no padding. Drop "
                "attention_mask, or use the dynamic-padding collator instead of the packed one"
            )
        num_tokens = reference.shape[1]
        # The one host read of these checks: the boundaries, with the token id ranges.
        bounds = read_packed_boundaries(self.config, cu_seqlens, num_tokens, inputs[0], inputs[2])
        lens = [end - start for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
        cu_seqlens = cu_seqlens.to(torch.int32)
        positions = self._packed_positions(None if position_ids is None else position_ids[0], cu_seqlens)
        seq_idx = seq_idx_from_cu_seqlens(cu_seqlens)
        batch = self._packed_batch(cu_seqlens, max(lens), reference.device, compiling)
        if compiling:
            cu_seqlens = cu_seqlens.view_as(cu_seqlens)  # .to(int32) may have returned the caller's tensor
            for tensor in (cu_seqlens, positions, seq_idx):
                _mark_dynamic(tensor, 0)
        return PackedBatchLayout(cu_seqlens, positions, seq_idx, batch, _marked(inputs, compiling, 1))

    # -- helpers ---------------------------------------------------------------------------------------------------

    def _packed_positions(self, position_ids: torch.Tensor | None, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """The ``(N,)`` positions of packed tokens: restarting at each sequence, the given ones checked to do so."""
        expected = position_ids_from_cu_seqlens(cu_seqlens, self.config.position_start)
        if position_ids is not None and not torch.equal(position_ids, expected):
            raise ValueError(
                "position_ids do not restart at each sequence of the packed batch at "
                f"config.position_start={self.config.position_start}; build the batch with hf_dynmask's packed "
                "collator (position_start=config.position_start) or leave position_ids out"
            )
        return expected

    def _output(self, hidden, first_token_state, all_hidden):
        pooled = self.pooler(first_token_state) if self.pooler is not None else None
        return DynMaskModelOutput(
            last_hidden_state=hidden,
            pooler_output=pooled,
            hidden_states=None if all_hidden is None else tuple(all_hidden),
            first_token_state=first_token_state,
        )

    def _packed_batch(self, cu_seqlens: torch.Tensor, max_seqlen: int, device, compiling: bool) -> EncoderBatch:
        """What the attention of every layer needs for ``N`` packed tokens (built here, once per forward)."""
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
        if compiling:
            # One length group with every field filled: the same plan structure (and so the same graph) for every
            # batch; its sizes are marked dynamic. Attention then pads each sequence to the batch's longest.
            plan = plan_varlen(cu_seqlens, bucket_ratio=0.0, static_structure=True)
            for group in plan.groups:
                _mark_dynamic(group.q_gather, 0)
                _mark_dynamic(group.q_real_slots, 0)
                _mark_dynamic(group.q_real, 0, 1)
                _mark_dynamic(group.key_allowed, 0, 3)
            _mark_dynamic(plan.inverse, 0)
            return EncoderBatch(True, cu_seqlens, max_seqlen, plan=plan)
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
        if labels is not None:
            check_token_labels(labels, self.config.vocab_size, "the vocabulary, config.vocab_size", num_items_in_batch)
        encoded = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, kwargs)
        outputs = encoded.output
        logits, loss_logits, loss_labels, _ = self._per_token(encoded, self._lm_head, labels)  # (B, T, V) / (1, N, V)
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
        if labels is not None:
            check_token_labels(labels, self.config.vocab_size, "the vocabulary, config.vocab_size", num_items_in_batch)
        encoded = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, kwargs)
        outputs = encoded.output
        logits, loss_logits, _, shift_labels = self._per_token(encoded, self._lm_head, labels, shift=True)
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
        if labels is not None:
            check_sequence_labels(self.config, labels, num_items_in_batch)
        encoded = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, kwargs)
        outputs = encoded.output
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
    """One prediction per token; ``logits`` follows the input shape. Loss: mean over real (non ``-100``) labels.

    A packed batch's output also carries its ``seq_idx`` (:class:`DynMaskTokenClassifierOutput`), so evaluation
    regroups packed predictions per example with any Trainer.
    """

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
    ) -> DynMaskTokenClassifierOutput:
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        if labels is not None:
            check_token_labels(labels, self.num_labels, "config.num_labels", num_items_in_batch)
        encoded = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, kwargs)
        outputs = encoded.output
        if labels is not None and labels.shape != outputs.last_hidden_state.shape[:-1]:
            raise ValueError(
                f"labels {tuple(labels.shape)} must match the tokens {tuple(outputs.last_hidden_state.shape[:-1])}"
            )
        logits, loss_logits, loss_labels, _ = self._per_token(
            encoded, lambda hidden: self.classifier(self.dropout(hidden)), labels
        )
        loss = None
        if labels is not None:
            loss = self.loss_function(loss_logits, loss_labels, self.config, num_items_in_batch=num_items_in_batch)
        seq_idx = None if encoded.seq_idx is None else encoded.seq_idx.unsqueeze(0)  # (1, N), packed batches only
        return DynMaskTokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, seq_idx=seq_idx
        )


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
        if (start_positions is None) != (end_positions is None):
            raise ValueError("pass both start_positions and end_positions (the answer span), or neither")
        encoded = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, kwargs)
        outputs = encoded.output
        logits = self.qa_outputs(outputs.last_hidden_state)  # (B, T, 2) or (1, N, 2)
        cu_seqlens = kwargs.get("cu_seq_lens_q")
        if cu_seqlens is None and kwargs.get("seq_idx") is not None:
            cu_seqlens = cu_seqlens_from_seq_idx(kwargs["seq_idx"])
        min_value = torch.finfo(logits.dtype).min
        if cu_seqlens is not None:
            logits = repad(logits[0], pad_index_from_cu_seqlens(cu_seqlens), pad_value=min_value)  # (S, L, 2)
            if start_positions is not None:
                lens = cu_seqlens[1:] - cu_seqlens[:-1]  # (S,)
                check_answer_positions(start_positions, end_positions, torch.zeros_like(lens), lens, logits.shape[1])
        else:
            reference = input_ids if input_ids is not None else inputs_embeds[..., 0]
            real = torch.ones_like(reference, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
            logits = logits.masked_fill(~real[..., None], min_value)
            if start_positions is not None:
                first = real.long().argmax(dim=1)  # (B,) the left padding of each row
                check_answer_positions(start_positions, end_positions, first, real.sum(dim=1), real.shape[1])
        start_logits, end_logits = logits.unbind(dim=-1)
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = self.loss_function(start_logits, end_logits, start_positions, end_positions)
        return QuestionAnsweringModelOutput(
            loss=loss, start_logits=start_logits, end_logits=end_logits, hidden_states=outputs.hidden_states
        )


# ---------------------------------------------------------------------------------------------------------------------
# Auto classes
# ---------------------------------------------------------------------------------------------------------------------

#: The Auto class of each model class. Registering it (``register_for_auto_class``) makes transformers'
#: ``save_pretrained`` copy this module and its siblings next to the weights; :func:`auto_map` names every pair in
#: ``config.json``; ``auto.py`` registers the same pairs with transformers' Auto classes.
AUTO_CLASS_NAMES: dict[type[DynMaskPreTrainedModel], str] = {
    DynMaskModel: "AutoModel",
    DynMaskForMaskedLM: "AutoModelForMaskedLM",
    DynMaskForCausalLM: "AutoModelForCausalLM",
    DynMaskForSequenceClassification: "AutoModelForSequenceClassification",
    DynMaskForTokenClassification: "AutoModelForTokenClassification",
    DynMaskForQuestionAnswering: "AutoModelForQuestionAnswering",
}
register_for_auto_classes(AUTO_CLASS_NAMES)


def auto_map() -> dict[str, str]:
    """The ``auto_map`` a saved DynMask encoder writes in ``config.json``: the config and every head.

    >>> auto_map()["AutoConfig"], auto_map()["AutoModelForMaskedLM"]
    ('configuration_dynmask.DynMaskConfig', 'modeling_dynmask.DynMaskForMaskedLM')
    """
    return auto_map_of(DynMaskConfig, AUTO_CLASS_NAMES)


__all__ = [
    "AUTO_CLASS_NAMES",
    "DynMaskForCausalLM",
    "DynMaskForMaskedLM",
    "DynMaskForQuestionAnswering",
    "DynMaskForSequenceClassification",
    "DynMaskForTokenClassification",
    "DynMaskModel",
    "DynMaskModelOutput",
    "DynMaskPreTrainedModel",
    "DynMaskTokenClassifierOutput",
    "EncoderResult",
    "auto_map",
]

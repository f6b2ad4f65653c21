"""The DynMask model family: BERT/RoBERTa-compatible encoders whose attention skips padding.

Model-side module: imports only torch, transformers and relative siblings (it is saved next to a model as remote
code and loads where hf_dynmask is not installed).

Dimension legend:
    B  padded batch rows    T  padded length    N  real (packed) tokens    S  sequences    h  hidden size
    H  heads                D  head dim         V  vocabulary              C  classes

Three ways a batch reaches the encoder, all giving the same values at real tokens (the batch contract of
:mod:`.batch` decides which, once per forward):

- **static** (``config.masking="static"``, padded input): every position is computed, padding included, with a
  ``(B, 1, T, T)`` mask, as classic BERT does;
- **dynamic** (``config.masking="dynamic"``, padded input): the padding is stripped once, before the embeddings;
  every layer runs on the ``N`` real tokens and the output is scattered back to ``(B, T, ...)`` (zeros at padding);
- **packed** (input of shape ``(1, N)`` with ``cu_seq_lens_q`` or ``seq_idx``, from hf_dynmask's packed collator;
  for a causal model also rows whose ``position_ids`` restart, transformers' padding-free convention): no padding
  anywhere; outputs keep the packed shape, per-sequence outputs (pooled, QA logits) have one row per sequence.

Attention backends (``attn_implementation``, :data:`~.backends.FAMILY_BACKENDS`): ``"eager"`` (explicit softmax,
the reference), ``"sdpa"`` and ``"dynmask_varlen"`` (SDPA; packed tokens go through
:func:`~.attention.varlen_attention`), ``"flash_attention_2"`` (flash-attn varlen kernels, CUDA) and
``"flex_attention"`` (a document ``BlockMask``).

Arguments follow transformers' models: ``output_attentions`` returns every layer's weights (computed by the eager
kernel, on every backend; a padded batch then runs with its padding, as static masking does, so the weights have the
stock ``(B, H, T, T)`` shape), ``output_hidden_states`` every layer's input and output, ``return_dict=False`` a
tuple; an argument the model does not know is refused with the closest known name, never ignored.
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
)
from transformers.utils import logging

from .attention import AttentionLayout, attend, compiled_plan, dense_mask, plan_varlen
from .backends import FLASH_IMPLEMENTATIONS, AttentionBackendHooks, backend_of
from .batch import BatchLayout, BatchRules, describe_batch, refuse_unknown_arguments
from .configuration_dynmask import QA_PADDING, DynMaskConfig, check_qa_padding, unknown_choice
from .input_checks import (
    check_answer_positions,
    check_encoder_inputs,
    check_sequence_labels,
    check_token_labels,
    id_stats,
    raise_for_ids,
)
from .layout import pad_index_from_cu_seqlens, repad, unpad
from .masks import and_masks, causal, document, padding, padding_to_bool_4d, to_block_mask
from .outputs import DynMaskTokenClassifierOutput
from .saving import add_auto_map, auto_map_of, register_for_auto_classes
from .stock import register_attention

logger = logging.get_logger(__name__)

register_attention()

#: What every forward of the family takes besides a head's own arguments (for the did-you-mean of unknown ones).
ENCODER_ARGUMENTS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "position_ids",
    "inputs_embeds",
    "cu_seq_lens_q",
    "cu_seq_lens_k",
    "max_length_q",
    "max_length_k",
    "seq_idx",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "labels",
    "start_positions",
    "end_positions",
    "num_items_in_batch",
)


@dataclass
class DynMaskModelOutput(BaseModelOutputWithPooling):
    """[`BaseModelOutputWithPooling`] plus the hidden state of every sequence's first token.

    Every field is indexed by the rows of the input, as transformers' outputs are (pipelines and the Trainer split
    and stack them per row): ``last_hidden_state`` follows the input, ``(B, T, h)`` padded (zeros at padding under
    dynamic masking) or ``(1, N, h)`` packed; ``first_token_state`` and ``pooler_output`` are ``(B, h)`` padded (each
    row's first real token, whatever the padding side) or ``(S, h)`` packed, one row per sequence; ``attentions``
    ``(B, H, T, T)`` or ``(1, H, N, N)`` per layer.
    """

    first_token_state: torch.Tensor | None = None


class EncoderResult(NamedTuple):
    """What the encoder hands its heads (:meth:`DynMaskModel._encode_inputs`); internal, never a model output.

    ``layout`` is the batch as the encoder ran it. Under dynamic masking of a padded batch, ``packed_hidden_state``
    ``(N, h)`` is the real tokens' output before it was scattered back to ``(B, T, h)``, so per-token heads run on real
    tokens only (:meth:`DynMaskPreTrainedModel._per_token`). ``return_dict`` is the caller's choice, resolved.
    """

    output: DynMaskModelOutput
    layout: BatchLayout
    packed_hidden_state: torch.Tensor | None = None  # (N, h)
    return_dict: bool = True

    def finish(self, output):
        """A head's output, as a tuple when the caller asked for one (``return_dict=False``)."""
        return output if self.return_dict else output.to_tuple()


def _mark_dynamic(tensor: torch.Tensor | None, *dims: int) -> None:
    """Tell torch.compile that these dimensions change from batch to batch (no recompiles for new sizes)."""
    if tensor is not None:
        torch._dynamo.maybe_mark_dynamic(tensor, list(dims))


def _marked(tensor: torch.Tensor | None, compiling: bool, *dims: int) -> torch.Tensor | None:
    """A tensor for the compiled graph after the layout call: under compile, a view of it with ``dims`` marked
    dynamic (marking the caller's own tensors would make the frames that already saw them recompile when the same
    tensors come back); as given otherwise."""
    if not compiling or tensor is None:
        return tensor
    view = tensor.view_as(tensor)
    _mark_dynamic(view, *dims)
    return view


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

    def forward(
        self, hidden_states: torch.Tensor, attention: AttentionLayout, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``hidden_states`` ``(N, h)`` packed or ``(B, T, h)`` padded; returns the same shape and the weights."""
        heads_shape = (*hidden_states.shape[:-1], self.num_heads, self.head_dim)
        q, k, v = (proj(hidden_states).view(heads_shape) for proj in (self.query, self.key, self.value))
        if not attention.packed:
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        out, weights = attend(
            self,
            q,
            k,
            v,
            attention,
            scaling=self.scaling,
            dropout_p=self.dropout.p if self.training else 0.0,
            is_causal=self.is_causal,
            output_attentions=output_attentions,
        )
        return out.reshape(*hidden_states.shape), weights


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

    def forward(self, hidden_states: torch.Tensor, attention: AttentionLayout, output_attentions: bool = False):
        attended, weights = self.self(hidden_states, attention, output_attentions)
        return self.output(attended, hidden_states), weights


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

    def forward(self, hidden_states: torch.Tensor, attention: AttentionLayout, output_attentions: bool = False):
        attention_output, weights = self.attention(hidden_states, attention, output_attentions)
        return self.output(self.intermediate(attention_output), attention_output), weights


class DynMaskEncoder(nn.Module):
    def __init__(self, config: DynMaskConfig):
        super().__init__()
        self.layer = nn.ModuleList([DynMaskLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, hidden_states, attention: AttentionLayout, output_hidden_states=False, output_attentions=False):
        all_hidden = [hidden_states] if output_hidden_states else None
        all_weights = [] if output_attentions else None
        for layer in self.layer:
            hidden_states, weights = layer(hidden_states, attention, output_attentions)
            if output_hidden_states:
                all_hidden.append(hidden_states)
            if output_attentions:
                all_weights.append(weights)
        return hidden_states, all_hidden, all_weights


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
    _dynmask_family = "encoder"
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

    def _encode(
        self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, kwargs, score_padding=False
    ) -> EncoderResult:
        """The heads' encoder call. Each head names these inputs in its own ``forward``, because transformers'
        ``Trainer(remove_unused_columns=True)`` keeps only the dataset columns a signature names. ``score_padding``:
        the head reads the outputs at padding (:meth:`DynMaskModel.batch_rules`)."""
        return self.bert._encode_inputs(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            score_padding=score_padding,
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
        if encoded.layout.kind != "unpadded":
            logits = head(encoded.output.last_hidden_state)
            return logits, logits, labels, None
        batch_size, seqlen = encoded.output.last_hidden_state.shape[:2]  # symbolic under torch.compile
        index = encoded.layout.index._replace(batch_size=batch_size, seqlen=seqlen)
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

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' ``from_pretrained``, also reading RoBERTa checkpoints (``roberta.`` weight prefix)."""
        kwargs.setdefault("key_mapping", {r"^roberta\.": "bert."})
        return super().from_pretrained(*args, **kwargs)


class DynMaskModel(DynMaskPreTrainedModel):
    """The encoder. Accepts padded batches (``attention_mask`` ``(B, T)``) and packed ones (``cu_seq_lens_q``).

    Works under ``torch.compile(model)`` with batches of changing shapes: the checks, index maps and attention plan
    that depend on the values of the boundaries or the mask are built in one call per forward kept out of the
    compiled graphs (:meth:`_layout`, ``torch.compiler.disable``), their varying dimensions are marked dynamic, and
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
        output_attentions: bool | None = None,
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
            output_attentions / output_hidden_states / return_dict: as in transformers' models.

        Inputs are checked once per forward, before any layer, against the batch contract (:mod:`.batch`) and the
        model's tables (:mod:`.input_checks`).
        """
        encoded = self._encode_inputs(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            inputs_embeds,
            cu_seq_lens_q=cu_seq_lens_q,
            cu_seq_lens_k=cu_seq_lens_k,
            max_length_q=max_length_q,
            max_length_k=max_length_k,
            seq_idx=seq_idx,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
            **kwargs,
        )
        return encoded.finish(encoded.output)

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
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        score_padding: bool = False,
        **kwargs,
    ) -> EncoderResult:
        """:meth:`forward` for the heads: the output plus what per-token heads need (:class:`EncoderResult`).
        ``score_padding``: a head reads the outputs at padding, which are then computed as the stock model computes
        them (:meth:`batch_rules`; the question-answering head with ``qa_padding="scored"``)."""
        refuse_unknown_arguments(kwargs, ENCODER_ARGUMENTS, type(self).__name__)
        config = self.config
        output_attentions = bool(config.output_attentions if output_attentions is None else output_attentions)
        output_hidden = bool(config.output_hidden_states if output_hidden_states is None else output_hidden_states)
        return_dict = config.return_dict if return_dict is None else bool(return_dict)
        reference = check_encoder_inputs(config, input_ids, inputs_embeds, token_type_ids)
        layout, attention, inputs = self._layout(
            reference,
            attention_mask,
            position_ids,
            cu_seq_lens_q,
            cu_seq_lens_k,
            seq_idx,
            (input_ids, inputs_embeds, token_type_ids),
            torch.compiler.is_compiling(),
            output_attentions,
            score_padding,
        )
        input_ids, inputs_embeds, token_type_ids = inputs
        if layout.kind == "padded" and inputs_embeds is not None and layout.real is not None and not score_padding:
            # Padding is computed here but never attended to; zeros keep a non-finite value there (which the
            # dynamic path never reads) from reaching real tokens through the attention's values.
            inputs_embeds = inputs_embeds.masked_fill(~layout.real[..., None], 0.0)
        hidden = self.embeddings(
            layout.flat(input_ids), layout.flat(inputs_embeds), layout.position_ids, layout.flat(token_type_ids)
        )  # (N, h) run packed, (B, T, h) padded
        hidden, all_hidden, all_weights = self.encoder(hidden, attention, output_hidden, output_attentions)
        if layout.runs_packed:
            first_token_state = hidden.index_select(0, layout.cu_seqlens[:-1].long())  # (S, h)
        else:
            first = torch.zeros(hidden.shape[0], dtype=torch.long, device=hidden.device)
            if layout.real is not None:
                first = layout.real.long().argmax(dim=1)  # first real token of each row, either padding side
            first_token_state = hidden[torch.arange(hidden.shape[0], device=hidden.device), first]
        output = DynMaskModelOutput(
            last_hidden_state=self._to_input_shape(hidden, layout, input_ids, inputs_embeds),
            pooler_output=self.pooler(first_token_state) if self.pooler is not None else None,
            hidden_states=None
            if all_hidden is None
            else tuple(self._to_input_shape(h, layout, input_ids, inputs_embeds) for h in all_hidden),
            attentions=None if all_weights is None else tuple(all_weights),
            first_token_state=first_token_state,
        )
        packed_hidden = hidden if layout.kind == "unpadded" else None
        return EncoderResult(output, layout, packed_hidden, return_dict)

    @staticmethod
    def _to_input_shape(hidden, layout: BatchLayout, input_ids, inputs_embeds) -> torch.Tensor:
        """Layer outputs in the input's shape; the padded shape read from the input (symbolic under compile)."""
        if layout.kind != "unpadded":
            return layout.output(hidden)
        batch_size, seqlen = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        return repad(hidden, layout.index._replace(batch_size=batch_size, seqlen=seqlen))

    # -- the per-batch layout: every check and data-dependent index of a forward, out of compiled graphs ------------

    def batch_rules(
        self, output_attentions: bool = False, score_padding: bool = False, embeds: bool = False
    ) -> BatchRules:
        """What this model reads from a batch (:class:`~.batch.BatchRules`): its first position and position table;
        a causal model reads restarting positions as boundaries; dynamic masking (and flash-attn) strips padding,
        except when attention weights are asked for, which keep the padded layout.

        ``score_padding`` (a head reads the outputs at padding): padding tokens are numbered as the stock model
        numbers them, BERT by column, RoBERTa at ``padding_idx`` (``pad_token_id``) given token ids and by column
        from ``padding_idx + 1`` given ``inputs_embeds`` (``embeds``), as ``RobertaEmbeddings`` does."""
        config = self.config
        unpad = config.masking == "dynamic" or backend_of(config, "encoder") in FLASH_IMPLEMENTATIONS
        padding_positions = None
        if score_padding:
            roberta_ids = config.head_style == "roberta" and not embeds
            padding_positions = config.pad_token_id if roberta_ids else "column"
        return BatchRules(
            position_start=config.position_start,
            max_positions=config.max_position_embeddings,
            reads_restarts=bool(config.is_decoder),
            unpad=unpad and not output_attentions,
            padding_positions=padding_positions,
        )

    @torch.compiler.disable
    def _layout(
        self,
        reference,
        attention_mask,
        position_ids,
        cu_seq_lens_q,
        cu_seq_lens_k,
        seq_idx,
        inputs,
        compiling: bool,
        output_attentions: bool,
        score_padding: bool = False,
    ) -> tuple[BatchLayout, AttentionLayout, tuple]:
        """The batch contract, the token id checks (read in the same transfer) and the attention layout."""
        input_ids, _, token_type_ids = inputs
        stats = id_stats(input_ids, token_type_ids)
        layout = describe_batch(
            tuple(reference.shape),
            rules=self.batch_rules(output_attentions, score_padding, embeds=input_ids is None),
            attention_mask=attention_mask,
            position_ids=position_ids,
            cu_seq_lens_q=cu_seq_lens_q,
            cu_seq_lens_k=cu_seq_lens_k,
            seq_idx=seq_idx,
            device=reference.device,
            value_stats=stats,
            check_values=lambda values: raise_for_ids(self.config, input_ids, token_type_ids, values),
        )
        attention = self._attention_layout(layout, reference.device, compiling, output_attentions)
        if compiling:
            layout = self._marked_layout(layout)
            inputs = tuple(_marked(t, True, *((1,) if layout.kind == "packed" else (0, 1))) for t in inputs)
        return layout, attention, inputs

    @staticmethod
    def _marked_layout(layout: BatchLayout) -> BatchLayout:
        """The layout's varying sizes marked dynamic for the compiled graph (views, the caller's tensors untouched)."""
        if layout.kind == "padded":
            return layout._replace(
                real=_marked(layout.real, True, 0, 1), position_ids=_marked(layout.position_ids, True, 0, 1)
            )
        index = layout.index
        if index is not None:
            index = index._replace(
                indices=_marked(index.indices, True, 0), cu_seqlens=_marked(index.cu_seqlens, True, 0)
            )
        return layout._replace(
            cu_seqlens=_marked(layout.cu_seqlens, True, 0),
            position_ids=_marked(layout.position_ids, True, 0),
            index=index,
        )

    def _attention_layout(
        self, layout: BatchLayout, device, compiling: bool, output_attentions: bool
    ) -> AttentionLayout:
        """How every layer's attention sees the batch (built here, once per forward)."""
        name = backend_of(self.config, "encoder")
        causal_attention = bool(self.config.is_decoder)
        if not layout.runs_packed:  # padded rows
            real = layout.real
            if name == "flex_attention" and not output_attentions:
                rows, length = layout.batch_size, layout.seqlen
                real_mask = real if real is not None else torch.ones(rows, length, dtype=torch.bool, device=device)
                mask_fn = and_masks(padding(real_mask), causal()) if causal_attention else padding(real_mask)
                return AttentionLayout(name, mask=to_block_mask(mask_fn, rows, length, length, device=device))
            kernel = "eager" if name == "eager" or output_attentions else "sdpa"
            if real is None:
                if output_attentions or (causal_attention and kernel == "eager"):
                    mask = dense_mask(
                        layout.batch_size, layout.seqlen, layout.seqlen, device=device, is_causal=causal_attention
                    )
                    return AttentionLayout(kernel, mask=mask)
                return AttentionLayout(kernel, is_causal=causal_attention)
            allowed = padding_to_bool_4d(real, causal=causal_attention)  # (B, 1, T, T), True = may attend
            if causal_attention:  # padding query rows attend to every real key: no fully masked row
                allowed = allowed | ~real[:, None, :, None]
            if compiling:
                _mark_dynamic(allowed, 0, 2, 3)
            return AttentionLayout(kernel, mask=allowed)
        cu_seqlens, max_seqlen = layout.cu_seqlens, layout.max_seqlen
        if output_attentions:
            rows = layout.batch_size
            seq_idx = layout.seq_idx.view(rows, -1)
            mask = dense_mask(
                rows, seq_idx.shape[1], seq_idx.shape[1], device=device, is_causal=causal_attention, seq_idx=seq_idx
            )
            return AttentionLayout("eager", packed=True, mask=mask)
        if name == "flex_attention":
            mask_fn = document(layout.seq_idx)
            if causal_attention:
                mask_fn = and_masks(mask_fn, causal())
            num_tokens = layout.seq_idx.numel()
            block_mask = to_block_mask(mask_fn, 1, num_tokens, num_tokens, device=device)
            return AttentionLayout(name, packed=True, mask=block_mask, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
        if name in FLASH_IMPLEMENTATIONS:
            return AttentionLayout(name, packed=True, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
        kernel = "eager" if name == "eager" else "sdpa"
        if compiling:
            plan = compiled_plan(cu_seqlens)  # COMPILED_GROUPS plan structures: a graph each serves every batch
        else:
            ratio = 0.0 if kernel == "eager" else self.config.varlen_bucket_ratio
            plan = plan_varlen(cu_seqlens, bucket_ratio=ratio)
        return AttentionLayout(kernel, packed=True, plan=plan, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)


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
        return encoded.finish(
            MaskedLMOutput(
                loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
            )
        )


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
        return encoded.finish(
            CausalLMOutput(
                loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
            )
        )


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
        return encoded.finish(
            SequenceClassifierOutput(
                loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
            )
        )

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
        layout = encoded.layout
        seq_idx = layout.seq_idx.view(layout.batch_size, -1) if layout.kind == "packed" else None  # (1, N) packed
        return encoded.finish(
            DynMaskTokenClassifierOutput(
                loss=loss,
                logits=logits,
                hidden_states=outputs.hidden_states,
                attentions=outputs.attentions,
                seq_idx=seq_idx,
            )
        )


class DynMaskForQuestionAnswering(DynMaskPreTrainedModel):
    """Extractive QA.

    ``start_logits`` / ``end_logits`` are ``(B, T)`` padded or ``(S, max_seqlen)`` packed, one row per sequence. By
    default (``config.qa_padding="masked"``) they hold ``torch.finfo(dtype).min`` at padding, so the answer softmax
    covers real tokens only and the loss is the same in every mode and with any amount of padding. transformers'
    ``BertForQuestionAnswering`` scores padding positions too, so its loss changes with the padded length;
    ``qa_padding="scored"`` reproduces it exactly (static masking, padded batches; see :class:`DynMaskConfig`).
    ``start_positions`` / ``end_positions`` ``(B,)`` / ``(S,)`` count from each sequence's first token in packed mode
    and index the padded row otherwise.
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
        scored = self._scores_padding()
        encoded = self._encode(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, kwargs, score_padding=scored
        )
        outputs = encoded.output
        logits = self.qa_outputs(outputs.last_hidden_state)  # (B, T, 2) or (1, N, 2)
        layout = encoded.layout
        min_value = torch.finfo(logits.dtype).min
        if scored and layout.kind != "padded":
            raise ValueError(
                "qa_padding='scored' scores the padding of padded rows, as stock BERT does; "
                + (
                    "a packed batch has no padding to score (stock would score the padding of these sequences "
                    "padded): use a padded collator (make_collator(..., mode='dynamic' or 'static')), or "
                    "qa_padding='masked'"
                    if layout.kind == "packed"
                    else "flash-attn strips padding before the layers: use attn_implementation='sdpa' or 'eager', or "
                    "qa_padding='masked'"
                )
            )
        if layout.kind == "packed":
            cu_seqlens = layout.cu_seqlens
            logits = repad(
                logits.reshape(-1, 2), pad_index_from_cu_seqlens(cu_seqlens), pad_value=min_value
            )  # (S, L, 2)
            if start_positions is not None:
                lens = cu_seqlens[1:] - cu_seqlens[:-1]  # (S,)
                check_answer_positions(start_positions, end_positions, torch.zeros_like(lens), lens, logits.shape[1])
        else:
            reference = input_ids if input_ids is not None else inputs_embeds[..., 0]
            real = torch.ones_like(reference, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
            if not scored:
                logits = logits.masked_fill(~real[..., None], min_value)
            if start_positions is not None:
                first = real.long().argmax(dim=1)  # (B,) the left padding of each row
                check_answer_positions(start_positions, end_positions, first, real.sum(dim=1), real.shape[1])
        start_logits, end_logits = logits.unbind(dim=-1)
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = self.loss_function(start_logits, end_logits, start_positions, end_positions)
        return encoded.finish(
            QuestionAnsweringModelOutput(
                loss=loss,
                start_logits=start_logits,
                end_logits=end_logits,
                hidden_states=outputs.hidden_states,
                attentions=outputs.attentions,
            )
        )

    def _scores_padding(self) -> bool:
        """``config.qa_padding == "scored"``, refused where the stock loss cannot be reproduced exactly (checked per
        forward: a config can be changed after it is made)."""
        config = self.config
        qa_padding = getattr(config, "qa_padding", "masked")
        if qa_padding not in QA_PADDING:
            raise ValueError(unknown_choice("config.qa_padding", qa_padding, QA_PADDING))
        check_qa_padding(qa_padding, config.masking, bool(config.is_decoder))
        return qa_padding == "scored"


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
    "ENCODER_ARGUMENTS",
    "EncoderResult",
    "auto_map",
]

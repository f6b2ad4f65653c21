"""Configuration of the DynMask model family: BERT / RoBERTa hyper-parameters plus the masking settings.

Model-side module: imports only transformers (it is saved next to a model as remote code).
"""

from __future__ import annotations

import difflib
import inspect
import os
from typing import Literal

from transformers import PretrainedConfig

MASKING_MODES = ("static", "dynamic")
HEAD_STYLES = ("bert", "roberta")
#: How the question-answering head treats padding (``DynMaskConfig.qa_padding``).
QA_PADDING = ("masked", "scored")
#: Checkpoint types whose weights and hyper-parameters DynMask reads, and the head style each implies.
SOURCE_MODEL_TYPES = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta", "camembert": "roberta"}


def did_you_mean(value: object, choices) -> str:
    """``"; did you mean 'x'?"`` for the choice closest to ``value`` (case aside), or ``""`` when none is near.

    >>> did_you_mean("Dynamic", MASKING_MODES), did_you_mean("padded", MASKING_MODES)
    ("; did you mean 'dynamic'?", '')
    """
    if not isinstance(value, str):
        return ""
    lowered = {str(c).lower(): str(c) for c in choices}
    close = difflib.get_close_matches(value.strip().lower(), list(lowered), n=1, cutoff=0.6)
    return f"; did you mean {lowered[close[0]]!r}?" if close else ""


def validated_from_dict(cls, config_dict: dict, kwargs: dict) -> tuple[dict, dict]:
    """``config_dict`` with the keyword arguments that are ``cls.__init__`` parameters moved into it.

    transformers' ``from_pretrained(path, **kwargs)`` builds the config from the file, then sets the keyword arguments
    as attributes, past ``__init__``'s checks (``masking="sometimes"`` would be kept); moved into the dict, they are
    checked as if given to the constructor. Returns the dict and the other keyword arguments.
    """
    parameters = inspect.signature(cls.__init__).parameters
    own = {name: kwargs.pop(name) for name in list(kwargs) if name in parameters and name not in ("self", "kwargs")}
    return {**config_dict, **own}, kwargs


def unknown_choice(name: str, value: object, choices) -> str:
    """The message for an option outside its ``choices``: the choices, and the closest one when a name is near.

    >>> unknown_choice("masking", "Dynamic", MASKING_MODES)
    "masking must be one of ['static', 'dynamic'], got 'Dynamic'; did you mean 'dynamic'?"
    """
    return f"{name} must be one of {[str(c) for c in choices]}, got {value!r}{did_you_mean(value, choices)}"


def check_qa_padding(qa_padding: str, masking: str, is_decoder: bool) -> None:
    """Refuse ``qa_padding="scored"`` where the stock question-answering loss cannot be reproduced exactly."""
    if qa_padding != "scored":
        return
    if masking != "static":
        raise ValueError(
            f"qa_padding='scored' scores padding positions as stock BERT computes them, and masking={masking!r} "
            "never computes padding: use masking='static' with it, or qa_padding='masked' (the default: padding "
            "left out of the answer softmax, the same loss however the batch is padded)"
        )
    if is_decoder:
        raise ValueError(
            "qa_padding='scored' reproduces the stock bidirectional question-answering heads; a causal model "
            "(is_decoder=True) computes padding otherwise: use qa_padding='masked'"
        )


def _looks_local(name: str) -> bool:
    """Whether ``name`` is meant as a local path rather than a Hub repo id (``user/name`` has at most one ``/``)."""
    return name.startswith((".", "~", os.sep)) or "\\" in name or name.count("/") > 1 or os.path.isabs(name)


class DynMaskConfig(PretrainedConfig):
    r"""Configuration for [`DynMaskModel`] and its heads.

    The hyper-parameters are BERT's, so a BERT or RoBERTa checkpoint's ``config.json`` loads as is:
    ``DynMaskConfig.from_pretrained(path, masking="dynamic")`` reads a ``bert`` or ``roberta`` config, keeps every
    hyper-parameter and infers ``head_style`` and ``position_start`` from its ``model_type``.

    Args:
        masking (`str`, defaults to `"dynamic"`):
            How padded batches are computed. `"static"` computes every position, padding included, as classic BERT
            does. `"dynamic"` strips the padding once, before the embeddings, runs every layer on real tokens only
            and restores the padded shape at the output. Packed batches (``cu_seq_lens_q``) never carry padding.
        head_style (`str`, defaults to `"bert"`):
            `"bert"` (pooler + classifier, ``cls.predictions`` LM head) or `"roberta"` (``classifier.dense`` /
            ``classifier.out_proj`` on the first token, ``lm_head``): the head layout of the checkpoint.
        position_start (`int`, *optional*):
            Position id of the first token of every sequence: 0 for BERT, ``pad_token_id + 1`` for RoBERTa-style
            models. Defaults to that rule for the given ``head_style``.
        varlen_bucket_ratio (`float`, defaults to 0.8):
            Packed attention on the SDPA backends groups sequences of similar length; a sequence joins the current
            group while its length is at least this fraction of the group's longest. 1.0 gives one group per length,
            0.0 a single group.
        is_decoder (`bool`, defaults to `False`):
            Causal self-attention (for `DynMaskForCausalLM`).
        classifier_dropout (`float`, *optional*):
            Dropout of the classification heads; defaults to ``hidden_dropout_prob``.
        qa_padding (`str`, defaults to `"masked"`):
            What [`DynMaskForQuestionAnswering`]'s start / end softmax covers. `"masked"`: real tokens only (padding
            logits are ``torch.finfo(dtype).min``), so the loss is the same however much padding a batch has, in
            every mode. `"scored"`: padding positions too, as transformers' ``BertForQuestionAnswering`` /
            ``RobertaForQuestionAnswering`` score them, for parity with the stock loss (which moves with the amount
            of padding): padding tokens are computed as the stock model computes them (attending to the real tokens
            of their row, numbered by column for BERT or at ``pad_token_id`` for RoBERTa), which only
            ``masking="static"`` does, on padded batches of an encoder (``is_decoder=False``); with BERT-style
            numbering, padding on the right (or explicit ``position_ids``). Other cases are refused, never
            approximated: dynamic masking and flash-attn never compute padding, and packed rows have none.
    """

    model_type = "dynmask"

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        pad_token_id: int = 0,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        masking: str = "dynamic",
        head_style: str | None = None,
        position_start: int | None = None,
        varlen_bucket_ratio: float = 0.8,
        is_decoder: bool = False,
        classifier_dropout: float | None = None,
        qa_padding: Literal["masked", "scored"] = "masked",
        tie_word_embeddings: bool = True,
        **kwargs,
    ):
        source_type = kwargs.pop("source_model_type", None) or kwargs.pop("model_type", None)
        if head_style is None:
            head_style = SOURCE_MODEL_TYPES.get(source_type, "bert")
        position_embedding_type = kwargs.pop("position_embedding_type", "absolute")
        if position_embedding_type != "absolute":
            raise ValueError(
                "DynMask supports absolute position embeddings only, got "
                f"position_embedding_type={position_embedding_type!r}"
            )
        if masking not in MASKING_MODES:
            raise ValueError(unknown_choice("masking", masking, MASKING_MODES))
        if head_style not in HEAD_STYLES:
            raise ValueError(unknown_choice("head_style", head_style, HEAD_STYLES))
        if qa_padding not in QA_PADDING:
            raise ValueError(unknown_choice("qa_padding", qa_padding, QA_PADDING))
        check_qa_padding(qa_padding, masking, is_decoder)
        if hidden_size % num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be a multiple of num_attention_heads ({num_attention_heads})"
            )
        if not 0.0 <= varlen_bucket_ratio <= 1.0:
            raise ValueError(f"varlen_bucket_ratio must be in [0, 1], got {varlen_bucket_ratio}")
        if position_start is None:
            position_start = pad_token_id + 1 if head_style == "roberta" else 0
        if position_start < 0 or position_start >= max_position_embeddings:
            raise ValueError(
                f"position_start ({position_start}) must lie in [0, max_position_embeddings={max_position_embeddings})"
            )
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            is_decoder=is_decoder,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.masking = masking
        self.head_style = head_style
        self.position_start = position_start
        self.varlen_bucket_ratio = varlen_bucket_ratio
        self.classifier_dropout = classifier_dropout
        self.qa_padding = qa_padding

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """transformers' ``from_dict``, with the keyword arguments checked (:func:`validated_from_dict`)."""
        config_dict, kwargs = validated_from_dict(cls, config_dict, kwargs)
        return super().from_dict(config_dict, **kwargs)

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        """transformers' loader, reading BERT / RoBERTa ``config.json`` files as DynMask configs.

        A source ``model_type`` of BERT's or RoBERTa's family is kept as ``source_model_type`` (it sets
        ``head_style``); any other type is refused, since its weights would not fit.
        """
        name = os.fspath(pretrained_model_name_or_path)
        if _looks_local(name) and not os.path.exists(os.path.expanduser(name)):
            raise FileNotFoundError(
                f"no folder {name!r}: from_pretrained reads a folder holding config.json (written by save_pretrained) "
                "or a Hub repo id such as 'user/model'; check the path"
            )
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        model_type = config_dict.get("model_type")
        if model_type is not None and model_type != cls.model_type:
            if model_type not in SOURCE_MODEL_TYPES:
                raise ValueError(
                    f"{pretrained_model_name_or_path} holds a {model_type!r} model; DynMask reads "
                    f"{sorted(SOURCE_MODEL_TYPES)} checkpoints (or its own 'dynmask' ones)"
                )
            config_dict = {**config_dict, "source_model_type": config_dict["model_type"]}
            del config_dict["model_type"]
        return config_dict, kwargs

    @property
    def max_seqlen(self) -> int:
        """The longest sequence the position embeddings can number."""
        return self.max_position_embeddings - self.position_start


# Saving a config copies this module next to it and names it in ``auto_map`` (``AutoConfig``), so the folder loads with
# ``trust_remote_code=True`` where hf_dynmask is not installed. Models add their own entries (modeling_dynmask.py).
DynMaskConfig.register_for_auto_class()

__all__ = ["QA_PADDING", "DynMaskConfig", "check_qa_padding", "validated_from_dict"]

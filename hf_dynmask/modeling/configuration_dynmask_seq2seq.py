"""Configuration of the DynMask encoder-decoder family: BART / Marian hyper-parameters plus the masking settings.

Model-side module: imports only transformers (it is saved next to a model as remote code).
"""

from __future__ import annotations

from transformers import PretrainedConfig

from .configuration_dynmask import validated_from_dict

MASKING_MODES = ("static", "dynamic")
#: Checkpoint types whose weights and hyper-parameters the family reads, and the architecture each one is.
SEQ2SEQ_STYLES = {"bart": "bart", "marian": "marian"}
#: Encoder-decoder checkpoints the family refuses, and why (what to use instead is in the error).
REFUSED_TYPES = {
    "t5": "T5 adds a relative position bias inside every self-attention",
    "mt5": "mT5 adds a relative position bias inside every self-attention",
    "umt5": "UMT5 adds a relative position bias inside every self-attention",
    "longt5": "LongT5 adds a relative position bias inside every self-attention",
    "mbart": "mBART normalizes before each sub-layer (pre-LN), with final layer norms",
    "pegasus": "Pegasus normalizes before each sub-layer (pre-LN), with final layer norms",
}


class DynMaskSeq2SeqConfig(PretrainedConfig):
    r"""Configuration for [`DynMaskSeq2SeqModel`] and [`DynMaskSeq2SeqForConditionalGeneration`].

    The hyper-parameters are BART's and Marian's (same names), so their checkpoints' ``config.json`` files load as
    they are: ``DynMaskSeq2SeqConfig.from_pretrained(path, masking="dynamic")`` reads a ``bart`` or ``marian``
    config, keeps every hyper-parameter and sets ``seq2seq_style`` from its ``model_type``.

    Args:
        seq2seq_style (`str`, defaults to `"bart"`):
            The architecture the weights come from. Both are post-LN transformers with the same layer names; they
            differ in their embeddings. `"bart"`: learned position embeddings (position ``p`` is row ``p + 2``) and a
            ``layernorm_embedding`` on both sides. `"marian"`: sinusoidal positions (handled as stock Marian
            handles them: trainable once loaded with ``from_pretrained``, saved by the base model only, rebuilt when a
            checkpoint lacks them), no embedding layer norm, and optionally separate source / target vocabularies
            (``share_encoder_decoder_embeddings=False``, ``decoder_vocab_size``).
        masking (`str`, defaults to `"dynamic"`):
            How padded batches are computed. `"static"` computes every position, padding included, as the stock
            model does. `"dynamic"` strips the padding of both sides once, before the embeddings, and runs every
            layer on real tokens only (the decoder too, unless a cache is kept: generation's cached steps run on
            the padded decoder). Packed batches never carry padding.
        varlen_bucket_ratio (`float`, defaults to 0.8):
            Packed attention groups sequences of similar lengths (see ``plan_varlen``); 1.0 gives one group per
            length, 0.0 a single group.
        decoder_vocab_size (`int`, *optional*):
            Marian: the target vocabulary when it is not shared with the source one; defaults to ``vocab_size``.
        share_encoder_decoder_embeddings (`bool`, defaults to `True`):
            One embedding matrix for source and target tokens (always true for BART).

    The other arguments are BART's / Marian's (``d_model``, ``encoder_layers``, ``decoder_ffn_dim``, ``dropout``,
    ``scale_embedding``, ``decoder_start_token_id``, ...), with BART's defaults.
    """

    model_type = "dynmask_seq2seq"
    # A declared field, as in BartConfig / MarianConfig: transformers keeps it in the config (other generation
    # parameters belong in generation_config.json), so a checkpoint without generation_config.json generates alike.
    forced_eos_token_id: int | list[int] | None = 2
    attribute_map = {
        "num_attention_heads": "encoder_attention_heads",
        "hidden_size": "d_model",
        "num_hidden_layers": "encoder_layers",
    }

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """transformers' ``from_dict``, with the keyword arguments checked (:func:`.validated_from_dict`)."""
        config_dict, kwargs = validated_from_dict(cls, config_dict, kwargs)
        return super().from_dict(config_dict, **kwargs)

    def __init__(
        self,
        vocab_size: int = 50265,
        decoder_vocab_size: int | None = None,
        max_position_embeddings: int = 1024,
        encoder_layers: int = 12,
        encoder_ffn_dim: int = 4096,
        encoder_attention_heads: int = 16,
        decoder_layers: int = 12,
        decoder_ffn_dim: int = 4096,
        decoder_attention_heads: int = 16,
        encoder_layerdrop: float = 0.0,
        decoder_layerdrop: float = 0.0,
        activation_function: str = "gelu",
        d_model: int = 1024,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        init_std: float = 0.02,
        scale_embedding: bool = False,
        use_cache: bool = True,
        pad_token_id: int = 1,
        bos_token_id: int | None = 0,
        eos_token_id: int | None = 2,
        decoder_start_token_id: int = 2,
        forced_eos_token_id: int | list[int] | None = 2,
        is_encoder_decoder: bool = True,
        share_encoder_decoder_embeddings: bool = True,
        tie_word_embeddings: bool = True,
        seq2seq_style: str | None = None,
        masking: str = "dynamic",
        varlen_bucket_ratio: float = 0.8,
        **kwargs,
    ):
        source_type = kwargs.pop("source_model_type", None)
        if seq2seq_style is None:
            seq2seq_style = SEQ2SEQ_STYLES.get(source_type, "bart")
        if seq2seq_style not in SEQ2SEQ_STYLES.values():
            raise ValueError(
                f"seq2seq_style must be one of {sorted(set(SEQ2SEQ_STYLES.values()))}, got {seq2seq_style!r}"
            )
        if masking not in MASKING_MODES:
            raise ValueError(f"masking must be one of {MASKING_MODES}, got {masking!r}")
        for side, heads in (("encoder", encoder_attention_heads), ("decoder", decoder_attention_heads)):
            if d_model % heads != 0:
                raise ValueError(f"d_model ({d_model}) must be a multiple of {side}_attention_heads ({heads})")
        if not 0.0 <= varlen_bucket_ratio <= 1.0:
            raise ValueError(f"varlen_bucket_ratio must be in [0, 1], got {varlen_bucket_ratio}")
        decoder_vocab_size = decoder_vocab_size or vocab_size
        if seq2seq_style == "bart" and (not share_encoder_decoder_embeddings or decoder_vocab_size != vocab_size):
            raise ValueError(
                "BART shares one vocabulary between encoder and decoder: share_encoder_decoder_embeddings must be "
                f"True and decoder_vocab_size equal to vocab_size ({vocab_size}), got {decoder_vocab_size}"
            )
        if share_encoder_decoder_embeddings and decoder_vocab_size != vocab_size:
            raise ValueError(
                f"shared embeddings need decoder_vocab_size == vocab_size, got {decoder_vocab_size} != {vocab_size}; "
                "set share_encoder_decoder_embeddings=False for separate vocabularies"
            )
        self.vocab_size = vocab_size
        self.decoder_vocab_size = decoder_vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.d_model = d_model
        self.encoder_ffn_dim = encoder_ffn_dim
        self.encoder_layers = encoder_layers
        self.encoder_attention_heads = encoder_attention_heads
        self.decoder_ffn_dim = decoder_ffn_dim
        self.decoder_layers = decoder_layers
        self.decoder_attention_heads = decoder_attention_heads
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout
        self.activation_function = activation_function
        self.init_std = init_std
        self.encoder_layerdrop = encoder_layerdrop
        self.decoder_layerdrop = decoder_layerdrop
        self.use_cache = use_cache
        self.scale_embedding = scale_embedding
        self.share_encoder_decoder_embeddings = share_encoder_decoder_embeddings
        self.seq2seq_style = seq2seq_style
        self.masking = masking
        self.varlen_bucket_ratio = varlen_bucket_ratio
        self.forced_eos_token_id = forced_eos_token_id
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            decoder_start_token_id=decoder_start_token_id,
            is_encoder_decoder=is_encoder_decoder,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        """transformers' loader, reading BART / Marian ``config.json`` files as DynMask seq2seq configs.

        A ``bart`` or ``marian`` ``model_type`` is kept as ``source_model_type`` (it sets ``seq2seq_style``); T5 and
        the pre-LN families are refused with what to use instead, and any other type is refused.
        """
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        model_type = config_dict.get("model_type")
        if model_type is not None and model_type != cls.model_type:
            if model_type in REFUSED_TYPES:
                raise ValueError(
                    f"{pretrained_model_name_or_path} holds a {model_type!r} model, which DynMask's seq2seq family "
                    f"does not run: {REFUSED_TYPES[model_type]}, which it does not implement exactly. Use the stock "
                    "model with hf_dynmask's seq2seq collator in mode='static' or 'dynamic' (HF padding); DynMask "
                    f"reads {sorted(SEQ2SEQ_STYLES)} checkpoints"
                )
            if model_type not in SEQ2SEQ_STYLES:
                raise ValueError(
                    f"{pretrained_model_name_or_path} holds a {model_type!r} model; DynMask's seq2seq family reads "
                    f"{sorted(SEQ2SEQ_STYLES)} checkpoints (or its own {cls.model_type!r} ones)"
                )
            config_dict = {**config_dict, "source_model_type": model_type}
            del config_dict["model_type"]
        return config_dict, kwargs

    @property
    def target_vocab_size(self) -> int:
        """Size of the decoder's output vocabulary (the logits' last dimension)."""
        return self.vocab_size if self.share_encoder_decoder_embeddings else self.decoder_vocab_size

    @property
    def max_seqlen(self) -> int:
        """The longest sequence (either side) the position embeddings can number."""
        return self.max_position_embeddings


__all__ = ["DynMaskSeq2SeqConfig"]

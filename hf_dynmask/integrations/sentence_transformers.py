"""sentence-transformers on a DynMask backbone: the same embeddings, without computing padding.

A ``SentenceTransformer`` is a pipeline of modules (``Transformer`` -> ``Pooling`` -> ``Normalize`` ...). Its
``Transformer`` module loads a folder with ``AutoConfig`` / ``AutoModel``, so it runs whatever class the folder's
``config.json`` names: a BERT folder gives a stock ``BertModel`` whatever ``config_kwargs`` say (an unknown
``masking`` is stored on the ``BertConfig`` and ignored), and ``model_kwargs={"config": ...}`` collides with the
config ST passes itself. :func:`dynmask_sentence_transformer` goes through ST's own loading instead: it writes the
backbone as a DynMask folder (the stock module's ``sentence_bert_config.json`` and processor, DynMask weights,
config and code) and loads it with ``Transformer.load``, which resolves it to DynMask's registered classes; the other
modules (pooling, normalization, dense layers) and the model's settings (prompts, similarity function) are kept.

Pooling reads only real tokens (``attention_mask``), which DynMask computes exactly as BERT does, so the embeddings
equal the stock model's; with ``masking="dynamic"`` every layer runs on real tokens only.

A model saved with ``model.save(path)`` keeps the DynMask backbone: ``SentenceTransformer(path)`` loads it back with
DynMask where hf_dynmask is imported, and ``SentenceTransformer(path, trust_remote_code=True)`` where it is not
(the folder carries the model code).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..modeling.configuration_dynmask import SOURCE_MODEL_TYPES, DynMaskConfig
from ..modeling.modeling_dynmask import DynMaskModel

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["dynmask_sentence_transformer"]

#: Settings of a SentenceTransformer that live on the model, not in its modules; copied to the new model.
_MODEL_SETTINGS = ("prompts", "default_prompt_name", "similarity_fn_name", "truncate_dim")


def _require_sentence_transformers():
    try:
        import sentence_transformers
    except ImportError as error:
        raise ImportError(
            "dynmask_sentence_transformer needs sentence-transformers: pip install 'hf-dynmask[st]'"
        ) from error
    return sentence_transformers


def dynmask_sentence_transformer(
    model_name_or_path: str | Path,
    *,
    masking: str = "dynamic",
    device: str | None = None,
    save_directory: str | Path | None = None,
    **st_kwargs: Any,
) -> SentenceTransformer:
    """A ``SentenceTransformer`` whose backbone is a DynMask model with the checkpoint's weights.

    Args:
        model_name_or_path: a sentence-transformers folder or Hub id (its pooling and other modules are kept), or a
            plain BERT / RoBERTa checkpoint (sentence-transformers adds mean pooling, as it does for the stock model).
        masking: ``"dynamic"`` (strip padding before the embeddings; the fast path) or ``"static"``.
        device: where the model runs (sentence-transformers' default when None).
        save_directory: where to write the DynMask backbone folder (kept); by default a temporary folder, removed
            once loaded (the model is in memory; ``model.save(path)`` writes it again).
        st_kwargs: passed to ``SentenceTransformer(model_name_or_path, ...)`` for the source model
            (``cache_folder``, ``revision``, ``local_files_only``, ``token``...).

    Returns:
        A ``SentenceTransformer`` whose ``encode`` gives the stock model's embeddings (fp32 round-off aside).

    >>> model = dynmask_sentence_transformer("sentence-transformers/all-MiniLM-L6-v2")  # doctest: +SKIP
    >>> model.encode(["A sentence.", "Another, longer sentence."]).shape  # doctest: +SKIP
    (2, 384)
    """
    st = _require_sentence_transformers()
    from sentence_transformers.sentence_transformer.modules import Transformer

    source = st.SentenceTransformer(str(model_name_or_path), device="cpu", **st_kwargs)
    modules = list(source)
    backbone = modules[0] if modules else None
    if not isinstance(backbone, Transformer):
        raise ValueError(
            f"{model_name_or_path} does not start with a sentence-transformers Transformer module (got "
            f"{type(backbone).__name__}); DynMask replaces a BERT / RoBERTa Transformer backbone"
        )
    model_type = backbone.model.config.model_type
    if model_type not in SOURCE_MODEL_TYPES and model_type != DynMaskConfig.model_type:
        raise ValueError(
            f"the backbone of {model_name_or_path} is a {model_type!r} model; DynMask reads "
            f"{sorted(SOURCE_MODEL_TYPES)} checkpoints. Use sentence-transformers' own model for this one"
        )
    with tempfile.TemporaryDirectory() as work_dir:
        directory = Path(save_directory) if save_directory is not None else Path(work_dir)
        directory.mkdir(parents=True, exist_ok=True)
        backbone.save(str(directory))  # the stock weights, processor and sentence_bert_config.json
        config = DynMaskConfig.from_pretrained(directory, masking=masking)
        DynMaskModel.from_pretrained(directory, config=config).save_pretrained(directory)  # config, weights, code
        dynmask_backbone = Transformer.load(str(directory))
    if not isinstance(dynmask_backbone.model, DynMaskModel):
        raise RuntimeError(f"sentence-transformers loaded {type(dynmask_backbone.model).__name__}, not DynMaskModel")
    settings = {name: getattr(source, name) for name in _MODEL_SETTINGS if getattr(source, name, None) is not None}
    model = st.SentenceTransformer(modules=[dynmask_backbone, *modules[1:]], device=device, **settings)
    model.eval()
    return model

"""Integrations with the libraries that consume BERT-style encoders: sentence-transformers and PEFT.

Uses :mod:`hf_dynmask.modeling` (and may use :mod:`hf_dynmask.data`); nothing below imports it. Each module imports
its library lazily, so ``import hf_dynmask.integrations`` needs neither installed (``pip install 'hf-dynmask[st]'`` /
``'hf-dynmask[peft]'``).

    sentence_transformers.py    dynmask_sentence_transformer: a SentenceTransformer on a DynMask backbone
    peft.py                     load_peft_model: an adapter trained on a DynMask base, reloaded on a DynMask base
"""

from .peft import load_peft_model
from .sentence_transformers import dynmask_sentence_transformer

__all__ = ["dynmask_sentence_transformer", "load_peft_model"]

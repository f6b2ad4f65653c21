"""Sharing: saving and pushing models with their code, and model cards.

Uses :mod:`hf_dynmask.modeling` and :mod:`hf_dynmask.data`; nothing below imports it.

    hub.py          save_with_code, push_to_hub_with_code, check_shipped_code
    model_card.py   TrainingSummary, make_model_card, write_model_card (template in templates/)
"""

from .hub import push_to_hub_with_code, save_with_code
from .model_card import TrainingSummary, make_model_card, write_model_card

__all__ = ["TrainingSummary", "make_model_card", "push_to_hub_with_code", "save_with_code", "write_model_card"]

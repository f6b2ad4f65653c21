"""Checks of the data layer's option values (collator fields, ``prepare_dataset`` arguments), with messages that say
what to pass.

An option outside its choices is reported with :func:`hf_dynmask.modeling.configuration_dynmask.unknown_choice`, the
package's one message for that.

>>> check_int("max_length", 128, minimum=1)
128
>>> check_int("max_length", 128.0)
Traceback (most recent call last):
ValueError: max_length must be an integer, got 128.0 (float); pass max_length=128
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

__all__ = ["check_bool", "check_int"]


def check_int(name: str, value: Any, minimum: int | None = None) -> int | None:
    """``value`` as an ``int`` (``None`` passes), refusing floats, strings and booleans with a message that says what
    to pass."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        suggestion = ""
        if isinstance(value, float) and value.is_integer():
            suggestion = f"; pass {name}={int(value)}"
        elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
            suggestion = f"; pass {name}={int(value)} (a number, not a string)"
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__}){suggestion}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_bool(name: str, value: Any) -> None:
    """``ValueError`` unless ``value`` is ``True`` or ``False`` (NumPy booleans too)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")

"""Simulated kills for the tests of atomic outputs (``test_atomic.py``, ``test_demo.py``).

Every filesystem call an output write makes (``os.mkdir``, ``os.open``, ``rename``, ``replace``, ``unlink``,
``rmdir``, ``fsync`` and the exchange system call) counts as a step; from step ``k`` on every such call raises
:class:`Killed`, a ``BaseException`` that nothing in the code catches, so cleanup in ``finally`` blocks fails too,
as it would in a process killed at that step.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from hf_dynmask.commands import atomic


class Killed(BaseException):
    """The process died at this step."""


class KillSwitch:
    """Count filesystem steps; from step ``kill_at`` on, every one raises :class:`Killed` (``None``: never)."""

    STEPS = (
        (os, "mkdir"),
        (os, "open"),
        (os, "rename"),
        (os, "replace"),
        (os, "unlink"),
        (os, "remove"),
        (os, "rmdir"),
        (os, "fsync"),
        (atomic, "_exchange"),
    )

    def __init__(self, monkeypatch: pytest.MonkeyPatch, kill_at: int | None = None):
        self.kill_at = kill_at
        self.steps: list[str] = []
        for module, name in self.STEPS:
            monkeypatch.setattr(module, name, self._wrap(name, getattr(module, name)))

    def _wrap(self, name, original):
        def step(*args, **kwargs):
            if self.kill_at is not None and len(self.steps) >= self.kill_at:
                raise Killed(f"killed at step {self.kill_at} ({name})")
            self.steps.append(name)
            return original(*args, **kwargs)

        return step


@pytest.fixture
def kills() -> SimpleNamespace:
    """``kills.Switch(monkeypatch, kill_at=k)`` counts steps (``.steps``) and kills at step ``k``; ``kills.Killed``."""
    return SimpleNamespace(Switch=KillSwitch, Killed=Killed)

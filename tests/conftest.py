"""Fixtures shared by the whole test tree.

``one_thread``: a module's tests on one torch thread. ``run_without_plugin``: the child process of the loading tests
(hub, sentence-transformers), a fresh Python in which ``import hf_dynmask`` fails.

``run_without_plugin(root, body, spec)`` writes ``spec`` (plus ``"out"``) to ``root/spec.json`` and runs ``body``
in a new interpreter after a prologue that makes hf_dynmask unimportable (and checks it is), imports ``json``,
``os``, ``sys``, ``torch`` and ``transformers``, sets one torch thread and reads ``spec``; ``body`` fills the dict
``results``, which comes back through ``torch.save`` together with the hf_dynmask modules the child holds
(``results["dynmask_modules"]``, which must be empty). The child runs offline, with its own Hugging Face caches, no
``PYTHONPATH`` and nothing on stdin (transformers asks there before running untrusted code: it gets no answer).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one torch thread: tiny models run fastest so, and a shared machine does not thrash.

    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


PROLOGUE = """\
import json, os, sys
sys.modules["hf_dynmask"] = None  # `import hf_dynmask` raises ImportError from here on
try:
    import hf_dynmask  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("hf_dynmask is importable in the child")

import torch
import transformers

torch.set_num_threads(1)
spec = json.loads(open(sys.argv[1]).read())
results = {}
"""

EPILOGUE = """
results["dynmask_modules"] = sorted(m for m in sys.modules if m.startswith("hf_dynmask") and sys.modules[m])
torch.save(results, spec["out"])
"""


def _run_without_plugin(root: Path, body: str, spec: dict[str, Any]) -> dict[str, Any]:
    spec = {**spec, "out": str(root / "child.pt")}
    (root / "spec.json").write_text(json.dumps(spec))
    (root / "child.py").write_text(PROLOGUE + textwrap.dedent(body) + EPILOGUE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_MODULES_CACHE=str(root / "modules"),
        HF_HOME=str(root / "hf_home"),
        TRANSFORMERS_VERBOSITY="error",
    )
    done = subprocess.run(
        [sys.executable, str(root / "child.py"), str(root / "spec.json")],
        cwd=root,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return torch.load(spec["out"])


@pytest.fixture(scope="session")
def run_without_plugin():
    return _run_without_plugin

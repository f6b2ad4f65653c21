"""Run any Python script with hf_dynmask imported: ``python -m hf_dynmask.run <script.py> [script arguments...]``.

transformers' example scripts (``run_clm.py``, ``run_glue.py``, ...), TRL's and your own never import hf_dynmask,
so transformers does not know ``attn_implementation="dynmask_varlen"`` in them: a folder whose ``config.json``
names it, or a script given ``--attn_implementation dynmask_varlen``, fails at load. The launcher imports
hf_dynmask first (registering ``dynmask_varlen`` and the DynMask classes with transformers' Auto classes), then runs
the script as ``__main__`` with its own arguments, as ``python <script.py> [arguments...]`` would:

    python -m hf_dynmask.run run_clm.py --model_name_or_path ./llama-dynmask --train_file train.json ...
    python -m hf_dynmask.run -m trl.scripts.sft --model_name_or_path ...      # a module, as python -m runs it
    torchrun --nproc_per_node 8 -m hf_dynmask.run run_clm.py ...                # under a launcher

The script sees ``sys.argv == [script, arguments...]`` and its own folder first on ``sys.path`` (so it imports the
helper modules next to it, as ``run_qa.py`` imports ``utils_qa``); its exit status is the command's.
"""

from __future__ import annotations

import os
import runpy
import sys
from collections.abc import Sequence

from ..modeling.auto import register_auto_classes

__all__ = ["USAGE", "main"]

USAGE = (
    "usage: python -m hf_dynmask.run <script.py> [arguments...]\n"
    "       python -m hf_dynmask.run -m <module> [arguments...]"
)


def main(argv: Sequence[str] | None = None) -> None:
    """Register hf_dynmask with transformers, then run ``argv[0]`` (a script path, or ``-m module``) as
    ``__main__`` with ``argv[1:]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stderr.write(f"{USAGE}\n\n{__doc__}")
        raise SystemExit(0 if argv else 2)
    register_auto_classes()  # dynmask_varlen and the DynMask Auto classes (``import hf_dynmask`` does the same)
    if argv[0] == "-m":
        if len(argv) < 2:
            sys.stderr.write(f"hf_dynmask.run: -m needs a module name\n{USAGE}\n")
            raise SystemExit(2)
        module, arguments = argv[1], argv[2:]
        sys.argv = [module, *arguments]  # runpy puts the module's file in argv[0], as python -m does
        sys.path.insert(0, os.getcwd())
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return
    script, arguments = argv[0], argv[1:]
    if not os.path.isfile(script):
        sys.stderr.write(f"hf_dynmask.run: no script {script!r}\n{USAGE}\n")
        raise SystemExit(2)
    sys.argv = [script, *arguments]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")

"""The embedded default corpus: docstrings of the Python standard library.

Real English-and-code text present on every machine that runs Python, with the long-tailed length distribution that
makes padding expensive (most docstrings are a line, a few run to pages). Read from the standard library's source files
with ``ast``, nothing imported or downloaded, in a deterministic order.
"""

from __future__ import annotations

import ast
import os
import sysconfig
from pathlib import Path

__all__ = ["stdlib_docstrings"]

_SKIPPED_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__", "lib2to3", "tkinter"}


def _source_files(root: Path) -> list[Path]:
    """The ``.py`` files under ``root`` outside :data:`_SKIPPED_DIRS`, sorted; skipped folders are never entered
    (``site-packages`` alone can hold tens of thousands of files)."""
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIPPED_DIRS]
        files.extend(Path(folder) / name for name in names if name.endswith(".py"))
    return sorted(files)


def stdlib_docstrings(min_chars: int = 20, limit: int | None = None) -> list[str]:
    """Docstrings of modules, classes and functions of the standard library, in source order.

    Args:
        min_chars: drop docstrings shorter than this (after stripping), e.g. ``"Return x."``.
        limit: stop after this many docstrings (None: all of them, about 20,000 on CPython 3.11).

    >>> docs = stdlib_docstrings(limit=3)
    >>> len(docs), all(isinstance(d, str) and len(d) >= 20 for d in docs)
    (3, True)
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    docstrings: list[str] = []
    for path in _source_files(root):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue  # a few stdlib files are templates or in other encodings
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc.strip()) >= min_chars:
                    docstrings.append(doc.strip())
                    if limit is not None and len(docstrings) >= limit:
                        return docstrings
    if not docstrings:
        raise RuntimeError(f"no docstrings found under {root}; is the Python standard library source installed?")
    return docstrings

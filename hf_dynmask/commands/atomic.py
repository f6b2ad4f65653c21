"""Write outputs atomically: a reader sees the old file (or none) or the complete new one, never a half-written one.

Every output of the command line (JSON reports, plots, saved model folders) is written to a temporary path in the
same directory and moved into place with ``os.replace`` once complete.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as folder:
...     path = write_json(Path(folder) / "out.json", {"a": 1})
...     path.read_text(), sorted(p.name for p in Path(folder).iterdir())
('{\\n  "a": 1\\n}\\n', ['out.json'])
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "write_json"]

# --------------------------------------------------------------------------------------------------------------------


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path`` (a file or a directory).

    On an exception the temporary file or directory is removed and ``path`` is left as it was, so a reader never
    sees a half-written output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        yield tmp
        if tmp.is_dir():
            if path.is_dir():
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old)
            else:
                os.replace(tmp, path)
        elif tmp.exists():
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return Path(path)

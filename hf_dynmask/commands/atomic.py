"""Write outputs so that a complete copy is at their path at every instant: a crash or a kill leaves the old output
or the new one, never a half-written one, and never nothing where a complete one was.

**Files** are written to a temporary file in the same folder, flushed to disk (``fsync``), moved over the path with
``os.replace`` (atomic on POSIX and Windows), and the folder is flushed so the rename itself survives a power cut.

**Folders** are the hard case: POSIX cannot rename a folder over a non-empty one. The usual ways out:

1. rename the old folder aside, then the new one in: between the two renames *nothing* is at the path (a kill
   there lost the output; this module did that before);
2. make the path a symlink and swap the link: atomic, but the output becomes a link (copies, archives, Windows and
   the Hub treat links differently), and the first switch from a real folder cannot be atomic;
3. **exchange** the two folders in one system call: Linux ``renameat2(RENAME_EXCHANGE)`` (Linux 3.15, glibc 2.28;
   ext4, xfs, btrfs, tmpfs, overlayfs...) and macOS ``renamex_np(RENAME_SWAP)``. The path holds the complete old
   folder until the instant it holds the complete new one; the old one is then at the temporary name, and removed.

This module uses 3 where the system offers it and falls back to 1 elsewhere (Windows, file systems without an
exchange). In the fallback the old folder waits as ``.NAME.PID.old`` until the new one is in place, and the next
write of the same path puts it back if a kill left nothing at the path: the output is then recoverable rather than
always present, and that is the only case where it is not always present.

Callers that write several outputs that must agree (``hf-dynmask demo``: model folders, model cards, plot and the
``results.json`` describing them) write them into one folder and replace that folder as a unit, so the results
never describe other models than those beside them.

**Temporaries** are ``.NAME.PID.XXXXXXXX.tmp`` next to the path (and ``.NAME.PID.old`` in the fallback); the
process id says who owns them. Before each write the stale ones of that path (their process has exited, or they
are this process's own leftovers from an interrupted write) are removed, so an interrupted run never leaves hidden
full-size copies behind for good.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as folder:
...     path = write_json(Path(folder) / "out.json", {"a": 1})
...     path.read_text(), sorted(p.name for p in Path(folder).iterdir())
('{\\n  "a": 1\\n}\\n', ['out.json'])
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "check_writable", "clean_stale", "exchange_supported", "replace_path", "write_json"]

logger = logging.getLogger(__name__)

# Temporaries of this process that a write is using right now (never stale, even though their owner is alive).
_IN_PROGRESS: set[Path] = set()


# --------------------------------------------------------------------------------------------------------------------
# The exchange system call
# --------------------------------------------------------------------------------------------------------------------

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h
_RENAME_SWAP = 0x2  # macOS sys/stdio.h
_libc = None


def _load_libc():
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        _libc = ctypes.CDLL(name, use_errno=True) if name else False
    return _libc or None


def _exchange(a: Path, b: Path) -> None:
    """Swap the directory entries ``a`` and ``b`` atomically; raise ``OSError`` (``ENOSYS`` / ``EINVAL`` where the
    system or the file system cannot)."""
    libc = _load_libc()
    if sys.platform.startswith("linux") and libc is not None and hasattr(libc, "renameat2"):
        result = libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    elif sys.platform == "darwin" and libc is not None and hasattr(libc, "renamex_np"):
        result = libc.renamex_np(os.fsencode(a), os.fsencode(b), _RENAME_SWAP)
    else:
        raise OSError(errno.ENOSYS, "no atomic exchange of two paths on this system")
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(a), None, str(b))


def exchange_supported(folder: str | Path) -> bool:
    """Whether folders under ``folder`` can be exchanged atomically (tried on two empty folders made there)."""
    with tempfile.TemporaryDirectory(dir=folder, prefix=".hf_dynmask-exchange-probe-") as probe:
        a, b = Path(probe) / "a", Path(probe) / "b"
        a.mkdir()
        b.mkdir()
        try:
            _exchange(a, b)
        except OSError:
            return False
        return True


# --------------------------------------------------------------------------------------------------------------------
# Durability
# --------------------------------------------------------------------------------------------------------------------


def _fsync_path(path: Path) -> None:
    """Flush a file's (or, on POSIX, a folder's entries') data to disk."""
    if os.name == "nt":
        if path.is_dir():  # Windows cannot open a folder to flush it
            return
        fd = os.open(path, os.O_RDWR)  # and flushes only what it may write
    else:
        fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """Flush every file and folder under ``path`` (files first, then the folders holding them)."""
    if not path.is_dir():
        _fsync_path(path)
        return
    for root, _dirs, files in os.walk(path, topdown=False):
        for name in files:
            _fsync_path(Path(root) / name)
        _fsync_path(Path(root))


# --------------------------------------------------------------------------------------------------------------------
# Temporaries
# --------------------------------------------------------------------------------------------------------------------


def _temporaries(path: Path) -> list[tuple[Path, int, str]]:
    """``(temporary, owner pid, kind)`` for every temporary of ``path`` in its folder; kind is ``tmp`` or ``old``."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\.(?:[A-Za-z0-9_]+\.(tmp)|(old))$")
    found = []
    if not path.parent.is_dir():
        return found
    for entry in path.parent.iterdir():
        match = pattern.match(entry.name)
        if match:
            found.append((entry, int(match.group(1)), match.group(2) or match.group(3)))
    return found


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows: treat others' as in use
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def clean_stale(path: str | Path) -> list[Path]:
    """Remove the stale temporaries of ``path`` left by interrupted writes; returns what was removed.

    A temporary is stale when its process has exited, or it belongs to this process and no write is using it. When
    nothing is at ``path`` but a stale ``.old`` copy is (a kill between the two renames of the fallback), that copy is
    put back at ``path`` first: it is the last complete output.
    """
    path = Path(path)
    stale = [
        (temporary, kind)
        for temporary, pid, kind in _temporaries(path)
        if temporary not in _IN_PROGRESS and (pid == os.getpid() or not _alive(pid))
    ]
    olds = sorted((t for t, kind in stale if kind == "old"), key=lambda t: t.stat().st_mtime)
    if olds and not path.exists() and not path.is_symlink():
        logger.warning("restoring %s from %s (an earlier write was interrupted)", path, olds[-1].name)
        os.rename(olds[-1], path)
        stale = [(t, kind) for t, kind in stale if t != olds[-1]]
    removed = []
    for temporary, _ in stale:
        _remove(temporary)
        removed.append(temporary)
    if removed:
        logger.info("removed %d stale temporaries of %s", len(removed), path)
    return removed


# --------------------------------------------------------------------------------------------------------------------
# Replacing
# --------------------------------------------------------------------------------------------------------------------


def replace_path(source: str | Path, path: str | Path) -> None:
    """Move the complete file or folder ``source`` to ``path`` (same folder), so that ``path`` always holds a
    complete copy (see the module docstring); whatever was at ``path`` is removed. ``source`` is flushed to disk
    first and the folder after."""
    source, path = Path(source), Path(path)
    _fsync_tree(source)
    if source.is_dir() and path.is_dir() and not path.is_symlink():
        try:
            _exchange(source, path)  # path: new, source: old
        except OSError as error:
            if error.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EXDEV):
                raise
            _replace_in_two_steps(source, path)
        else:
            _fsync_path(path.parent)
            shutil.rmtree(source)
            return
    elif path.is_dir() and not path.is_symlink():  # a file where a folder was: move the folder aside first
        _replace_in_two_steps(source, path)
    else:
        os.replace(source, path)
    _fsync_path(path.parent)


def _replace_in_two_steps(source: Path, path: Path) -> None:
    """The fallback: old folder aside (kept as ``.NAME.PID.old``), new one in, old one removed."""
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    os.rename(path, old)
    try:
        os.rename(source, path)
    except BaseException:
        os.rename(old, path)  # put the old one back
        raise
    _fsync_path(path.parent)
    _remove(old)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (nothing there yet: create a file or a folder at it); on success move
    it onto ``path`` with :func:`replace_path`.

    Stale temporaries of ``path`` are removed first (:func:`clean_stale`). On an exception the temporary is removed
    and ``path`` is left as it was. A folder at ``path`` is replaced as a whole.
    """
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()  # replace what the link points at, keep the link
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    _IN_PROGRESS.add(tmp)
    try:
        os.unlink(tmp)
        yield tmp
        if tmp.exists():
            replace_path(tmp, path)
    finally:
        try:
            if tmp.exists() or tmp.is_symlink():
                _remove(tmp)
        finally:
            _IN_PROGRESS.discard(tmp)


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return Path(path)


def check_writable(path: str | Path, create_parents: bool = False) -> None:
    """Raise ``OSError`` (naming the path) unless a file or folder can be written at ``path``: its folder exists (or,
    with ``create_parents``, can be created), is a folder, and takes a new entry (tried: permissions alone do not
    tell, e.g. for root or on a read-only mount). Cheap; run it before long work that ends in a write."""
    path = Path(path)
    parent = path.parent
    for ancestor in (parent, *parent.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise NotADirectoryError(f"cannot write {str(path)!r}: {str(ancestor)!r} is a file, not a folder")
            break
    if not parent.exists() and not create_parents:
        raise FileNotFoundError(f"cannot write {str(path)!r}: the folder {str(parent)!r} does not exist")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=parent)
    except OSError as error:
        raise OSError(f"cannot write to {str(parent)!r} ({error.strerror or error}); pick a writable place") from None
    os.close(handle)
    os.unlink(probe)

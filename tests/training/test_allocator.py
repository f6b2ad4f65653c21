"""The allocator hint: when a packed CPU training run is told to preload jemalloc, and when it is not."""

from __future__ import annotations

import platform

import pytest

from hf_dynmask.training.allocator import allocator_hint, loaded_allocator

GLIBC = platform.libc_ver()[0] == "glibc"


def maps_file(tmp_path, *libraries: str):
    path = tmp_path / "maps"
    lines = [f"7f00000{i}000-7f00000{i}fff r-xp 00000000 00:00 0 /usr/lib/{name}" for i, name in enumerate(libraries)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_loaded_allocator_reads_the_mapped_libraries(tmp_path):
    assert loaded_allocator(maps_file(tmp_path, "libc.so.6", "libtorch_cpu.so")) is None
    assert loaded_allocator(maps_file(tmp_path, "libc.so.6", "libjemalloc.so.2")) == "jemalloc"
    assert loaded_allocator(maps_file(tmp_path, "libtcmalloc_minimal.so.4")) == "tcmalloc"
    assert loaded_allocator(tmp_path / "absent") == "unknown"


@pytest.mark.skipif(not GLIBC, reason="the hint is for glibc's malloc")
def test_hint_only_for_packed_cpu_training_under_glibc_malloc(tmp_path):
    plain = maps_file(tmp_path, "libc.so.6")
    hint = allocator_hint("cpu", packed=True, maps=plain)
    assert hint is not None and "LD_PRELOAD=" in hint and "jemalloc" in hint
    assert allocator_hint("cpu", packed=False, maps=plain) is None  # padded batches keep similar sizes
    assert allocator_hint("cuda", packed=True, maps=plain) is None
    assert allocator_hint("cpu", packed=True, maps=maps_file(tmp_path, "libc.so.6", "libjemalloc.so.2")) is None
    assert allocator_hint("cpu", packed=True, maps=tmp_path / "absent") is None  # cannot tell: no hint

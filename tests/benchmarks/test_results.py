"""The committed benchmark results record no machine's absolute path (they say where data and outputs were relative
to the repository: ``hf_dynmask.commands.timing.portable_path``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
ABSOLUTE = re.compile(r"^(/|[A-Za-z]:\\)")


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def absolute_paths(report) -> list[str]:
    return [s for s in strings(report) if ABSOLUTE.match(s) and "/" in s[1:]]


@pytest.mark.parametrize("path", sorted(RESULTS.rglob("*.json")), ids=lambda p: p.relative_to(RESULTS).as_posix())
def test_results_record_no_absolute_path(path):
    absolute = absolute_paths(json.loads(path.read_text()))
    assert not absolute, f"{path.name} records absolute paths: {absolute[:3]}"


def test_the_check_finds_an_absolute_path():
    assert absolute_paths({"a": ["x", "1/2", {"b": "/work/shared/data"}]}) == ["/work/shared/data"]

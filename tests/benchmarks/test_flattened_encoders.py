"""benchmarks/flattened_encoders.py's correctness matrix on two families (tiny configs, a second or two).

The committed run covers seven families and times MiniLM for minutes; this keeps the script working and checks what
holds on any transformers version: the matrix has a row per backend and form, each verdict follows from its numbers,
``dynmask_varlen`` is exact on the form it supports and refuses an encoder row without boundaries where the attention
sees the positions, and the mask probe says what the mask functions got. Nothing is timed.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def flattened_encoders():
    """Import ``benchmarks/flattened_encoders.py`` (the folder is scripts, not a package), as test_finetune does."""
    spec = importlib.util.spec_from_file_location(
        "benchmark_flattened_encoders", ROOT / "benchmarks" / "flattened_encoders.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_correctness_matrix(flattened_encoders, tmp_path):
    out = tmp_path / "flat.json"
    argv = ["--families", "bert,roberta", "--lengths", "1,3,17,9", "--skip-cost", "--json", str(out)]
    report = flattened_encoders.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["command"] == "python benchmarks/flattened_encoders.py " + " ".join(argv)
    assert {"torch", "transformers", "cpu_model", "pinned_cores", "torch_threads"} <= set(report["environment"])
    assert report["environment"]["hf_dynmask_path"] == "hf_dynmask"  # this checkout's, recorded relative
    assert "cost" not in report

    matrix = report["correctness"]
    rows = {(r["family"], r["backend"], r["form"]): r for r in matrix["rows"]}
    bert_forms = {"flattening", "flattening+cu"}
    roberta_forms = set(bert_forms)
    if matrix["position_ids_start_available"]:  # DataCollatorWithFlattening(position_ids_start=...), transformers 5.2x
        roberta_forms |= {"flattening@start", "flattening@start+cu"}
    expected = {("bert", b, f) for b in flattened_encoders.BACKENDS for f in bert_forms}
    expected |= {("roberta", b, f) for b in flattened_encoders.BACKENDS for f in roberta_forms}
    assert set(rows) == expected

    for row in rows.values():  # each verdict follows from its numbers
        if row["verdict"] == "refused":
            assert row["error"] and row["max_diff"] is None
        elif row["max_diff"] <= matrix["atol"]:
            assert row["verdict"] == "exact"
        else:
            assert row["verdict"] == ("mixes" if row["leak"] > matrix["atol"] else "misplaced")

    # hf_dynmask's guarantees: exact on boundaries with the family's positions, refused without boundaries
    assert rows["bert", "dynmask_varlen", "flattening+cu"]["verdict"] == "exact"
    assert rows["bert", "dynmask_varlen", "flattening"]["verdict"] == "refused"
    assert "cu_seq_lens_q" in rows["bert", "dynmask_varlen", "flattening"]["error"]
    assert rows["roberta", "dynmask_varlen", "flattening+cu"]["verdict"] == "refused"  # positions from 0, not 2
    if matrix["position_ids_start_available"]:
        assert rows["roberta", "dynmask_varlen", "flattening@start+cu"]["verdict"] == "exact"
        assert rows["roberta", "dynmask_varlen", "flattening@start+cu"]["dynmask_supported_form"]

    # the probe records each stock backend's mask call on a plain flattened row
    for family in ("bert", "roberta"):
        probe = matrix["mask_probe"][family]
        assert set(probe["backends"]) == {"eager", "sdpa"}
        for calls in probe["backends"].values():
            assert [c["function"] for c in calls] == ["create_bidirectional_mask"]
    assert matrix["mask_probe"]["roberta"]["position_start"] == 2


def test_packing_and_memory_estimate(flattened_encoders):
    rows = flattened_encoders.pack([5, 3, 4, 1, 2], budget=6, seed=0)
    assert sorted(i for row in rows for i in row) == [0, 1, 2, 3, 4]
    assert all(sum([5, 3, 4, 1, 2][i] for i in row) <= 6 for row in rows)
    assert flattened_encoders.pack([9], budget=4, seed=0) == [[0]]  # a sequence over the budget gets its own row
    # MiniLM, 2,048 tokens: 3 x 6 layers x 12 heads x 2048^2 x 4 bytes
    assert flattened_encoders.dense_dropout_gib(2048, layers=6, heads=12) == pytest.approx(3.375)

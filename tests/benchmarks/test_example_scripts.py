"""benchmarks/example_scripts.py on tiny models: one step of three pairs, to keep the script working (nothing timed
is checked). The committed run times MiniLM-sized models for minutes."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def example_scripts():
    """Import ``benchmarks/example_scripts.py`` (the folder is scripts, not a package), as test_finetune does."""
    spec = importlib.util.spec_from_file_location(
        "benchmark_example_scripts", ROOT / "benchmarks" / "example_scripts.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_smoke_run_reports_every_pair_asked(example_scripts, tmp_path):
    if not (ROOT.parent / "shared" / "data").is_dir():
        pytest.skip("../shared/data not available")
    out = tmp_path / "scripts.json"
    pairs = ["run_glue/bert/max-length", "run_translation/marian", "sft/llama"]
    argv = ["--size", "tiny", "--pairs", ",".join(pairs), "--steps", "1", "--warmup", "1", "--vocab-size", "300"]
    report = example_scripts.main([*argv, "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["command"] == "python benchmarks/example_scripts.py " + " ".join([*argv, "--json", str(out)])
    assert report["environment"]["hf_dynmask_path"] == "hf_dynmask"  # this checkout's, recorded relative
    assert [result["pair"] for result in report["pairs"]] == pairs
    for result in report["pairs"]:
        for kind in ("stock", "dynmask"):
            assert result[kind]["wall_s_per_step"] > 0 and math.isfinite(result[kind]["mean_loss"])
        assert result["speed_vs_stock"]["wall"] > 0
    glue, marian, sft = report["pairs"]
    assert glue["tokens"]["stock"]["input_computed"] == 16 * 128  # --pad_to_max_length
    assert glue["tokens"]["stock"] == glue["tokens"]["dynmask"]  # the same batches
    assert marian["tokens"]["dynmask"]["target_real"] < marian["tokens"]["dynmask"]["target_computed"]
    assert sft["tokens"]["dynmask"]["input_real"] == sft["tokens"]["stock"]["input_real"]  # flattened vs padded
    assert sft["tokens"]["dynmask"]["input_computed"] < sft["tokens"]["stock"]["input_computed"]


def test_unknown_pairs_are_refused(example_scripts):
    with pytest.raises(SystemExit):
        example_scripts.parse_args(["--pairs", "run_glue/roberta"])

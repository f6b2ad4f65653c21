"""The benchmark scripts of issue 22 at tiny sizes, on the CPU: they run, and what they compare agrees. Nothing is
timed (their figures are committed under benchmarks/results and discussed in BENCHMARKS.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
pytestmark = pytest.mark.usefixtures("one_thread")


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not (DATA / "scitldr_a").exists(), reason="needs ../shared/data/scitldr_a")
def test_gpu_check_benchmark_runs_on_cpu_and_its_methods_agree():
    report = load("gpu_check").run_benchmark(DATA, steps=2, rounds=1, row_tokens=256, device_name="cpu", hidden=32,
                                             layers=1)  # fmt: skip
    results = report["results"]
    assert set(results) == {"dynmask_varlen[sdpa groups]", "hf_grouped[sdpa]"}  # the CUDA-only methods are left out
    losses = [row["mean_loss"] for row in results.values()]
    assert max(losses) - min(losses) < 1e-5


@pytest.mark.skipif(not (DATA / "banking77").exists(), reason="needs ../shared/data/banking77")
def test_attention_calls_runs_and_counts(tmp_path):
    import json

    out = tmp_path / "calls.json"
    code = load("attention_calls").main(
        ["--datasets", "banking77", "--limit", "200", "--batch-size", "8", "--batches", "1", "--rounds", "1",
         "--json", str(out)]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    results = report["datasets"]["banking77"]["results"]
    assert {"dynmask_packed[1]", "dynmask_packed[2]", "dynmask_packed[none]", "hf_grouped"} <= set(results)
    # One length group makes the fewest operators; the bound never adds any.
    assert results["dynmask_packed[1]"]["aten_ops_per_step"] <= results["dynmask_packed[2]"]["aten_ops_per_step"]
    assert results["dynmask_packed[2]"]["aten_ops_per_step"] <= results["dynmask_packed[none]"]["aten_ops_per_step"]
    assert report["settings"]["data_dir"] == "../shared/data"


@pytest.mark.skipif(not (DATA / "ntrex_en_de").exists(), reason="needs ../shared/data/ntrex_en_de")
def test_seq2seq_benchmark_interleaved_trains_as_sequential(tmp_path):
    """bench_seq2seq.py's modes taking turns of one step train as they do one after another (same loss curves), and
    the comparison with group_by_length reads CPU time."""
    bench = load("bench_seq2seq")
    tiny = ["--dataset", "ntrex_en_de", "--max-examples", "40", "--eval-examples", "2", "--modes",
            "hf_grouped,dynamic,packed", "--d-model", "32", "--ffn", "64", "--layers", "1", "--vocab-size", "300",
            "--logging-steps", "1"]  # fmt: skip
    interleaved = bench.main([*tiny, "--json", str(tmp_path / "i.json")])
    sequential = bench.main([*tiny, "--schedule", "sequential", "--json", str(tmp_path / "s.json")])
    for mode in ("hf_grouped", "dynamic", "packed"):
        ours, alone = interleaved["results"][mode], sequential["results"][mode]
        assert len(ours["loss_curve"]) == 3 and ours["loss_curve"] == alone["loss_curve"], mode
        assert ours["train_cpu_seconds"] > 0 and ours["peak_memory_mib"] is None and alone["peak_memory_mib"] >= 0
    assert interleaved["results"]["dynamic"]["loss_curve"] == interleaved["results"]["packed"]["loss_curve"]
    speed = interleaved["packed_vs_hf_grouped"]
    grouped, packed = (interleaved["results"][m]["real_tokens_per_cpu_second"] for m in ("hf_grouped", "packed"))
    assert speed["speed"] == pytest.approx(packed / grouped) and speed["memory"] is None
    assert interleaved["settings"]["schedule"] == "interleaved"
    # hf-dynmask bench's environment record, under its names (this script once wrote cpu_affinity / omp_num_threads)
    assert {"pinned_cores", "OMP_NUM_THREADS", "allocator", "cpu_model"} <= set(interleaved["environment"])


@pytest.mark.skipif(not (DATA / "scitldr_a").exists(), reason="needs ../shared/data/scitldr_a")
def test_compile_decoder_runs_and_compiles_nothing_while_timing(tmp_path):
    """compile_decoder.py at a tiny shape (aot_eager: no code generation): both modes, every plan structure compiled in
    the warm-up, paths recorded relative to the repository."""
    import json

    out = tmp_path / "decoder.json"
    code = load("compile_decoder").main(
        ["--hidden-size", "32", "--layers", "1", "--ffn", "64", "--limit", "60", "--batches", "2", "--rounds", "1",
         "--vocab-size", "300", "--backend", "aot_eager", "--json", str(out)]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"train", "inference"}
    for row in report["results"].values():
        assert row["compiled_vs_eager_cpu"] > 0 and row["compile_seconds"] > 0
        assert row["compiles_while_timing"] == 0
    assert report["settings"]["data"] == "../shared/data/scitldr_a/train.jsonl"


@pytest.mark.skipif(not (DATA / "ntrex_en_de").exists(), reason="needs ../shared/data/ntrex_en_de")
def test_compile_seq2seq_runs_every_method_and_compiles_nothing_while_timing(tmp_path):
    """compile_seq2seq.py at a tiny shape (dynamo alone, backend "eager"; inference, the training step costs seconds
    more): each method compiled in the warm-up (frames counted), nothing compiled while timing, paths recorded
    relative to the repository."""
    import json

    out = tmp_path / "seq2seq.json"
    code = load("compile_seq2seq").main(
        ["--d-model", "16", "--layers", "1", "--heads", "2", "--ffn", "32", "--limit", "48", "--batches", "2",
         "--rounds", "1", "--vocab-size", "200", "--batch-size", "8", "--backend", "eager", "--modes", "inference",
         "--json", str(out)]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"dynmask_packed", "dynmask_dynamic", "hf_dynamic"}
    for rows in report["results"].values():
        assert set(rows) == {"inference"}
        for row in rows.values():
            assert row["frames_compiled"] >= 1 and row["compiles_while_timing"] == 0
            assert row["compiled_vs_eager_cpu"] > 0 and row["compile_seconds"] > 0
    assert report["settings"]["data_dir"] == "../shared/data"

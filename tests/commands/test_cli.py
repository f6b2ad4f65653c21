"""The ``hf-dynmask`` command line: demo, bench and inspect on tiny inputs, errors, outputs.

Commands run in-process through ``hf_dynmask.commands.cli.main`` (seconds each); two subprocess tests check the
installed console script and that argument errors need no heavy import.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import BertConfig, BertModel

from hf_dynmask.commands.cli import CommandError, load_texts, main
from hf_dynmask.commands.demo import train_tokenizer
from hf_dynmask.commands.padding_waste import padding_waste

TEXTS = [f"line {i} " + "word " * (i % 7) + "the quick brown fox jumps" for i in range(20)]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny BERT (hidden 16, 1 layer) with a WordPiece tokenizer trained here, and a 20-line JSONL."""
    folder = tmp_path_factory.mktemp("tiny")
    tokenizer = train_tokenizer(TEXTS * 3, vocab_size=120)
    tokenizer.save_pretrained(folder / "model")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder / "model")
    with (folder / "data.jsonl").open("w") as handle:
        for i, text in enumerate(TEXTS):
            handle.write(json.dumps({"text": text, "label": i % 2}) + "\n")
    return folder


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``hf-dynmask argv`` (usage errors exit through SystemExit)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code: int, err: str, expected: str, status: int = 1) -> None:
    assert code == status
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "error:" in lines[0] and expected in lines[0], lines[0]
    assert "Traceback" not in err


# -- help ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["demo"], ["bench"], ["inspect"]])
def test_help(command, capsys):
    code, out, _ = run([*command, "--help"], capsys)
    assert code == 0
    assert out.startswith("usage: hf-dynmask")
    for sub in ("demo", "bench", "inspect") if not command else ():
        assert sub in out


def test_console_script_usage_error_in_subprocess():
    script = shutil.which("hf-dynmask")
    assert script is not None, "pip install -e . installs the hf-dynmask console script"
    done = subprocess.run([script, "inspect", "--batch-size", "0"], capture_output=True, text=True, timeout=120)
    assert_one_line_error(done.returncode, done.stderr, "--batch-size: expected a positive integer", status=2)


# -- demo ------------------------------------------------------------------------------------------------------------


def test_demo_tiny_trains_every_layout_to_the_same_losses(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    code, out, err = run(
        ["demo", "--tiny", "--tokenizer", "trained", "--output-dir", out_dir, "--no-progress"], capsys
    )
    assert code == 0, err
    assert "| packed-dynamic-mlm | packed | dynamic |" in out and "wall time" in out
    report = json.loads((out_dir / "results.json").read_text())
    assert set(report) >= {"settings", "corpus", "tokenizer", "runs", "speedup_vs_static", "lengths", "plot"}
    runs = {r["name"]: r for r in report["runs"]}
    assert set(runs) == {f"{m}-{k}-mlm" for m in ("static", "dynamic", "packed") for k in ("dynamic", "static")}
    for masking in ("dynamic", "static"):
        static, dynamic, packed = (runs[f"{m}-{masking}-mlm"] for m in ("static", "dynamic", "packed"))
        # same batches, masks and initial weights, no dropout: the layouts compute the same losses
        np.testing.assert_allclose(dynamic["losses"], static["losses"], atol=1e-4)
        np.testing.assert_allclose(packed["losses"], static["losses"], atol=1e-4)
        assert packed["real_tokens"] == static["real_tokens"] >= 1500
        assert packed["padding_fraction"] == 0.0 and static["padding_fraction"] > 0.0
        assert static["padded_tokens"] == static["steps"] * 8 * 32  # every row padded to max_length
        assert report["speedup_vs_static"][static["name"]] == 1.0
    for name in runs:
        folder = out_dir / name
        assert {"config.json", "model.safetensors", "README.md", "modeling_dynmask.py", "tokenizer.json"} <= {
            p.name for p in folder.iterdir()
        }
        assert "masked-lm" in (folder / "README.md").read_text() or "fill-mask" in (folder / "README.md").read_text()
    assert (out_dir / "demo.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_demo_saved_model_reloads(tmp_path, capsys):
    from transformers import AutoModelForMaskedLM

    out_dir = tmp_path / "demo"
    argv = ["demo", "--tiny", "--tokenizer", "trained", "--output-dir", out_dir, "--no-progress", "--no-plot"]
    code, _, err = run([*argv, "--modes", "packed", "--mlm-masking", "dynamic"], capsys)
    assert code == 0, err
    model = AutoModelForMaskedLM.from_pretrained(out_dir / "packed-dynamic-mlm")
    assert type(model).__name__ == "DynMaskForMaskedLM"
    assert not (out_dir / "demo.png").exists()
    # a DynMask folder benchmarks too: the stock side is a BertModel with the same weights
    path = tmp_path / "bench.json"
    argv = ["bench", "--model", out_dir / "packed-dynamic-mlm", "--dataset", "stdlib", "--limit", 12, "--threads", 1]
    argv += ["--batch-size", 4, "--max-length", 32, "--batches", 1, "--rounds", 1, "--no-progress", "--no-memory"]
    code, _, err = run(
        [*argv, "--methods", "hf_static,hf_dynamic_random,dynmask_packed_random", "--json", path], capsys
    )
    assert code == 0, err
    report = json.loads(path.read_text())
    assert report["model"]["model_type"] == "dynmask"
    assert all(row["max_abs_diff"] < 1e-4 for mode in report["results"].values() for row in mode.values())


def test_demo_without_matplotlib_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out_dir = tmp_path / "demo"
    argv = ["demo", "--tiny", "--tokenizer", "trained", "--output-dir", out_dir, "--no-progress"]
    code, out, err = run([*argv, "--modes", "packed", "--mlm-masking", "static"], capsys)
    assert code == 0, err
    assert "matplotlib is not installed (pip install 'hf-dynmask[plot]')" in out
    assert not (out_dir / "demo.png").exists() and (out_dir / "results.json").exists()


def test_demo_bad_mode_is_one_line(tmp_path, capsys):
    code, _, err = run(["demo", "--tiny", "--output-dir", tmp_path, "--modes", "padded"], capsys)
    assert_one_line_error(code, err, "unknown mode(s) ['padded']")


# -- bench -----------------------------------------------------------------------------------------------------------


def bench_argv(tiny_dir: Path, *extra) -> list:
    return [
        "bench",
        "--model",
        tiny_dir / "model",
        "--dataset",
        tiny_dir / "data.jsonl",
        "--batch-size",
        4,
        "--max-length",
        32,
        "--batches",
        2,
        "--rounds",
        1,
        "--threads",
        1,
        "--no-progress",
        *extra,
    ]


def test_bench_inference_all_methods_agree(tiny_dir, tmp_path, capsys):
    path = tmp_path / "bench.json"
    methods = "hf_static,hf_dynamic_random,hf_length_grouped,hf_flattening,dynmask_static_random,dynmask_packed_random"
    argv = bench_argv(
        tiny_dir, "--modes", "inference", "--methods", methods, "--json", path, "--plot", tmp_path / "b.png"
    )
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert "| hf_flattening |" in out and "dense (N, N) mask" in out
    report = json.loads(path.read_text())
    assert set(report) >= {"environment", "model", "dataset", "flop_limit_speedup", "settings", "results", "skipped"}
    rows = report["results"]["inference"]
    assert list(rows) == methods.split(",")
    for name, row in rows.items():
        assert set(row) >= {"real_tokens_per_s", "speedup_vs_static", "fraction_of_limit", "padding_fraction"}
        assert row["max_abs_diff"] < 1e-5, name  # every layout computes the same hidden states at real tokens
        # CPU time next to wall time: the pass's own, so real tokens per CPU second follow from it
        assert 0 < row["cpu_seconds"] and row["real_tokens_per_cpu_s"] == row["real_tokens"] / row["cpu_seconds"]
    assert "| method | real tok/s | per CPU s |" in out
    assert rows["hf_flattening"]["attn_implementation"] == "dynmask_varlen"
    assert rows["hf_static"]["speedup_vs_static"] == 1.0
    assert rows["hf_static"]["padding_fraction"] == 1 - rows["hf_static"]["real_tokens"] / (2 * 4 * 32)
    assert rows["dynmask_packed_random"]["padding_fraction"] == 0.0
    assert rows["dynmask_static_random"]["padding_fraction"] == rows["hf_static"]["padding_fraction"]
    assert report["dataset"]["examples"] == 20
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_train_skips_flattening_with_reason(tiny_dir, tmp_path, capsys):
    path = tmp_path / "bench.json"
    methods = "hf_static,hf_dynamic_random,hf_flattening,dynmask_packed_random"
    code, out, err = run(bench_argv(tiny_dir, "--modes", "train", "--methods", methods, "--json", path), capsys)
    assert code == 0, err
    report = json.loads(path.read_text())
    assert "hf_flattening" in report["skipped"]["train"] and "pools the first token" in out
    rows = report["results"]["train"]
    assert set(rows) == {"hf_static", "hf_dynamic_random", "dynmask_packed_random"}
    assert rows["dynmask_packed_random"]["max_abs_diff"] < 1e-5  # the same loss as padded
    assert rows["hf_static"]["peak_memory_mib"] is None or rows["hf_static"]["peak_memory_mib"] >= 0


def test_bench_compile_and_sentence_transformers(tiny_dir, tmp_path, capsys):
    """Compiled twins of each method (aot_eager here: no code generation) compute the same values as eager, with
    their compile time and speed against eager; the SentenceTransformer timing gives the stock embeddings."""
    pytest.importorskip("sentence_transformers")
    path = tmp_path / "bench.json"
    methods = "hf_static,hf_dynamic_random,dynmask_dynamic_random,dynmask_packed_random"
    argv = bench_argv(
        tiny_dir, "--modes", "inference", "--methods", methods, "--json", path, "--compile", "--compile-backend",
        "aot_eager", "--sentence-transformers", "--no-memory",
    )  # fmt: skip
    code, out, err = run(argv, capsys)
    assert code == 0, err
    report = json.loads(path.read_text())
    rows = report["results"]["inference"]
    names = methods.split(",")
    assert list(rows) == [*names, *(f"{name}+compile" for name in names)]
    for name in names:
        compiled = rows[f"{name}+compile"]
        assert compiled["max_abs_diff"] < 1e-5, name
        assert compiled["compile_seconds"] > 0 and compiled["speedup_vs_eager"] > 0
        assert compiled["compiles_while_timing"] == 0  # every shape was compiled in the warm-up
        assert compiled["real_tokens"] == rows[name]["real_tokens"]
    assert "| dynmask_packed_random+compile |" in out and "compile (warm-up)" in out
    assert rows["dynmask_packed_random+compile"]["compiles"] >= 1  # the first compiled packed batch compiles
    st = report["sentence_transformers"]
    assert st["texts"] == 2 * 4 and st["max_abs_diff"] < 1e-5
    assert st["sorted"]["speedup"] > 0 and st["random"]["speedup"] > 0
    assert "SentenceTransformer.encode" in out


def test_bench_compile_options_reach_inductor(tiny_dir, tmp_path, capsys, monkeypatch):
    """``--compile-option NAME=VALUE`` reaches ``torch.compile(options=...)`` as a typed value and is recorded in the
    report; an unknown setting, a missing ``=`` and options without inductor are refused before any work."""
    import torch

    calls = []

    def recording_compile(model, **kwargs):  # eager stand-in: inductor would take minutes here
        calls.append(kwargs)
        return model

    monkeypatch.setattr(torch, "compile", recording_compile)
    path = tmp_path / "bench.json"
    argv = bench_argv(
        tiny_dir, "--modes", "inference", "--methods", "hf_static,dynmask_packed_random", "--json", path,
        "--compile", "--compile-option", "fallback_random=true", "--compile-option", "max_autotune=false",
        "--no-memory",
    )  # fmt: skip
    code, _, err = run(argv, capsys)
    assert code == 0, err
    expected = {"fallback_random": True, "max_autotune": False}
    assert calls and all(c == {"backend": "inductor", "options": expected} for c in calls)
    assert json.loads(path.read_text())["settings"]["compile_options"] == expected

    code, _, err = run(bench_argv(tiny_dir, "--compile", "--compile-option", "fallback_rnd=true"), capsys)
    assert_one_line_error(code, err, "did you mean 'fallback_random'", status=2)
    code, _, err = run(bench_argv(tiny_dir, "--compile", "--compile-option", "fallback_random"), capsys)
    assert_one_line_error(code, err, "NAME=VALUE", status=2)
    for extra in ((), ("--compile", "--compile-backend", "aot_eager")):
        code, _, err = run(bench_argv(tiny_dir, *extra, "--compile-option", "fallback_random=true"), capsys)
        assert_one_line_error(code, err, "inductor settings")
    assert len(calls) == 2  # the refused runs compiled nothing


def test_bench_counts_compiles_past_dynamos_metrics_window():
    """The compiles a bench run reports keep counting after 64 (dynamo's compilation metrics keep only the last 64,
    so a count read from them stops: a long ``--compile`` run would report no compiles while timing, unseen)."""
    from hf_dynmask.commands.bench import dynamo_totals

    def step(x):
        return x + 1

    before = dynamo_totals()["compiles"]
    for _ in range(70):
        torch._dynamo.reset()
        torch.compile(step, backend="eager")(torch.ones(2))
    assert dynamo_totals()["compiles"] - before == 70


def test_bench_missing_model_dir(tmp_path, capsys):
    code, _, err = run(["bench", "--model", tmp_path / "nope", "--no-progress"], capsys)
    assert_one_line_error(code, err, "does not exist")


def test_bench_unknown_model_type(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    code, _, err = run(["bench", "--model", tmp_path, "--no-progress"], capsys)
    assert_one_line_error(code, err, "unknown model type 'gpt2'")


def test_bench_unknown_method(tiny_dir, capsys):
    code, _, err = run(bench_argv(tiny_dir, "--methods", "hf_static,warp_drive"), capsys)
    assert_one_line_error(code, err, "unknown method(s) ['warp_drive']")


def test_bench_too_few_examples_leaves_no_file(tiny_dir, tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    argv = bench_argv(tiny_dir, "--json", out_dir / "bench.json", "--limit", 3)
    code, _, err = run(argv, capsys)
    assert_one_line_error(code, err, "fewer than batch_size=4")
    assert list(out_dir.iterdir()) == []


def test_bench_plot_without_matplotlib_fails_before_work(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = run(bench_argv(tiny_dir, "--plot", tmp_path / "b.png"), capsys)
    assert_one_line_error(code, err, "--plot needs matplotlib")
    assert list(tmp_path.iterdir()) == []


def test_bench_json_into_missing_directory_is_a_usage_error(tiny_dir, tmp_path, capsys):
    code, _, err = run(bench_argv(tiny_dir, "--json", tmp_path / "no" / "such.json"), capsys)
    assert_one_line_error(code, err, "does not exist", status=2)


# -- inspect ---------------------------------------------------------------------------------------------------------


def test_inspect_reports_exact_padding(tiny_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    path = tmp_path / "inspect.json"
    argv = ["inspect", "--dataset", tiny_dir / "data.jsonl", "--tokenizer", tiny_dir / "model", "--max-length", 16]
    argv += ["--batch-size", 4, "--token-budget", 40, "--json", path, "--plot", tmp_path / "i.png"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    report = json.loads(path.read_text())
    assert set(report) >= {"settings", "lengths", "histogram", "strategies", "dataset", "tokenizer"}
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir / "model")
    lengths = [min(len(ids), 16) for ids in tokenizer(TEXTS)["input_ids"]]
    assert report["lengths"]["num_examples"] == 20 and report["lengths"]["total_tokens"] == sum(lengths)
    assert sum(report["histogram"]["counts"]) == 20
    strategies = report["strategies"]
    assert list(strategies) == ["static", "dynamic_random", "length_grouped", "sorted", "packed"]
    assert strategies["static"]["computed_tokens"] == 5 * 4 * 16
    by_length = sorted(lengths, reverse=True)
    assert strategies["sorted"]["computed_tokens"] == sum(4 * by_length[i] for i in range(0, 20, 4))
    packed = strategies["packed"]
    assert packed["computed_tokens"] == sum(lengths) and packed["padding_fraction"] == 0.0
    assert packed["budget_fill"] == pytest.approx(sum(lengths) / (packed["num_batches"] * 40))
    assert "| packed |" in out and "truncated to 16" in out
    assert (tmp_path / "i.png").read_bytes()[:4] == b"\x89PNG"


def test_inspect_missing_text_column_lists_columns(tiny_dir, capsys):
    argv = [
        "inspect",
        "--dataset",
        tiny_dir / "data.jsonl",
        "--tokenizer",
        tiny_dir / "model",
        "--text-column",
        "body",
    ]
    code, _, err = run(argv, capsys)
    assert_one_line_error(code, err, "has no column 'body'; its columns are ['text', 'label']")


def test_inspect_missing_file(tiny_dir, capsys):
    code, _, err = run(["inspect", "--dataset", "missing.jsonl", "--tokenizer", tiny_dir / "model"], capsys)
    assert_one_line_error(code, err, "dataset file 'missing.jsonl' not found")


def test_inspect_bad_tokenizer(tmp_path, capsys):
    code, _, err = run(["inspect", "--tokenizer", tmp_path / "nothing-here"], capsys)
    assert_one_line_error(code, err, "nothing-here' does not exist; pass a folder holding a saved tokenizer")


def test_inspect_budget_below_longest_example(tiny_dir, tmp_path, capsys):
    argv = ["inspect", "--dataset", tiny_dir / "data.jsonl", "--tokenizer", tiny_dir / "model"]
    code, _, err = run([*argv, "--token-budget", 3, "--json", tmp_path / "x.json"], capsys)
    assert_one_line_error(code, err, "> token_budget 3")
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("argv", [["inspect", "--batch-size", "0"], ["bench", "--rounds", "x"], ["frobnicate"]])
def test_usage_errors_are_one_line(argv, capsys):
    code, _, err = run(argv, capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "error:" in err


# -- data loading ----------------------------------------------------------------------------------------------------


def test_load_texts_formats(tmp_path):
    (tmp_path / "a.csv").write_text("id,text\n1,hello world\n2,second\n")
    assert load_texts(str(tmp_path / "a.csv")) == ["hello world", "second"]
    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    assert load_texts(str(tmp_path / "a.txt")) == ["one", "two"]
    (tmp_path / "a.jsonl").write_text('{"tokens": ["a", "b"]}\n{"tokens": ["c"]}\n')
    assert load_texts(str(tmp_path / "a.jsonl"), text_column="tokens") == ["a b", "c"]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"source": ["x y", "z"], "target": ["1", "2"]}), tmp_path / "a.parquet")
    assert load_texts(str(tmp_path / "a.parquet"), text_column="source", limit=1) == ["x y"]
    assert len(load_texts("stdlib", limit=3)) == 3
    with pytest.raises(CommandError, match="holds int, not text"):
        (tmp_path / "n.jsonl").write_text('{"text": 3}\n')
        load_texts(str(tmp_path / "n.jsonl"))
    with pytest.raises(CommandError, match="unknown file type"):
        (tmp_path / "a.xml").write_text("<a/>")
        load_texts(str(tmp_path / "a.xml"))


# -- padding arithmetic ----------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=60), st.integers(1, 8))
def test_padding_waste_properties(lengths, batch_size):
    waste = padding_waste(lengths, max_length=40, batch_size=batch_size, token_budget=64, seed=1)
    total = sum(lengths)
    batches = -(-len(lengths) // batch_size)
    assert waste["static"].computed_tokens == len(lengths) * 40
    assert all(w.real_tokens == total for w in waste.values())
    assert all(w.num_batches == batches for name, w in waste.items() if name != "packed")
    # sorted batching is the least padding batches of the same sizes can have, in any order
    assert waste["sorted"].computed_tokens <= waste["dynamic_random"].computed_tokens
    assert waste["sorted"].computed_tokens <= waste["length_grouped"].computed_tokens
    assert waste["packed"].computed_tokens == total and waste["packed"].num_batches >= -(-total // 64)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=6), st.integers(1, 4))
def test_sorted_batches_pad_least_of_all_groupings(lengths, batch_size):
    """Brute force: no grouping of the examples into batches of these sizes computes fewer tokens than 'sorted'."""
    import itertools

    full, r = divmod(len(lengths), batch_size)
    best = min(
        sum(len(b) * max(lengths[i] for i in b) for b in groups)
        for perm in itertools.permutations(range(len(lengths)))
        for k in range(full + 1)
        for groups in [_cut(list(perm), [batch_size] * k + ([r] if r else []) + [batch_size] * (full - k))]
    )
    waste = padding_waste(lengths, max_length=9, batch_size=batch_size, token_budget=9)
    assert waste["sorted"].computed_tokens == best


def _cut(order: list[int], sizes: list[int]) -> list[list[int]]:
    out, start = [], 0
    for size in sizes:
        out.append(order[start : start + size])
        start += size
    return out


def test_bench_environment_names_the_code_that_ran():
    """Bench reports (``hf-dynmask bench`` and ``bench-decoder``) record hf_dynmask's commit when it runs from a git
    checkout (as here and in CI), else None, and the cores the process was pinned to."""
    from hf_dynmask.commands.bench import environment

    env = environment(torch.device("cpu"))
    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists():
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        assert env["hf_dynmask_commit"].removesuffix("-dirty") == head[:12]
    else:
        assert env["hf_dynmask_commit"] is None
    assert env["pinned_cores"] and set(env["pinned_cores"]) <= set(range(os.cpu_count()))


def test_bench_environment_is_every_benchmarks_record(monkeypatch):
    """One environment record for every benchmark JSON (bench, bench-decoder and the scripts under benchmarks/): the
    same keys everywhere, and the allocator settings that move CPU timings read from the environment (a preloaded
    library by file name, glibc's MALLOC_* tunables, PyTorch's THP_MEM_ALLOC_ENABLE)."""
    from hf_dynmask.commands import bench
    from hf_dynmask.commands.bench import environment

    monkeypatch.setattr(bench, "loaded_allocator", lambda: "jemalloc")  # what /proc/self/maps would show
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "-1")
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    env = environment(torch.device("cpu"))
    assert set(env) == {
        "python", "torch", "transformers", "datasets", "numpy", "hf_dynmask", "hf_dynmask_commit", "platform",
        "cpu_model", "processor", "cpu_count", "pinned_cores", "torch_threads", "OMP_NUM_THREADS", "allocator",
        "device", "dtype",
    }  # fmt: skip
    assert env["allocator"] == {
        "LD_PRELOAD": "libjemalloc.so.2",
        "MALLOC_TRIM_THRESHOLD_": "-1",
        "THP_MEM_ALLOC_ENABLE": "1",
        "loaded": "jemalloc",
    }
    assert env["OMP_NUM_THREADS"] == "1" and env["device"] == "cpu" and env["cpu_model"]
    assert json.loads(json.dumps(env)) == env  # a JSON record as it is

    monkeypatch.setattr(bench, "loaded_allocator", lambda: None)
    for name in ("LD_PRELOAD", "MALLOC_TRIM_THRESHOLD_", "THP_MEM_ALLOC_ENABLE", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name)
    for name in [name for name in os.environ if name.startswith("MALLOC_")]:
        monkeypatch.delenv(name)
    env = environment(torch.device("cpu"))
    assert env["allocator"] == {} and env["OMP_NUM_THREADS"] is None  # the defaults

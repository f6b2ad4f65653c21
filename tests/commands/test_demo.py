"""``hf-dynmask demo`` as a writer: its output folder holds one complete run at every instant, an interrupted run
leaves the previous one complete and nothing that the next run does not clean, and bad output folders are refused
before any training.

The kill simulation is the ``kills`` fixture (``conftest.py``): from step ``k`` on every filesystem call
raises. The every-step test replays a real tiny run's files (copied into the demo's staging folder instead of
training again, which would take a second per step); two real runs are also killed at the swap itself.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from hf_dynmask.commands import cli, demo
from hf_dynmask.commands.demo import DemoSettings, run_demo

REPOSITORY = Path(__file__).resolve().parents[2]


def settings(output_dir: Path, seed: int = 0) -> DemoSettings:
    return DemoSettings.tiny(
        output_dir=output_dir,
        tokenizer="trained",
        modes=("packed",),
        mlm_maskings=("dynamic",),
        real_token_budget=1,
        corpus_limit=30,
        train_examples=8,
        eval_examples=4,
        seed=seed,
        plot=False,
        progress=False,
    )


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_complete_run(folder: Path) -> dict:
    """A demo folder holding one whole run: results.json and exactly the model folders it names, each loadable."""
    results = json.loads((folder / "results.json").read_text())
    names = {run["name"] for run in results["runs"]}
    assert {p.name for p in folder.iterdir()} == names | {"results.json"}
    for name in names:
        files = {p.name for p in (folder / name).iterdir()}
        assert {"config.json", "model.safetensors", "README.md", "modeling_dynmask.py", "tokenizer.json"} <= files
    return results


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory) -> dict[str, Path]:
    """Two real runs (seeds 0 and 1) of the smallest demo."""
    root = tmp_path_factory.mktemp("demo-snapshots")
    for seed in (0, 1):
        run_demo(settings(root / f"seed{seed}", seed=seed))
    return {"old": root / "seed0", "new": root / "seed1"}


def replay(snapshot: Path):
    """A stand-in for the demo's training that writes a real run's files into the staging folder."""

    def train_and_write(settings, staging, output_dir):
        for source in sorted(snapshot.rglob("*")):
            target = staging / source.relative_to(snapshot)
            if source.is_dir():
                target.mkdir()
            else:
                shutil.copyfile(source, target)
        return json.loads((snapshot / "results.json").read_text())

    return train_and_write


def test_demo_interrupted_at_every_step_keeps_a_complete_run(tmp_path, monkeypatch, kills, snapshots):
    old, new = tree(snapshots["old"]), tree(snapshots["new"])
    monkeypatch.setattr(demo, "_train_and_write", replay(snapshots["new"]))
    probe = tmp_path / "probe" / "out"
    shutil.copytree(snapshots["old"], probe)
    with monkeypatch.context() as patch:
        switch = kills.Switch(patch)
        run_demo(settings(probe))
    steps = switch.steps
    assert "_exchange" in steps or "rename" in steps
    for k in range(len(steps) + 1):
        out = tmp_path / f"kill-{k}" / "out"
        shutil.copytree(snapshots["old"], out)
        with monkeypatch.context() as patch:
            kills.Switch(patch, kill_at=k)
            try:
                run_demo(settings(out))
            except kills.Killed:
                pass
        assert tree(out) in (old, new), f"killed at step {k} ({steps[k] if k < len(steps) else 'end'})"
        run_demo(settings(out))  # the next run cleans what the kill left behind
        assert tree(out) == new
        assert [p.name for p in out.parent.iterdir()] == ["out"], k


@pytest.mark.parametrize("at", ["swap", "after-swap"])
def test_real_demo_killed_at_the_swap(tmp_path, monkeypatch, kills, snapshots, at):
    out = tmp_path / "out"
    shutil.copytree(snapshots["old"], out)
    old = tree(out)
    shutil.copytree(snapshots["old"], tmp_path / "probe")
    with monkeypatch.context() as patch:
        switch = kills.Switch(patch)
        run_demo(settings(tmp_path / "probe", seed=1))
        swap = next(i for i, step in enumerate(switch.steps) if step in ("_exchange", "rename"))
    with monkeypatch.context() as patch:
        kills.Switch(patch, kill_at=swap if at == "swap" else swap + 1)
        with pytest.raises(kills.Killed):
            run_demo(settings(out, seed=1))
    if at == "swap":
        assert tree(out) == old  # training done, killed at the swap: the previous run is intact
    else:
        assert assert_complete_run(out)["settings"]["seed"] == 1  # swapped: the new run is complete
        assert any(p.name.startswith(".out.") for p in tmp_path.iterdir())  # the old copy, not yet removed
    results = run_demo(settings(out, seed=1))
    assert assert_complete_run(out)["settings"]["seed"] == results["settings"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "probe"]


def test_output_dir_is_checked_before_training(tmp_path, monkeypatch):
    def never(*args):
        raise AssertionError("the demo trained before checking its output folder")

    monkeypatch.setattr(demo, "_train_and_write", never)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        run_demo(settings(tmp_path / "file"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match=r"holds other files \(thesis.tex\)"):
        run_demo(settings(tmp_path / "mine"))
    monkeypatch.chdir(tmp_path / "mine")
    with pytest.raises(ValueError, match="holds the current directory"):
        run_demo(settings(Path(".")))
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "years of work"


# -- the default output folder ---------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_default_output_folder_never_lands_in_a_checkout_unnoticed(tmp_path, monkeypatch, capsys):
    """./hf_dynmask_demo outside git checkouts, and inside one only where its .gitignore covers it; otherwise the
    demo asks for --output-dir (one line, exit status 1) and writes nothing."""
    (tmp_path / "plain").mkdir()
    monkeypatch.chdir(tmp_path / "plain")
    assert DemoSettings.tiny().output_dir == Path("hf_dynmask_demo")
    checkout = tmp_path / "checkout"
    (checkout / "src").mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=checkout, check=True, capture_output=True)
    monkeypatch.chdir(checkout / "src")
    with pytest.raises(ValueError, match=f"would land inside the git checkout {checkout}.*pass --output-dir DIR"):
        DemoSettings.tiny()
    assert DemoSettings.tiny(output_dir=tmp_path / "mine").output_dir == tmp_path / "mine"  # a folder given wins
    assert cli.main(["demo", "--tiny", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and "pass --output-dir DIR" in err
    assert not (checkout / "src" / "hf_dynmask_demo").exists()
    (checkout / ".gitignore").write_text("hf_dynmask_demo/\n")
    assert DemoSettings.tiny().output_dir == Path("hf_dynmask_demo")


@pytest.mark.skipif(shutil.which("git") is None or not (REPOSITORY / ".git").exists(), reason="needs a git checkout")
def test_the_readmes_demo_run_from_the_checkout_writes_to_an_ignored_folder(monkeypatch, capsys):
    """The README's set-up runs ``hf-dynmask demo`` from the repository root: this repository's .gitignore covers the
    default folder, and the README and ``--help`` say where the demo writes."""
    monkeypatch.chdir(REPOSITORY)
    assert DemoSettings.tiny().output_dir == Path("hf_dynmask_demo")
    setup = (REPOSITORY / "README.md").read_text().split("## Set-up")[1].split("\n## ")[0]
    assert "`./hf_dynmask_demo`" in setup and "`.gitignore`" in setup
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "./hf_dynmask_demo, except inside a git checkout whose .gitignore" in help_text


#: Words sharing many equally frequent pairs: tokenizers' own trainer picks among the tied merges in hash-map order,
#: which changed the vocabulary from one training to the next (huggingface/tokenizers#1794).
TIED_TEXTS = [" ".join(f"{a}{b}{c}{d}" for a in "pqrs" for b in "aeiou" for c in "tkln" for d in "yz")] * 2


def test_the_trained_tokenizer_is_the_same_every_time():
    vocabularies = {json.dumps(sorted(demo.train_tokenizer(TIED_TEXTS, vocab_size=150).get_vocab().items()))
                    for _ in range(4)}  # fmt: skip
    assert len(vocabularies) == 1

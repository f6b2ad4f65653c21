"""``python -m hf_dynmask.run``: a stock script that never imports hf_dynmask runs with ``dynmask_varlen``.

The script is a stand-in for transformers' ``run_clm.py``: it loads a stock Llama folder whose ``config.json`` names
``"attn_implementation": "dynmask_varlen"`` (and takes ``--attn_implementation`` too), imports a helper module next
to it (as ``run_qa.py`` imports ``utils_qa``) and runs a packed forward. Each run is a fresh interpreter on this
checkout's code (``PYTHONPATH``), so it proves what a user's command line does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from transformers import LlamaConfig

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, sys

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from helper import ARGUMENT  # a module next to the script

assert "hf_dynmask" not in sys.argv[0]
folder, out, *rest = sys.argv[1:]
config = AutoConfig.from_pretrained(folder, **({"attn_implementation": rest[1]} if rest else {}))
model = AutoModelForCausalLM.from_config(config).eval()
ids = torch.tensor([[5, 6, 7, 8, 9]])
with torch.no_grad():
    packed = model(input_ids=ids, position_ids=torch.tensor([[0, 1, 0, 1, 2]])).logits
    alone = torch.cat([model(input_ids=ids[:, :2]).logits, model(input_ids=ids[:, 2:]).logits], dim=1)
json.dump(
    {
        "name": __name__,
        "argv": sys.argv,
        "helper": ARGUMENT,
        "attn": model.config._attn_implementation,
        "max_difference": (packed - alone).abs().max().item(),
    },
    open(out, "w"),
)
"""


@pytest.fixture
def script(tmp_path) -> Path:
    folder = tmp_path / "llama"
    LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1,
    ).save_pretrained(folder)  # fmt: skip
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "attn_implementation": "dynmask_varlen"}))
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "helper.py").write_text("ARGUMENT = 'from the helper'\n")
    (scripts / "run_tiny.py").write_text(textwrap.dedent(SCRIPT))
    return scripts / "run_tiny.py"


def run(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *arguments], cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_without_the_launcher_the_stock_script_fails(script, tmp_path):
    done = run(str(script), str(tmp_path / "llama"), str(tmp_path / "out.json"), cwd=tmp_path)
    assert done.returncode != 0
    assert "dynmask_varlen" in done.stderr and "is not supported" in done.stderr


@pytest.mark.parametrize("from_argument", [False, True], ids=["config_json", "argument"])
def test_the_launcher_runs_a_stock_script_on_dynmask_varlen(script, tmp_path, from_argument):
    folder, out = tmp_path / "llama", tmp_path / "out.json"
    if from_argument:  # the folder says sdpa; the script's --attn_implementation picks dynmask_varlen
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "attn_implementation": "sdpa"}))
    extra = ["--attn_implementation", "dynmask_varlen"] if from_argument else []
    done = run("-m", "hf_dynmask.run", str(script), str(folder), str(out), *extra, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["name"] == "__main__"
    assert result["argv"] == [str(script), str(folder), str(out), *extra]
    assert result["helper"] == "from the helper"
    assert result["attn"] == "dynmask_varlen"
    assert result["max_difference"] < 1e-5  # the packed row's sequences stayed apart


def test_the_launcher_runs_a_module_and_passes_the_exit_status(script, tmp_path):
    (tmp_path / "failing.py").write_text("import sys\nsys.exit(3 if sys.argv[1:] == ['--flag'] else 0)\n")
    assert run("-m", "hf_dynmask.run", "-m", "failing", "--flag", cwd=tmp_path).returncode == 3
    assert run("-m", "hf_dynmask.run", str(tmp_path / "failing.py"), "--flag", cwd=tmp_path).returncode == 3
    usage = run("-m", "hf_dynmask.run", cwd=tmp_path)
    assert usage.returncode == 2 and "usage: python -m hf_dynmask.run" in usage.stderr
    missing = run("-m", "hf_dynmask.run", str(tmp_path / "missing.py"), cwd=tmp_path)
    assert missing.returncode == 2 and "no script" in missing.stderr

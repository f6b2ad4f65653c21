"""run_clm.py with a stock Llama folder whose ``config.json`` names ``"attn_implementation": "dynmask_varlen"``.

scitldr abstracts tokenized, concatenated and cut into blocks of 32 tokens (labels = inputs), the script's
``default_data_collator``, a tiny grouped-query Llama (4 query heads on 2 key/value heads), dropout 0, the same seed.
The folder loads on ``dynmask_varlen`` where hf_dynmask is imported: here the test process, and for a stock script
the launcher, ``python -m hf_dynmask.run <script> ...`` (run here on a stand-in that never imports hf_dynmask). Its
rows are full blocks with an all-ones mask, which ``dynmask_varlen`` hands to the stock SDPA path. The loss at every
logged step within 1e-5 of the stock folder's on ``sdpa``, the same token accuracy, perplexity and parameters.
``test_reload.py`` loads the trained folder without the plugin (``save_pretrained`` does not write
``attn_implementation`` back, so it loads on ``sdpa``) and checks that the original folder needs it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_trains_and_evaluates_as_stock(scripts, clm_runs):
    dynmask, stock = clm_runs["clm", "dynmask"], clm_runs["clm", "stock"]
    assert type(dynmask.model).__name__ == type(stock.model).__name__ == "LlamaForCausalLM"
    assert dynmask.model.config._attn_implementation == "dynmask_varlen"
    assert stock.model.config._attn_implementation == "sdpa"
    scripts.assert_same_run(dynmask, stock, clm_runs.steps, exact_metrics=("eval_accuracy",))
    assert math.isclose(dynmask.metrics["perplexity"], stock.metrics["perplexity"], rel_tol=1e-5)
    scripts.assert_same_parameters(dynmask.model, stock.model, atol=scripts.TRAINED_ATOL)


#: A stand-in for run_clm.py and TRL's sft.py that never imports hf_dynmask: the acceptance suite's re-written
#: scripts on the folder that names dynmask_varlen, run through the launcher.
LAUNCHED = """
import json, sys
from pathlib import Path

import importlib.util
import torch

torch.set_num_threads(1)
scripts_path, folder, out = sys.argv[1:4]
spec = importlib.util.spec_from_file_location("acceptance_scripts", scripts_path)
scripts = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = scripts
spec.loader.exec_module(scripts)
root = Path(out).parent
clm = scripts.train_and_evaluate(scripts.run_clm(Path(folder)), root / "clm", scripts.Training(4))
sft = scripts.sft(Path(folder), root / "sft", "padding_free", scripts.Training(max_steps=4, batch_size=4))
json.dump(
    {
        "name": __name__,
        "imported_by_the_launcher": "hf_dynmask" in sys.modules,
        "attn": [clm.model.config._attn_implementation, sft.model.config._attn_implementation],
        "clm_losses": clm.losses,
        "sft_losses": sft.losses,
    },
    open(out, "w"),
)
"""


def test_run_clm_and_sft_through_the_launcher(scripts, clm_runs, sft_runs, llama_folders, tmp_path):
    """``python -m hf_dynmask.run <script> ...``: a script that never imports hf_dynmask trains the folder that names
    ``dynmask_varlen`` on it, with the losses of the in-process runs (run_clm here, TRL's padding-free run in
    ``test_sft.py``)."""
    (tmp_path / "run_stand_in.py").write_text(LAUNCHED)
    out = tmp_path / "out.json"
    arguments = [str(tmp_path / "run_stand_in.py"), str(scripts.__file__), str(llama_folders.dynmask), str(out)]
    env = {**os.environ, "PYTHONPATH": str(scripts.ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "hf_dynmask.run", *arguments],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["name"] == "__main__" and result["imported_by_the_launcher"]
    assert result["attn"] == ["dynmask_varlen", "dynmask_varlen"]
    in_process = sft_runs["padding_free"]["padding_free", "dynmask"]
    for launched, run in ((result["clm_losses"], clm_runs["clm", "dynmask"]), (result["sft_losses"], in_process)):
        assert len(launched) == len(run.losses)
        assert max(abs(a - b) for a, b in zip(launched, run.losses, strict=True)) <= 1e-5

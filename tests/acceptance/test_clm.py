"""run_clm.py with a stock Llama folder whose ``config.json`` names ``"attn_implementation": "dynmask_varlen"``.

scitldr abstracts tokenized, concatenated and cut into blocks of 32 tokens (labels = inputs), the script's
``default_data_collator``, a tiny grouped-query Llama (4 query heads on 2 key/value heads), dropout 0, the same seed.
The folder loads on ``dynmask_varlen`` where hf_dynmask is imported (here the test process; a stock script needs the
import, see the README). Its rows are full blocks with an all-ones mask, which ``dynmask_varlen`` hands to the stock
SDPA path. The loss at every logged step within 1e-5 of the stock folder's on ``sdpa``, the same token accuracy,
perplexity and parameters. ``test_reload.py`` loads the trained folder without the plugin (``save_pretrained`` does
not write ``attn_implementation`` back, so it loads on ``sdpa``) and checks that the original folder needs it.
"""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_trains_and_evaluates_as_stock(scripts, clm_runs):
    dynmask, stock = clm_runs["clm", "dynmask"], clm_runs["clm", "stock"]
    assert type(dynmask.model).__name__ == type(stock.model).__name__ == "LlamaForCausalLM"
    assert dynmask.model.config._attn_implementation == "dynmask_varlen"
    assert stock.model.config._attn_implementation == "sdpa"
    scripts.assert_same_run(dynmask, stock, clm_runs.steps, exact_metrics=("eval_accuracy",))
    assert math.isclose(dynmask.metrics["perplexity"], stock.metrics["perplexity"], rel_tol=1e-5)
    scripts.assert_same_parameters(dynmask.model, stock.model, atol=1e-6)

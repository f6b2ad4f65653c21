"""run_mlm.py with a folder saved by hf_dynmask (``--model_name_or_path <folder> --trust_remote_code``).

banking77 texts, a tiny BERT with its MLM head and the DynMask masked LM saved from it, dropout 0, the same seed, the
script's ``DataCollatorForLanguageModeling`` (15% of tokens masked from torch's global generator, so both runs draw
the same masks only if neither model draws random numbers of its own). ``--line_by_line`` (one text a row, padded
per batch) and the default grouping into blocks (no padding): the loss at every logged step within 1e-5 of stock's,
the same masked-token accuracy, perplexity and predicted tokens. The saved folders are reloaded without the plugin in
``test_reload.py``.
"""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("variant", ["line-by-line", "grouped"])
def test_trains_and_evaluates_as_stock(scripts, mlm_runs, variant):
    dynmask, stock = mlm_runs[variant, "dynmask"], mlm_runs[variant, "stock"]
    assert type(stock.model).__name__ == "BertForMaskedLM"
    assert type(dynmask.model).__name__ == "DynMaskForMaskedLM"
    scripts.assert_same_run(dynmask, stock, mlm_runs.steps, exact_metrics=("eval_accuracy",))
    assert math.isclose(dynmask.metrics["perplexity"], stock.metrics["perplexity"], rel_tol=1e-5)
    scripts.assert_close_at_real_tokens(dynmask.predictions, stock.predictions, stock.prepared.eval_dataset, atol=0)

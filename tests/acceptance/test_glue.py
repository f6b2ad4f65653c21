"""run_glue.py with a folder saved by hf_dynmask (``--model_name_or_path <folder> --trust_remote_code``).

sms_spam (ham or spam, long-tailed lengths), a tiny BERT and the DynMask encoder saved from it, dropout 0, the same
seed. Per-batch padding (the Trainer's ``DataCollatorWithPadding``) and ``--pad_to_max_length``
(``default_data_collator``): the loss at every logged step within 1e-5 of stock's, the same accuracy and logits.
The saved folders are reloaded without the plugin in ``test_reload.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("variant", ["per-batch", "max-length"])
def test_trains_and_evaluates_as_stock(scripts, glue_runs, variant):
    dynmask, stock = glue_runs[variant, "dynmask"], glue_runs[variant, "stock"]
    assert type(stock.model).__name__ == "BertForSequenceClassification"
    assert type(dynmask.model).__name__ == "DynMaskForSequenceClassification"
    assert dynmask.model.config.masking == "dynamic"
    scripts.assert_same_run(dynmask, stock, glue_runs.steps, exact_metrics=("eval_accuracy",))
    np.testing.assert_allclose(dynmask.predictions, stock.predictions, atol=1e-5, rtol=0)

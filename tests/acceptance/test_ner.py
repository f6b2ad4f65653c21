"""run_ner.py with a folder saved by hf_dynmask (``--model_name_or_path <folder> --trust_remote_code``).

wnut17 (13 BIO tags), a tiny BERT and the DynMask encoder saved from it, dropout 0, the same seed, the script's
``DataCollatorForTokenClassification`` (labels padded with -100): the loss at every logged step within 1e-5 of
stock's, the same seqeval scores and the same logits at real tokens. The saved folder is reloaded without the
plugin in ``test_reload.py``.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_trains_and_evaluates_as_stock(scripts, ner_runs):
    dynmask, stock = ner_runs["ner", "dynmask"], ner_runs["ner", "stock"]
    assert type(stock.model).__name__ == "BertForTokenClassification"
    assert type(dynmask.model).__name__ == "DynMaskForTokenClassification"
    metrics = ("eval_overall_precision", "eval_overall_recall", "eval_overall_f1", "eval_overall_accuracy")
    scripts.assert_same_run(dynmask, stock, ner_runs.steps, exact_metrics=metrics)
    scripts.assert_close_at_real_tokens(dynmask.predictions, stock.predictions, stock.prepared.eval_dataset)

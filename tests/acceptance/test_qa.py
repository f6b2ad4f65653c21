"""run_qa.py with a folder saved by hf_dynmask (``--model_name_or_path <folder> --trust_remote_code``).

squad_v1: question + context windows of 96 tokens with ``--doc_stride 32`` and offset mappings, a tiny BERT and the
DynMask encoder saved from it, dropout 0, the same seed; ``--pad_to_max_length`` (run_qa's default:
``default_data_collator``) and per-batch padding (``DataCollatorWithPadding``); answers post-processed from the
windows' start / end logits and scored with SQuAD's exact match and F1.

The DynMask QA head leaves padding out of the start / end softmax by default; stock BERT scores the padding
positions too, so its loss grows with the padding of the batch. Stated here as what is tested:

- with ``qa_padding="scored"`` and static masking saved in the folder (the stock-parity setting), the DynMask run
  equals plain stock's: the loss at every step within 1e-5, the same answers, EM and F1, the same logits at real
  tokens;
- by default, the DynMask run equals, step by step, a stock run whose loss leaves padding out (a Trainer with that
  loss): the loss within 1e-5, the same answers, EM and F1, the same start / end distributions over real tokens;
- against plain stock, the default's first loss is lower (stock's softmax also spreads probability over padding).

The saved folders are reloaded without the plugin in ``test_reload.py``.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

VARIANTS = ["max-length", "per-batch"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_stock_parity_setting_trains_as_plain_stock(scripts, qa_runs, variant):
    parity, stock = qa_runs[variant, "dynmask-stock-parity"], qa_runs[variant, "stock"]
    assert type(parity.model).__name__ == "DynMaskForQuestionAnswering"
    assert (parity.model.config.qa_padding, parity.model.config.masking) == ("scored", "static")
    scripts.assert_same_run(parity, stock, qa_runs.steps, exact_metrics=("exact_match", "f1"))
    for parity_logits, stock_logits in zip(parity.predictions, stock.predictions, strict=True):
        scripts.assert_close_at_real_tokens(parity_logits, stock_logits, stock.prepared.eval_dataset)


@pytest.mark.parametrize("variant", VARIANTS)
def test_default_trains_as_stock_with_padding_left_out_of_the_softmax(scripts, qa_runs, variant):
    dynmask, reference = qa_runs[variant, "dynmask"], qa_runs[variant, "stock-padding-left-out"]
    assert type(reference.model).__name__ == "BertForQuestionAnswering"
    assert dynmask.model.config.qa_padding == "masked"
    scripts.assert_same_run(dynmask, reference, qa_runs.steps, exact_metrics=("exact_match", "f1"))
    for dynmask_logits, stock_logits in zip(dynmask.predictions, reference.predictions, strict=True):
        scripts.assert_close_at_real_tokens(
            dynmask_logits, stock_logits, reference.prepared.eval_dataset, log_softmax=True
        )


@pytest.mark.parametrize("variant", VARIANTS)
def test_default_differs_from_plain_stock_by_the_padding_scores(qa_runs, variant):
    dynmask, stock = qa_runs[variant, "dynmask"], qa_runs[variant, "stock"]
    masks = stock.prepared.train_dataset["attention_mask"]
    assert min(map(sum, masks)) < max(map(len, masks))  # some windows are shorter: batches carry padding
    # Stock spreads probability over the padding positions too: its cross-entropy is never lower, and here higher.
    assert stock.losses[0] > dynmask.losses[0] + 1e-3

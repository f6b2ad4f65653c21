"""run_summarization.py with a folder saved by hf_dynmask (``--model_name_or_path <folder> --trust_remote_code``).

scitldr_a (abstract -> one-sentence TLDR), a WordPiece tokenizer trained on it, a tiny stock BART and the DynMask
seq2seq folder saved from it, dropout 0, the same seed, the script's ``DataCollatorForSeq2Seq(model=model)`` and
``Seq2SeqTrainer`` with ``--predict_with_generate``: the loss at every logged step within 1e-5 of stock's, the
parameters after 3 steps and the saved weights within ``TRAINED_ATOL`` (1e-5), the same generated summaries and
score (chrF stands in for upstream's ROUGE, which ``evaluate`` would fetch from the Hub). The saved folder
is reloaded without the plugin in ``test_reload.py``.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_trains_generates_and_scores_as_stock(scripts, summarization_runs):
    dynmask, stock = summarization_runs["bart", "dynmask"], summarization_runs["bart", "stock"]
    assert type(stock.model).__name__ == "BartForConditionalGeneration"
    assert type(dynmask.model).__name__ == "DynMaskSeq2SeqForConditionalGeneration"
    scripts.assert_same_run(dynmask, stock, summarization_runs.steps, exact_metrics=("eval_chrf", "eval_gen_len"))
    assert (dynmask.predictions == stock.predictions).all()  # the generated tokens
    scripts.assert_same_parameters(dynmask.model, stock.model, atol=scripts.TRAINED_ATOL)
    scripts.assert_same_saved_weights(dynmask.saved, stock.saved, atol=scripts.TRAINED_ATOL)

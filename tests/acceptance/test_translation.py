"""run_translation.py with folders saved by hf_dynmask (``--model_name_or_path <folder> --trust_remote_code``).

ntrex_en_de (English -> German), a WordPiece tokenizer trained on it, tiny stock Marian and BART checkpoints and the
DynMask seq2seq folders saved from them, dropout 0, the same seed, ``Seq2SeqTrainer`` with
``--predict_with_generate`` (beam search). The script's ``DataCollatorForSeq2Seq(model=model)`` (labels padded with
-100, ``decoder_input_ids`` from the model, no decoder mask) and, for BART, ``--pad_to_max_length``
(``default_data_collator``; the model shifts the labels itself): the loss at every logged step within 1e-5 of
stock's, the parameters after 3 steps and the saved weights within ``TRAINED_ATOL`` (1e-5: AdamW magnifies rounding
noise; a position table left frozen would be 100 times further), the same generated tokens and BLEU. The
saved folders are reloaded without the plugin in ``test_reload.py``.

Marian's sinusoidal position tables train as stock's do: transformers 5.25 builds them frozen and ``from_pretrained``
makes them trainable, and the LM model's ``save_pretrained`` leaves them out (so the saved folder holds what stock's
holds, and a reloaded model has its tables back at the sinusoids).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

METRICS = ("eval_bleu", "eval_gen_len")


@pytest.mark.parametrize("variant", ["marian", "bart", "bart-max-length"])
def test_trains_generates_scores_and_saves_as_stock(scripts, translation_runs, variant):
    dynmask, stock = translation_runs[variant, "dynmask"], translation_runs[variant, "stock"]
    stock_class = "MarianMTModel" if variant == "marian" else "BartForConditionalGeneration"
    assert type(stock.model).__name__ == stock_class
    assert type(dynmask.model).__name__ == "DynMaskSeq2SeqForConditionalGeneration"
    scripts.assert_same_run(dynmask, stock, translation_runs.steps, exact_metrics=METRICS)
    assert (dynmask.predictions == stock.predictions).all()  # the generated tokens
    # after 3 steps, position tables included
    scripts.assert_same_parameters(dynmask.model, stock.model, atol=scripts.TRAINED_ATOL)
    scripts.assert_same_saved_weights(dynmask.saved, stock.saved, atol=scripts.TRAINED_ATOL)


def test_marian_trains_its_position_tables_as_stock_does(scripts, translation_runs):
    dynmask, stock = translation_runs["marian", "dynmask"], translation_runs["marian", "stock"]
    for run in (dynmask, stock):
        tables = {name: value for name, value in run.model.named_parameters() if "embed_positions" in name}
        assert len(tables) == 2 and all(value.requires_grad for value in tables.values())
    # The tables moved far beyond the tolerance of the parameter comparison, so a frozen table would fail it.
    sinusoids = type(stock.model)(stock.model.config).model  # built from a config: the untrained tables
    for side in ("encoder", "decoder"):
        trained = getattr(stock.model.model, side).embed_positions.weight
        moved = (trained - getattr(sinusoids, side).embed_positions.weight).abs().max().item()
        assert moved > 100 * scripts.TRAINED_ATOL, (side, moved)

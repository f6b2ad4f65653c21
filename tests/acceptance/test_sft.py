"""TRL's ``sft.py``: ``SFTTrainer(model=<folder>, args=SFTConfig(...))`` with packing or padding-free batches.

scitldr TLDRs (a ``text`` column), a tiny grouped-query Llama whose ``config.json`` names
``"attn_implementation": "dynmask_varlen"`` (TRL loads it from the folder with ``trust_remote_code=True``), dropout
0, the same seed. The reference is TRL's padded batches on the stock folder (``sdpa``), each sequence exact on its
own. ``packing=True`` (best-fit decreasing; one step holds every pack, so each step sees the same examples as the
reference's one batch of all of them) and ``padding_free=True`` (the reference's batches, flattened): the loss at
every logged step within 1e-5, the same evaluation loss and token accuracy. The saved folders are reloaded without
the plugin in ``test_reload.py``.
"""

from __future__ import annotations

import pytest

pytest.importorskip("trl")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("mode", ["packing", "padding_free"])
def test_trains_as_the_padded_stock_run(scripts, sft_runs, mode):
    runs = sft_runs[mode]
    dynmask, stock = runs[mode, "dynmask"], runs[mode, "stock-padded"]
    assert dynmask.model.config._attn_implementation == "dynmask_varlen"
    assert stock.model.config._attn_implementation == "sdpa"
    assert dynmask.prepared.data_collator.padding_free
    if mode == "packing":
        assert len(dynmask.prepared.train_dataset) < len(stock.prepared.train_dataset)  # several examples a pack
    scripts.assert_same_run(dynmask, stock, runs.steps, exact_metrics=("eval_num_tokens",))
    assert abs(dynmask.metrics["eval_mean_token_accuracy"] - stock.metrics["eval_mean_token_accuracy"]) <= 1e-6

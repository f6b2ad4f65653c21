"""Every folder the acceptance runs saved (``trainer.save_model``) loads where hf_dynmask cannot be imported.

One fresh Python, in which ``import hf_dynmask`` fails (``tests/conftest.py``'s ``run_without_plugin``), loads each
DynMask run's folder as a user without the plugin does: the script's Auto class and ``AutoTokenizer`` with
``trust_remote_code=True``. On a batch of the script's own collator (a padded batch for TRL's, whose packs the
reloaded ``sdpa`` model is not asked to take) it gives the trained model's outputs, generates its tokens (seq2seq),
and its tokenizer loads without a prompt (``trust_remote_code`` True or False) and tokenizes as the run's. One
process for all of them: starting one that imports transformers costs
more than the checks it runs.
"""

from __future__ import annotations

import pytest
import transformers

pytestmark = pytest.mark.usefixtures("one_thread")

SEQ2SEQ = ("AutoModelForSeq2SeqLM", "modeling_dynmask_seq2seq.DynMaskSeq2SeqForConditionalGeneration")
LLAMA = ("AutoModelForCausalLM", "transformers.models.llama.modeling_llama.LlamaForCausalLM")
#: runs fixture -> (the script's Auto class, the class the child gets (its end), texts for the tokenizer).
SCRIPTS = {
    "glue_runs": ("AutoModelForSequenceClassification", "modeling_dynmask.DynMaskForSequenceClassification", "sms"),
    "ner_runs": ("AutoModelForTokenClassification", "modeling_dynmask.DynMaskForTokenClassification", "wnut"),
    "qa_runs": ("AutoModelForQuestionAnswering", "modeling_dynmask.DynMaskForQuestionAnswering", "squad"),
    "mlm_runs": ("AutoModelForMaskedLM", "modeling_dynmask.DynMaskForMaskedLM", "banking"),
    "translation_runs": (*SEQ2SEQ, "ntrex"),
    "summarization_runs": (*SEQ2SEQ, "scitldr"),
    "clm_runs": (*LLAMA, "scitldr"),
    "sft_runs": (*LLAMA, "scitldr"),
}
#: name -> (runs fixture, variant): every DynMask run of the suite.
RELOADS = {
    "glue-per-batch": ("glue_runs", "per-batch"),
    "glue-max-length": ("glue_runs", "max-length"),
    "ner": ("ner_runs", "ner"),
    "qa-max-length": ("qa_runs", "max-length"),
    "qa-per-batch": ("qa_runs", "per-batch"),
    "mlm-line-by-line": ("mlm_runs", "line-by-line"),
    "mlm-grouped": ("mlm_runs", "grouped"),
    "translation-marian": ("translation_runs", "marian"),
    "translation-bart": ("translation_runs", "bart"),
    "translation-bart-max-length": ("translation_runs", "bart-max-length"),
    "summarization": ("summarization_runs", "bart"),
    "clm": ("clm_runs", "clm"),
    "sft-packing": ("sft_runs", "packing"),
    "sft-padding-free": ("sft_runs", "padding_free"),
}
#: Runs whose saved folder leaves out what training changed, as stock's does: Marian's LM model does not save its
#: (trained) sinusoidal position tables, so a reloaded model has them back at the sinusoids.
SAVES_LEAVE_OUT_TRAINED = {"translation-marian"}
TEXTS = {
    "sms": ["Ok lar... Joking wif u oni...", "WINNER!! You have been selected to receive a prize."],
    "wnut": ["@paulwalk It 's the view from where I 'm living", "Empire State Building = ESB"],
    "squad": ["Which NFL team represented the AFC at Super Bowl 50?", "Denver Broncos"],
    "banking": ["I am still waiting on my card?", "What can I do if my card still hasn't arrived after 2 weeks?"],
    "ntrex": ["Welsh AMs worried about 'looking like muppets'", "Mitglieder der Nationalversammlung für Wales"],
    "scitldr": ["We study the landscape of linear neural networks.", "A characterization of critical points."],
}
GENERATE = dict(max_new_tokens=6, num_beams=2)


def dynmask_run(request, name: str):
    fixture, variant = RELOADS[name]
    runs = request.getfixturevalue(fixture)
    return runs[variant][variant, "dynmask"] if fixture == "sft_runs" else runs[variant, "dynmask"]


@pytest.fixture(scope="module")
def reloaded(request, scripts, llama_folders, run_without_plugin, tmp_path_factory):
    """``(items, child)``: each reload's spec item and the child's results (name -> what it loaded and computed)."""
    root = tmp_path_factory.mktemp("reload")
    items = {}
    for name, (fixture, _) in RELOADS.items():
        auto_class, _, texts = SCRIPTS[fixture]
        run = dynmask_run(request, name)
        options = {}
        if fixture == "sft_runs":  # TRL's collator packs; the reloaded sdpa model gets a padded batch
            batch = run.prepared.tokenizer(TEXTS[texts], padding=True, return_tensors="pt")
            options["batch"] = batch | {"labels": batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)}
        if auto_class == SEQ2SEQ[0]:
            options["generate"] = GENERATE
        if name == "clm":  # the folder the run started from names dynmask_varlen
            options["plain_load"] = llama_folders.dynmask
        items[name] = scripts.reload_item(run, auto_class, root / name, TEXTS[texts], **options)
    return items, run_without_plugin(root, scripts.RELOAD_CHILD, {"folders": items})


@pytest.mark.parametrize("name", RELOADS)
def test_saved_folder_loads_and_predicts_without_the_plugin(request, scripts, reloaded, name):
    items, child = reloaded
    run = dynmask_run(request, name)
    assert child["dynmask_modules"] == []
    _, loaded_class, texts = SCRIPTS[RELOADS[name][0]]
    assert child[name]["class"].endswith(loaded_class)
    saved = None
    if name in SAVES_LEAVE_OUT_TRAINED:  # the reference is the saved folder loaded here, with hf_dynmask
        saved = getattr(transformers, SCRIPTS[RELOADS[name][0]][0]).from_pretrained(run.saved)
    reference = scripts.reference_outputs(run, items[name], saved)
    scripts.assert_reloaded(child[name], reference, run.prepared.tokenizer, TEXTS[texts])


def test_a_folder_naming_dynmask_varlen_needs_the_plugin(reloaded):
    """run_clm's input folder names the backend in its config: without hf_dynmask imported it does not load (as
    expected: the backend is hf_dynmask's; ``test_clm.py`` runs the script through ``python -m hf_dynmask.run``). The
    trained folder does (``save_pretrained`` does not write the name back)."""
    _, child = reloaded
    assert child["clm"]["attn_implementation"] == "sdpa"
    assert "dynmask_varlen" in child["clm"]["plain_load"] and "is not supported" in child["clm"]["plain_load"]

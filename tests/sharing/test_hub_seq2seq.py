"""Saving DynMask's encoder-decoder family with its code: the folder loads where hf_dynmask cannot be imported.

A tiny Marian-style model (separate source / target vocabularies) and a BART-style one are trained two steps, saved
with ``save_with_code``, and loaded in ONE fresh Python process in which ``import hf_dynmask`` fails, through
``AutoModelForSeq2SeqLM`` / ``AutoModel`` with ``trust_remote_code=True``. Its outputs on padded and packed batches,
and its generated tokens, must equal the parent's bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import hf_dynmask
from hf_dynmask import DynMaskSeq2SeqConfig, DynMaskSeq2SeqForConditionalGeneration, make_collator
from hf_dynmask.sharing.hub import auto_map, save_with_code

CODE_FILES = (
    "attention.py",
    "backends.py",
    "batch.py",
    "configuration_dynmask.py",
    "configuration_dynmask_seq2seq.py",
    "families.py",
    "input_checks.py",
    "layout.py",
    "masks.py",
    "modeling_dynmask_seq2seq.py",
    "outputs.py",
    "saving.py",
    "stock.py",
)
EXPECTED_AUTO_MAP = {
    "AutoConfig": "configuration_dynmask_seq2seq.DynMaskSeq2SeqConfig",
    "AutoModel": "modeling_dynmask_seq2seq.DynMaskSeq2SeqModel",
    "AutoModelForSeq2SeqLM": "modeling_dynmask_seq2seq.DynMaskSeq2SeqForConditionalGeneration",
}
SIZES = dict(
    vocab_size=40,
    d_model=16,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=2,
    decoder_attention_heads=4,
    encoder_ffn_dim=24,
    decoder_ffn_dim=20,
    max_position_embeddings=32,
    dropout=0.0,
)
CONFIGS = {
    "marian": dict(
        seq2seq_style="marian",
        share_encoder_decoder_embeddings=False,
        decoder_vocab_size=30,
        pad_token_id=29,
        decoder_start_token_id=29,
        eos_token_id=0,
        forced_eos_token_id=0,
        scale_embedding=True,
        masking="static",
    ),
    "bart": dict(seq2seq_style="bart", pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2),
}
PAIRS = [([5, 6, 7, 8, 9, 3], [4, 5, 6]), ([10, 3], [7, 8, 9, 10, 11]), ([11, 12, 13, 3], [12])]


def batches(config) -> dict[str, dict]:
    tokenizer = SimpleNamespace(
        pad_token_id=config.pad_token_id, padding_side="right", truncation_side="right", pad_token_type_id=0
    )
    features = [{"input_ids": source, "labels": target} for source, target in PAIRS]
    start = config.decoder_start_token_id
    return {
        mode: make_collator(tokenizer, "seq2seq", mode=mode, decoder_start_token_id=start)(features)
        for mode in ("dynamic", "packed")
    }


def trained(name: str) -> DynMaskSeq2SeqForConditionalGeneration:
    torch.manual_seed(0)
    model = DynMaskSeq2SeqForConditionalGeneration(DynMaskSeq2SeqConfig(**SIZES, **CONFIGS[name]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        model(**batches(model.config)["dynamic"]).loss.backward()
        optimizer.step()
    return model.eval()


def outputs(model) -> dict[str, torch.Tensor]:
    results = {}
    with torch.no_grad():
        for mode, batch in batches(model.config).items():
            out = model(**batch)
            results[f"{mode}_logits"], results[f"{mode}_loss"] = out.logits, out.loss
        batch = batches(model.config)["dynamic"]
        results["generated"] = model.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=6, num_beams=2
        )
    return results


# The child's body (conftest.run_without_plugin runs it where hf_dynmask cannot be imported).
CHILD = """
    for name, folder in spec["folders"].items():
        batches = torch.load(spec["batches"][name])
        model = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True)
        base = transformers.AutoModel.from_pretrained(folder, trust_remote_code=True)
        out = {"class": type(model).__module__ + "." + type(model).__name__, "base": type(base).__name__}
        with torch.no_grad():
            for mode, batch in batches.items():
                result = model(**batch)
                out[f"{mode}_logits"], out[f"{mode}_loss"] = result.logits, result.loss
            batch = batches["dynamic"]
            out["generated"] = model.generate(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=6, num_beams=2
            )
        results[name] = out
    """


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub_seq2seq")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        models = {name: trained(name) for name in CONFIGS}
        saves = {name: save_with_code(model, root / name) for name, model in models.items()}
        reference = {name: outputs(model) for name, model in models.items()}
    finally:
        torch.set_num_threads(threads)
    for name, model in models.items():
        torch.save(batches(model.config), root / f"{name}_batches.pt")
    return SimpleNamespace(root=root, models=models, saves=saves, reference=reference)


@pytest.fixture(scope="module")
def loaded(saved, run_without_plugin):
    spec = {
        "folders": {name: str(save.directory) for name, save in saved.saves.items()},
        "batches": {name: str(saved.root / f"{name}_batches.pt") for name in saved.saves},
    }
    return run_without_plugin(saved.root, CHILD, spec)


def test_auto_map_of_the_seq2seq_family():
    assert auto_map(DynMaskSeq2SeqConfig) == EXPECTED_AUTO_MAP
    registered = {auto.__name__ for auto in hf_dynmask.modeling.auto.SEQ2SEQ_AUTO_CLASSES} | {"AutoConfig"}
    assert set(EXPECTED_AUTO_MAP) == registered


def test_saved_folder_holds_weights_config_and_code(saved):
    for name, result in saved.saves.items():
        folder = result.directory
        assert result.code_files == CODE_FILES
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            [*CODE_FILES, "config.json", "generation_config.json", "model.safetensors"]
        )
        config = json.loads((folder / "config.json").read_text())
        assert config["auto_map"] == EXPECTED_AUTO_MAP
        assert config["model_type"] == "dynmask_seq2seq" and config["seq2seq_style"] == name
        for code_file in CODE_FILES:  # byte-for-byte copies of the package's modules
            source = Path(hf_dynmask.__file__).parent / "modeling" / code_file
            assert (folder / code_file).read_bytes() == source.read_bytes()


def test_plain_save_pretrained_ships_the_code_too(saved, tmp_path):
    """model.save_pretrained (what push_to_hub and the Trainers call) writes the same loadable folder."""
    for name, model in saved.models.items():
        folder = tmp_path / name
        model.save_pretrained(folder)
        assert sorted(p.name for p in folder.glob("*.py")) == sorted(CODE_FILES)
        assert json.loads((folder / "config.json").read_text())["auto_map"] == EXPECTED_AUTO_MAP


def test_fresh_process_without_hf_dynmask_gives_the_same_outputs_and_tokens(saved, loaded):
    assert loaded["dynmask_modules"] == []
    for name, reference in saved.reference.items():
        child = loaded[name]
        assert not child["class"].startswith("hf_dynmask")
        assert child["class"].endswith("modeling_dynmask_seq2seq.DynMaskSeq2SeqForConditionalGeneration")
        assert child["base"] == "DynMaskSeq2SeqModel"
        for key, value in reference.items():
            assert torch.equal(child[key], value), (name, key)


def test_other_models_are_refused(tmp_path):
    from transformers import BartConfig, BartForConditionalGeneration

    stock = BartForConditionalGeneration(BartConfig(**SIZES))
    with pytest.raises(ValueError, match="ship the DynMask families' code"):
        save_with_code(stock, tmp_path)

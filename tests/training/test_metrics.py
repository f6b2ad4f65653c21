"""hf_dynmask.training.metrics (offline metric scripts, loaded by path) and .evaluation (compute_metrics)."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import textwrap
import types
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import EvalPrediction
from transformers.trainer_pt_utils import EvalLoopContainer

from hf_dynmask.training import metrics
from hf_dynmask.training.evaluation import (
    Span,
    TokenExample,
    answer_text,
    best_span,
    eval_label_names,
    per_example_tokens,
    question_answering_metrics,
    sequence_classification_metrics,
    squad_metrics,
    token_classification_metrics,
)
from hf_dynmask.training.metrics.accuracy.accuracy import accuracy_score
from hf_dynmask.training.metrics.f1.f1 import f1_score
from hf_dynmask.training.metrics.seqeval.seqeval import Chunk, entity_chunks, entity_scores
from hf_dynmask.training.metrics.squad.squad import normalize_answer, squad_scores, token_f1

NER_NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
NER = {name: i for i, name in enumerate(NER_NAMES)}


# -- accuracy --------------------------------------------------------------------------------------------------------


def test_accuracy_exact_values():
    assert accuracy_score([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    assert accuracy_score([0, 1, 2, 2], [0, 1, 1, 2], normalize=False) == 3.0
    assert accuracy_score([0, 1, 2, 2], [0, 1, 1, 2], sample_weight=[1, 1, 6, 0]) == 2 / 8
    assert accuracy_score(np.array([[1, 2], [3, 4]]), [1, 2, 3, 0]) == 0.75
    with pytest.raises(ValueError, match="one prediction per reference"):
        accuracy_score([0, 1], [0])


# -- f1 --------------------------------------------------------------------------------------------------------------


def test_f1_exact_values():
    # class 0: tp 1 -> 1; class 1: tp 1, fp 1 -> 2/3; class 2: tp 1, fn 1 -> 2/3
    assert f1_score([0, 1, 1, 2], [0, 1, 2, 2], average="macro") == pytest.approx((1 + 2 / 3 + 2 / 3) / 3, abs=1e-15)
    assert f1_score([0, 1, 1, 2], [0, 1, 2, 2], average="micro") == 0.75  # = accuracy for single-label multi-class
    assert f1_score([0, 1, 1, 2], [0, 1, 2, 2], average="weighted") == pytest.approx((1 + 2 / 3 + 2 * 2 / 3) / 4)
    assert f1_score([0, 1, 1, 2], [0, 1, 2, 2], average=None).tolist() == pytest.approx([1, 2 / 3, 2 / 3])
    assert f1_score([0, 1, 1, 0], [0, 1, 0, 0]) == pytest.approx(2 / 3)  # binary, pos_label=1
    assert f1_score([0, 1, 1, 0], [0, 1, 0, 0], pos_label=0) == pytest.approx(0.8)
    assert f1_score([0, 0], [0, 0]) == 0.0  # class 1 never seen: zero_division
    assert f1_score([0, 1], [0, 1], average="macro", labels=[1, 7]) == 0.5  # class 7 absent everywhere -> 0


def test_f1_errors():
    with pytest.raises(ValueError, match="average='macro'"):
        f1_score([0, 1, 2], [0, 1, 2])
    with pytest.raises(ValueError, match="average must be one of"):
        f1_score([0, 1], [0, 1], average="samples")
    with pytest.raises(ValueError, match="pos_label=1 is not one of"):
        f1_score([2, 3], [3, 2])


labels_pairs = st.integers(1, 40).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 4), min_size=n, max_size=n), st.lists(st.integers(0, 4), min_size=n, max_size=n)
    )
)


@settings(max_examples=60, deadline=None)
@given(pair=labels_pairs, average=st.sampled_from(["macro", "micro", "weighted", None]))
def test_f1_matches_sklearn(pair, average):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    pred, ref = pair
    ours = f1_score(pred, ref, average=average)
    theirs = sklearn_metrics.f1_score(ref, pred, average=average, zero_division=0)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)
    assert accuracy_score(pred, ref) == pytest.approx(sklearn_metrics.accuracy_score(ref, pred), abs=1e-15)


def test_f1_macro_matches_sklearn_on_random_labels():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for num_classes in (2, 5, 17):
        ref = rng.integers(0, num_classes, 500)
        pred = np.where(rng.random(500) < 0.6, ref, rng.integers(0, num_classes, 500))
        for average in ("macro", "micro", "weighted"):
            expected = sklearn_metrics.f1_score(ref, pred, average=average)
            assert f1_score(pred, ref, average=average) == pytest.approx(expected, abs=1e-12)


# -- seqeval ---------------------------------------------------------------------------------------------------------

REFERENCE = ["B-PER", "I-PER", "O", "B-LOC"]


def fractions(scores: dict) -> tuple[Fraction, Fraction, Fraction]:
    return tuple(
        Fraction(scores[key]).limit_denominator(1000) for key in ("overall_precision", "overall_recall", "overall_f1")
    )


def test_entity_chunks_exact():
    assert entity_chunks(REFERENCE) == [Chunk("PER", 0, 2), Chunk("LOC", 3, 4)]
    assert entity_chunks(["B-PER", "B-PER", "I-LOC", "O", "I-PER"]) == [
        Chunk("PER", 0, 1),
        Chunk("PER", 1, 2),
        Chunk("LOC", 2, 3),
        Chunk("PER", 4, 5),
    ]
    assert entity_chunks(["B-PER", "I-LOC", "I-PER"], mode="strict") == [Chunk("PER", 0, 1)]
    assert entity_chunks(["S-LOC", "B-PER", "I-PER", "E-PER", "E-PER"]) == [
        Chunk("LOC", 0, 1),
        Chunk("PER", 1, 4),
        Chunk("PER", 4, 5),
    ]
    assert entity_chunks(["B-creative-work", "I-creative-work"]) == [Chunk("creative-work", 0, 2)]
    assert entity_chunks(["O", "O"]) == [] and entity_chunks([]) == []


def test_entity_scores_one_wrong_boundary():
    # the predicted PER stops one token early: PER wrong, LOC right
    assert fractions(entity_scores([["B-PER", "O", "O", "B-LOC"]], [REFERENCE])) == (Fraction(1, 2),) * 3
    # the predicted PER runs one token too far
    assert fractions(entity_scores([["B-PER", "I-PER", "I-PER", "B-LOC"]], [REFERENCE])) == (Fraction(1, 2),) * 3
    # an extra entity: 3 predicted, 2 right, 2 references -> P 2/3, R 1, F1 4/5
    scores = entity_scores([["B-PER", "I-PER", "B-LOC", "B-LOC"]], [REFERENCE])
    assert fractions(scores) == (Fraction(2, 3), Fraction(1), Fraction(4, 5))
    assert scores["overall_accuracy"] == 0.75
    assert scores["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "number": 1}
    assert scores["LOC"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "number": 1}


def test_entities_never_cross_sentences():
    one_sentence = entity_scores([["B-PER", "I-PER"]], [["B-PER", "I-PER"]])
    two_sentences = entity_scores([["B-PER"], ["I-PER"]], [["B-PER"], ["I-PER"]])
    assert one_sentence["PER"]["number"] == 1 and two_sentences["PER"]["number"] == 2


def test_seqeval_errors():
    with pytest.raises(ValueError, match="IOB2 tag names"):
        entity_chunks(["PER"])
    with pytest.raises(ValueError, match="one per token"):
        entity_scores([["O"]], [["O", "O"]])
    with pytest.raises(ValueError, match="strict mode reads IOB2"):
        entity_chunks(["S-PER"], mode="strict")


tags = st.sampled_from(["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "E-PER", "S-LOC"])


@settings(max_examples=80, deadline=None)
@given(
    pairs=st.lists(
        st.integers(1, 8).flatmap(lambda n: st.tuples(*[st.tuples(tags, tags)] * n)), min_size=1, max_size=4
    )
)
def test_entity_scores_match_seqeval_package(pairs):
    seqeval_metrics = pytest.importorskip("seqeval.metrics")  # a reference only; hf_dynmask does not depend on it
    pred = [[p for p, _ in sentence] for sentence in pairs]
    ref = [[r for _, r in sentence] for sentence in pairs]
    ours = entity_scores(pred, ref)
    for key, fn in (
        ("overall_precision", "precision_score"),
        ("overall_recall", "recall_score"),
        ("overall_f1", "f1_score"),
    ):
        assert ours[key] == pytest.approx(getattr(seqeval_metrics, fn)(ref, pred, zero_division=0), abs=1e-12)


# -- squad -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, normalized",
    [
        ("The Cat", "cat"),
        ("an apple, a pear", "apple pear"),
        ("  Theory  of   the   Atom ", "theory of atom"),  # "the" only as a whole word
        ("A.B.C.", "abc"),  # punctuation goes before articles are matched: "a.b.c." -> "abc"
        ("a-the", "athe"),
        ("¿Qué?", "¿qué"),  # only ASCII punctuation, as the official script
        ("\tAN\napple\t", "apple"),
    ],
)
def test_squad_normalization(text, normalized):
    assert normalize_answer(text) == normalized


def test_squad_exact_values():
    assert token_f1("in Paris", "Paris") == pytest.approx(2 / 3)
    assert token_f1("", "") == 0.0  # v1.1: no shared token
    assert token_f1("the the", "a") == 0.0
    assert squad_scores(["Eiffel Tower", "in Paris"], [["the Eiffel Tower"], ["Paris", "Paris, France"]]) == {
        "exact_match": 50.0,
        "f1": pytest.approx(100 * (1 + 2 / 3) / 2),
    }
    assert squad_metrics(["x"], [["y", "x!"]]) == {"exact_match": 100.0, "f1": 100.0}
    with pytest.raises(ValueError, match="non-empty list"):
        squad_scores(["x"], ["x"])


# -- loading ---------------------------------------------------------------------------------------------------------


def test_unknown_metric_lists_the_shipped_ones():
    with pytest.raises(ValueError, match=r"'bleu'.*\['accuracy', 'f1', 'seqeval', 'squad'\]"):
        metrics.load("bleu")


@pytest.mark.parametrize("name", metrics.METRIC_NAMES)
def test_scripts_follow_evaluate_layout(name):
    path = metrics.metric_path(name)
    assert path.is_file() and path.parent.name == name
    source = path.read_text()
    # evaluate's import scanner reads "import a, b" as one module called "a,"
    assert not re.search(r"^import [^\n#]*,", source, flags=re.MULTILINE)
    imported = set(re.findall(r"^(?:from|import) (\w+)", source, flags=re.MULTILINE))
    assert imported <= {"__future__", "collections", "typing", "re", "string", "datasets", "evaluate", "numpy"}


LOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import evaluate
    import hf_dynmask.training.metrics as M

    inputs = {
        "accuracy": dict(predictions=[0, 1, 2, 2], references=[0, 1, 1, 2]),
        "f1": dict(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2], average="macro"),
        "seqeval": dict(predictions=[["B-PER", "O", "O", "B-LOC"]], references=[["B-PER", "I-PER", "O", "B-LOC"]]),
        "squad": dict(
            predictions=[{"id": "a", "prediction_text": "in Paris"}, {"id": "b", "prediction_text": "The Tower"}],
            references=[
                {"id": "b", "answers": {"text": ["tower"], "answer_start": [0]}},
                {"id": "a", "answers": {"text": ["Paris", "Paris, France"], "answer_start": [0, 0]}},
            ],
        ),
    }
    out = {}
    for name in M.METRIC_NAMES:
        by_path = evaluate.load(str(M.metric_path(name).parent), keep_in_memory=True)
        shipped = M.load(name)
        out[name] = [by_path.compute(**inputs[name]), shipped.compute(**inputs[name]), type(shipped).__module__]
    # evaluate's caches not writable (a path under a regular file): load() falls back to the temp folder
    blocker = Path(sys.argv[1]) / "not-a-dir"
    blocker.write_text("")
    evaluate.config.HF_MODULES_CACHE = blocker / "modules"
    evaluate.config.HF_METRICS_CACHE = blocker / "metrics"
    fallback = M.load("f1")
    out["fallback"] = [fallback.compute(**inputs["f1"]), type(fallback).__module__, fallback.data_dir]
    print(json.dumps(out))
    """
)


def test_load_by_path_offline(tmp_path):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
        "TMPDIR": str(tmp_path),
    }
    for key in ("HF_MODULES_CACHE", "HF_METRICS_CACHE"):
        env.pop(key, None)
    done = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    expected = {
        "accuracy": {"accuracy": 0.75},
        "f1": {"f1": f1_score([0, 1, 1, 2], [0, 1, 2, 2], average="macro")},
        "seqeval": entity_scores([["B-PER", "O", "O", "B-LOC"]], [REFERENCE]),
        "squad": {"exact_match": 50.0, "f1": 100 * (2 / 3 + 1) / 2},
    }
    for name, value in expected.items():
        by_path, shipped, module = out[name]
        assert by_path == pytest.approx(value) if name != "seqeval" else by_path == value
        assert shipped == by_path
        assert module.startswith("evaluate_modules.metrics.")
    assert (tmp_path / "hf_home" / "modules" / "evaluate_modules" / "metrics" / "seqeval").is_dir()
    fallback_result, fallback_module, data_dir = out["fallback"]
    assert fallback_result == out["f1"][0]
    assert fallback_module.startswith("hf_dynmask_evaluate_modules.metrics.f1.")
    assert data_dir.startswith(str(tmp_path / "hf_dynmask_evaluate_cache"))


# -- evaluation: token classification --------------------------------------------------------------------------------


def random_token_examples(seed: int, num: int = 7, num_classes: int = 5):
    """Examples with -100 at the first/last token (special tokens) and at some inner ones (later sub-words)."""
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(num):
        n = int(rng.integers(1, 9))
        labels = rng.integers(0, num_classes, n)
        labels[rng.random(n) < 0.25] = -100
        labels[0] = -100
        if n > 2:
            labels[-1] = -100
        logits = rng.normal(size=(n, num_classes)).astype(np.float32)
        examples.append((logits, labels))
    return examples


def trainer_gathered(examples, batch_size: int, mode: str, concat: bool):
    """What the Trainer hands to compute_metrics: its own EvalLoopContainer over per-batch padded / packed arrays."""
    preds, labels = EvalLoopContainer(concat, padding_index=-100), EvalLoopContainer(concat, padding_index=-100)
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        if mode == "packed":
            logits = torch.from_numpy(np.concatenate([lg for lg, _ in batch]))[None]  # (1, N, C)
            flat_labels = torch.from_numpy(np.concatenate([lab for _, lab in batch]))[None]  # (1, N)
            seq_idx = torch.cat([torch.full((len(lab),), s, dtype=torch.int32) for s, (_, lab) in enumerate(batch)])
            preds.add(logits)
            labels.add((flat_labels, seq_idx[None]))
        else:
            width = max(len(lab) for _, lab in batch)
            logits = torch.zeros(len(batch), width, batch[0][0].shape[1])
            padded = torch.full((len(batch), width), -100)
            for row, (lg, lab) in enumerate(batch):  # right padding
                logits[row, : len(lab)], padded[row, : len(lab)] = torch.from_numpy(lg), torch.from_numpy(lab)
            preds.add(logits)
            labels.add(padded)
    return EvalPrediction(predictions=preds.get_arrays(), label_ids=labels.get_arrays())


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("concat", [True, False])
def test_packed_regrouping_equals_padded(seed, concat):
    examples = random_token_examples(seed)
    kept = [(lg.argmax(-1)[lab != -100], lab[lab != -100]) for lg, lab in examples]
    expected = [TokenExample(p, lab) for p, lab in kept if lab.size]
    results = {}
    for mode in ("dynamic", "packed"):
        gathered = trainer_gathered(examples, batch_size=3, mode=mode, concat=concat)
        regrouped = per_example_tokens(gathered.predictions, gathered.label_ids)
        assert [(e.predictions.tolist(), e.labels.tolist()) for e in regrouped] == [
            (e.predictions.tolist(), e.labels.tolist()) for e in expected
        ]
        results[mode] = (
            token_classification_metrics(NER_NAMES, "ner", per_type=True)(gathered),
            token_classification_metrics(NER_NAMES, "pos")(gathered),
        )
    assert results["dynamic"] == results["packed"]
    tag = (
        [[NER_NAMES[i] for i in e.predictions] for e in expected],
        [[NER_NAMES[i] for i in e.labels] for e in expected],
    )
    reference = entity_scores(*tag)
    assert results["packed"][0]["f1"] == reference["overall_f1"]
    total = sum(e.labels.size for e in expected)
    assert results["packed"][1] == {"accuracy": sum(int((e.predictions == e.labels).sum()) for e in expected) / total}


def test_packed_boundaries_matter_for_entities():
    # two sentences packed in one row: "[CLS] B-PER [SEP] | [CLS] I-PER [SEP]"; predictions equal the labels
    labels = np.array([[-100, NER["B-PER"], -100, -100, NER["I-PER"], -100]])
    seq_idx = np.array([[0, 0, 0, 1, 1, 1]])
    logits = np.eye(5)[np.where(labels < 0, 0, labels)]
    compute = token_classification_metrics(NER_NAMES, "ner", per_type=True)
    with_boundaries = compute(EvalPrediction(predictions=logits, label_ids=(labels, seq_idx)))
    assert with_boundaries["PER_number"] == 2  # "B-PER" and a lone "I-PER": two entities
    without = compute(EvalPrediction(predictions=logits, label_ids=labels))
    assert without["PER_number"] == 1  # read as one sentence, they merge into one entity


def test_exact_ner_and_pos_values():
    # one padded example: reference B-PER I-PER O B-LOC, prediction B-PER O O B-LOC (one wrong boundary)
    labels = np.array([[-100] + [NER[t] for t in REFERENCE] + [-100]])
    predicted = [0] + [NER[t] for t in ["B-PER", "O", "O", "B-LOC"]] + [0]
    logits = np.eye(5)[[predicted]]
    prediction = EvalPrediction(predictions=logits, label_ids=labels)
    assert token_classification_metrics(NER_NAMES)(prediction) == {
        "precision": 0.5,
        "recall": 0.5,
        "f1": 0.5,
        "accuracy": 0.75,
    }
    assert token_classification_metrics(NER_NAMES, "pos")(prediction) == {"accuracy": 0.75}
    ids_only = EvalPrediction(predictions=np.array([predicted]), label_ids=labels)  # preprocess_logits_for_metrics
    assert token_classification_metrics(NER_NAMES, "pos")(ids_only) == {"accuracy": 0.75}


def test_token_metrics_errors():
    labels, seq_idx = np.array([[1, 2, 1]]), np.array([[0, 0, 1]])
    logits = np.eye(5)[labels]
    with pytest.raises(ValueError, match="labels first"):
        per_example_tokens(logits, (seq_idx, labels))  # label_names in the wrong order
    with pytest.raises(ValueError, match="task must be one of"):
        token_classification_metrics(NER_NAMES, task="chunk")
    with pytest.raises(ValueError, match="has no name"):
        token_classification_metrics(["O", "B-PER"])(EvalPrediction(predictions=logits, label_ids=labels))
    assert eval_label_names("token-classification", "packed") == ["labels", "seq_idx"]
    assert eval_label_names("sequence-classification", "packed") == ["labels"]


def _ner_setup():
    """A tiny token classifier (DynMask, and stock BERT with the same weights on dynmask_varlen) and features."""
    from transformers import BertConfig, BertForTokenClassification

    from hf_dynmask import DynMaskConfig, DynMaskForTokenClassification

    sizes = dict(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=20,
        max_position_embeddings=32,
        num_labels=5,
    )
    torch.manual_seed(0)
    model = DynMaskForTokenClassification(DynMaskConfig(**sizes)).eval()
    stock = BertForTokenClassification(BertConfig(**sizes)).eval()
    stock.set_attn_implementation("dynmask_varlen")
    stock.load_state_dict(model.state_dict(), strict=False)
    generator = torch.Generator().manual_seed(1)
    features = []
    for n in [5, 9, 3, 7, 12, 4, 6]:
        labels = torch.randint(0, 5, (n,), generator=generator)
        labels[0] = labels[-1] = -100
        features.append(
            {"input_ids": torch.randint(1, 50, (n,), generator=generator).tolist(), "labels": labels.tolist()}
        )
    tokenizer = types.SimpleNamespace(pad_token_id=0, padding_side="right", truncation_side="right")
    return model, stock, features, tokenizer


def _evaluate(trainer_class, model, features, tokenizer, mode, tmp_path, **args):
    from transformers import TrainingArguments

    from hf_dynmask import make_collator

    training_args = TrainingArguments(
        output_dir=str(tmp_path / mode), per_device_eval_batch_size=3, report_to="none", use_cpu=True, **args
    )
    trainer = trainer_class(
        model=model,
        args=training_args,
        eval_dataset=features,
        data_collator=make_collator(tokenizer, "token-classification", mode),
        compute_metrics=token_classification_metrics(NER_NAMES, "ner"),
    )
    output = trainer.evaluate()
    return {k: output[f"eval_{k}"] for k in ("loss", "precision", "recall", "f1", "accuracy")}


@pytest.mark.parametrize(
    "way",
    [
        "trainer+label_names",  # transformers.Trainer, label_names=eval_label_names(...)
        "trainer",  # transformers.Trainer, nothing set: the DynMask model returns seq_idx with its logits
        "dynmask_trainer",  # DynMaskTrainer, nothing set: it sets the label names
        "dynmask_trainer+stock_model",  # DynMaskTrainer and stock BERT (dynmask_varlen): label names again
    ],
)
def test_trainer_evaluate_packed_equals_padded(tmp_path, way):
    from transformers import Trainer

    from hf_dynmask.training import DynMaskTrainer

    model, stock, features, tokenizer = _ner_setup()
    trainer_class = DynMaskTrainer if way.startswith("dynmask_trainer") else Trainer
    evaluated = stock if way.endswith("stock_model") else model
    results = {}
    for mode in ("dynamic", "packed"):
        args = {"label_names": eval_label_names("token-classification", mode)} if way.endswith("label_names") else {}
        results[mode] = _evaluate(trainer_class, evaluated, features, tokenizer, mode, tmp_path, **args)
    assert results["packed"] == pytest.approx(results["dynamic"], abs=1e-6)
    with torch.no_grad():  # the same numbers from the model run one example at a time
        logits = [model(input_ids=torch.tensor([f["input_ids"]])).logits[0].numpy() for f in features]
    tags = [
        ([NER_NAMES[i] for i in lg.argmax(-1)[1:-1]], [NER_NAMES[i] for i in f["labels"][1:-1]])
        for lg, f in zip(logits, features, strict=True)
    ]
    reference = entity_scores([p for p, _ in tags], [r for _, r in tags])
    assert results["packed"]["f1"] == pytest.approx(reference["overall_f1"], abs=1e-12)
    assert results["packed"]["accuracy"] == pytest.approx(reference["overall_accuracy"], abs=1e-12)


def test_without_boundaries_packed_rows_would_be_scored_as_one_example(tmp_path):
    """What the ways above prevent: a stock model on dynmask_varlen returns seq_idx with a packed row's logits, so a
    stock Trainer scores packed evaluation as padded; the same predictions without seq_idx give other numbers."""
    from transformers import Trainer, TrainingArguments

    from hf_dynmask import make_collator

    _, stock, features, tokenizer = _ner_setup()
    padded = _evaluate(Trainer, stock, features, tokenizer, "dynamic", tmp_path)
    packed = _evaluate(Trainer, stock, features, tokenizer, "packed", tmp_path)
    assert packed["f1"] == pytest.approx(padded["f1"], abs=1e-12)
    trainer = Trainer(
        model=stock,
        args=TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=3, report_to="none", use_cpu=True),
        data_collator=make_collator(tokenizer, "token-classification", "packed"),
    )
    prediction = trainer.predict(features)
    logits, _ = prediction.predictions
    compute = token_classification_metrics(NER_NAMES, "ner")
    rows_as_examples = compute(EvalPrediction(predictions=logits, label_ids=prediction.label_ids))
    assert rows_as_examples["f1"] != pytest.approx(padded["f1"], abs=1e-6)


def test_dynmask_trainer_refuses_label_names_without_the_boundaries(tmp_path):
    from transformers import TrainingArguments

    from hf_dynmask import make_collator
    from hf_dynmask.training import DynMaskTrainer

    model, stock, features, tokenizer = _ner_setup()
    collator = make_collator(tokenizer, "token-classification", "packed")
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, label_names=["labels"])
    # A stock model on flash-attn (CUDA) keeps packed sequences apart but returns no boundaries with its logits.
    flash = copy.deepcopy(stock)
    flash.config._attn_implementation_internal = "flash_attention_2"
    with pytest.raises(ValueError, match=r"leaves out \['seq_idx'\].*label_names=\['labels', 'seq_idx'\]"):
        DynMaskTrainer(model=flash, args=args, eval_dataset=features, data_collator=collator)
    # A DynMask model, and a stock one on dynmask_varlen, return the boundaries with their logits: the explicit label
    # names are kept.
    for returns_boundaries in (model, stock):
        trainer = DynMaskTrainer(model=returns_boundaries, args=args, eval_dataset=features, data_collator=collator)
        assert trainer.label_names == ["labels"]


def test_packed_predictions_carry_their_boundaries():
    """per_example_tokens reads a DynMask model's seq_idx output (the last prediction, integer) as boundaries."""
    logits = np.eye(3)[[[0, 1, 2, 0]]]  # (R=1, N=4, C=3): O B-PER I-PER O
    labels, seq_idx = np.array([[-100, 1, 2, 1]]), np.array([[0, 0, 0, 1]], dtype=np.int32)
    from_labels = per_example_tokens(logits, (labels, seq_idx))
    from_outputs = per_example_tokens((logits, seq_idx), labels)
    assert [ex.labels.tolist() for ex in from_outputs] == [[1, 2], [1]]
    assert [ex.labels.tolist() for ex in from_labels] == [[1, 2], [1]]
    assert [ex.labels.tolist() for ex in per_example_tokens(logits, labels)] == [[1, 2, 1]]  # rows as examples


# -- evaluation: sequence classification -----------------------------------------------------------------------------


@pytest.mark.parametrize("concat", [True, False])
def test_sequence_classification_padded_and_packed(concat):
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(11, 4)).astype(np.float32)
    labels = rng.integers(0, 4, 11)
    preds, refs = EvalLoopContainer(concat), EvalLoopContainer(concat)
    for start in (0, 3, 7):  # uneven batches, as a token-budget sampler makes
        stop = {0: 3, 3: 7, 7: 11}[start]
        preds.add(torch.from_numpy(logits[start:stop]))
        refs.add(torch.from_numpy(labels[start:stop]))
    compute = sequence_classification_metrics("macro")
    result = compute(EvalPrediction(predictions=preds.get_arrays(), label_ids=refs.get_arrays()))
    pred = logits.argmax(-1)
    assert result == {"accuracy": accuracy_score(pred, labels), "f1": f1_score(pred, labels, average="macro")}
    assert compute(EvalPrediction(predictions=(logits, logits), label_ids=labels)) == result  # extra outputs ignored


def test_sequence_classification_exact():
    logits = np.eye(3)[[0, 1, 1, 2]]
    out = sequence_classification_metrics("micro")(
        EvalPrediction(predictions=logits, label_ids=np.array([0, 1, 2, 2]))
    )
    assert out == {"accuracy": 0.75, "f1": 0.75}
    with pytest.raises(ValueError, match="average must be one of"):
        sequence_classification_metrics(None)


# -- evaluation: question answering ----------------------------------------------------------------------------------


def brute_force_span(start, end, max_answer_len, valid):
    best = None
    for i in range(len(start)):
        for j in range(i, min(len(start), i + max_answer_len)):
            if valid[i] and valid[j] and (best is None or start[i] + end[j] > best[2]):
                best = (i, j, start[i] + end[j])
    return best


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.tuples(st.integers(-5, 5), st.integers(-5, 5), st.booleans()), min_size=1, max_size=12),
    max_answer_len=st.integers(1, 6),
)
def test_best_span_matches_brute_force(values, max_answer_len):
    start = np.array([v[0] for v in values], dtype=np.float32) + np.linspace(0, 0.01, len(values))  # no ties
    end = np.array([v[1] for v in values], dtype=np.float32)
    allowed = np.array([v[2] for v in values])
    if not allowed.any():
        with pytest.raises(ValueError, match="no position may hold an answer"):
            best_span(start, end, max_answer_len, allowed=allowed)
        return
    span = best_span(start, end, max_answer_len, allowed=allowed)
    i, j, score = brute_force_span(start.astype(np.float64), end.astype(np.float64), max_answer_len, allowed)
    assert (span.start, span.end) == (i, j) and span.score == pytest.approx(score)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_best_span_never_picks_padding(dtype):
    start = torch.tensor([1.0, 2.0, 0.5, 0.0, 0.0], dtype=dtype)
    end = torch.tensor([0.0, 1.0, 3.0, 0.0, 0.0], dtype=dtype)
    start[3:] = end[3:] = torch.finfo(dtype).min  # the QA head's padding
    assert best_span(start, end) == Span(1, 2, 5.0)
    # the Trainer turns bfloat16 / float16 logits into float32 numpy arrays: padding stays recognisable
    assert best_span(start.float().numpy(), end.float().numpy())[:2] == (1, 2)


def test_question_answering_metrics_over_uneven_batches():
    contexts = ["the tower is tall", "in Paris"]
    # tokens: [CLS] q [SEP] then context words; None marks non-context tokens
    offsets = [[None, None, None, (0, 3), (4, 9), (10, 12), (13, 17)], [None, None, None, (0, 2), (3, 8)]]
    references = [["The Tower"], ["Paris"]]
    low = torch.finfo(torch.float32).min
    start0 = np.array([[9.0, 9.0, 9.0, 2.0, 1.0, 0.0, 0.0]])  # [CLS]/question score high but are not allowed
    end0 = np.array([[9.0, 9.0, 9.0, 0.0, 3.0, 0.0, 0.0]])
    start1 = np.array([[9.0, 0.0, 0.0, 1.0, 2.0, low]])  # one padding position (packed (S, L) rows)
    end1 = np.array([[9.0, 0.0, 0.0, 0.0, 2.0, low]])
    compute = question_answering_metrics(contexts, offsets, references)
    per_batch = EvalPrediction(predictions=[(start0, end0), (start1, end1)], label_ids=[None, None])
    assert compute(per_batch) == {"exact_match": 100.0, "f1": 100.0}
    width = 7  # what the Trainer stacks: rows right-padded with -100
    stacked = tuple(
        np.concatenate([a, np.pad(b, ((0, 0), (0, width - b.shape[1])), constant_values=-100)])
        for a, b in ((start0, start1), (end0, end1))
    )
    assert compute(EvalPrediction(predictions=stacked, label_ids=None)) == {"exact_match": 100.0, "f1": 100.0}
    assert answer_text(Span(3, 4, 0.0), offsets[0], contexts[0]) == "the tower"
    with pytest.raises(ValueError, match="outside the context"):
        answer_text(Span(0, 4, 0.0), offsets[0], contexts[0])


def test_question_answering_metrics_best_window_wins():
    # question 0 has two windows; its answer is the better-scoring span of the two. Question 1 has one window.
    contexts = ["alpha beta gamma", "alpha beta gamma", "in Paris"]
    offsets = [[None, None, (0, 5), (6, 10)], [None, None, (6, 10), (11, 16)], [None, None, (0, 2), (3, 8)]]
    starts = np.array([[9.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 3.0], [0.0, 0.0, 0.0, 2.0]])
    ends = np.array([[9.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 3.0], [0.0, 0.0, 0.0, 2.0]])
    prediction = EvalPrediction(predictions=(starts, ends), label_ids=None)
    compute = question_answering_metrics(contexts, offsets, [["gamma"], ["Paris"]], example_index=[0, 0, 1])
    assert compute(prediction) == {"exact_match": 100.0, "f1": 100.0}
    starts[0, 2] = ends[0, 2] = 4.0  # now the first window's "alpha" (score 8) beats "gamma" (score 6)
    assert compute(prediction) == {"exact_match": 50.0, "f1": 50.0}
    with pytest.raises(ValueError, match="per evaluation feature"):
        question_answering_metrics(contexts, offsets, [["gamma"], ["Paris"]], example_index=[0, 1])
    with pytest.raises(ValueError, match="number the questions"):
        question_answering_metrics(contexts, offsets, [["gamma"], ["Paris"]], example_index=[0, 0, 2])

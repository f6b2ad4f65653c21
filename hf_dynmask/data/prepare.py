"""Dataset preparation: tokenize once with ``Dataset.map``, keep each example's length; pack streams on the fly.

:func:`prepare_dataset` turns raw examples of a task into the features the collators read (no padding) plus a
``length`` column (the number of ``input_ids``), in one ``Dataset.map`` pass. On a ``datasets.Dataset`` loaded from
files, ``map`` writes the result to the Arrow cache, so a second run (or another process of a distributed run)
reads the tokens and the lengths from disk instead of tokenizing again, and token-budget samplers read the lengths
column without decoding a token. On an ``IterableDataset`` (streaming) the same function tokenizes lazily.

Raw columns per task (defaults; rename with ``columns={"text": "sentence", ...}``):

    sequence-classification  text [, text_pair], label          -> input_ids, token_type_ids, labels
    token-classification     tokens (words), tags (per word)    -> input_ids, token_type_ids, labels (per sub-word)
    question-answering       question, context, answers         -> input_ids, token_type_ids, start/end_positions
                             (SQuAD: {"text": [...], "answer_start": [...]}; one feature per question, truncated;
                             with doc_stride, one per window of the context, plus example_index)
    masked-lm                text                               -> input_ids, token_type_ids, special_tokens_mask
    causal-lm                text                               -> input_ids
    seq2seq                  source, target                     -> input_ids, labels

Labels are kept when the label column is present (a test split without labels prepares fine; a training run without
them is refused by ``DynMaskTrainer``). Nothing is padded; ``max_length`` truncates.

:class:`TokenBudgetStream` packs a stream of tokenized examples greedily into token-budget batches for a DataLoader
(``batch_size=None``), computing lengths on the fly from the length column or the ``input_ids``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from functools import partial
from typing import Any, Literal

import torch

from .collators import tokenize_and_align
from .options import check_int
from .tasks import TASKS, get_task

__all__ = [
    "DEFAULT_COLUMNS",
    "PREPARED_TASKS",
    "TokenBudgetStream",
    "dataset_columns",
    "example_length",
    "is_iterable_dataset",
    "prepare_dataset",
]

#: Raw column names read by :func:`prepare_dataset`, per role (each role's default column has the role's name, the
#: roles are those of the task records); override per call with ``columns=``.
DEFAULT_COLUMNS: dict[str, str] = {
    role: role for task in TASKS.values() for role in (*task.prepare_roles, *task.optional_prepare_roles)
}
#: The tasks :func:`prepare_dataset` prepares: every task of :data:`hf_dynmask.data.tasks.TASKS`.
PREPARED_TASKS = tuple(TASKS)


def is_iterable_dataset(dataset: Any) -> bool:
    """A torch or a ``datasets`` ``IterableDataset`` (the latter is not always a torch subclass)."""
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return True
    module = sys.modules.get("datasets")
    return module is not None and isinstance(dataset, module.IterableDataset)


def dataset_columns(dataset: Any) -> list[str] | None:
    """The column names of a ``datasets`` dataset (its ``column_names``, else its typed ``features``); None for a
    dataset that does not know them (a list, a torch ``Dataset``, an untyped stream)."""
    names = getattr(dataset, "column_names", None)
    if isinstance(names, list | tuple):
        return list(names)
    features = getattr(dataset, "features", None)
    return list(features) if features else None


# --------------------------------------------------------------------------------------------------------------------
# Tokenization
# --------------------------------------------------------------------------------------------------------------------


def prepare_dataset(
    dataset: Any,
    tokenizer: Any,
    task: str,
    *,
    columns: Mapping[str, str] | None = None,
    max_length: int | None = None,
    length_column: str = "length",
    label_all_subwords: bool = False,
    num_proc: int | None = None,
    batch_size: int = 1000,
    load_from_cache_file: bool | None = None,
    doc_stride: int | None = None,
) -> Any:
    """Tokenize ``dataset`` (a ``datasets.Dataset`` or ``IterableDataset``) for ``task``, with a length column.

    Args:
        dataset: raw examples with the task's columns (see the module docstring).
        tokenizer: a fast transformers tokenizer (token classification and QA need ``word_ids`` / offsets).
        task: one of :data:`PREPARED_TASKS` (the collator task names).
        columns: renames of :data:`DEFAULT_COLUMNS` roles, e.g. ``{"text": "sentence"}``.
        max_length: truncate every example to this many tokens (QA: the context is cut, never the question).
        length_column: name of the added column holding ``len(input_ids)``.
        label_all_subwords: token classification: label every sub-word, not only the first of each word.
        num_proc, batch_size, load_from_cache_file: passed to ``Dataset.map`` (map-style datasets).
        doc_stride: question answering: instead of truncating a long context, split it into windows of
            ``max_length`` tokens (question included) that overlap by ``doc_stride`` tokens, one feature per window,
            as transformers' ``run_qa.py`` does. Each feature gets ``example_index`` (the question's row in
            ``dataset``); a window that does not hold the whole answer points ``start/end_positions`` at ``[CLS]``.
            Needs ``max_length``. Score windows with ``question_answering_metrics(..., example_index=...)``.

    Returns the mapped dataset: the raw columns are replaced by the features the collators read and
    ``length_column``.
    """
    roles = get_task(task).prepare_roles
    max_length = check_int("max_length", max_length, minimum=1)
    unknown = sorted(set(columns or {}) - set(DEFAULT_COLUMNS))
    if unknown:
        raise ValueError(f"unknown column role(s) {unknown}; roles are {sorted(DEFAULT_COLUMNS)}")
    if doc_stride is not None:
        if task != "question-answering":
            raise ValueError(f"doc_stride applies to question-answering only, not {task!r}; drop it")
        if max_length is None or not 0 <= doc_stride < max_length:
            raise ValueError(
                f"doc_stride needs max_length and 0 <= doc_stride < max_length, got {doc_stride=} {max_length=}; "
                "e.g. max_length=384, doc_stride=128"
            )
    names = {**DEFAULT_COLUMNS, **(columns or {})}
    present = dataset_columns(dataset)
    if present is not None:
        missing = [names[role] for role in roles if names[role] not in present]
        if missing:
            raise ValueError(
                f"{task}: the dataset has no column {missing} (columns: {present}); name the right ones with "
                f"columns={{role: column}}, roles {list(roles)}"
            )
        if length_column in present:
            raise ValueError(f"the dataset already has a {length_column!r} column; pass another length_column=")
    tokenize = _TOKENIZERS[task]
    if doc_stride is not None:
        tokenize = partial(_question_answering, doc_stride=doc_stride)

    def function(batch: Mapping[str, list[Any]], indices: list[int] | None = None) -> dict[str, list[Any]]:
        out = tokenize(batch, tokenizer, names, max_length, label_all_subwords)
        if indices is not None:  # windows: the batch-local question of each feature -> its row in the dataset
            out["example_index"] = [indices[i] for i in out["example_index"]]
        out[length_column] = [len(ids) for ids in out["input_ids"]]
        return out

    kwargs: dict[str, Any] = {"batched": True, "batch_size": batch_size, "with_indices": doc_stride is not None}
    if present is not None:
        kwargs["remove_columns"] = present
    if not is_iterable_dataset(dataset):
        kwargs.update(num_proc=num_proc, load_from_cache_file=load_from_cache_file, desc=f"Tokenizing ({task})")
    return dataset.map(function, **kwargs)


def _truncation(max_length: int | None) -> dict[str, Any]:
    return {"truncation": True, "max_length": max_length} if max_length is not None else {}


def _sequence_classification(batch, tokenizer, names, max_length, _label_all) -> dict[str, list[Any]]:
    pair = batch.get(names["text_pair"])
    encoding = tokenizer(batch[names["text"]], pair, return_attention_mask=False, **_truncation(max_length))
    out = {key: list(values) for key, values in encoding.items()}
    if names["label"] in batch:
        out["labels"] = list(batch[names["label"]])
    return out


def _token_classification(batch, tokenizer, names, max_length, label_all) -> dict[str, list[Any]]:
    words = batch[names["tokens"]]
    if names["tags"] not in batch:
        encoding = tokenizer(
            list(words), is_split_into_words=True, return_attention_mask=False, **_truncation(max_length)
        )
        return {key: list(values) for key, values in encoding.items()}
    out = tokenize_and_align(
        tokenizer,
        list(words),
        list(batch[names["tags"]]),
        label_all_subwords=label_all,
        return_attention_mask=False,
        **_truncation(max_length),
    )
    return out


def _question_answering(
    batch, tokenizer, names, max_length, _label_all, doc_stride: int | None = None
) -> dict[str, list[Any]]:
    questions = [q.lstrip() for q in batch[names["question"]]]
    contexts = batch[names["context"]]
    truncation = {"truncation": "only_second", "max_length": max_length} if max_length is not None else {}
    if doc_stride is not None:
        truncation.update(stride=doc_stride, return_overflowing_tokens=True)
    encoding = tokenizer(questions, contexts, return_offsets_mapping=True, return_attention_mask=False, **truncation)
    offsets = encoding.pop("offset_mapping")
    # windows: feature i belongs to question sample[i] of the batch; otherwise one feature per question
    sample = encoding.pop("overflow_to_sample_mapping", None) or list(range(len(offsets)))
    out = {key: list(values) for key, values in encoding.items()}
    if doc_stride is not None:
        out["example_index"] = list(sample)
    if names["answers"] not in batch:
        return out
    starts, ends = [], []
    for i, question in enumerate(sample):
        answers = batch[names["answers"]][question]
        texts, char_starts = answers["text"], answers["answer_start"]
        if not texts:
            starts.append(0)
            ends.append(0)
            continue
        char_start = int(char_starts[0])
        char_end = char_start + len(texts[0])
        sequence_ids = encoding.sequence_ids(i)
        context_tokens = [k for k, s in enumerate(sequence_ids) if s == 1]
        start = next((k for k in context_tokens if offsets[i][k][0] <= char_start < offsets[i][k][1]), None)
        end = next((k for k in context_tokens if offsets[i][k][0] < char_end <= offsets[i][k][1]), None)
        if start is None or end is None or end < start:  # answer cut off (or in another window): point at [CLS]
            start = end = 0
        starts.append(start)
        ends.append(end)
    out["start_positions"], out["end_positions"] = starts, ends
    return out


def _masked_lm(batch, tokenizer, names, max_length, _label_all) -> dict[str, list[Any]]:
    encoding = tokenizer(
        batch[names["text"]], return_attention_mask=False, return_special_tokens_mask=True, **_truncation(max_length)
    )
    return {key: list(values) for key, values in encoding.items()}


def _causal_lm(batch, tokenizer, names, max_length, _label_all) -> dict[str, list[Any]]:
    encoding = tokenizer(batch[names["text"]], return_attention_mask=False, **_truncation(max_length))
    return {"input_ids": list(encoding["input_ids"])}


def _seq2seq(batch, tokenizer, names, max_length, _label_all) -> dict[str, list[Any]]:
    targets = batch.get(names["target"])
    encoding = tokenizer(
        batch[names["source"]], text_target=targets, return_attention_mask=False, **_truncation(max_length)
    )
    return {key: list(values) for key, values in encoding.items() if key != "token_type_ids"}


# How each task's raw columns become the features its collator reads: one function per task of TASKS.
_TOKENIZERS = {
    "sequence-classification": _sequence_classification,
    "token-classification": _token_classification,
    "question-answering": _question_answering,
    "masked-lm": _masked_lm,
    "causal-lm": _causal_lm,
    "seq2seq": _seq2seq,
}


# --------------------------------------------------------------------------------------------------------------------
# Streaming token-budget batches
# --------------------------------------------------------------------------------------------------------------------


def example_length(example: Mapping[str, Any], length_column: str = "length", index: int | None = None) -> int:
    """An example's token count: its ``length_column``, else ``len(input_ids)``; ``ValueError`` if it has neither.

    >>> example_length({"input_ids": [101, 7, 102]}), example_length({"length": 5})
    (3, 5)
    """
    if length_column in example:
        return int(example[length_column])
    if "input_ids" in example:
        return len(example["input_ids"])
    where = f"example {index}" if index is not None else "an example"
    raise ValueError(
        f"{where} has neither a {length_column!r} column nor 'input_ids' (keys: {sorted(example)}), so its length "
        "is unknown: tokenize the stream first (hf_dynmask.data.prepare_dataset(stream, tokenizer, task), or "
        "stream.map(tokenize)) or name the length column (length_column=...)"
    )


class TokenBudgetStream(torch.utils.data.IterableDataset):
    """Greedy token-budget batches from a stream of tokenized examples; yields lists of examples.

    Examples are taken in stream order and added to the current batch while its cost stays within ``token_budget``
    (``"packed"``: the sum of lengths; ``"padded"``: batch size times the longest); otherwise the batch is yielded and
    a new one starts (next-fit, no look-ahead, so the order of the stream is kept). An example longer than the budget
    raises ``ValueError``.

    Distributed: every process reads the whole stream, forms the same batches, and keeps batch ``i`` when
    ``i % num_replicas == rank``. A last round with fewer batches than processes is completed with the first round's
    batches (``drop_last=False``) or dropped, so every process yields the same number of batches. DataLoader workers
    split a process's batches the same way and the DataLoader's round-robin restores their order.

    Use it as ``DataLoader(TokenBudgetStream(...), batch_size=None, collate_fn=collator)``.

    >>> stream = TokenBudgetStream([{"input_ids": [1] * n} for n in (3, 4, 2, 5)], token_budget=7)
    >>> [[len(ex["input_ids"]) for ex in batch] for batch in stream]
    [[3, 4], [2, 5]]
    """

    def __init__(
        self,
        examples: Iterable[Mapping[str, Any]],
        token_budget: int,
        *,
        length_column: str = "length",
        cost: Literal["packed", "padded"] = "packed",
        max_seqs_per_batch: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        if isinstance(token_budget, bool) or not isinstance(token_budget, int) or token_budget < 1:
            raise ValueError(f"token_budget must be a positive int, got {token_budget!r}")
        if cost not in ("packed", "padded"):
            raise ValueError(f"cost must be 'packed' or 'padded', got {cost!r}")
        if max_seqs_per_batch is not None and max_seqs_per_batch < 1:
            raise ValueError(f"max_seqs_per_batch must be a positive int or None, got {max_seqs_per_batch!r}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas=} {rank=}")
        self.examples = examples
        self.token_budget = token_budget
        self.length_column = length_column
        self.cost = cost
        self.max_seqs_per_batch = max_seqs_per_batch
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to the stream (``datasets.IterableDataset.shuffle`` reshuffles per epoch)."""
        set_epoch = getattr(self.examples, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)

    def batches(self) -> Iterator[list[Mapping[str, Any]]]:
        """All batches of the stream, before the split across processes and workers."""
        current: list[Mapping[str, Any]] = []
        tokens = longest = 0
        cap = self.max_seqs_per_batch
        for index, example in enumerate(self.examples):
            n = example_length(example, self.length_column, index)
            if n < 1:
                raise ValueError(f"example {index} has no tokens; drop empty examples before batching")
            if n > self.token_budget:
                raise ValueError(
                    f"example {index} has length {n} > token_budget {self.token_budget}; raise token_budget or "
                    f"truncate at tokenization (prepare_dataset(..., max_length={self.token_budget}))"
                )
            if self.cost == "packed":
                new_cost = tokens + n
            else:
                new_cost = (len(current) + 1) * max(longest, n)
            if current and (new_cost > self.token_budget or (cap is not None and len(current) >= cap)):
                yield current
                current, tokens, longest = [], 0, 0
            current.append(example)
            tokens += n
            longest = max(longest, n)
        if current:
            yield current

    def _rank_batches(self) -> Iterator[list[Mapping[str, Any]]]:
        first_round: list[list[Mapping[str, Any]]] | None = None
        round_: list[list[Mapping[str, Any]]] = []
        for batch in self.batches():
            round_.append(batch)
            if len(round_) == self.num_replicas:
                if first_round is None:
                    first_round = round_
                yield round_[self.rank]
                round_ = []
        if round_ and not self.drop_last:
            filler = first_round if first_round is not None else round_
            while len(round_) < self.num_replicas:
                round_ = round_ + filler[: self.num_replicas - len(round_)]
            yield round_[self.rank]

    def __iter__(self) -> Iterator[list[Mapping[str, Any]]]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        for i, batch in enumerate(self._rank_batches()):
            if i % workers == worker:
                yield batch

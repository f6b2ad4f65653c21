"""Collators: turn tokenized features into a padded or a packed batch, for every common task.

One factory, :func:`make_collator`, and one dataclass per task behind it; the padding and packing machinery lives
once in :class:`BaseCollator`. Every collator reads the same features (the output of a tokenizer called *without*
padding, one dict per example) and has three modes:

    static   pad every row to ``max_length`` (required): the shapes never change.
    dynamic  pad every row to the longest sequence of the batch (rounded up to ``pad_to_multiple_of``).
    packed   no padding: the sequences back to back in one row ``(1, N)``, with their boundaries
             (``position_ids``, ``seq_idx``, ``cu_seq_lens_q/k``, ``max_length_q/k``) and never an ``attention_mask``.

Dimension legend:
    B  batch size (rows of a padded batch)      T  padded length (of the source / encoder side)
    S  number of sequences (= B)                N  real tokens of the batch (sum of the sequence lengths)
    Tt, Nt  the same on the target / decoder side of seq2seq

Features are mappings whose values are lists, 1-D torch tensors or 1-D NumPy arrays: ``input_ids``, optional
``attention_mask`` (all ones: the collator pads, the tokenizer must not), optional ``token_type_ids``, optional
``word_ids`` (token classification alignment, whole-word masking) and the task's labels. Other keys are ignored.
Features are never modified. Padding goes on ``tokenizer.padding_side``, truncation (``truncation=True``) on
``tokenizer.truncation_side``.

A tokenizer without a pad token is an error in the padded modes (set ``tokenizer.pad_token =
tokenizer.eos_token``); packed mode needs no pad token (seq2seq still uses it, when the tokenizer has one, to stand in
for ``-100`` labels inside ``decoder_input_ids``).

>>> token_counts({"input_ids": torch.ones(2, 4), "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])})
TokenCounts(real=5, padded=8)
"""

from __future__ import annotations

import difflib
import numbers
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from itertools import chain
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
import torch

from ..modeling.configuration_dynmask import unknown_choice
from ..modeling.input_checks import IGNORE_INDEX
from ..modeling.layout import PackedLayout, UnpadIndex, packed_layout, pad_index_from_cu_seqlens, repad
from .mlm import MaskingRecipe, TokenMasker
from .options import check_bool, check_int
from .tasks import TASKS as TASK_RECORDS
from .tasks import Task, get_task

__all__ = [
    "IGNORE_INDEX",
    "MODES",
    "TASKS",
    "BaseCollator",
    "CausalLMCollator",
    "MaskedLMCollator",
    "QuestionAnsweringCollator",
    "Seq2SeqCollator",
    "SequenceClassificationCollator",
    "TokenClassificationCollator",
    "TokenCounts",
    "align_labels_with_tokens",
    "make_collator",
    "token_counts",
    "tokenize_and_align",
]

Mode = Literal["static", "dynamic", "packed"]
MODES: tuple[str, ...] = typing.get_args(Mode)
Feature = Mapping[str, Any]


# --------------------------------------------------------------------------------------------------------------------
# Reading features
# --------------------------------------------------------------------------------------------------------------------


class TokenColumns(NamedTuple):
    """Per-token values of a batch, flat (no padding), after truncation."""

    flat: dict[str, torch.Tensor]  # key -> (N,)
    seq_lens: list[int]  # (S,) python ints, every one >= 1
    cut_left: list[int]  # tokens truncation removed from the start of each sequence (left truncation), else 0


# Per-token keys that may hold booleans (a mask) besides integers.
_BOOL_KEYS = frozenset({"attention_mask", "special_tokens_mask"})


def _flatten(values: list[Any], key: str) -> torch.Tensor:
    """Concatenate per-example 1-D integer values into one int64 ``(N,)`` tensor, building it once.

    Floats, strings and ``None`` are refused, never truncated or guessed (``[101.7]`` is not token 101).
    """
    try:
        if all(isinstance(v, (list, tuple)) for v in values):
            # numpy infers the dtype in C (faster than torch.tensor on a list), so floats are seen, not truncated.
            array = np.array(list(chain.from_iterable(values)))
        elif all(isinstance(v, np.ndarray) for v in values):
            array = np.concatenate(values)
        elif all(isinstance(v, torch.Tensor) for v in values):
            flat = torch.cat(values)
            if not _integer_dtype(flat.dtype, key):
                raise _NotIntegers
            return flat.long()
        else:
            array = np.concatenate(
                [v.numpy(force=True) if isinstance(v, torch.Tensor) else np.asarray(v) for v in values]
            )
        if array.dtype.kind not in ("iu" + ("b" if key in _BOOL_KEYS else "")):
            raise _NotIntegers
    except (_NotIntegers, TypeError, ValueError, RuntimeError, OverflowError) as error:
        raise ValueError(_not_integers_message(values, key)) from error
    return torch.from_numpy(array.astype(np.int64, copy=False))


class _NotIntegers(Exception):
    pass


def _integer_dtype(dtype: torch.dtype, key: str) -> bool:
    if dtype == torch.bool:
        return key in _BOOL_KEYS
    return not (dtype.is_floating_point or dtype.is_complex)


def _not_integers_message(values: list[Any], key: str) -> str:
    """Which feature holds the first value that is not an integer (the slow path, run only for the message)."""
    what = {
        "labels": "labels (class or token ids, -100 where ignored)",
        "token_type_ids": "token type ids",
        "word_ids": "word ids (-1 or None at special tokens)",
        "special_tokens_mask": "a special-tokens mask (0/1)",
    }.get(key, "token ids")
    for i, v in enumerate(values):
        items = v.tolist() if isinstance(v, (torch.Tensor, np.ndarray)) else list(v)
        for item in items:
            if isinstance(item, (bool, np.bool_)) and key in _BOOL_KEYS:
                continue
            if not isinstance(item, (int, np.integer)) or isinstance(item, bool):
                hint = {
                    float: "; do not cast ids to float (truncating 101.7 to 101 would silently change the text)",
                    str: "; tokenize the text first (tokenizer(text)) and collate the ids",
                    type(None): "; a missing value: drop or fill the example first",
                }.get(type(item), "")
                if isinstance(item, (float, np.floating)) and key == "labels":
                    hint = "; per-token labels are class ids: map them with int() or label2id"
                kind = type(item).__name__
                return f"feature {i}: {key!r} holds {item!r} ({kind}), not an integer: it must hold {what}{hint}"
    return f"{key!r} must hold {what}; got values of another type"


def _all_ones(mask: Any) -> bool:
    if isinstance(mask, (list, tuple)):
        return mask.count(1) == len(mask)
    if isinstance(mask, torch.Tensor):
        return bool((mask == 1).all())
    return bool((np.asarray(mask) == 1).all())


def _check_1d(values: list[Any], key: str) -> None:
    for i, v in enumerate(values):
        if not isinstance(v, (list, tuple, np.ndarray, torch.Tensor)):
            hint = (
                "; tokenize the text first (tokenizer(text), or prepare_dataset) and collate the ids"
                if isinstance(v, str)
                else ""
            )
            raise ValueError(
                f"feature {i}: {key!r} is a {type(v).__name__} ({v!r:.40}); it must be a list (or 1-D array) with one "
                f"value per token{hint}"
            )
        if not isinstance(v, (list, tuple)) and v.ndim != 1:
            raise ValueError(
                f"feature {i}: {key!r} must be 1-D (one example), got shape {tuple(v.shape)}; tokenize one example "
                "per feature without return_tensors, or with Dataset.map, and let the collator batch them"
            )


def _sequence_labels(values: list[Any], key: str) -> torch.Tensor:
    """One label per sequence: int64 ``(S,)``, or float32 ``(S,)`` / ``(S, K)`` (regression, multi-label)."""
    for i, value in enumerate(values):
        if isinstance(value, (str, bytes)) or value is None or isinstance(value, Mapping):
            hint = (
                "map class names to ids first (e.g. dataset.class_encode_column or label2id[name])"
                if isinstance(value, (str, bytes))
                else "drop unlabelled examples, or collate them without the label key (inference)"
            )
            raise ValueError(
                f"feature {i}: {key!r} is {value!r} ({type(value).__name__}); labels must be numbers: an int class "
                f"id, a float (regression) or a list of floats (multi-label); {hint}"
            )
    try:
        if all(isinstance(v, torch.Tensor) for v in values):
            labels = torch.stack(values)
        else:
            array = np.asarray([v.tolist() if isinstance(v, torch.Tensor) else v for v in values])
            if array.dtype.kind not in "biuf":
                raise TypeError(f"dtype {array.dtype}")
            labels = torch.from_numpy(array)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(
            f"{key!r} values do not form one array ({_first_line(error)}): give every feature the same kind of "
            "label, an int class id, a float, or a list of floats of one length (multi-label)"
        ) from error
    if labels.dtype == torch.bool:
        return labels.long() if labels.dim() == 1 else labels.float()
    return labels.float() if labels.is_floating_point() else labels.long()


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


# --------------------------------------------------------------------------------------------------------------------
# The shared machinery
# --------------------------------------------------------------------------------------------------------------------


class LaidOut(NamedTuple):
    """Per-token columns in their final layout."""

    tensors: dict[str, torch.Tensor]  # key -> (B, T) padded, or (1, N) packed
    attention_mask: torch.Tensor | None  # int64 (B, T), 1 = real token, 0 = padding; None when packed
    layout: PackedLayout | None  # the boundaries when packed, else None
    left_pad: torch.Tensor | None  # int64 (B,): padding tokens before each row's first real token; None when packed


def _padded_index(seq_lens: list[int], seqlen: int, padding_side: str) -> UnpadIndex:
    """Index map that places ``N`` flat tokens into a ``(B, seqlen)`` batch padded on ``padding_side``."""
    lens = torch.tensor(seq_lens, dtype=torch.int64)
    cu_seqlens = torch.nn.functional.pad(torch.cumsum(lens, 0, dtype=torch.int32), (1, 0))
    index = pad_index_from_cu_seqlens(cu_seqlens, seqlen)
    if padding_side == "left":
        index = index._replace(indices=index.indices + torch.repeat_interleave(seqlen - lens, lens))
    return index


@dataclass
class BaseCollator:
    """Padding and packing shared by every task collator; use a task subclass or :func:`make_collator`.

    Subclasses implement ``_collate(features)``; this class reads features (:meth:`_read_columns`), lays them out
    (:meth:`_lay_out`) and names the boundaries of packed batches (:meth:`_packed_keys`).
    """

    tokenizer: Any = field(metadata={"help": "A transformers tokenizer (pad token, padding and truncation side)."})
    mode: Mode = field(
        default="dynamic",
        metadata={"help": "static: pad to max_length; dynamic: pad to the longest of the batch; packed: no padding."},
    )
    max_length: int | None = field(
        default=None,
        metadata={
            "help": "static: the padded length (required). All modes: a longer sequence raises unless truncation."
        },
    )
    truncation: bool = field(
        default=False,
        metadata={"help": "Cut sequences longer than max_length (on tokenizer.truncation_side) instead of raising."},
    )
    pad_to_multiple_of: int | None = field(
        default=None, metadata={"help": "dynamic mode: round the padded length up to a multiple of this."}
    )
    position_start: int | None = field(
        default=None,
        metadata={
            "help": "packed mode: first position id of every sequence (RoBERTa-style models: padding_idx + 1). "
            "None: 0, or the model's under DynMaskTrainer / PaddingStatsCallback (they train with a copy that has it)."
        },
    )

    # The name of the task, whose record (hf_dynmask.data.tasks.TASKS) says what else there is to know about it.
    task: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(unknown_choice("mode", self.mode, MODES))
        if not all(hasattr(self.tokenizer, name) for name in ("pad_token_id", "padding_side", "truncation_side")):
            raise ValueError(
                f"tokenizer must be a transformers tokenizer, got {type(self.tokenizer).__name__}; load one with "
                "AutoTokenizer.from_pretrained(name_or_path)"
            )
        self.max_length = check_int("max_length", self.max_length, minimum=1)
        self.pad_to_multiple_of = check_int("pad_to_multiple_of", self.pad_to_multiple_of, minimum=1)
        self.position_start = check_int("position_start", self.position_start, minimum=0)
        check_bool("truncation", self.truncation)
        if self.mode == "static" and self.max_length is None:
            raise ValueError("mode='static' pads every row to max_length; pass max_length=... (e.g. 128)")
        if self.truncation and self.max_length is None:
            raise ValueError("truncation=True needs max_length=... (the length to cut to)")
        if self.pad_to_multiple_of is not None:
            if self.mode != "dynamic":
                raise ValueError(f"pad_to_multiple_of only applies to mode='dynamic', not {self.mode!r}")
        if self.mode != "packed" and self.tokenizer.pad_token_id is None:
            raise ValueError(
                f"mode={self.mode!r} pads, but the tokenizer has no pad token; set one, e.g. "
                "tokenizer.pad_token = tokenizer.eos_token, or use mode='packed' (no padding)"
            )
        if self.tokenizer.padding_side not in ("left", "right"):
            raise ValueError(f"tokenizer.padding_side must be 'left' or 'right', got {self.tokenizer.padding_side!r}")

    # -- entry point -------------------------------------------------------------------------------------------------

    def __call__(self, features: Sequence[Feature]) -> dict[str, Any]:
        """Collate ``features`` (a list of per-example mappings) into a batch; see the class docstring for keys."""
        if isinstance(features, Mapping):
            raise ValueError(
                "features must be a list of per-example dicts, got one dict (a batch?); pass "
                "[dataset[i] for i in indices] or let a DataLoader do it"
            )
        if len(features) == 0:
            raise ValueError("empty batch: a collator needs at least one feature")
        for i, feature in enumerate(features):
            if "input_ids" not in feature:
                raise ValueError(f"feature {i} has no 'input_ids' (keys: {sorted(feature)}); tokenize it first")
        return self._collate(features)

    def _collate(self, features: Sequence[Feature]) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def task_record(self) -> Task:
        """The record of this collator's task (:data:`hf_dynmask.data.tasks.TASKS`)."""
        return TASK_RECORDS[self.task]

    # -- reading -----------------------------------------------------------------------------------------------------

    def _label_key(self, features: Sequence[Feature]) -> str | None:
        """The label key the features carry (present in all of them), or None (inference)."""
        for key in self.task_record.label_keys:
            present = [key in f for f in features]
            if all(present):
                return key
            if any(present):
                missing = present.index(False)
                raise ValueError(f"feature {missing} has no {key!r} but others do; give every feature a label")
        return None

    def _read_columns(
        self,
        features: Sequence[Feature],
        keys: Sequence[str],
        *,
        optional: Sequence[str] = (),
        max_length: int | None = None,
        length_key: str = "input_ids",
    ) -> TokenColumns:
        """Read per-token ``keys`` (and the ``optional`` keys features carry), check, truncate, flatten to int64.

        Every key must have the length of ``length_key`` in every feature, and an optional key must be in every
        feature or in none (a batch never drops one feature's ``token_type_ids``). ``attention_mask`` may be absent
        from some features (absent means all ones); when read, it must be all ones and is checked, then dropped.
        """
        wanted = list(keys) + [k for k in optional if k != "attention_mask" and any(k in f for f in features)]
        for key in wanted:
            present = [key in f for f in features]
            if all(present):
                continue
            if key in keys:
                missing = present.index(False)
                raise ValueError(f"feature {missing} has no {key!r}; every feature needs it")
            missing, holder = present.index(False), present.index(True)
            raise ValueError(
                f"feature {missing} has no {key!r} but feature {holder} does; every feature needs the same keys "
                f"(tokenize all examples the same way, or drop the {key!r} column)"
            )
        columns = {key: [f[key] for f in features] for key in wanted}
        for key, values in columns.items():
            _check_1d(values, key)
        if "attention_mask" in optional:
            self._check_attention_masks(features, length_key)
        seq_lens = [len(v) for v in columns[length_key]]
        for i, n in enumerate(seq_lens):
            if n == 0:
                raise ValueError(
                    f"feature {i} has an empty {length_key!r}; drop empty examples before batching "
                    "(e.g. dataset.filter(lambda ex: len(ex['input_ids']) > 0))"
                )
        for key, values in columns.items():
            if key == length_key:
                continue
            for i, (v, n) in enumerate(zip(values, seq_lens, strict=True)):
                if len(v) != n:
                    hint = (
                        "; align word-level labels with align_labels_with_tokens(word_labels, word_ids)"
                        if key == "labels"
                        else ""
                    )
                    raise ValueError(
                        f"feature {i}: {key!r} has {len(v)} values for {n} tokens in {length_key!r}{hint}"
                    )
        cut_left = [0] * len(seq_lens)
        if max_length is not None and max(seq_lens) > max_length:
            if not self.truncation:
                i = next(i for i, n in enumerate(seq_lens) if n > max_length)
                raise ValueError(
                    f"feature {i} has {seq_lens[i]} tokens in {length_key!r}, more than max_length={max_length}; "
                    "raise max_length, pass truncation=True, or truncate when tokenizing"
                )
            left = self.tokenizer.truncation_side == "left"
            cut_left = [max(n - max_length, 0) if left else 0 for n in seq_lens]
            for key, values in columns.items():
                columns[key] = [
                    v if n <= max_length else (v[n - max_length :] if left else v[:max_length])
                    for v, n in zip(values, seq_lens, strict=True)
                ]
            seq_lens = [min(n, max_length) for n in seq_lens]
        flat = {key: _flatten(values, key) for key, values in columns.items()}
        return TokenColumns(flat=flat, seq_lens=seq_lens, cut_left=cut_left)

    def _check_attention_masks(self, features: Sequence[Feature], length_key: str) -> None:
        """Features may carry an all-ones ``attention_mask`` (or none: the same); a zero means pre-padded input."""
        bad = []
        for i, feature in enumerate(features):
            mask = feature.get("attention_mask")
            if mask is None:
                continue
            _check_1d([mask], "attention_mask")
            if len(mask) != len(feature[length_key]):
                raise ValueError(
                    f"feature {i}: 'attention_mask' has {len(mask)} values for {len(feature[length_key])} tokens in "
                    f"{length_key!r}"
                )
            if not _all_ones(mask):
                bad.append(i)
        if bad:
            raise ValueError(
                f"features {bad[:10]} carry an attention_mask with zeros: they were padded when tokenized. "
                "Tokenize without padding (tokenizer(text, padding=False) or no padding='max_length'); the "
                "collator pads" + (" and packed batches have no padding at all" if self.mode == "packed" else "")
            )

    # -- laying out --------------------------------------------------------------------------------------------------

    def _padded_length(self, seq_lens: list[int], static_length: int | None) -> int:
        if self.mode == "static":
            assert static_length is not None  # guaranteed by __post_init__
            return static_length
        longest = max(seq_lens)
        multiple = self.pad_to_multiple_of or 1
        return -(-longest // multiple) * multiple

    def _lay_out(
        self, columns: Mapping[str, tuple[torch.Tensor, int]], seq_lens: list[int], static_length: int | None = None
    ) -> LaidOut:
        """Pad (static / dynamic) or pack flat ``(N,)`` columns; each comes with its padding value."""
        if self.mode == "packed":
            layout = packed_layout(seq_lens, position_start=self.position_start or 0)
            tensors = {key: flat.unsqueeze(0) for key, (flat, _) in columns.items()}  # (1, N)
            return LaidOut(tensors=tensors, attention_mask=None, layout=layout, left_pad=None)
        seqlen = self._padded_length(seq_lens, static_length)
        index = _padded_index(seq_lens, seqlen, self.tokenizer.padding_side)
        tensors = {key: repad(flat, index, pad_value=pad) for key, (flat, pad) in columns.items()}  # (B, T)
        num_tokens = index.indices.numel()
        attention_mask = repad(torch.ones(num_tokens, dtype=torch.int64), index, pad_value=0)  # (B, T)
        lens = torch.tensor(seq_lens, dtype=torch.int64)
        left_pad = seqlen - lens if self.tokenizer.padding_side == "left" else torch.zeros_like(lens)
        return LaidOut(tensors=tensors, attention_mask=attention_mask, layout=None, left_pad=left_pad)

    @staticmethod
    def _packed_keys(layout: PackedLayout, decoder: bool = False) -> dict[str, Any]:
        """Boundary keys of a packed batch, in transformers' names (``decoder_*`` names for a decoder side)."""
        if decoder:
            return {
                "decoder_position_ids": layout.position_ids.unsqueeze(0),  # (1, Nt)
                "decoder_seq_idx": layout.seq_idx.unsqueeze(0),  # (1, Nt)
                "decoder_cu_seq_lens": layout.cu_seqlens,  # (S + 1,)
                "decoder_max_length": layout.max_seqlen,
            }
        return {
            "position_ids": layout.position_ids.unsqueeze(0),  # (1, N)
            "seq_idx": layout.seq_idx.unsqueeze(0),  # (1, N)
            "cu_seq_lens_q": layout.cu_seqlens,  # (S + 1,)
            "cu_seq_lens_k": layout.cu_seqlens.clone(),
            "max_length_q": layout.max_seqlen,
            "max_length_k": layout.max_seqlen,
        }

    def _input_columns(self, columns: TokenColumns) -> dict[str, tuple[torch.Tensor, int]]:
        """input_ids (and token_type_ids when read) with their padding values."""
        out = {"input_ids": (columns.flat["input_ids"], self._pad_id())}
        if "token_type_ids" in columns.flat:
            out["token_type_ids"] = (columns.flat["token_type_ids"], self.tokenizer.pad_token_type_id)
        return out

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return 0 if pad is None else int(pad)  # packed mode never pads, any value will do

    def _assemble(self, laid: LaidOut) -> dict[str, Any]:
        """The input side of a batch: the laid-out tensors plus attention_mask (padded) or boundaries (packed)."""
        batch: dict[str, Any] = {"input_ids": laid.tensors["input_ids"]}
        if laid.attention_mask is not None:
            batch["attention_mask"] = laid.attention_mask
        else:
            assert laid.layout is not None
            batch.update(self._packed_keys(laid.layout))
        batch.update({k: v for k, v in laid.tensors.items() if k != "input_ids"})
        return batch


# --------------------------------------------------------------------------------------------------------------------
# One collator per task
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class SequenceClassificationCollator(BaseCollator):
    """One label per sequence.

    Features: ``input_ids``, optional ``attention_mask`` (all ones), ``token_type_ids``, ``labels`` or ``label``
    (int, float, or a list of floats for multi-label).

    Output keys:
        static / dynamic: ``input_ids`` (B, T) int64, ``attention_mask`` (B, T) int64, [``token_type_ids`` (B, T)],
            [``labels`` (B,) int64, or float32 (B,) / (B, K)].
        packed: ``input_ids`` (1, N), ``position_ids`` (1, N), ``seq_idx`` (1, N) int32, ``cu_seq_lens_q``,
            ``cu_seq_lens_k`` (S + 1,) int32, ``max_length_q``, ``max_length_k`` int, [``token_type_ids`` (1, N)],
            [``labels`` (S,)].
    """

    task: ClassVar[str] = "sequence-classification"

    def _collate(self, features: Sequence[Feature]) -> dict[str, Any]:
        columns = self._read_columns(
            features, ["input_ids"], optional=["attention_mask", "token_type_ids"], max_length=self.max_length
        )
        batch = self._assemble(self._lay_out(self._input_columns(columns), columns.seq_lens, self.max_length))
        label_key = self._label_key(features)
        if label_key is not None:
            batch["labels"] = _sequence_labels([f[label_key] for f in features], label_key)
        return batch


@dataclass
class TokenClassificationCollator(BaseCollator):
    """One label per sub-word token (``-100`` where no label is predicted, see :func:`align_labels_with_tokens`).

    Features: ``input_ids``, optional ``attention_mask`` (all ones), ``token_type_ids``, ``labels`` (one per
    token; word-level labels must be aligned first).

    Output keys:
        static / dynamic: ``input_ids``, ``attention_mask``, [``token_type_ids``], [``labels`` (B, T) int64,
            ``-100`` at padding], all (B, T).
        packed: ``input_ids`` (1, N), ``position_ids`` (1, N), ``seq_idx`` (1, N) int32, ``cu_seq_lens_q``,
            ``cu_seq_lens_k`` (S + 1,) int32, ``max_length_q``, ``max_length_k`` int, [``token_type_ids`` (1, N)],
            [``labels`` (1, N)].
    """

    task: ClassVar[str] = "token-classification"

    def _collate(self, features: Sequence[Feature]) -> dict[str, Any]:
        label_key = self._label_key(features)
        keys = ["input_ids"] + ([label_key] if label_key else [])
        columns = self._read_columns(
            features, keys, optional=["attention_mask", "token_type_ids"], max_length=self.max_length
        )
        to_lay = self._input_columns(columns)
        if label_key:
            to_lay["labels"] = (columns.flat["labels"], IGNORE_INDEX)
        return self._assemble(self._lay_out(to_lay, columns.seq_lens, self.max_length))


@dataclass
class MaskedLMCollator(BaseCollator):
    """Masked-language-model batches: masking from :mod:`hf_dynmask.data.mlm`, applied before padding or packing.

    Features: ``input_ids``, optional ``attention_mask`` (all ones), ``token_type_ids``, ``special_tokens_mask``
    (1 = never mask; else the tokenizer's ``all_special_ids`` are never masked), ``word_ids`` (whole-word masking;
    ``None`` / ``-1`` at special tokens; with the Trainer, keep that column with ``remove_unused_columns=False``, or
    rely on the ``##`` fallback). Features must not carry ``labels``: the collator makes them.

    Masking happens on each batch's flat tokens, so padding is never masked and, for a given random state, the mask
    is the same in every mode. ``mlm_masking="dynamic"`` draws from one ``torch.Generator`` seeded from ``seed`` (in a
    DataLoader worker, from ``seed`` and the worker's seed), a new mask at every call. ``mlm_masking="static"``
    derives each example's mask from its token ids, ``seed`` and the duplicate index ``epoch % num_duplicates`` (set
    with :meth:`set_epoch`), so an example keeps its mask within an epoch in any batch, position or mode.

    Output keys:
        static / dynamic: ``input_ids`` (masked), ``attention_mask``, [``token_type_ids``], ``labels`` (original id
            where selected, ``-100`` elsewhere and at padding), all (B, T) int64.
        packed: ``input_ids`` (1, N), ``position_ids`` (1, N), ``seq_idx`` (1, N) int32, ``cu_seq_lens_q``,
            ``cu_seq_lens_k`` (S + 1,) int32, ``max_length_q``, ``max_length_k`` int, [``token_type_ids`` (1, N)],
            ``labels`` (1, N).
    """

    mlm_probability: float = field(default=0.15, metadata={"help": "Fraction of tokens (or words) selected."})
    mask_replace_prob: float = field(default=0.8, metadata={"help": "Of the selected tokens, share set to [MASK]."})
    random_replace_prob: float = field(
        default=0.1, metadata={"help": "Of the selected tokens, share set to a random token (the rest is unchanged)."}
    )
    whole_word_masking: bool = field(
        default=False,
        metadata={"help": "Select whole words (feature word_ids, else the '##' WordPiece convention)."},
    )
    mlm_masking: Literal["dynamic", "static"] = field(
        default="dynamic",
        metadata={"help": "dynamic: a new mask at every call (RoBERTa); static: one mask per example (BERT)."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the masking randomness (both kinds)."})
    num_duplicates: int = field(
        default=10, metadata={"help": "static masking: number of distinct masks per example (epoch % num_duplicates)."}
    )

    task: ClassVar[str] = "masked-lm"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mlm_masking not in ("dynamic", "static"):
            raise ValueError(unknown_choice("mlm_masking", self.mlm_masking, ["dynamic", "static"]))
        self.num_duplicates = check_int("num_duplicates", self.num_duplicates, minimum=1)
        self.seed = check_int("seed", self.seed, minimum=0)
        check_bool("whole_word_masking", self.whole_word_masking)
        for name in ("mlm_probability", "mask_replace_prob", "random_replace_prob"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r} ({type(value).__name__})")
        recipe = MaskingRecipe(self.mlm_probability, self.mask_replace_prob, self.random_replace_prob)
        self._masker = TokenMasker(self.tokenizer, recipe, whole_word=self.whole_word_masking)
        self._duplicate_index = 0
        self._generator: torch.Generator | None = None
        self._generator_owner: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """Static masking: use duplicate index ``epoch % num_duplicates`` from now on."""
        self._duplicate_index = int(epoch) % self.num_duplicates

    @property
    def duplicate_index(self) -> int:
        return self._duplicate_index

    def _dynamic_generator(self) -> torch.Generator:
        """The dynamic-masking generator, seeded once per process (DataLoader workers mix in their own seed)."""
        info = torch.utils.data.get_worker_info()
        owner = None if info is None else int(info.seed)
        if self._generator is None or owner != self._generator_owner:
            self._generator = torch.Generator()
            self._generator.manual_seed(self.seed if owner is None else hash((self.seed, owner)) & (2**63 - 1))
            self._generator_owner = owner
        return self._generator

    def _collate(self, features: Sequence[Feature]) -> dict[str, Any]:
        for i, feature in enumerate(features):
            if "labels" in feature:
                raise ValueError(
                    f"feature {i} carries 'labels'; the masked-LM collator makes its own, remove the column "
                    "(dataset.remove_columns('labels'))"
                )
        optional = ["attention_mask", "token_type_ids", "special_tokens_mask"]
        if self.whole_word_masking:
            optional.append("word_ids")
        features_for_read = features
        if self.whole_word_masking and "word_ids" in features[0]:
            features_for_read = [_with_numeric_word_ids(f) for f in features]
        columns = self._read_columns(features_for_read, ["input_ids"], optional=optional, max_length=self.max_length)
        ids = columns.flat["input_ids"]
        word_ids = columns.flat.pop("word_ids", None)
        special = columns.flat.pop("special_tokens_mask", None)
        if self.mlm_masking == "static":
            masked = self._masker.mask_static(
                ids, columns.seq_lens, self.seed, self._duplicate_index, word_ids, special
            )
        else:
            masked = self._masker.mask(ids, columns.seq_lens, self._dynamic_generator(), word_ids, special)
        to_lay = self._input_columns(columns)
        to_lay["input_ids"] = (masked.input_ids, to_lay["input_ids"][1])
        to_lay["labels"] = (masked.labels, IGNORE_INDEX)
        return self._assemble(self._lay_out(to_lay, columns.seq_lens, self.max_length))


def _with_numeric_word_ids(feature: Feature) -> dict[str, Any]:
    """A shallow copy of ``feature`` whose ``word_ids`` has ``-1`` instead of ``None`` (special tokens)."""
    word_ids = feature["word_ids"]
    if isinstance(word_ids, (list, tuple)):
        word_ids = [-1 if w is None else w for w in word_ids]
    return {**feature, "word_ids": word_ids}


@dataclass
class CausalLMCollator(BaseCollator):
    """Next-token prediction; ``labels`` are the inputs (the model shifts them).

    Features: ``input_ids``, optional ``attention_mask`` (all ones), ``token_type_ids``, ``labels`` (one per token,
    e.g. ``-100`` over a prompt; default: a copy of ``input_ids``).

    Output keys:
        static / dynamic: ``input_ids``, ``attention_mask``, [``token_type_ids``], ``labels`` (= the labels, ``-100``
            at padding), all (B, T) int64.
        packed: ``input_ids`` (1, N), ``position_ids`` (1, N), ``seq_idx`` (1, N) int32, ``cu_seq_lens_q``,
            ``cu_seq_lens_k`` (S + 1,) int32, ``max_length_q``, ``max_length_k`` int, [``token_type_ids`` (1, N)],
            ``labels`` (1, N) int64 with ``labels[0, cu_seq_lens_q[s]] = -100`` for every sequence ``s``: after the
            model's shift, no token is predicted from the previous sequence (the first sequence's first label is
            never predicted anyway; it is set too, so every sequence is treated alike). Every other label is kept.
    """

    task: ClassVar[str] = "causal-lm"

    def _collate(self, features: Sequence[Feature]) -> dict[str, Any]:
        label_key = self._label_key(features)
        keys = ["input_ids"] + ([label_key] if label_key else [])
        columns = self._read_columns(
            features, keys, optional=["attention_mask", "token_type_ids"], max_length=self.max_length
        )
        to_lay = self._input_columns(columns)
        labels = columns.flat["labels"] if label_key else columns.flat["input_ids"].clone()
        if self.mode == "packed":
            starts = torch.cumsum(torch.tensor(columns.seq_lens), 0) - torch.tensor(columns.seq_lens)
            labels = labels.index_fill(0, starts, IGNORE_INDEX)
        to_lay["labels"] = (labels, IGNORE_INDEX)
        return self._assemble(self._lay_out(to_lay, columns.seq_lens, self.max_length))


@dataclass
class QuestionAnsweringCollator(BaseCollator):
    """Extractive question answering: the answer span as token positions.

    Features: ``input_ids``, optional ``attention_mask`` (all ones), ``token_type_ids``, ``start_positions`` and
    ``end_positions`` (token index inside the example, ``0 <= start <= end < len``).

    Positions follow their token: with left padding they move right by the row's padding; with left truncation
    they move left by the cut; an answer cut off by truncation points at token 0 (``[CLS]``), as in transformers'
    question-answering preprocessing.

    Output keys:
        static / dynamic: ``input_ids``, ``attention_mask``, [``token_type_ids``], all (B, T) int64;
            [``start_positions``, ``end_positions`` (B,) int64, index into the padded row].
        packed: ``input_ids`` (1, N), ``position_ids`` (1, N), ``seq_idx`` (1, N) int32, ``cu_seq_lens_q``,
            ``cu_seq_lens_k`` (S + 1,) int32, ``max_length_q``, ``max_length_k`` int, [``token_type_ids`` (1, N)],
            [``start_positions``, ``end_positions`` (S,) int64, relative to the start of each sequence].
    """

    task: ClassVar[str] = "question-answering"

    def _collate(self, features: Sequence[Feature]) -> dict[str, Any]:
        columns = self._read_columns(
            features, ["input_ids"], optional=["attention_mask", "token_type_ids"], max_length=self.max_length
        )
        laid = self._lay_out(self._input_columns(columns), columns.seq_lens, self.max_length)
        batch = self._assemble(laid)
        if self._label_key(features) is None:
            return batch
        positions = {}
        for key in ("start_positions", "end_positions"):
            values = []
            for i, feature in enumerate(features):
                if key not in feature:
                    raise ValueError(f"feature {i} has start_positions but no end_positions; give both")
                value = _position(feature[key], key, i)
                n = len(feature["input_ids"])
                if not 0 <= value < n:
                    raise ValueError(f"feature {i}: {key}={value} is outside its {n} tokens (0 <= position < {n})")
                values.append(value)
            positions[key] = torch.tensor(values, dtype=torch.int64) - torch.tensor(columns.cut_left)
        after = torch.nonzero(positions["start_positions"] > positions["end_positions"]).flatten().tolist()
        if after:
            i = after[0]
            raise ValueError(
                f"feature {i}: start_positions={features[i]['start_positions']} comes after "
                f"end_positions={features[i]['end_positions']}; an answer span needs start <= end (swapped columns?)"
            )
        lens = torch.tensor(columns.seq_lens)
        start, end = positions["start_positions"], positions["end_positions"]
        lost = (start < 0) | (end < 0) | (start >= lens) | (end >= lens)
        start, end = start.masked_fill(lost, 0), end.masked_fill(lost, 0)
        if laid.left_pad is not None:  # padded modes: index into the padded row
            start, end = start + laid.left_pad, end + laid.left_pad
        batch["start_positions"], batch["end_positions"] = start, end
        return batch


def _position(value: Any, key: str, index: int) -> int:
    """A token position: an int (NumPy and 0-d tensor integers too), never a float, a string or ``None``."""
    if isinstance(value, (torch.Tensor, np.ndarray)) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"feature {index}: {key}={value!r} ({type(value).__name__}) is not a token index; positions are integers "
            "(the answer's first and last token)"
        )
    return int(value)


@dataclass
class Seq2SeqCollator(BaseCollator):
    """Encoder-decoder batches: source ``input_ids``, target ``labels``, and the decoder inputs made from them.

    Features: ``input_ids`` (source), optional ``attention_mask`` (all ones), ``token_type_ids``, ``labels``
    (target ids, ``-100`` allowed). Both sides are padded on ``tokenizer.padding_side``. ``max_length`` bounds the
    source, ``max_target_length`` (default: ``max_length``) the target; ``truncation`` applies to both.

    ``decoder_input_ids`` are the labels shifted right per sequence, ``decoder_start_token_id`` first; a ``-100``
    label becomes the pad token there.

    Output keys:
        static / dynamic: ``input_ids``, ``attention_mask``, [``token_type_ids``] (B, T) int64; ``labels`` (B, Tt)
            int64 ``-100`` at padding, ``decoder_input_ids`` (B, Tt) pad token at padding, ``decoder_attention_mask``
            (B, Tt) int64.
        packed: encoder side ``input_ids`` (1, N), ``position_ids`` (1, N), ``seq_idx`` (1, N) int32,
            ``cu_seq_lens_q``, ``cu_seq_lens_k`` (S + 1,) int32, ``max_length_q``, ``max_length_k`` int,
            [``token_type_ids`` (1, N)]; decoder side ``labels`` (1, Nt), ``decoder_input_ids`` (1, Nt),
            ``decoder_position_ids`` (1, Nt), ``decoder_seq_idx`` (1, Nt) int32, ``decoder_cu_seq_lens`` (S + 1,)
            int32, ``decoder_max_length`` int.

    Stock encoder-decoders (BART, Marian, T5) take the static and dynamic batches. Packed batches need a model that
    keeps the pairs apart on both sides and across: DynMask's encoder-decoder family
    (``DynMaskSeq2SeqForConditionalGeneration``), which reads every key above.
    """

    max_target_length: int | None = field(
        default=None, metadata={"help": "Target side: padded length in static mode (default max_length), and bound."}
    )
    decoder_start_token_id: int | None = field(
        default=None,
        metadata={"help": "First decoder input of every target (model.config.decoder_start_token_id)."},
    )

    task: ClassVar[str] = "seq2seq"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_target_length is None:
            self.max_target_length = self.max_length
        self.max_target_length = check_int("max_target_length", self.max_target_length, minimum=1)
        if self.decoder_start_token_id is None:
            raise ValueError(
                "seq2seq collation needs decoder_start_token_id=... (the model's "
                "model.config.decoder_start_token_id, e.g. the pad id for T5, the eos id for BART)"
            )
        self.decoder_start_token_id = check_int("decoder_start_token_id", self.decoder_start_token_id, minimum=0)

    def _collate(self, features: Sequence[Feature]) -> dict[str, Any]:
        for i, feature in enumerate(features):
            if "labels" not in feature:
                raise ValueError(f"feature {i} has no 'labels' (target token ids); tokenize the target as labels")
        source = self._read_columns(
            features, ["input_ids"], optional=["attention_mask", "token_type_ids"], max_length=self.max_length
        )
        target = self._read_columns(features, ["labels"], max_length=self.max_target_length, length_key="labels")
        batch = self._assemble(self._lay_out(self._input_columns(source), source.seq_lens, self.max_length))

        labels = target.flat["labels"].long()  # (Nt,)
        starts = torch.cumsum(torch.tensor(target.seq_lens), 0) - torch.tensor(target.seq_lens)
        decoder_input_ids = labels.roll(1).index_fill(0, starts, int(self.decoder_start_token_id))  # (Nt,)
        if bool((decoder_input_ids == IGNORE_INDEX).any()):
            if self.tokenizer.pad_token_id is None:
                raise ValueError("labels contain -100 but the tokenizer has no pad token to put in decoder_input_ids")
            decoder_input_ids = decoder_input_ids.masked_fill(decoder_input_ids == IGNORE_INDEX, self._pad_id())
        decoder = self._lay_out(
            {"labels": (labels, IGNORE_INDEX), "decoder_input_ids": (decoder_input_ids, self._pad_id())},
            target.seq_lens,
            self.max_target_length,
        )
        batch.update(decoder.tensors)
        if decoder.attention_mask is not None:
            batch["decoder_attention_mask"] = decoder.attention_mask
        else:
            assert decoder.layout is not None
            batch.update(self._packed_keys(decoder.layout, decoder=True))
        return batch


# --------------------------------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------------------------------

#: The collator class of every task, as its record (:data:`hf_dynmask.data.tasks.TASKS`) names it.
TASKS: dict[str, type[BaseCollator]] = {name: globals()[record.collator] for name, record in TASK_RECORDS.items()}


def make_collator(tokenizer: Any, task: str, mode: str = "dynamic", **options: Any) -> BaseCollator:
    """The collator for ``task`` in ``mode``; ``options`` are the fields of the task's class.

    Tasks: the names in :data:`hf_dynmask.data.tasks.TASKS` (``sequence-classification``, ``token-classification``,
    ``question-answering``, ``masked-lm``, ``causal-lm``, ``seq2seq``). Modes: ``static`` (needs ``max_length``),
    ``dynamic``, ``packed``.
    """
    get_task(task)
    if mode not in MODES:
        raise ValueError(unknown_choice("mode", mode, MODES))
    cls = TASKS[task]
    valid = sorted(f.name for f in fields(cls) if f.name not in ("tokenizer", "mode"))
    unknown = sorted(set(options) - set(valid))
    if unknown:
        close = {name: difflib.get_close_matches(name, valid, n=1) for name in unknown}
        hints = [f"{name!r} -> {match[0]!r}" for name, match in close.items() if match]
        raise ValueError(
            f"unknown option(s) {unknown} for task {task!r}; valid options: {valid}"
            + (f"; did you mean {', '.join(hints)}?" if hints else "")
        )
    return cls(tokenizer=tokenizer, mode=mode, **options)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------------------
# Token classification helpers
# --------------------------------------------------------------------------------------------------------------------


def align_labels_with_tokens(
    word_labels: Sequence[int], word_ids: Sequence[int | None], label_all_subwords: bool = False
) -> list[int]:
    """Per-token labels from per-word labels and a fast tokenizer's ``word_ids()``.

    The first sub-word of each word gets the word's label; the other sub-words get ``-100`` (or the word's label
    with ``label_all_subwords=True``); special tokens (``None``) get ``-100``.

    >>> align_labels_with_tokens([3, 7], [None, 0, 0, 1, None])
    [-100, 3, -100, 7, -100]
    >>> align_labels_with_tokens([3, 7], [None, 0, 0, 1, None], label_all_subwords=True)
    [-100, 3, 3, 7, -100]
    """
    labels = []
    previous = None
    for word in word_ids:
        if word is None:
            labels.append(IGNORE_INDEX)
        elif word != previous:
            if not 0 <= word < len(word_labels):
                raise ValueError(f"word id {word} has no label: {len(word_labels)} word labels were given")
            labels.append(int(word_labels[word]))
        else:
            labels.append(int(word_labels[word]) if label_all_subwords else IGNORE_INDEX)
        previous = word
    return labels


def tokenize_and_align(
    tokenizer: Any,
    words: Sequence[str] | Sequence[Sequence[str]],
    tags: Sequence[int] | Sequence[Sequence[int]],
    label_all_subwords: bool = False,
    return_word_ids: bool = False,
    **tokenizer_kwargs: Any,
) -> dict[str, Any]:
    """Tokenize pre-split words and align their tags to sub-words, for ``Dataset.map`` (batched or not).

    Returns the tokenizer's fields (no padding) plus ``labels`` (and ``word_ids``, ``-1`` at special tokens, with
    ``return_word_ids=True``), each a list for one example or a list of lists for a batch.

    Example: ``dataset.map(lambda b: tokenize_and_align(tok, b["tokens"], b["tags"]), batched=True)``.
    """
    single = len(words) == 0 or isinstance(words[0], str)
    batch_words = [words] if single else words
    batch_tags = [tags] if single else tags
    if len(batch_words) != len(batch_tags):
        raise ValueError(f"{len(batch_words)} word lists but {len(batch_tags)} tag lists")
    encoding = tokenizer(list(batch_words), is_split_into_words=True, **tokenizer_kwargs)
    out: dict[str, Any] = {key: list(values) for key, values in encoding.items()}
    out["labels"] = []
    if return_word_ids:
        out["word_ids"] = []
    for i, (word_list, tag_list) in enumerate(zip(batch_words, batch_tags, strict=True)):
        if len(word_list) != len(tag_list):
            raise ValueError(f"example {i}: {len(word_list)} words but {len(tag_list)} tags")
        word_ids = encoding.word_ids(i)
        out["labels"].append(align_labels_with_tokens(tag_list, word_ids, label_all_subwords))
        if return_word_ids:
            out["word_ids"].append([-1 if w is None else w for w in word_ids])
    return {key: values[0] for key, values in out.items()} if single else out


# --------------------------------------------------------------------------------------------------------------------
# Logging helper
# --------------------------------------------------------------------------------------------------------------------


class TokenCounts(NamedTuple):
    """Tokens of a collated batch: ``real`` ones, and ``padded`` = the size of the input (real + padding)."""

    real: int
    padded: int


def token_counts(batch: Mapping[str, Any]) -> TokenCounts:
    """Count the input tokens of any collated batch (the encoder side for seq2seq).

    Padded batches: ``attention_mask.sum()`` real of ``attention_mask.numel()``. Packed batches (no
    ``attention_mask``, boundary keys or a single row): ``N`` real of ``N``.
    """
    attention_mask = batch.get("attention_mask")
    input_ids = batch["input_ids"]
    if attention_mask is not None:
        return TokenCounts(real=int(attention_mask.sum()), padded=attention_mask.numel())
    if "cu_seq_lens_q" in batch or "seq_idx" in batch or input_ids.shape[0] == 1:
        return TokenCounts(real=input_ids.numel(), padded=input_ids.numel())
    raise ValueError(
        "a batch with several rows and no attention_mask: cannot tell padding from tokens; collate with "
        "hf_dynmask.data.collators or return the attention_mask"
    )

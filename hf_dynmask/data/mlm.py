"""Masked-language-model masking: which tokens to hide, and what to put in their place.

The collators (:mod:`.collators`) call this module on the *flat* tokens of a batch, before any padding or
packing, so padding is never masked and the mask does not depend on the batch layout.

Dimension legend:
    N  tokens of one or more sequences laid end to end (no padding)
    S  number of sequences                   W  number of words (whole-word masking)
    V  vocabulary size (``len(tokenizer)``)

The BERT recipe (:class:`MaskingRecipe`): select ``probability`` (15%) of the maskable tokens; of the selected ones
``mask_replace_prob`` (80%) become the mask token, ``random_replace_prob`` (10%) a token drawn uniformly from the
``V`` ids, and the rest (10%) stay unchanged. ``labels`` hold the original id at selected positions and ``-100``
everywhere else. Special tokens are never selected.

Whole-word masking selects *words* with ``probability`` and then every token of a selected word (the 80/10/10
replacement is still decided per token). Word boundaries come from the feature's ``word_ids`` when given (the
``BatchEncoding.word_ids()`` of a fast tokenizer, ``None`` / ``-1`` at special tokens), otherwise from the WordPiece
convention that a token spelled ``##...`` continues the previous word (BERT-style vocabularies only). A word never
spans two sequences.

Two ways to draw the randomness:
    dynamic (RoBERTa)  one ``torch.Generator`` seeded once; every call draws a fresh mask.
    static (BERT)      a generator per example, seeded from ``blake2b(token ids, seed, duplicate index)``
                       (:func:`static_mask_generator`): the same example always gets the same mask, whatever batch,
                       position or layout it lands in, until the duplicate index changes.

>>> ids = torch.tensor([101, 7, 8, 9, 102])
>>> recipe = MaskingRecipe(probability=1.0, mask_replace_prob=1.0, random_replace_prob=0.0)
>>> out = mask_tokens(ids, ids < 100, recipe, mask_token_id=103, vocab_size=200, generator=torch.Generator())
>>> out.input_ids.tolist(), out.labels.tolist()
([101, 103, 103, 103, 102], [-100, 7, 8, 9, -100])
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from ..modeling.input_checks import IGNORE_INDEX  # the label value transformers' losses skip (re-exported here)

__all__ = [
    "IGNORE_INDEX",
    "MaskedTokens",
    "MaskingRecipe",
    "TokenMasker",
    "mask_tokens",
    "static_mask_generator",
    "word_starts_from_word_ids",
    "wordpiece_continuation_table",
]


class MaskedTokens(NamedTuple):
    """Result of masking ``N`` flat tokens."""

    input_ids: torch.Tensor  # int64 (N,): selected tokens replaced (mask / random / unchanged)
    labels: torch.Tensor  # int64 (N,): original id where selected, IGNORE_INDEX elsewhere
    selected: torch.Tensor  # bool (N,): True where the token was selected for prediction


@dataclass(frozen=True)
class MaskingRecipe:
    """How many tokens to select, and what replaces them (BERT's 15% and 80/10/10 by default)."""

    probability: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1

    def __post_init__(self) -> None:
        for name in ("probability", "mask_replace_prob", "random_replace_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.mask_replace_prob + self.random_replace_prob > 1.0 + 1e-9:
            raise ValueError(
                f"mask_replace_prob + random_replace_prob must be <= 1 (the rest stays unchanged), got "
                f"{self.mask_replace_prob} + {self.random_replace_prob}"
            )


def mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    recipe: MaskingRecipe,
    *,
    mask_token_id: int,
    vocab_size: int,
    generator: torch.Generator,
    word_starts: torch.Tensor | None = None,
) -> MaskedTokens:
    """Apply ``recipe`` to flat tokens.

    Args:
        input_ids: int64 ``(N,)``, never modified.
        maskable: bool ``(N,)``, True where a token may be selected (False at special tokens).
        word_starts: optional bool ``(N,)``, True at the first token of every word (``word_starts[0]`` must be True);
            when given, words are selected as a whole.

    The draws, in this order, are ``rand(W or N)`` (selection), ``rand(N)`` (replacement kind) and
    ``randint(V, (N,))`` (random tokens), so a given generator state always gives the same mask.
    """
    n = input_ids.numel()
    if word_starts is None:
        selected = torch.rand(n, generator=generator) < recipe.probability
    else:
        word_of_token = torch.cumsum(word_starts, 0) - 1  # (N,) word index of each token
        words_selected = torch.rand(int(word_starts.sum()), generator=generator) < recipe.probability  # (W,)
        selected = words_selected[word_of_token]
    selected &= maskable
    kind = torch.rand(n, generator=generator)
    random_ids = torch.randint(vocab_size, (n,), generator=generator, dtype=input_ids.dtype)
    to_mask = selected & (kind < recipe.mask_replace_prob)
    to_random = (
        selected & (kind >= recipe.mask_replace_prob) & (kind < recipe.mask_replace_prob + recipe.random_replace_prob)
    )
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    masked = torch.where(to_random, random_ids, masked)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return MaskedTokens(input_ids=masked, labels=labels, selected=selected)


def static_mask_generator(input_ids: torch.Tensor, seed: int, duplicate_index: int) -> torch.Generator:
    """A generator that depends only on one example's token ids ``(n,)``, ``seed`` and ``duplicate_index``.

    >>> ids = torch.tensor([5, 6, 7])
    >>> a = torch.rand(3, generator=static_mask_generator(ids, seed=0, duplicate_index=0))
    >>> b = torch.rand(3, generator=static_mask_generator(ids.clone(), seed=0, duplicate_index=0))
    >>> c = torch.rand(3, generator=static_mask_generator(ids, seed=0, duplicate_index=1))
    >>> bool((a == b).all()), bool((a == c).all())
    (True, False)
    """
    digest = hashlib.blake2b(digest_size=8)
    digest.update(input_ids.to(torch.int64).contiguous().numpy().astype("<i8", copy=False).tobytes())
    digest.update(int(seed).to_bytes(16, "little", signed=True))
    digest.update(int(duplicate_index).to_bytes(8, "little", signed=True))
    generator = torch.Generator()
    generator.manual_seed(int.from_bytes(digest.digest(), "little") & (2**63 - 1))
    return generator


def word_starts_from_word_ids(word_ids: torch.Tensor, seq_lens: Sequence[int]) -> torch.Tensor:
    """First token of every word, bool ``(N,)``, from ``word_ids`` int64 ``(N,)`` (``-1`` at special tokens).

    A new word starts where the word id changes, at every special token and at every sequence start.

    >>> word_starts_from_word_ids(torch.tensor([-1, 0, 0, 1, -1, -1, 0, 0]), [5, 3]).tolist()
    [True, True, False, True, True, True, True, False]
    """
    starts = torch.ones_like(word_ids, dtype=torch.bool)
    starts[1:] = (word_ids[1:] != word_ids[:-1]) | (word_ids[1:] < 0)
    starts[_sequence_starts(seq_lens)] = True
    return starts


def wordpiece_continuation_table(tokenizer: Any) -> torch.Tensor:
    """bool ``(V,)``: True for the ids whose token is a WordPiece continuation (spelled ``##...``)."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return torch.tensor([isinstance(t, str) and t.startswith("##") for t in tokens], dtype=torch.bool)


def _sequence_starts(seq_lens: Sequence[int]) -> torch.Tensor:
    """int64 ``(S,)``: flat index of the first token of every sequence."""
    lens = torch.as_tensor(list(seq_lens), dtype=torch.int64)
    return torch.cumsum(lens, 0) - lens


class TokenMasker:
    """A :class:`MaskingRecipe` bound to a tokenizer's mask token, special tokens and vocabulary.

    Args:
        tokenizer: needs a ``mask_token``; ``len(tokenizer)`` is the range of random replacements.
        recipe: the probabilities.
        whole_word: select whole words (see the module docstring for where word boundaries come from).
    """

    def __init__(self, tokenizer: Any, recipe: MaskingRecipe, whole_word: bool = False) -> None:
        if tokenizer.mask_token_id is None:
            raise ValueError(
                "masked-LM collation needs a tokenizer with a mask token; use a BERT/RoBERTa-style tokenizer or set "
                "tokenizer.add_special_tokens({'mask_token': '[MASK]'}) and resize the model's embeddings"
            )
        self.tokenizer = tokenizer
        self.recipe = recipe
        self.whole_word = whole_word
        self.mask_token_id = int(tokenizer.mask_token_id)
        self.vocab_size = len(tokenizer)
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.int64)
        self._continuation: torch.Tensor | None = None

    def maskable(self, input_ids: torch.Tensor, special_tokens_mask: torch.Tensor | None = None) -> torch.Tensor:
        """bool ``(N,)``: True where a token may be selected (not a special token)."""
        if special_tokens_mask is not None:
            return ~special_tokens_mask.bool()
        return ~torch.isin(input_ids, self.special_ids)

    def word_starts(
        self, input_ids: torch.Tensor, seq_lens: Sequence[int], word_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """bool ``(N,)`` word starts, from ``word_ids`` when given, else from the ``##`` WordPiece convention."""
        if word_ids is not None:
            return word_starts_from_word_ids(word_ids, seq_lens)
        if self._continuation is None:
            self._continuation = wordpiece_continuation_table(self.tokenizer)
            if not bool(self._continuation.any()):
                raise ValueError(
                    "whole-word masking needs word boundaries: this tokenizer has no '##' WordPiece continuation "
                    "tokens, so give each feature its word_ids (tokenize_and_align(..., return_word_ids=True) or "
                    "encoding.word_ids())"
                )
        starts = ~self._continuation[input_ids.clamp(0, self._continuation.numel() - 1)]
        starts[_sequence_starts(seq_lens)] = True
        return starts

    def mask(
        self,
        input_ids: torch.Tensor,
        seq_lens: Sequence[int],
        generator: torch.Generator,
        word_ids: torch.Tensor | None = None,
        special_tokens_mask: torch.Tensor | None = None,
    ) -> MaskedTokens:
        """Mask flat tokens ``(N,)`` of sequences of ``seq_lens`` with one generator (dynamic masking)."""
        starts = self.word_starts(input_ids, seq_lens, word_ids) if self.whole_word else None
        return mask_tokens(
            input_ids,
            self.maskable(input_ids, special_tokens_mask),
            self.recipe,
            mask_token_id=self.mask_token_id,
            vocab_size=self.vocab_size,
            generator=generator,
            word_starts=starts,
        )

    def mask_static(
        self,
        input_ids: torch.Tensor,
        seq_lens: Sequence[int],
        seed: int,
        duplicate_index: int,
        word_ids: torch.Tensor | None = None,
        special_tokens_mask: torch.Tensor | None = None,
    ) -> MaskedTokens:
        """Mask flat tokens ``(N,)`` example by example, each with :func:`static_mask_generator` (static masking)."""
        lens = list(seq_lens)
        ids_split = torch.split(input_ids, lens)
        words_split = [None] * len(lens) if word_ids is None else torch.split(word_ids, lens)
        special_split = [None] * len(lens) if special_tokens_mask is None else torch.split(special_tokens_mask, lens)
        pieces = [
            self.mask(ids, [ids.numel()], static_mask_generator(ids, seed, duplicate_index), words, special)
            for ids, words, special in zip(ids_split, words_split, special_split, strict=True)
        ]
        return MaskedTokens(*(torch.cat(parts) for parts in zip(*pieces, strict=True)))

"""What each batching strategy would pad, from the example lengths alone (no model is run).

The strategies, for ``num_examples`` examples of token lengths ``lengths`` (already truncated to ``max_length``):

    static          every row padded to ``max_length``, batches of ``batch_size`` in random order.
    dynamic_random  batches of ``batch_size`` in random order, each padded to its longest example.
    length_grouped  transformers' ``LengthGroupedSampler`` order (megabatches of 50 batches sorted by length),
                    each batch padded to its longest example.
    sorted          all examples sorted by length, then batched (the smaller batch placed where it pads least): the
                    least padding batches of ``batch_size`` can have.
    packed          best-fit-decreasing packs of at most ``token_budget`` tokens (:func:`..data.packing.pack`),
                    sequences back to back in one row: no padding token is computed at all. ``budget_fill`` is how
                    full the packs are (the waste *if* every pack were padded to the budget, e.g. for fixed shapes).

Every strategy reports ``computed_tokens`` (the input slots the model computes, padding included) and
``padding_fraction = 1 - real_tokens / computed_tokens``.

>>> waste = padding_waste([2, 4, 4, 6], max_length=8, batch_size=2, token_budget=8, seed=0)
>>> waste["static"].computed_tokens, waste["sorted"].computed_tokens, waste["packed"].num_batches
(32, 20, 2)
>>> round(waste["static"].padding_fraction, 3), waste["packed"].padding_fraction, waste["packed"].budget_fill
(0.5, 0.0, 1.0)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..data.packing import pack, read_lengths
from .atomic import atomic_path

logger = logging.getLogger(__name__)

__all__ = [
    "STRATEGIES",
    "BatchOrders",
    "LengthHistogram",
    "LengthStats",
    "StrategyWaste",
    "batch_orders",
    "format_histogram",
    "length_histogram",
    "length_stats",
    "format_report",
    "padding_waste",
    "plot_report",
    "waste_report",
]

STRATEGIES = ("static", "dynamic_random", "length_grouped", "sorted", "packed")


@dataclass(frozen=True)
class LengthStats:
    """Summary of token lengths ``(num_examples,)``."""

    num_examples: int
    total_tokens: int
    min: int
    median: float
    mean: float
    p90: float
    p99: float
    max: int


@dataclass(frozen=True)
class LengthHistogram:
    """``counts[i]`` examples have a length in ``[edges[i], edges[i + 1])`` (the last bin includes its right edge)."""

    edges: list[int]
    counts: list[int]


@dataclass(frozen=True)
class StrategyWaste:
    """What one batching strategy computes over the whole data set (one epoch)."""

    num_batches: int
    real_tokens: int
    computed_tokens: int  # input slots, padding included (== real_tokens when packed)
    padding_fraction: float  # 1 - real_tokens / computed_tokens
    budget_fill: float | None = None  # packed only: real tokens / (num_batches * token_budget)

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


class BatchOrders(NamedTuple):
    """One epoch of batches (lists of example indices) in each order."""

    random: list[list[int]]
    grouped: list[list[int]]
    sorted: list[list[int]]


def length_stats(lengths: Sequence[int] | np.ndarray) -> LengthStats:
    """Count, total and quantiles of ``lengths``.

    >>> length_stats([1, 2, 3, 10]).median, length_stats([1, 2, 3, 10]).max
    (2.5, 10)
    """
    lens = read_lengths(np.asarray(lengths, dtype=np.int64))
    return LengthStats(
        num_examples=int(lens.size),
        total_tokens=int(lens.sum()),
        min=int(lens.min()),
        median=float(np.median(lens)),
        mean=float(lens.mean()),
        p90=float(np.percentile(lens, 90)),
        p99=float(np.percentile(lens, 99)),
        max=int(lens.max()),
    )


def length_histogram(lengths: Sequence[int] | np.ndarray, bins: int = 16) -> LengthHistogram:
    """Integer-edged histogram of ``lengths`` with at most ``bins`` bins from the shortest to the longest.

    >>> length_histogram([1, 2, 2, 3, 8], bins=4)
    LengthHistogram(edges=[1, 3, 5, 7, 9], counts=[3, 1, 0, 1])
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    lens = read_lengths(np.asarray(lengths, dtype=np.int64))
    low, high = int(lens.min()), int(lens.max())
    width = max(1, -(-(high - low + 1) // bins))
    edges = list(range(low, high + width + 1, width))
    counts = np.histogram(lens, bins=np.asarray(edges) - 0.5)[0]
    return LengthHistogram(edges=edges, counts=[int(c) for c in counts])


def format_histogram(histogram: LengthHistogram, width: int = 50) -> str:
    """A text bar chart of a :class:`LengthHistogram`, one line per bin.

    >>> print(format_histogram(LengthHistogram(edges=[1, 3, 5, 6], counts=[4, 2, 1]), width=4))
          1-2 |####  4
          3-4 |##    2
            5 |#     1
    """
    top = max(histogram.counts) or 1
    lines = []
    for start, end, count in zip(histogram.edges[:-1], histogram.edges[1:], histogram.counts, strict=True):
        bar = "#" * round(width * count / top)
        label = str(start) if end - 1 == start else f"{start}-{end - 1}"
        lines.append(f"{label:>9} |{bar:<{width}}  {count}")
    return "\n".join(lines)


def batch_orders(lengths: Sequence[int] | np.ndarray, batch_size: int, seed: int = 0) -> BatchOrders:
    """One epoch of batches of ``batch_size`` examples in three orders: random, length-grouped and sorted.

    ``grouped`` is transformers' ``LengthGroupedSampler`` (its megabatches of 50 batches, longest first in each),
    driven by a ``torch.Generator`` seeded with ``seed``; ``random`` a NumPy permutation seeded with ``seed + 1``;
    ``sorted`` all examples by length, longest batch first, the smaller batch (if any) placed where it pads least:
    the least padding of any cut of the sorted examples into batches of these sizes. In ``random`` and ``grouped``
    the last batch may be smaller.
    """
    from transformers.trainer_pt_utils import LengthGroupedSampler

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lens = read_lengths(np.asarray(lengths, dtype=np.int64)).tolist()
    n = len(lens)
    random_order = np.random.default_rng(seed + 1).permutation(n).tolist()
    generator = torch.Generator().manual_seed(seed)
    grouped = list(LengthGroupedSampler(batch_size, lengths=lens, generator=generator))

    def batches(order: list[int]) -> list[list[int]]:
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]

    return BatchOrders(
        random=batches(random_order), grouped=batches(grouped), sorted=_sorted_batches(lens, batch_size)
    )


def _sorted_batches(lens: list[int], batch_size: int) -> list[list[int]]:
    """Examples sorted by length, cut into batches of ``batch_size`` plus one smaller batch of ``r = n % batch_size``
    where it pads least; listed longest first.

    Sorted ascending, a batch costs ``size * (its last length)``. With ``k`` full batches before the small one, the
    full batches end at ``(j + 1) * B - 1`` (before it) or ``(j + 1) * B + r - 1`` (after it): the cost of every
    ``k`` follows from two cumulative sums.
    """
    n = len(lens)
    order = sorted(range(n), key=lambda i: lens[i])
    ascending = np.asarray([lens[i] for i in order], dtype=np.int64)
    full, r = divmod(n, batch_size)
    k = full
    if r and full:
        ends = np.arange(1, full + 1) * batch_size - 1  # (full,) ends of the full batches when the small one is last
        before = np.concatenate([[0], np.cumsum(ascending[ends])])  # cost / B of the first k full batches
        after = np.concatenate([np.cumsum(ascending[ends + r][::-1])[::-1], [0]])  # of full batches k.. shifted by r
        small = ascending[np.arange(full + 1) * batch_size + r - 1]  # last length of the small batch at position k
        k = int(np.argmin(batch_size * (before + after) + r * small))
    sizes = [batch_size] * k + ([r] if r else []) + [batch_size] * (full - k)
    bounds = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)][::-1]


def _padded_waste(lens: np.ndarray, batches: list[list[int]], pad_to: int | None) -> StrategyWaste:
    real = int(lens.sum())
    computed = sum(len(b) * (pad_to if pad_to is not None else int(lens[b].max())) for b in batches)
    return StrategyWaste(len(batches), real, computed, 1 - real / computed)


def padding_waste(
    lengths: Sequence[int] | np.ndarray,
    *,
    max_length: int,
    batch_size: int,
    token_budget: int,
    seed: int = 0,
) -> dict[str, StrategyWaste]:
    """The padding of every strategy of :data:`STRATEGIES` over one epoch of ``lengths`` ``(num_examples,)``.

    Args:
        lengths: token lengths, each in ``[1, max_length]`` (truncate when tokenizing).
        max_length: the static padded length.
        batch_size: examples per batch of the padded strategies.
        token_budget: the most tokens of one pack (packed strategy); at least the longest example.
        seed: seed of the random and length-grouped orders.
    """
    lens = read_lengths(np.asarray(lengths, dtype=np.int64))
    if int(lens.max()) > max_length:
        raise ValueError(
            f"an example has {int(lens.max())} tokens, more than max_length={max_length}; truncate the lengths to "
            "max_length first (static padding cannot hold it)"
        )
    orders = batch_orders(lens, batch_size, seed)
    result = {
        "static": _padded_waste(lens, orders.random, max_length),
        "dynamic_random": _padded_waste(lens, orders.random, None),
        "length_grouped": _padded_waste(lens, orders.grouped, None),
        "sorted": _padded_waste(lens, orders.sorted, None),
    }
    packed = pack(lens, token_budget)
    result["packed"] = StrategyWaste(packed.num_packs, packed.num_tokens, packed.num_tokens, 0.0, packed.efficiency)
    return result


def waste_report(
    lengths: Sequence[int] | np.ndarray,
    *,
    max_length: int,
    batch_size: int,
    token_budget: int,
    seed: int = 0,
    bins: int = 16,
    truncated: int = 0,
) -> dict[str, Any]:
    """Everything ``hf-dynmask inspect`` reports, JSON-ready: ``settings``, ``lengths`` (:class:`LengthStats` plus
    ``truncated``, the examples cut to ``max_length``), ``histogram`` (:class:`LengthHistogram`) and ``strategies``
    (name -> :class:`StrategyWaste` as a dict)."""
    waste = padding_waste(lengths, max_length=max_length, batch_size=batch_size, token_budget=token_budget, seed=seed)
    return {
        "settings": {"max_length": max_length, "batch_size": batch_size, "token_budget": token_budget, "seed": seed},
        "lengths": asdict(length_stats(lengths)) | {"truncated": truncated},
        "histogram": asdict(length_histogram(lengths, bins)),
        "strategies": {name: w.as_dict() for name, w in waste.items()},
    }


def format_report(report: dict[str, Any]) -> str:
    """The text form of :func:`waste_report`: statistics, histogram and one line per strategy."""
    stats, settings = report["lengths"], report["settings"]
    lines = [
        f"{stats['num_examples']} examples, {stats['total_tokens']} tokens; length min {stats['min']}, median "
        f"{stats['median']:g}, mean {stats['mean']:.1f}, p90 {stats['p90']:g}, p99 {stats['p99']:g}, max "
        f"{stats['max']} ({stats['truncated']} truncated to {settings['max_length']})",
        "",
        format_histogram(LengthHistogram(**report["histogram"])),
        "",
        "| strategy | batches | computed tokens | padding | note |",
        "|---|---:|---:|---:|---|",
    ]
    notes = {
        "static": f"every row padded to {settings['max_length']}",
        "dynamic_random": f"batches of {settings['batch_size']}, random order",
        "length_grouped": "transformers' LengthGroupedSampler (group_by_length=True)",
        "sorted": "whole data set sorted by length (least padding of fixed-size batches)",
        "packed": f"packs of <= {settings['token_budget']} tokens, no padding",
    }
    for name, waste in report["strategies"].items():
        note = notes.get(name, "")
        if waste.get("budget_fill") is not None:
            note += f"; packs {waste['budget_fill']:.1%} full"
        lines.append(
            f"| {name} | {waste['num_batches']} | {waste['computed_tokens']} | {waste['padding_fraction']:.1%} | "
            f"{note} |"
        )
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: str | Path) -> Path:
    """A PNG of the length histogram and the padding fraction of each strategy. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (histogram, padding) = plt.subplots(1, 2, figsize=(12, 4.5))
    edges, counts = report["histogram"]["edges"], report["histogram"]["counts"]
    histogram.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges[:-1], edges[1:], strict=True)], align="edge")
    histogram.set_xlabel("tokens per example")
    histogram.set_ylabel("examples")
    histogram.set_title("Length histogram")
    names = list(report["strategies"])
    padding.barh(names, [100 * report["strategies"][n]["padding_fraction"] for n in names], color="#c44e52")
    padding.invert_yaxis()
    padding.set_xlabel("padding (% of computed tokens)")
    padding.set_title("Padding per strategy")
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    return path

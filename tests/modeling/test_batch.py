"""The batch contract (``hf_dynmask.modeling.batch``): one input, one verdict, one message, on every path.

Every case of the table runs through the three paths that take batches: the DynMask encoder family, the DynMask
seq2seq family (its source side, the encoder ``generate`` calls) and a stock BERT on ``attn_implementation=
"dynmask_varlen"`` (checked at the model's entry). A refused case must raise ``ValueError`` with the same phrase on all
three; an accepted case must give every sequence the last hidden state it gets alone on the same model (fp32, 1e-5).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch
from transformers import AutoModel, BertConfig

import hf_dynmask  # noqa: F401  (registers dynmask_varlen)
from hf_dynmask import DynMaskConfig, DynMaskModel
from hf_dynmask.modeling import DynMaskSeq2SeqConfig, DynMaskSeq2SeqModel
from hf_dynmask.modeling.batch import target_padding_from_labels
from hf_dynmask.modeling.layout import cu_seqlens_from_seq_lens, position_ids_from_cu_seqlens

ATOL = 1e-5
VOCAB = 100
MAX_POSITIONS = 64
LENS = [3, 1, 6, 4]


def _encoder() -> torch.nn.Module:
    return DynMaskModel(
        DynMaskConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=MAX_POSITIONS,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )  # fmt: skip
    )


def _seq2seq() -> torch.nn.Module:
    config = DynMaskSeq2SeqConfig(
        vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=MAX_POSITIONS,
        dropout=0.0,
    )  # fmt: skip
    return DynMaskSeq2SeqModel(config)


def _stock_bert() -> torch.nn.Module:
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=MAX_POSITIONS, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return AutoModel.from_config(config, attn_implementation="dynmask_varlen")


@pytest.fixture(scope="module")
def paths() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "dynmask-encoder": _encoder().eval(),
        "dynmask-seq2seq": _seq2seq().eval().get_encoder(),
        "stock-bert-varlen": _stock_bert().eval(),
    }


def _sequences() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(3, VOCAB, (n,), generator=generator) for n in LENS]


def _packed(**extra) -> dict:
    cu = cu_seqlens_from_seq_lens(LENS)
    return {"input_ids": torch.cat(_sequences())[None], "cu_seq_lens_q": cu, **extra}


def _positions() -> torch.Tensor:
    return position_ids_from_cu_seqlens(cu_seqlens_from_seq_lens(LENS))[None]


def _padded(side: str = "right") -> dict:
    longest = max(LENS)
    ids = torch.zeros(len(LENS), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(_sequences()):
        span = slice(0, len(seq)) if side == "right" else slice(longest - len(seq), longest)
        ids[row, span], mask[row, span] = seq, 1
    return {"input_ids": ids, "attention_mask": mask}


N = sum(LENS)
ISSUE_ROW = {  # the issue's example: a padded row whose positions restart
    "input_ids": torch.tensor([[5, 6, 7, 8, 9, 0]]),
    "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0]]),
    "position_ids": torch.tensor([[0, 1, 2, 0, 1, 0]]),
}


class Case(NamedTuple):
    id: str
    batch: Callable[[], dict]
    phrase: str | None  # None: accepted, exact against each sequence alone


CASES = [
    # -- accepted: exact ------------------------------------------------------------------------------------------
    Case("packed-boundaries-and-positions", lambda: _packed(position_ids=_positions()), None),
    Case("packed-boundaries-without-positions", lambda: _packed(), None),
    Case("packed-seq-idx-only", lambda: {"input_ids": _packed()["input_ids"], "seq_idx": _seq_idx()}, None),
    Case("packed-with-all-ones-mask", lambda: _packed(attention_mask=torch.ones(1, N, dtype=torch.long)), None),
    Case("packed-both-boundaries", lambda: _packed(cu_seq_lens_k=cu_seqlens_from_seq_lens(LENS)), None),
    Case("padded-right", lambda: _padded("right"), None),
    Case(
        "padded-right-with-positions",
        lambda: {**_padded("right"), "position_ids": torch.arange(max(LENS)).expand(len(LENS), -1)},
        None,
    ),
    # -- refused: several sequences in a row without boundaries ----------------------------------------------------
    Case("issue-padded-row-with-restarting-positions", lambda: ISSUE_ROW, "start a new sequence inside a row"),
    Case(
        "flattened-row-no-mask",  # DataCollatorWithFlattening()
        lambda: {"input_ids": _packed()["input_ids"], "position_ids": _positions()},
        "start a new sequence inside a row",
    ),
    Case(
        "flattened-row-all-ones-mask",
        lambda: {
            "input_ids": _packed()["input_ids"],
            "position_ids": _positions(),
            "attention_mask": torch.ones(1, N),
        },
        "start a new sequence inside a row",
    ),
    Case(
        "two-rows-with-restarts",
        lambda: {"input_ids": torch.ones(2, 4, dtype=torch.long), "position_ids": torch.tensor([[0, 1, 0, 1]] * 2)},
        "start a new sequence inside a row",
    ),
    Case(
        "positions-jump-forward",
        lambda: {"input_ids": torch.ones(1, 4, dtype=torch.long), "position_ids": torch.tensor([[0, 1, 5, 6]])},
        "start a new sequence inside a row",
    ),
    Case(
        "mask-with-a-hole",
        lambda: {"input_ids": torch.ones(1, 5, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 0, 1, 1]])},
        "padding between real tokens",
    ),
    # -- refused: a packed row's boundaries and positions -----------------------------------------------------------
    Case(
        "packed-positions-over-the-row",
        lambda: _packed(position_ids=torch.arange(N)[None]),
        "must restart at 0 in every sequence",
    ),
    Case("packed-positions-shifted", lambda: _packed(position_ids=_positions() + 1), "must restart at 0 in every"),
    Case(
        "packed-with-padding-mask",
        lambda: _packed(attention_mask=torch.tensor([[1] * (N - 1) + [0]])),
        "a packed row has no padding",
    ),
    Case(
        "packed-two-rows",
        lambda: {"input_ids": torch.ones(2, 4, dtype=torch.long), "cu_seq_lens_q": torch.tensor([0, 2, 4])},
        "a packed batch is one row",
    ),
    Case("boundaries-short-of-the-row", lambda: _packed(cu_seq_lens_q=torch.tensor([0, 3, 5])), "end at the row's"),
    Case("boundaries-not-from-zero", lambda: _packed(cu_seq_lens_q=torch.tensor([1, 4, N])), "must start at 0"),
    Case(
        "boundaries-with-an-empty-sequence",
        lambda: _packed(cu_seq_lens_q=torch.tensor([0, 3, 3, N])),
        "strictly increasing",
    ),
    Case(
        "boundaries-k-differ",
        lambda: _packed(cu_seq_lens_k=torch.tensor([0, 2, N])),
        "cu_seq_lens_k must equal cu_seq_lens_q",
    ),
    Case("boundaries-2d", lambda: _packed(cu_seq_lens_q=cu_seqlens_from_seq_lens(LENS)[None]), "must be 1-D"),
    Case("boundaries-a-list", lambda: _packed(cu_seq_lens_q=[0, 3, N]), "cu_seq_lens_q must be a torch.Tensor"),
    Case(
        "boundaries-float",
        lambda: _packed(cu_seq_lens_q=cu_seqlens_from_seq_lens(LENS).float()),
        "cu_seq_lens_q must hold integers",
    ),
    Case(
        "seq-idx-decreasing",
        lambda: {"input_ids": _packed()["input_ids"], "seq_idx": _seq_idx().flip(-1)},
        "seq_idx must be non-decreasing",
    ),
    Case(
        "seq-idx-of-another-length",
        lambda: {"input_ids": _packed()["input_ids"], "seq_idx": torch.zeros(1, N + 1, dtype=torch.int32)},
        "must give one sequence id per token",
    ),
    # -- refused: padding masks and positions of rows ---------------------------------------------------------------
    Case(
        "additive-mask",
        lambda: {"input_ids": torch.ones(1, 3, dtype=torch.long), "attention_mask": torch.tensor([[0.0, 0.0, -1e4]])},
        "must hold 1 at real tokens and 0 at padding",
    ),
    Case(
        "row-without-a-real-token",
        lambda: {
            "input_ids": torch.ones(2, 3, dtype=torch.long),
            "attention_mask": torch.tensor([[1, 1, 0], [0] * 3]),
        },
        "have no real token",
    ),
    Case(
        "mask-of-another-shape",
        lambda: {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 4)},
        "must match input_ids",
    ),
    Case(
        "positions-of-another-shape",
        lambda: {"input_ids": torch.ones(2, 3, dtype=torch.long), "position_ids": torch.zeros(2, 4, dtype=torch.long)},
        "must match input_ids",
    ),
    Case(
        "negative-positions",
        lambda: {"input_ids": torch.ones(1, 3, dtype=torch.long), "position_ids": torch.tensor([[-1, 0, 1]])},
        "positions cannot be negative",
    ),
    Case(
        "row-longer-than-the-position-table",
        lambda: {"input_ids": torch.ones(1, MAX_POSITIONS + 1, dtype=torch.long)},
        "longer than the model can number",
    ),
    Case(
        "packed-sequence-longer-than-the-position-table",
        lambda: {
            "input_ids": torch.ones(1, MAX_POSITIONS + 3, dtype=torch.long),
            "cu_seq_lens_q": torch.tensor([0, 2, MAX_POSITIONS + 3]),
        },
        "longer than the model can number",
    ),
    Case(
        "positions-beyond-the-table",
        lambda: {
            "input_ids": torch.ones(1, 3, dtype=torch.long),
            "position_ids": torch.arange(MAX_POSITIONS - 1, MAX_POSITIONS + 2)[None],
        },
        "longer than the model can number",
    ),
]


def _seq_idx() -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(LENS), dtype=torch.int32), torch.tensor(LENS))[None]


def _alone(model: torch.nn.Module, seq: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=seq[None]).last_hidden_state[0]


def _per_sequence(batch: dict, hidden: torch.Tensor) -> list[torch.Tensor]:
    """The last hidden state of every sequence of the batch, at its real tokens."""
    if "attention_mask" in batch and hidden.shape[0] > 1 or "cu_seq_lens_q" not in batch and "seq_idx" not in batch:
        mask = batch.get("attention_mask", torch.ones(hidden.shape[:2]))
        return [hidden[row][mask[row].bool()] for row in range(hidden.shape[0])]
    return list(torch.split(hidden[0], LENS))


@pytest.mark.parametrize("path", ["dynmask-encoder", "dynmask-seq2seq", "stock-bert-varlen"])
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_one_verdict_on_every_path(paths, path, case):
    model = paths[path]
    batch = case.batch()
    if case.phrase is not None:
        with pytest.raises(ValueError, match=case.phrase), torch.no_grad():
            model(**batch)
        return
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    for seq, got in zip(_sequences(), _per_sequence(batch, hidden), strict=True):
        torch.testing.assert_close(got, _alone(model, seq), atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", [c for c in CASES if c.phrase is not None], ids=lambda c: c.id)
def test_the_three_paths_give_the_same_message(paths, case):
    """Not only the phrase: the whole message is the contract's, whatever the path."""
    messages = set()
    for model in paths.values():
        with pytest.raises(ValueError) as caught, torch.no_grad():
            model(**case.batch())
        messages.add(str(caught.value))
    assert len(messages) == 1, messages


def test_causal_models_read_restarting_positions_as_boundaries():
    """transformers' padding-free convention (DataCollatorWithFlattening(), TRL's padding_free): a causal model
    reads the restarts as boundaries; an encoder refuses the same row (above)."""
    from hf_dynmask.modeling.batch import BatchRules, describe_batch

    positions = _positions()
    rules = BatchRules(reads_restarts=True)
    layout = describe_batch((1, N), rules=rules, position_ids=positions)
    assert layout.kind == "packed" and layout.boundaries == "position_ids"
    assert layout.cu_seqlens.tolist() == cu_seqlens_from_seq_lens(LENS).tolist()
    with pytest.raises(ValueError, match="with padding"):
        describe_batch((1, N), rules=rules, position_ids=positions, attention_mask=torch.tensor([[1] * (N - 1) + [0]]))
    with pytest.raises(ValueError, match="a packed row over a cache"):
        describe_batch((1, N), rules=rules, position_ids=positions, past=3, attention_mask=torch.ones(1, N + 3))
    with pytest.raises(ValueError, match="must restart at 0 in every sequence"):
        describe_batch((1, N), rules=rules, position_ids=positions + 1)


def test_a_cache_step_is_rows_never_a_pack():
    from hf_dynmask.modeling.batch import BatchRules, describe_batch

    rules = BatchRules(reads_restarts=True)
    step = describe_batch((2, 1), rules=rules, attention_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]), past=2)
    assert step.kind == "padded" and step.past == 2 and step.position_ids.tolist() == [[1], [2]]
    with pytest.raises(ValueError, match="takes no cache"):
        describe_batch((1, 3), rules=rules, cu_seq_lens_q=torch.tensor([0, 1, 3]), past=2)


def test_pairs_pack_both_sides_and_count_alike():
    from hf_dynmask.modeling.batch import BatchRules, check_pairs, describe_batch

    rules = BatchRules()
    packed = describe_batch((1, 5), rules=rules, cu_seq_lens_q=torch.tensor([0, 2, 5]))
    rows = describe_batch((2, 3), rules=rules)
    with pytest.raises(ValueError, match="a packed batch packs both sides"):
        check_pairs(packed, rows)
    with pytest.raises(ValueError, match="2 sources but 3 targets"):
        check_pairs(packed, describe_batch((1, 6), rules=rules, cu_seq_lens_q=torch.tensor([0, 1, 2, 6])))
    check_pairs(packed, describe_batch((1, 4), rules=rules, cu_seq_lens_q=torch.tensor([0, 1, 4])))


def test_describing_a_batch_never_changes_it():
    from hf_dynmask.modeling.batch import BatchRules, describe_batch

    batch = _packed(position_ids=_positions(), attention_mask=torch.ones(1, N, dtype=torch.long))
    before = {key: value.clone() for key, value in batch.items()}
    describe_batch(
        (1, N),
        rules=BatchRules(),
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        cu_seq_lens_q=batch["cu_seq_lens_q"],
    )
    for key, value in batch.items():
        assert torch.equal(value, before[key]) and value.dtype == before[key].dtype, key
        assert not [name for name in vars(value) if "dynmask" in name], key  # nothing cached on the caller's tensors


def test_target_padding_is_read_from_labels_only_where_nothing_else_states_it():
    """The tail of -100 labels is a target's padding; other -100 labels stay; where the padding cannot be known from
    the labels (no labels, a mask given, a packed target, a cache, labels of another shape) the answer is None."""
    labels = torch.tensor([[5, 6, -100, -100], [-100, 7, -100, 9], [-100, -100, -100, -100], [1, 2, 3, 4]])
    assert target_padding_from_labels(labels, (4, 4)).tolist() == [
        [1, 1, 0, 0],
        [1, 1, 1, 1],
        [1, 0, 0, 0],  # no scored label: the first position keeps the row
        [1, 1, 1, 1],
    ]
    assert target_padding_from_labels(None, (4, 4)) is None
    assert target_padding_from_labels(labels, (4, 4), attention_mask=torch.ones(4, 4)) is None
    assert target_padding_from_labels(labels, (4, 4), packed=True) is None
    assert target_padding_from_labels(labels, (4, 4), past=3) is None
    assert target_padding_from_labels(labels, (4, 5)) is None
    assert target_padding_from_labels(labels, (4, 4), ignore_index=1).tolist()[0] == [1, 1, 1, 1]

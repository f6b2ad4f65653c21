"""``torch.compile`` on DynMask models: batches of changing shapes, no errors, the eager outputs, few recompiles.

Each forward does its data-dependent work (host reads for the checks, index maps, the attention plan) in one call
kept out of the compiled graphs, marks the varying sizes dynamic, and under compile plans packed attention with at
most COMPILED_GROUPS structures (one length group, two, three or four, each of two sequences or more, so no size is
1; stock models on dynmask_varlen: FEW_COMPILED_GROUPS, one or two). So over 20 batches of
different shapes the graph of the encoder (and head) after that call is compiled once per plan structure and reused;
the short frames before the call (argument checks, no graph) recompile once for each input size that turns out to
vary (dynamo's automatic dynamic shapes), and not at all with ``dynamic=True``. Every graph break is that call.
``aot_eager`` (dynamo and AOTAutograd, no code generation) keeps these tests fast; one test
runs inductor, the default backend, which generates and compiles C++.
"""

from __future__ import annotations

import random

import pytest
import torch
from torch._dynamo.utils import clear_compilation_metrics, counters, get_compilation_metrics

from hf_dynmask import (
    DynMaskConfig,
    DynMaskForSequenceClassification,
    DynMaskForTokenClassification,
    DynMaskModel,
    DynMaskSeq2SeqConfig,
    DynMaskSeq2SeqForConditionalGeneration,
    packed_layout,
)
from hf_dynmask.modeling.attention import COMPILED_GROUPS, FEW_COMPILED_GROUPS

SHAPES = 20
MAX_RECOMPILES_PER_FRAME = 2  # one per varying input size (tokens, sequences) of the frames before the layout call


@pytest.fixture(autouse=True)
def fresh_dynamo():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch._dynamo.reset()
    counters.clear()
    clear_compilation_metrics()
    yield
    torch._dynamo.reset()
    torch.set_num_threads(threads)


def config(masking: str, **overrides) -> DynMaskConfig:
    sizes = dict(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=64,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return DynMaskConfig(masking=masking, **{**sizes, **overrides})


def batches(layout: str, count: int = SHAPES, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``count`` batches of 2 to 8 sequences of 1 to 40 tokens: a new shape every time."""
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    out, seen = [], set()
    while len(out) < count:
        lens = [rng.randint(1, 40) for _ in range(rng.randint(2, 8))]
        shape = (len(lens), max(lens)) if layout != "packed" else sum(lens)
        if shape in seen:
            continue
        seen.add(shape)
        labels = torch.tensor([rng.randrange(3) for _ in lens])
        if layout == "packed":
            boundaries = packed_layout(lens)
            ids = torch.randint(5, 50, (1, sum(lens)), generator=generator)
            out.append({"input_ids": ids, "cu_seq_lens_q": boundaries.cu_seqlens, "labels": labels})
            continue
        ids = torch.zeros(len(lens), max(lens), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, n in enumerate(lens):
            ids[row, :n], mask[row, :n] = torch.randint(5, 50, (n,), generator=generator), 1
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def compiles_per_frame() -> dict[str, int]:
    """How many times each frame was compiled (``compile_id`` ``frame/n``: the n-th compile of that frame)."""
    found: dict[str, int] = {}
    for metrics in get_compilation_metrics():
        frame = str(metrics.compile_id).split("/")[0]
        found[f"{metrics.co_name}#{frame}"] = found.get(f"{metrics.co_name}#{frame}", 0) + 1
    return found


def recompiles() -> int:
    return sum(count - 1 for count in compiles_per_frame().values())


def check_compiles(layouts: int = 1) -> None:
    """The graph after the layout call compiled once per layout (padded, unpadded, packed: one frame) and attention
    plan structure (one to COMPILED_GROUPS length groups); every other frame at most a few times."""
    compiles = compiles_per_frame()
    after_layout = [frame for frame in compiles if frame.startswith("torch_dynamo_resume_in__encode_inputs")]
    assert len(after_layout) == 1 and layouts <= compiles[after_layout[0]] <= layouts * COMPILED_GROUPS, compiles
    # The frames before the layout call serve every layout: once per layout, then once per varying input size.
    assert all(count <= layouts * (1 + MAX_RECOMPILES_PER_FRAME) for count in compiles.values()), compiles


def graph_break_reasons() -> list[str]:
    return list(counters["graph_break"])


@pytest.mark.parametrize(
    "layout, masking, model_class",
    [
        ("packed", "dynamic", DynMaskModel),
        ("padded", "dynamic", DynMaskModel),
        ("padded", "static", DynMaskModel),
        ("packed", "dynamic", DynMaskForSequenceClassification),
        ("padded", "dynamic", DynMaskForTokenClassification),
    ],
)
def test_compiled_forward_matches_eager_on_changing_shapes(layout, masking, model_class):
    torch.manual_seed(0)
    model = model_class(config(masking)).eval()
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        for batch in batches(layout):
            if model_class is not DynMaskForSequenceClassification:
                batch.pop("labels")
            inputs = batch
            expected, got = model(**inputs), compiled(**inputs)
            torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=0)
            if "loss" in expected:
                torch.testing.assert_close(got.loss, expected.loss, atol=1e-5, rtol=0)
    assert counters["frames"]["ok"] == counters["frames"]["total"]
    check_compiles()
    # Every graph break is the one per-batch layout call (or the heads' label check): no .tolist(), .item(),
    # nonzero, repeat_interleave, ...
    boundaries = ("DynMaskModel._layout", "check_sequence_labels", "check_token_labels", "check_answer_positions")
    assert all(
        "torch.compiler.disable" in reason and any(name in reason for name in boundaries)
        for reason in graph_break_reasons()
    )


def assert_step_as_eager(model, compiled, batch, logits: bool = True, rtol: float = 1e-4) -> None:
    """One training step of ``compiled`` gives the eager ``model``'s loss (and logits) and every parameter's
    gradient; gradients are left cleared."""
    model.zero_grad(set_to_none=True)
    eager = model(**batch)
    eager.loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    got = compiled(**batch)
    got.loss.backward()
    if logits:
        torch.testing.assert_close(got.logits, eager.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.loss, eager.loss, atol=1e-6, rtol=0)
    for name, p in model.named_parameters():
        if name in expected:
            torch.testing.assert_close(p.grad, expected[name], atol=1e-5, rtol=rtol, msg=name)
    model.zero_grad(set_to_none=True)


def test_compiled_training_step_gives_the_eager_gradients():
    torch.manual_seed(0)
    model = DynMaskForSequenceClassification(config("dynamic")).train()
    compiled = torch.compile(model, backend="aot_eager")
    for batch in batches("packed", count=2) + batches("padded", count=2, seed=1):
        assert_step_as_eager(model, compiled, batch, logits=False, rtol=0)
    check_compiles(layouts=2)


def test_compile_with_dynamic_true_compiles_once_per_plan_structure():
    torch.manual_seed(0)
    model = DynMaskModel(config("dynamic")).eval()
    compiled = torch.compile(model, backend="aot_eager", dynamic=True)
    with torch.no_grad():
        for batch in batches("packed", count=8):
            batch.pop("labels")
            torch.testing.assert_close(compiled(**batch)[0], model(**batch)[0], atol=1e-5, rtol=0)
    assert recompiles() <= COMPILED_GROUPS - 1  # one graph per plan structure, no more


@pytest.mark.slow
def test_inductor_compiles_packed_and_dynamic_batches():
    """The default backend (generated C++ on CPU) on both unpadded paths: one graph each, reused for new shapes."""
    torch.manual_seed(0)
    model = DynMaskModel(config("dynamic")).eval()
    compiled = torch.compile(model)
    with torch.no_grad():
        for layout in ("packed", "padded"):
            for batch in batches(layout, count=3):
                batch.pop("labels")
                torch.testing.assert_close(compiled(**batch)[0], model(**batch)[0], atol=1e-5, rtol=0)
    check_compiles(layouts=2)


@pytest.mark.parametrize("lens", [[3, 10, 2, 9], [5, 5, 5], [9, 4, 1], [1]])  # mixed, all equal, sorted, one
@pytest.mark.parametrize("causal", [False, True])
def test_static_structure_plans_give_the_same_attention(lens, causal):
    """The plan torch.compile uses (one group, every field filled) computes what the default plan does."""
    from hf_dynmask import plan_varlen, varlen_attention

    cu_seqlens = packed_layout(lens).cu_seqlens
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(sum(lens), 2, 4, generator=generator) for _ in range(3))
    static = plan_varlen(cu_seqlens, bucket_ratio=0.0, static_structure=True)
    assert len(static.groups) == 1 and static.out_index is not None
    group = static.groups[0]
    assert None not in (group.q_real_slots, group.q_real, group.key_allowed)
    for kernel in ("sdpa", "eager"):
        expected = varlen_attention(q, k, v, plan_varlen(cu_seqlens), scaling=0.5, is_causal=causal, kernel=kernel)
        got = varlen_attention(q, k, v, static, scaling=0.5, is_causal=causal, kernel=kernel)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", range(4))
def test_cross_plans_under_compile_take_the_self_plans_groups(seed):
    """Under compile a decoder's cross plan groups the pairs as its self plan does (by target length alone), so the
    decoder's graph meets as many plan structures as one plan has, and it attends exactly as the default cross plan."""
    from hf_dynmask import plan_varlen, varlen_attention
    from hf_dynmask.modeling.attention import compiled_plan

    rng = random.Random(seed)
    pairs = [(rng.randint(1, 30), rng.randint(1, 60)) for _ in range(rng.randint(2, 12))]  # (target, source)
    cu_target = packed_layout([t for t, _ in pairs]).cu_seqlens
    cu_source = packed_layout([s for _, s in pairs]).cu_seqlens
    self_plan = compiled_plan(cu_target)
    cross = compiled_plan(cu_target, cu_source, group_by_keys=False)
    assert len(cross.groups) == len(self_plan.groups) <= COMPILED_GROUPS
    for mine, theirs in zip(cross.groups, self_plan.groups, strict=True):
        assert torch.equal(mine.q_gather, theirs.q_gather)
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(int(cu_target[-1]), 2, 4, generator=generator)
    k, v = (torch.randn(int(cu_source[-1]), 2, 4, generator=generator) for _ in range(2))
    for kernel in ("sdpa", "eager"):
        expected = varlen_attention(q, k, v, plan_varlen(cu_target, cu_source), scaling=0.5, kernel=kernel)
        got = varlen_attention(q, k, v, cross, scaling=0.5, kernel=kernel)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


# -- stock models on dynmask_varlen -----------------------------------------------------------------------------------
# Their entry check (hf_dynmask.modeling.stock) plans the attention outside the compiled graph, as the DynMask
# encoder's layout call does, and under compile hands it the same bounded plans (attention.compiled_plan).

STOCK_COMPILED = {  # family: head (grouped-query decoder; softcap and sliding window; an encoder)
    "llama": "causal-lm",
    "gemma2": "causal-lm",
    "bert": "token-classification",
}


def stock_batches(family: str, count: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``count`` packed rows of 2 to 6 sequences of 1 to 24 tokens (a new token count every time), labelled."""
    from .test_families import VOCAB, packed_inputs

    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    out, seen = [], set()
    while len(out) < count:
        lens = [rng.randint(1, 24) for _ in range(rng.randint(2, 6))]
        if sum(lens) in seen:
            continue
        seen.add(sum(lens))
        batch = packed_inputs(
            family, [torch.randint(3, VOCAB, (n,), generator=generator) for n in lens], "cu_seq_lens"
        )
        labels = (
            batch["input_ids"].clone()
            if STOCK_COMPILED[family] == "causal-lm"
            else torch.randint(0, 3, (1, sum(lens)))
        )
        batch["labels"] = labels.index_fill(1, batch["cu_seq_lens_q"][:-1].long(), -100)  # no target across sequences
        out.append(batch)
    return out


@pytest.mark.parametrize("family", sorted(STOCK_COMPILED))
def test_stock_packed_rows_compile_to_the_eager_losses_and_gradients(family):
    """A stock model on dynmask_varlen under torch.compile: on packed rows of new shapes, the eager model's logits,
    loss and gradients (the eager path is tested against each sequence alone in test_families)."""
    from .test_families import make_pair

    _, model = make_pair(family, STOCK_COMPILED[family])
    model.train()
    compiled = torch.compile(model, backend="aot_eager")
    for batch in stock_batches(family, count=3):
        assert_step_as_eager(model, compiled, batch)


def test_stock_model_compiles_once_per_plan_structure():
    """Over 20 packed rows of different shapes the stock model's forward compiles once per plan structure (one
    length group or two), once more each when its sizes turn out to vary; its entry hook the same way. Was: a
    recompile for every new plan (the number and sizes of its length groups) until dynamo's limit, then eager."""
    from .test_families import make_pair

    _, model = make_pair("llama", "causal-lm")
    model.eval()
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        for batch in stock_batches("llama", count=SHAPES):
            torch.testing.assert_close(compiled(**batch).logits, model(**batch).logits, atol=1e-5, rtol=0)
    compiles = compiles_per_frame()
    assert all(count <= FEW_COMPILED_GROUPS * 2 for count in compiles.values()), compiles
    assert sum(compiles.values()) <= 3 + FEW_COMPILED_GROUPS * 2, compiles
    assert all("_check_entry" in reason for reason in graph_break_reasons()), graph_break_reasons()


def tiny_seq2seq() -> DynMaskSeq2SeqForConditionalGeneration:
    """A BART-shaped DynMask seq2seq model of the seq2seq tests' tiny sizes, random weights, dynamic masking."""
    from .test_modeling_dynmask_seq2seq import stock_model

    config = DynMaskSeq2SeqConfig.from_dict({**stock_model("bart").config.to_dict(), "masking": "dynamic"})
    torch.manual_seed(0)
    return DynMaskSeq2SeqForConditionalGeneration(config)


def test_seq2seq_compiles_to_the_eager_loss_and_gradients():
    """The DynMask seq2seq family under torch.compile, dynamic and packed batches: eager's loss and gradients."""
    from .test_modeling_dynmask_seq2seq import collate, pair_tokens

    model = tiny_seq2seq().train()
    compiled = torch.compile(model, backend="aot_eager")
    for layout, pairs in (("dynamic", [(5, 4), (17, 2), (3, 7)]), ("packed", [(9, 1), (4, 6)])):
        assert_step_as_eager(model, compiled, collate(model, pair_tokens("bart", pairs), layout), logits=False)


def test_seq2seq_recompiles_stay_bounded_over_new_lengths():
    """Packed pairs of 20 new shapes: every frame compiles a bounded number of times, below dynamo's recompile limit
    (past it a frame runs eager). The batch contract and the attention plans run outside the graphs (one break per
    call) and hand over plans of at most COMPILED_GROUPS structures; the decoder's cross plan takes its self plan's
    groups, so the decoder's graph meets no more structures than the encoder's. Each frame compiles once more for the
    first batch's static sizes (at most five here). Was: a recompile for every new plan, until the limit."""
    from .test_modeling_dynmask_seq2seq import collate, pair_tokens

    model = tiny_seq2seq().eval()
    compiled = torch.compile(model, backend="aot_eager")
    rng = random.Random(0)
    with torch.no_grad():
        for seed in range(SHAPES):
            pairs = [(rng.randint(2, 40), rng.randint(2, 12)) for _ in range(rng.randint(2, 9))]
            batch = collate(model, pair_tokens("bart", pairs, seed=seed), "packed")
            torch.testing.assert_close(compiled(**batch).logits, model(**batch).logits, atol=1e-5, rtol=0)
    compiles = compiles_per_frame()
    limit = torch._dynamo.config.recompile_limit
    assert max(compiles.values()) < limit, compiles  # at the limit a frame gives up and runs eager
    assert max(compiles.values()) <= 1 + COMPILED_GROUPS, compiles

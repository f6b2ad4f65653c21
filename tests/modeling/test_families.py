"""``attn_implementation="dynmask_varlen"`` on stock transformers families, against each sequence run alone.

For every family of :data:`hf_dynmask.modeling.families.VERIFIED_FAMILIES` and every head it is verified with (base,
causal LM, token classification, masked LM), a packed row of lengths 1, 3, 17, 40, 9, 25 (the shortest and the longest
in the same row, longer than every sliding window) goes through the model with ``dynmask_varlen`` and must give the
outputs, the loss and the parameter gradients of the stock model on SDPA run on each sequence alone, with the stock
model's own position ids (fp32, atol 1e-5):

- boundaries from ``cu_seq_lens_q/k`` (hf_dynmask's packed collator, ``DataCollatorWithFlattening(
  return_flash_attn_kwargs=True)``, TRL), and for decoders also from restarting ``position_ids`` alone;
- eval, and train mode with and without gradient checkpointing; decoders with ``use_cache`` on and off;
- causal LM: the packed loss is the per-sequence loss, with the labels of hf_dynmask's collator and of transformers'
  ``DataCollatorWithFlattening`` (no token is predicted from the previous sequence);
- padded batches (either side) against stock SDPA, and greedy generation over a cache for every decoder.

The whole matrix runs on tiny configs (hidden 32, two layers) on one thread.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import pytest
import torch
from torch.nn import functional as F
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForTokenClassification,
)

import hf_dynmask  # noqa: F401  (registers dynmask_varlen)
from hf_dynmask.data.collators import make_collator
from hf_dynmask.modeling.families import HEADS, VERIFIED_FAMILIES, check_verified_family, family_of
from hf_dynmask.modeling.layout import cu_seqlens_from_seq_lens, position_ids_from_cu_seqlens

ATOL = 1e-5
LENS = [1, 3, 17, 40, 9, 25]
VOCAB = 100
NUM_LABELS = 3
SMALL = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    vocab_size=VOCAB,
    max_position_embeddings=128,
)


class Spec(NamedTuple):
    """A tiny config of one family, the heads it is tested with, and how its stock reference runs."""

    model_type: str
    settings: dict
    heads: tuple[str, ...]
    decoder: bool
    reference_attention: str = "sdpa"  # eager where stock SDPA does not implement the family (Gemma-2's softcap)


DECODER_HEADS = ("base", "causal-lm", "token-classification")
ENCODER_HEADS = ("base", "masked-lm", "token-classification")
SPECIAL_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)

FAMILIES: dict[str, Spec] = {
    "llama": Spec("llama", dict(num_key_value_heads=2, **SPECIAL_IDS), DECODER_HEADS, True),
    "qwen2": Spec(
        "qwen2",
        dict(num_key_value_heads=2, use_sliding_window=True, sliding_window=8, max_window_layers=1, **SPECIAL_IDS),
        DECODER_HEADS,
        True,
    ),
    "qwen3": Spec(  # q/k norms, per-layer sliding windows, multi-query attention
        "qwen3",
        dict(
            num_key_value_heads=1,
            head_dim=8,
            use_sliding_window=True,
            sliding_window=8,
            max_window_layers=1,
            **SPECIAL_IDS,
        ),
        DECODER_HEADS,
        True,
    ),
    "mistral": Spec("mistral", dict(num_key_value_heads=2, sliding_window=8, **SPECIAL_IDS), DECODER_HEADS, True),
    "gemma": Spec("gemma", dict(num_key_value_heads=1, head_dim=8, **SPECIAL_IDS), DECODER_HEADS, True),
    "gemma2": Spec(  # a softcap small enough to matter at tiny-model scores (50 would be a no-op here)
        "gemma2",
        dict(
            num_key_value_heads=2,
            head_dim=8,
            sliding_window=8,
            attn_logit_softcapping=0.5,
            query_pre_attn_scalar=4,
            **SPECIAL_IDS,
        ),
        DECODER_HEADS,
        True,
        reference_attention="eager",
    ),
    "phi3": Spec("phi3", dict(num_key_value_heads=2, sliding_window=8, **SPECIAL_IDS), DECODER_HEADS, True),
    "gpt_neox": Spec("gpt_neox", dict(**SPECIAL_IDS), DECODER_HEADS, True),
    "gpt2": Spec(  # learned absolute positions; per-layer attention scaling
        "gpt2",
        dict(n_embd=32, n_layer=2, n_head=4, n_positions=128, scale_attn_by_inverse_layer_idx=True, **SPECIAL_IDS),
        DECODER_HEADS,
        True,
    ),
    "olmo2": Spec("olmo2", dict(num_key_value_heads=2, **SPECIAL_IDS), ("base", "causal-lm"), True),
    "bert": Spec("bert", dict(pad_token_id=0), ENCODER_HEADS, False),
    "roberta": Spec("roberta", dict(pad_token_id=1), ENCODER_HEADS, False),  # positions from padding_idx + 1
    "xlm_roberta": Spec("xlm-roberta", dict(pad_token_id=1), ENCODER_HEADS, False),
    "distilbert": Spec(
        "distilbert", dict(dim=32, n_layers=2, n_heads=4, hidden_dim=64, pad_token_id=0), ENCODER_HEADS, False
    ),
    "electra": Spec("electra", dict(embedding_size=16, pad_token_id=0), ENCODER_HEADS, False),
    "albert": Spec("albert", dict(embedding_size=16, pad_token_id=0), ENCODER_HEADS, False),
    "modernbert": Spec(
        "modernbert",
        dict(
            local_attention=8,
            global_attn_every_n_layers=2,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            cls_token_id=1,
            sep_token_id=2,
        ),
        ENCODER_HEADS,
        False,
    ),
}
AUTO_CLASSES = {
    "base": AutoModel,
    "causal-lm": AutoModelForCausalLM,
    "masked-lm": AutoModelForMaskedLM,
    "token-classification": AutoModelForTokenClassification,
}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------------------------
# Models, inputs and the per-sequence reference
# --------------------------------------------------------------------------------------------------------------------


def make_config(family: str, **overrides):
    spec = FAMILIES[family]
    config = AutoConfig.for_model(spec.model_type, **{**SMALL, **spec.settings, **overrides})
    for name, value in list(vars(config).items()):  # dropout off: train mode must be deterministic to compare
        if isinstance(value, float) and ("dropout" in name or name.endswith("pdrop")):
            setattr(config, name, 0.0)
    config.num_labels = NUM_LABELS
    config.classifier_dropout = 0.0  # token-classification heads of decoders default to 0.1 when it is unset
    return config


def make_pair(family: str, head: str, **overrides) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The stock model on its reference attention, and a copy with the same weights on dynmask_varlen."""
    config = make_config(family, **overrides)
    torch.manual_seed(0)
    stock = AUTO_CLASSES[head].from_config(config, attn_implementation=FAMILIES[family].reference_attention)
    varlen = copy.deepcopy(stock)
    varlen.set_attn_implementation("dynmask_varlen")
    return stock, varlen


def position_start(family: str) -> int:
    """First position id of every sequence: padding_idx + 1 for RoBERTa-style embeddings, else 0."""
    return FAMILIES[family].settings["pad_token_id"] + 1 if family in ("roberta", "xlm_roberta") else 0


class Example(NamedTuple):
    ids: list[torch.Tensor]  # one (L,) tensor per sequence
    labels: torch.Tensor | None  # (N,) packed labels the model gets (None for the base model)
    targets: torch.Tensor | None  # (N,) what each token's logits are scored against (-100: not scored)


def make_example(head: str) -> Example:
    generator = torch.Generator().manual_seed(1)
    ids = [torch.randint(3, VOCAB, (n,), generator=generator) for n in LENS]
    flat = torch.cat(ids)
    if head == "base":
        return Example(ids, None, None)
    if head == "causal-lm":
        # hf_dynmask's (and transformers' / TRL's) padding-free convention: -100 at each sequence's first token, so
        # the model's shift never scores the last token of a sequence against the next sequence's first token.
        cu = cu_seqlens_from_seq_lens(LENS)
        labels = flat.index_fill(0, cu[:-1].long(), -100)
        targets = torch.cat([torch.cat([x[1:], torch.tensor([-100])]) for x in ids])  # next token of the same sequence
        return Example(ids, labels, targets)
    if head == "token-classification":
        labels = torch.randint(0, NUM_LABELS, flat.shape, generator=generator)
    else:  # masked LM: some positions carry the original token
        labels = flat.clone()
    labels = labels.masked_fill(torch.rand(flat.shape, generator=generator) < 0.3, -100)
    return Example(ids, labels, labels)


def packed_inputs(family: str, ids: list[torch.Tensor], boundaries: str) -> dict:
    cu = cu_seqlens_from_seq_lens([len(x) for x in ids])
    batch = {
        "input_ids": torch.cat(ids)[None],
        "position_ids": position_ids_from_cu_seqlens(cu, position_start(family))[None],
    }
    if boundaries == "cu_seq_lens":
        longest = max(len(x) for x in ids)
        batch.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu.clone(), max_length_q=longest, max_length_k=longest)
    return batch


def token_outputs(output) -> torch.Tensor:
    """(B, T, ...) per-token outputs of any of the heads."""
    return output.logits if hasattr(output, "logits") else output.last_hidden_state


def run_alone(stock, family: str, ids: list[torch.Tensor]) -> torch.Tensor:
    """Each sequence alone through the stock model, with the positions the model numbers itself; (N, ...)."""
    kwargs = {"use_cache": False} if FAMILIES[family].decoder else {}
    return torch.cat([token_outputs(stock(input_ids=x[None], **kwargs))[0] for x in ids])


def scored_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets, ignore_index=-100)


def cache_options(family: str) -> list[dict]:
    return [{"use_cache": False}, {"use_cache": True}] if FAMILIES[family].decoder else [{}]


def boundary_modes(family: str) -> list[str]:
    return ["cu_seq_lens", "position_ids"] if FAMILIES[family].decoder else ["cu_seq_lens"]


CASES = [
    pytest.param(family, head, boundaries, id=f"{family}-{head}-{boundaries}")
    for family, spec in FAMILIES.items()
    for head in spec.heads
    for boundaries in boundary_modes(family)
]


def assert_grads_close(stock: torch.nn.Module, varlen: torch.nn.Module) -> None:
    for (name, p_ref), (_, p) in zip(stock.named_parameters(), varlen.named_parameters(), strict=True):
        if p_ref.grad is None:
            assert p.grad is None or not p.grad.any(), name
            continue
        # Gradients sum over every token in another order: fp32 round-off scales with the gradient's size (Gemma's
        # scaled embeddings give gradients near 1e3), so the tolerance is relative to it.
        scale = max(1.0, p_ref.grad.abs().max().item())
        torch.testing.assert_close(p.grad, p_ref.grad, atol=ATOL * scale, rtol=1e-4, msg=name)


# --------------------------------------------------------------------------------------------------------------------
# The equivalence matrix
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family, head, boundaries", CASES)
def test_packed_eval_matches_each_sequence_alone(family, head, boundaries):
    stock, varlen = make_pair(family, head)
    stock.eval(), varlen.eval()
    example = make_example(head)
    with torch.no_grad():
        expected = run_alone(stock, family, example.ids)
        for options in cache_options(family):
            labels = {} if example.labels is None else {"labels": example.labels[None]}
            output = varlen(**packed_inputs(family, example.ids, boundaries), **labels, **options)
            torch.testing.assert_close(token_outputs(output)[0], expected, atol=ATOL, rtol=0)
            if example.labels is not None:
                torch.testing.assert_close(output.loss, scored_loss(expected, example.targets), atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_packed_rows_without_positions_get_each_sequences_own(family):
    """A packed row with boundaries but no position_ids: every family (DistilBERT included, whose attention never
    sees positions) gets each sequence's own positions from the entry check, never the row's."""
    head = "token-classification" if "token-classification" in FAMILIES[family].heads else "base"
    stock, varlen = make_pair(family, head)
    stock.eval(), varlen.eval()
    example = make_example(head)
    batch = packed_inputs(family, example.ids, "cu_seq_lens")
    del batch["position_ids"]
    with torch.no_grad():
        expected = run_alone(stock, family, example.ids)
        output = varlen(**batch, **({"use_cache": False} if FAMILIES[family].decoder else {}))
    torch.testing.assert_close(token_outputs(output)[0], expected, atol=ATOL, rtol=0)
    if head == "token-classification":  # evaluation regroups a packed row per sequence (test_trainer.py)
        assert output.seq_idx.tolist() == [sum([[s] * n for s, n in enumerate(LENS)], [])]


@pytest.mark.parametrize("family", sorted(name for name, spec in FAMILIES.items() if not spec.decoder))
def test_encoders_refuse_flattened_rows(family):
    """DataCollatorWithFlattening() rows (restarting positions, no boundaries) on every encoder: refused, never
    attended across (DistilBERT and ModernBERT did, silently)."""
    _, varlen = make_pair(family, "base")
    example = make_example("base")
    with pytest.raises(ValueError, match="start a new sequence inside a row"), torch.no_grad():
        varlen.eval()(**packed_inputs(family, example.ids, "position_ids"))


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize("family, head, boundaries", CASES)
def test_packed_training_matches_each_sequence_alone(family, head, boundaries, checkpointing):
    stock, varlen = make_pair(family, head)
    stock.train(), varlen.train()
    if checkpointing:
        if not varlen.supports_gradient_checkpointing:
            pytest.skip(f"{type(varlen).__name__} has no gradient checkpointing in transformers")
        getattr(varlen, "activation_checkpointing_enable", varlen.gradient_checkpointing_enable)()  # renamed in 5.2x
    example = make_example(head)
    expected = run_alone(stock, family, example.ids)
    weights = torch.randn(expected.shape, generator=torch.Generator().manual_seed(2))
    objective = (expected * weights).sum() if example.labels is None else scored_loss(expected, example.targets)
    objective.backward()
    for options in cache_options(family):
        varlen.zero_grad(set_to_none=True)
        labels = {} if example.labels is None else {"labels": example.labels[None]}
        output = varlen(**packed_inputs(family, example.ids, boundaries), **labels, **options)
        out = token_outputs(output)[0]
        torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
        if example.labels is None:
            (out * weights).sum().backward()
        else:
            torch.testing.assert_close(output.loss, objective, atol=ATOL, rtol=0)
            output.loss.backward()
        assert_grads_close(stock, varlen)


@pytest.mark.parametrize("family", FAMILIES)
def test_padded_batch_matches_stock(family):
    """Padded batches (either side) go through the stock mask: the same outputs as stock at real tokens."""
    stock, varlen = make_pair(family, "base")
    stock.eval(), varlen.eval()
    ids = make_example("base").ids
    longest = max(len(x) for x in ids)
    pad = FAMILIES[family].settings["pad_token_id"]
    for side in ("right", "left"):
        input_ids = torch.full((len(ids), longest), pad, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for row, x in enumerate(ids):
            span = slice(0, len(x)) if side == "right" else slice(longest - len(x), longest)
            input_ids[row, span], mask[row, span] = x, 1
        with torch.no_grad():
            want = stock(input_ids=input_ids, attention_mask=mask).last_hidden_state
            got = varlen(input_ids=input_ids, attention_mask=mask).last_hidden_state
        real = mask.bool()
        torch.testing.assert_close(got[real], want[real], atol=ATOL, rtol=0)


DECODERS = [family for family, spec in FAMILIES.items() if spec.decoder]


@pytest.mark.parametrize("family", DECODERS)
def test_generation_with_cache_matches_stock(family):
    """Greedy decoding over a cache (queries shorter than keys, windows over the cache): the same logits."""
    # Larger weights than the default init, so that attention differences reach the logits of a 2-layer model.
    stock, varlen = make_pair(family, "causal-lm", initializer_range=0.3)
    stock.eval(), varlen.eval()
    prompt = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))
    padded = torch.ones_like(prompt)
    padded[1, :3] = 0  # left padding in the second row
    for mask in (None, padded):  # no mask: windows over the cache go through the varlen kernel
        kwargs = dict(max_new_tokens=14, do_sample=False, output_scores=True, return_dict_in_generate=True)
        want = stock.generate(prompt, attention_mask=mask, **kwargs, pad_token_id=0)
        got = varlen.generate(prompt, attention_mask=mask, **kwargs, pad_token_id=0)
        assert torch.equal(got.sequences, want.sequences)
        for a, b in zip(got.scores, want.scores, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


class _Tokenizer(SimpleNamespace):
    """What a collator reads from a tokenizer, for token ids that need no vocabulary."""

    pad_token_id = 0
    padding_side = "right"
    truncation_side = "right"


@pytest.mark.parametrize("collator", ["hf_dynmask", "flattening"])
def test_causal_lm_collators_never_predict_across_a_boundary(collator):
    """The packed batches of hf_dynmask's collator and of transformers' DataCollatorWithFlattening give the loss of
    every sequence alone: no label predicts the next sequence's first token from the previous sequence."""
    from transformers import DataCollatorWithFlattening

    stock, varlen = make_pair("llama", "causal-lm")
    stock.eval(), varlen.eval()
    example = make_example("causal-lm")
    features = [{"input_ids": x.tolist()} for x in example.ids]
    if collator == "hf_dynmask":
        batch = make_collator(_Tokenizer(), "causal-lm", mode="packed")(features)
    else:
        flatten = DataCollatorWithFlattening(return_flash_attn_kwargs=True, return_tensors="pt")
        batch = flatten([{**f, "labels": f["input_ids"]} for f in features])
    starts = cu_seqlens_from_seq_lens(LENS)[:-1].long()
    assert (batch["labels"][0, starts] == -100).all()
    with torch.no_grad():
        expected = scored_loss(run_alone(stock, "llama", example.ids), example.targets)
        got = varlen(**{k: v for k, v in batch.items() if k != "seq_idx"}, use_cache=False).loss
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
        # The same row with the boundary labels kept scores cross-sequence predictions: a different loss.
        leaky = dict(batch, labels=torch.cat(example.ids)[None])
        leaky.pop("seq_idx", None)
        assert (varlen(**leaky, use_cache=False).loss - expected).abs() > 1e-3


# --------------------------------------------------------------------------------------------------------------------
# The table of verified families is what these tests cover
# --------------------------------------------------------------------------------------------------------------------


def test_verified_table_is_what_is_tested():
    assert set(VERIFIED_FAMILIES) == set(FAMILIES), "a verified family without tests, or a tested one not listed"
    for family, spec in FAMILIES.items():
        info = VERIFIED_FAMILIES[family]
        assert set(info.heads) == set(spec.heads), family
        assert info.decoder == spec.decoder, family
        assert set(info.heads) <= set(HEADS)


def test_readme_table_is_the_verified_table():
    """The README's table of stock families is VERIFIED_FAMILIES, row for row, and its example code compiles."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Stock models", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    expected = [
        f"| `{name}` | {'decoder' if info.decoder else 'encoder'} | {', '.join(info.heads)} | {info.features} |"
        for name, info in VERIFIED_FAMILIES.items()
    ]
    assert rows == expected
    for block in re.findall(r"```python\n(.*?)```", section, flags=re.S):
        compile(block, "README.md", "exec")


def test_family_of_attention_modules():
    _, varlen = make_pair("llama", "base")
    assert family_of(varlen.layers[0].self_attn) == "llama"
    assert check_verified_family(varlen.layers[0].self_attn) == "llama"
    _, varlen = make_pair("xlm_roberta", "base")
    assert family_of(varlen.encoder.layer[0].attention.self) == "xlm_roberta"


def test_family_of_reads_through_fsdp2_wrapper_classes():
    """FSDP2's fully_shard gives a module a class it derives in torch.distributed (FSDPLlamaAttention); a user's own
    subclass elsewhere is not read through."""
    _, varlen = make_pair("llama", "base")
    attention = varlen.layers[0].self_attn
    wrapper = type(f"FSDP{type(attention).__name__}", (type(attention),), {"__module__": "torch.distributed.fsdp._x"})
    attention.__class__ = wrapper
    assert family_of(attention) == "llama"
    assert check_verified_family(attention) == "llama"
    attention.__class__ = type("MyAttention", (wrapper.__mro__[1],), {"__module__": "my_project.models"})
    assert family_of(attention) is None

"""TRL's ``SFTTrainer`` with ``packing=True`` (best-fit decreasing) or ``padding_free=True`` on a stock decoder loaded
with ``attn_implementation="dynmask_varlen"`` trains exactly like the unpacked reference, on CPU.

A tiny grouped-query Llama, dropout off, plain SGD. Every optimizer step holds the whole data set (one batch of all
examples, or all packs), so the reference and the packed runs see the same examples in every step whatever order
they come in. The reference is stock SDPA on padded batches (each sequence exact on its own, see
``tests/modeling/test_families.py``); after three steps (gradient checkpointing on, TRL's default) every parameter and
the logged losses must agree. A negative control shows that attention across the packed sequences fails it.
"""

from __future__ import annotations

import copy

import datasets
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import hf_dynmask  # noqa: F401  (registers dynmask_varlen)
from hf_dynmask.training.checks import check_collator_for_model

trl = pytest.importorskip("trl")

VOCAB = 64
LENGTHS = [1, 3, 17, 40, 9, 25, 2, 31, 12, 6, 20, 4]  # the shortest and the longest in the same step


pytestmark = pytest.mark.usefixtures("one_thread")


def tokenizer():
    """A word-level tokenizer over ``w0 .. w63`` (``[PAD]`` = 0, ``[EOS]`` = 1), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[EOS]": 1, "[UNK]": 2} | {f"w{i}": i for i in range(3, VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", eos_token="[EOS]", unk_token="[UNK]")


def dataset() -> datasets.Dataset:
    """Pre-tokenized examples (TRL uses an ``input_ids`` column as is)."""
    generator = torch.Generator().manual_seed(0)
    return datasets.Dataset.from_list(
        [{"input_ids": torch.randint(3, VOCAB, (n,), generator=generator).tolist()} for n in LENGTHS]
    )


def model(attn: str) -> torch.nn.Module:
    config = AutoConfig.for_model(
        "llama",
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=VOCAB,
        max_position_embeddings=128,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
        initializer_range=0.2,  # large enough that cross-sequence attention would move the parameters visibly
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn)


def train(tmp_path, name: str, start: torch.nn.Module, attn: str, check: bool = True, **options):
    from trl import SFTConfig, SFTTrainer

    net = copy.deepcopy(start)
    net.set_attn_implementation(attn)
    settings = dict(
        output_dir=str(tmp_path / name),
        per_device_train_batch_size=len(LENGTHS),  # one step = every example (or every pack)
        num_train_epochs=3,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        max_length=64,  # longer than every example: nothing is truncated
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,  # TRL turns bf16 autocast on where the CPU has it; the comparison is in fp32
        gradient_checkpointing=True,  # TRL's default, said out loud: packed rows under checkpointing
    )
    args = SFTConfig(**(settings | options))
    trainer = SFTTrainer(model=net, args=args, train_dataset=dataset(), processing_class=tokenizer())
    if check:
        check_collator_for_model(net, trainer.data_collator)  # what DynMaskTrainer / PaddingStatsCallback would run
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    return net, losses, trainer


@pytest.mark.parametrize(
    "options",
    [{"packing": True, "packing_strategy": "bfd"}, {"padding_free": True, "max_length": None}],
    ids=["packing-bfd", "padding-free"],
)
def test_sft_packed_on_dynmask_varlen_trains_like_unpacked(tmp_path, options):
    start = model("sdpa")
    reference, reference_losses, _ = train(tmp_path, "reference", start, "sdpa")
    packed, losses, trainer = train(tmp_path, "packed", start, "dynmask_varlen", **options)
    assert trainer.padding_free and len(losses) == len(reference_losses) == 3
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(reference_losses), atol=1e-4, rtol=0)
    moved = 0.0
    for (name, want), (_, got) in zip(reference.named_parameters(), packed.named_parameters(), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=name)
        moved = max(moved, (want - start.get_parameter(name)).abs().max().item())
    assert moved > 1e-2  # the steps changed the model: the comparison is not between two untouched copies


def test_the_comparison_catches_attention_across_sequences(tmp_path):
    """A negative control: an attention that ignores the packed boundaries (plain causal SDPA over the whole row)
    trains visibly differently, so the comparison above can fail."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface

    def across_sequences(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        return sdpa_attention_forward(module, query, key, value, None, dropout=dropout, scaling=scaling)

    AttentionInterface.register("test_across_sequences", across_sequences)
    AttentionMaskInterface.register("test_across_sequences", lambda *args, **kwargs: None)
    start = model("sdpa")
    reference, _, _ = train(tmp_path, "reference", start, "sdpa")
    leaky, _, _ = train(
        tmp_path, "leaky", start, "test_across_sequences", check=False, padding_free=True, max_length=None
    )
    diff = max((a - b).abs().max().item() for a, b in zip(reference.parameters(), leaky.parameters(), strict=True))
    assert diff > 1e-3

"""hf_dynmask.integrations.peft: a LoRA adapter trained on a DynMask base reloads on a DynMask base.

A LoRA adapter trains on packed batches (two optimizer steps) on a DynMask sequence classifier built from a BERT
checkpoint, and is saved. Reloaded with :func:`load_peft_model` it runs on a DynMask base and gives the trained
model's logits on packed and padded batches; ``AutoPeftModelForSequenceClassification`` gives the same when the base
was saved by hf_dynmask (and, as PEFT does for any adapter, a stock BERT when the base path is the BERT checkpoint).
"""

from __future__ import annotations

import pytest
import torch

peft = pytest.importorskip("peft")

from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
)

from hf_dynmask import DynMaskConfig, DynMaskForSequenceClassification, packed_layout  # noqa: E402
from hf_dynmask.integrations import load_peft_model  # noqa: E402

SEQUENCES = [[2, 5, 6, 7, 8, 9, 3], [2, 10, 3], [2, 11, 12, 13, 3]]
LABELS = torch.tensor([0, 2, 1])


pytestmark = pytest.mark.usefixtures("one_thread")


def batches() -> dict[str, dict[str, torch.Tensor]]:
    width = max(map(len, SEQUENCES))
    layout = packed_layout([len(s) for s in SEQUENCES])
    return {
        "packed": {"input_ids": torch.tensor([sum(SEQUENCES, [])]), "cu_seq_lens_q": layout.cu_seqlens},
        "padded": {
            "input_ids": torch.tensor([s + [0] * (width - len(s)) for s in SEQUENCES]),
            "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in SEQUENCES]),
        },
    }


@pytest.fixture(scope="module")
def bert_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    BertModel(config).save_pretrained(path)
    return path


def train_adapter(model, path):
    """Two LoRA steps on a packed batch; returns the trained PeftModel (eval mode) after saving it to ``path``."""
    lora = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"])
    torch.manual_seed(1)
    model = peft.get_peft_model(model, lora)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        model(**batches()["packed"], labels=LABELS).loss.backward()
        optimizer.step()
    model.save_pretrained(path)
    return model.eval()


def assert_same_logits(got, expected):
    with torch.no_grad():
        for layout, batch in batches().items():
            torch.testing.assert_close(got(**batch).logits, expected(**batch).logits, atol=1e-6, rtol=0, msg=layout)


def test_load_peft_model_rebuilds_the_dynmask_base_from_a_bert_checkpoint(bert_path, tmp_path):
    base = AutoModelForSequenceClassification.from_pretrained(
        bert_path, config=DynMaskConfig.from_pretrained(bert_path, num_labels=3)
    )
    trained = train_adapter(base, tmp_path / "adapter")
    loaded = load_peft_model(tmp_path / "adapter", num_labels=3).eval()
    assert type(loaded.get_base_model()) is DynMaskForSequenceClassification
    assert_same_logits(loaded, trained)
    # What PEFT's own auto class does with that adapter: the stock model of the checkpoint it names.
    stock = peft.AutoPeftModelForSequenceClassification.from_pretrained(tmp_path / "adapter", num_labels=3)
    assert type(stock.get_base_model()) is BertForSequenceClassification


def test_auto_peft_model_gets_the_dynmask_base_saved_by_hf_dynmask(bert_path, tmp_path):
    config = DynMaskConfig.from_pretrained(bert_path, num_labels=3, masking="dynamic")
    AutoModelForSequenceClassification.from_pretrained(bert_path, config=config).save_pretrained(tmp_path / "base")
    base = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base")  # the documented start
    trained = train_adapter(base, tmp_path / "adapter")
    for loaded in (
        peft.AutoPeftModelForSequenceClassification.from_pretrained(tmp_path / "adapter"),
        load_peft_model(tmp_path / "adapter"),
    ):
        assert type(loaded.get_base_model()) is DynMaskForSequenceClassification
        assert loaded.get_base_model().config.masking == "dynamic"
        assert_same_logits(loaded.eval(), trained)


def test_load_peft_model_refuses_an_adapter_without_a_base(tmp_path):
    peft.LoraConfig(task_type="SEQ_CLS", target_modules=["query"]).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="does not name its base model"):
        load_peft_model(tmp_path)

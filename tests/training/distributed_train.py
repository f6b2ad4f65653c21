"""A few optimizer steps of a tiny DynMask model in several batch layouts; run by tests/test_distributed.py.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_train.py OUT.pt

trains every run of :data:`RUNS` on 2 CPU processes (gloo) and writes, from rank 0, the final parameters, the
padding-stat totals (summed over processes) and each rank's count of label tokens to ``OUT.pt``. The test imports
this file and calls :func:`train_run` with ``world_size=1`` for the single-process reference of the same global
batches: a fixed-size batch is twice as large on one process, a token-budget step accumulates twice as many
micro-batches (the two ranks' batches ``2k`` and ``2k + 1`` of the sampler's order).
"""

from __future__ import annotations

import random
import sys
import tempfile
from typing import Any, NamedTuple

import datasets
import torch
from transformers import BertTokenizer

from hf_dynmask import DynMaskConfig, make_collator
from hf_dynmask.modeling.modeling_dynmask import DynMaskForSequenceClassification, DynMaskForTokenClassification
from hf_dynmask.training.trainer import DynMaskTrainer, DynMaskTrainingArguments

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(60)]
CLS, SEP, NUM_LABELS, MAX_LEN = 2, 3, 3, 20


class Run(NamedTuple):
    task: str
    mode: str
    batch_size: int | None  # per device, on 2 processes (None: token-budget batches)
    token_budget: int | None = None
    cost: str = "auto"


RUNS: dict[str, Run] = {
    "token-static": Run("token-classification", "static", 2),
    "token-dynamic": Run("token-classification", "dynamic", 2),
    "token-packed": Run("token-classification", "packed", 2),
    "sequence-packed": Run("sequence-classification", "packed", 2),
    "budget-packed": Run("token-classification", "packed", None, token_budget=32),
    "budget-dynamic": Run("token-classification", "dynamic", None, token_budget=32, cost="packed"),
}
GRADIENT_ACCUMULATION = 2  # on 2 processes
STEPS = 3


def tokenizer() -> BertTokenizer:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(VOCAB))
    return BertTokenizer(vocab_file=f.name)


def dataset(task: str, n: int = 48) -> datasets.Dataset:
    rng = random.Random(0)
    rows = []
    for _ in range(n):
        words = rng.randint(1, MAX_LEN - 2)
        ids = [CLS] + [rng.randrange(5, len(VOCAB)) for _ in range(words)] + [SEP]
        tags = [-100] + [rng.randrange(NUM_LABELS) for _ in range(words)] + [-100]
        label = rng.randrange(NUM_LABELS)
        row = {"input_ids": ids, "length": len(ids)}
        row.update({"labels": tags} if task == "token-classification" else {"label": label})
        rows.append(row)
    return datasets.Dataset.from_list(rows)


def model(task: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = DynMaskConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=64,
        num_labels=NUM_LABELS,
    )
    cls = DynMaskForTokenClassification if task == "token-classification" else DynMaskForSequenceClassification
    return cls(config)


class LabelCountingTrainer(DynMaskTrainer):
    """Counts this process's label tokens (labels != -100), to show that the ranks see different amounts."""

    label_tokens = 0

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.label_tokens += int((inputs["labels"] != -100).sum())
        return super().training_step(model, inputs, num_items_in_batch)


def train_run(name: str, world_size: int, output_dir: str, tok: BertTokenizer | None = None) -> dict[str, Any]:
    """Train run ``name`` in this process (one of ``world_size`` launched ones) and return its results."""
    run = RUNS[name]
    scale = 2 // world_size  # 1 on two processes, 2 on one
    batch_size = run.batch_size * scale if run.batch_size is not None else 8
    accumulation = GRADIENT_ACCUMULATION * (scale if run.token_budget is not None else 1)
    args = DynMaskTrainingArguments(
        output_dir=output_dir,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        max_steps=STEPS,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        learning_rate=0.1,
        optim="sgd",
        lr_scheduler_type="constant",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
        token_budget=run.token_budget,
        token_budget_cost=run.cost,
        ddp_backend="gloo" if world_size > 1 else None,
    )
    trainer = LabelCountingTrainer(
        model=model(run.task),
        args=args,
        train_dataset=dataset(run.task),
        data_collator=make_collator(tok or tokenizer(), run.task, run.mode, max_length=MAX_LEN),
    )
    trainer.train()
    totals = trainer.padding_stats.totals()
    return {
        "params": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
        "real_tokens": totals["real_tokens"],
        "label_tokens": trainer.label_tokens,
        "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
    }


def main(out: str) -> None:
    torch.set_num_threads(1)
    tok = tokenizer()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in RUNS:
            result = train_run(name, world_size=2, output_dir=tmp, tok=tok)
            counts: list[Any] = [None, None]
            torch.distributed.all_gather_object(counts, result.pop("label_tokens"))
            result["label_tokens_per_rank"] = counts
            results[name] = result
    if torch.distributed.get_rank() == 0:
        torch.save(results, out)
    torch.distributed.barrier()


if __name__ == "__main__":
    main(sys.argv[1])

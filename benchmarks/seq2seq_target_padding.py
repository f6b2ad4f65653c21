"""What transformers' DataCollatorForSeq2Seq batches cost the DynMask seq2seq decoder: rows computed and step time.

``DataCollatorForSeq2Seq`` (run_translation.py, run_summarization.py) pads ``labels`` with ``-100`` and sends no
``decoder_attention_mask``. DynMask (dynamic masking) reads the target's padding from those labels
(``hf_dynmask.modeling.batch.target_padding_from_labels``) and leaves it out of the decoder; before that it computed
every target position. On real ntrex_en_de pairs (a BPE tokenizer trained on the split, a small Marian-shaped model
from a config, as ``bench_seq2seq.py`` builds them) this reports, per batch of the stock collator:

    rows          target positions the decoder computes: stock (B x Tt), DynMask before (every position: what a
                  full decoder_attention_mask gives, the path the model took without one) and DynMask now
    step time     one training step (forward, backward, SGD) per batch, CPU time on one thread, the three models
                  interleaved round by round over the same batches; medians over rounds, ratios against stock

    OMP_NUM_THREADS=1 python benchmarks/seq2seq_target_padding.py --examples 256 --rounds 11 \
        --json benchmarks/results/seq2seq_target_padding.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import DataCollatorForSeq2Seq, MarianConfig, MarianMTModel

sys.path.insert(0, str(Path(__file__).parent))
from bench_seq2seq import DATA, EOS, PAD, train_tokenizer  # noqa: E402

from hf_dynmask import DynMaskSeq2SeqConfig, DynMaskSeq2SeqForConditionalGeneration  # noqa: E402
from hf_dynmask.commands.bench import environment  # noqa: E402
from hf_dynmask.modeling.input_checks import IGNORE_INDEX  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--examples", type=int, default=128, help="first N training pairs")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=4000)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ffn", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def read_pairs(data_dir: Path, limit: int) -> list[dict]:
    with open(data_dir / "ntrex_en_de" / "train.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line, _ in zip(handle, range(limit), strict=False)]


class Rows:
    """Rows of the first decoder layer's input (target positions computed), per forward."""

    def __init__(self, decoder_layer):
        self.counts: list[int] = []
        decoder_layer.register_forward_hook(self._count)

    def _count(self, module, args, output) -> None:
        self.counts.append(args[0].shape[:-1].numel())


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pairs = read_pairs(args.data_dir, args.examples)
    tokenizer = train_tokenizer([p["source"] for p in pairs] + [p["target"] for p in pairs], args.vocab_size)
    features = [
        {
            **tokenizer(p["source"], truncation=True, max_length=args.max_length),
            "labels": tokenizer(text_target=p["target"], truncation=True, max_length=args.max_length)["input_ids"],
        }
        for p in pairs
    ]
    config = MarianConfig(
        vocab_size=len(tokenizer), d_model=args.d_model, encoder_layers=args.layers, decoder_layers=args.layers,
        encoder_attention_heads=args.heads, decoder_attention_heads=args.heads, encoder_ffn_dim=args.ffn,
        decoder_ffn_dim=args.ffn, max_position_embeddings=args.max_length + 2, pad_token_id=PAD, eos_token_id=EOS,
        decoder_start_token_id=PAD, dropout=0.0, scale_embedding=True,
    )  # fmt: skip
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        MarianMTModel(config).save_pretrained(folder)
        stock = MarianMTModel.from_pretrained(folder).train()
        dynmask_config = DynMaskSeq2SeqConfig.from_pretrained(folder, masking="dynamic")
        models = {
            "stock": stock,
            "dynmask_before": DynMaskSeq2SeqForConditionalGeneration.from_pretrained(folder, config=dynmask_config),
            "dynmask": DynMaskSeq2SeqForConditionalGeneration.from_pretrained(folder, config=dynmask_config),
        }
    collator = DataCollatorForSeq2Seq(tokenizer, model=stock)
    batches = [collator(features[i : i + args.batch_size]) for i in range(0, len(features), args.batch_size)]
    inputs = {
        "stock": batches,
        "dynmask": batches,
        # The path the model took before reading the labels: no padding known, every target position computed.
        "dynmask_before": [{**b, "decoder_attention_mask": torch.ones_like(b["labels"])} for b in batches],
    }
    rows = {name: Rows(model.model.decoder.layers[0]) for name, model in models.items()}
    optimizers = {name: torch.optim.SGD(model.parameters(), lr=0.0) for name, model in models.items()}
    losses: dict[str, list[float]] = {name: [] for name in models}

    def step(name: str, batch) -> float:
        model, optimizer = models[name], optimizers[name]
        optimizer.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        return loss.item()

    for name in models:  # warm-up, and the rows and losses of every batch
        losses[name] = [step(name, batch) for batch in inputs[name]]
    counts = {name: list(rows[name].counts) for name in models}
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name in models:
            start = time.process_time()
            for batch in inputs[name]:
                step(name, batch)
            times[name].append(time.process_time() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    real_targets = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
    result = {
        "dataset": "ntrex_en_de/train.jsonl",
        "examples": len(features),
        "batches": len(batches),
        "batch_size": args.batch_size,
        "real_target_tokens": real_targets,
        "decoder_rows": {name: sum(values) for name, values in counts.items()},
        "decoder_rows_per_batch": counts,
        "max_loss_difference_vs_stock": {
            name: max(abs(a - b) for a, b in zip(losses[name], losses["stock"], strict=True)) for name in models
        },
        "step_cpu_seconds_per_round_median": median,
        "speed_vs_stock": {name: median["stock"] / value for name, value in median.items()},
        "step_cpu_seconds_per_round": times,
        "model": {"d_model": args.d_model, "layers": args.layers, "heads": args.heads, "vocab": len(tokenizer)},
        "environment": environment(torch.device("cpu")),
    }
    print(json.dumps({k: result[k] for k in ("real_target_tokens", "decoder_rows", "speed_vs_stock")}, indent=1))
    print(json.dumps(result["max_loss_difference_vs_stock"]))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()

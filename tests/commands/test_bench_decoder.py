"""``hf-dynmask bench-decoder`` on a tiny decoder: every method computes the same logits and loss, the report's
numbers hold together, bad inputs end in one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, BertConfig, BertModel

from hf_dynmask.commands.bench_decoder import DecoderBenchSettings, DecoderShape, decoder_flops
from hf_dynmask.commands.cli import main
from hf_dynmask.commands.demo import train_tokenizer

TEXTS = [f"line {i} " + "word " * (3 * (i % 9)) + "the quick brown fox jumps" for i in range(24)]
TINY = ["--hidden-size", 32, "--layers", 2, "--heads", 4, "--kv-heads", 2, "--intermediate-size", 64]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("decoder") / "data.jsonl"
    with path.open("w") as handle:
        for i, text in enumerate(TEXTS):
            handle.write(json.dumps({"source": text, "target": f"short {i}"}) + "\n")
    return path


def run(argv: list, capsys) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def base_argv(data: Path, *extra) -> list:
    return [
        "bench-decoder", "--dataset", data, "--text-column", "source", "--text-column", "target", "--batch-size", 4,
        "--batches", 2, "--rounds", 1, "--max-length", 64, "--vocab-size", 200, "--threads", 1, "--no-progress",
        *TINY, *extra,
    ]  # fmt: skip


def test_bench_decoder_methods_agree_and_goals_are_reported(data, tmp_path, capsys):
    path = tmp_path / "decoder.json"
    code, out, err = run(base_argv(data, "--json", path), capsys)
    assert code == 0, err
    report = json.loads(path.read_text())
    assert report["command"].startswith("hf-dynmask bench-decoder")
    assert report["dataset"]["examples"] == 48  # sources and targets pooled
    assert report["model"]["num_key_value_heads"] == 2
    for mode in ("inference", "train"):
        rows = report["results"][mode]
        assert list(rows) == ["hf_padded_random", "hf_length_grouped", "hf_flattening", "dynmask_packed"]
        for name, row in rows.items():
            assert row["max_abs_diff"] < 1e-5, (mode, name)  # the same logits / loss on the same examples
            assert row["real_tokens_per_cpu_s"] == row["real_tokens"] / row["cpu_seconds"] > 0  # CPU next to wall
            assert row["fraction_of_limit"] == pytest.approx(
                row["speedup_vs_padded_random"] / row["limit_vs_padded_random"]
            )
        assert rows["hf_padded_random"]["speedup_vs_padded_random"] == 1.0
        assert rows["dynmask_packed"]["padding_fraction"] == rows["hf_flattening"]["padding_fraction"] == 0.0
        assert rows["hf_padded_random"]["padding_fraction"] > 0
        assert rows["dynmask_packed"]["epoch_padding_fraction"] == 0.0
        assert (
            0
            < rows["hf_length_grouped"]["epoch_padding_fraction"]
            < rows["hf_padded_random"]["epoch_padding_fraction"]
        )
    assert {g["goal"].split(":")[0] for g in report["goals"]} == {"train", "inference"}
    assert "**goals**" in out and "| dynmask_packed |" in out and "| real tok/s | per CPU s |" in out


def test_bench_decoder_on_a_saved_model(data, tmp_path, capsys):
    folder = tmp_path / "qwen2"
    tokenizer = train_tokenizer(TEXTS * 2, vocab_size=150)
    tokenizer.save_pretrained(folder)
    config = AutoConfig.for_model(
        "qwen2", hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=1,
        intermediate_size=64, vocab_size=len(tokenizer), use_sliding_window=True, sliding_window=8,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    path = tmp_path / "saved.json"
    code, _, err = run(base_argv(data, "--model", folder, "--modes", "inference", "--json", path), capsys)
    assert code == 0, err
    report = json.loads(path.read_text())
    assert report["model"]["model_type"] == "qwen2"
    assert all(row["max_abs_diff"] < 1e-5 for row in report["results"]["inference"].values())


def test_bench_decoder_refuses_an_encoder_folder(data, tmp_path, capsys):
    BertModel(
        BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(tmp_path)
    code, _, err = run(base_argv(data, "--model", tmp_path), capsys)
    assert code == 1 and "not a verified decoder family" in err and len(err.strip().splitlines()) == 1


def test_settings_are_validated():
    with pytest.raises(ValueError, match="must include 'hf_padded_random'"):
        DecoderBenchSettings(methods=("dynmask_packed",))
    with pytest.raises(ValueError, match="verified decoder family"):
        DecoderShape(model_type="bert")
    with pytest.raises(ValueError, match="must divide"):
        DecoderShape(num_attention_heads=8, num_key_value_heads=3)


def test_flops_count_attention_over_the_context():
    config = AutoConfig.for_model(
        "llama", hidden_size=8, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=16, vocab_size=10,
    )  # fmt: skip
    assert decoder_flops(2, 5, config) - decoder_flops(2, 4, config) == 2 * 4 * 8

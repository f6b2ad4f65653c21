"""hf_dynmask.sharing.model_card: TrainingSummary, the rendered card and its YAML metadata (checked offline)."""

from __future__ import annotations

import dataclasses
import importlib.metadata

import jinja2
import jinja2.meta
import pytest
import yaml
from huggingface_hub import EvalResult, ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from hf_dynmask.data import collators
from hf_dynmask.modeling import auto
from hf_dynmask.sharing.model_card import (
    DEFAULT_TEMPLATE,
    TASKS,
    EvalMetric,
    FrameworkVersions,
    TrainingSummary,
    make_model_card,
    template_variables,
    write_model_card,
)

VERSIONS = FrameworkVersions(transformers="5.23.0", torch="2.13.0", hf_dynmask="0.1.0", datasets=None)
TOTALS = {
    "real_tokens": 123456,
    "padded_tokens": 160000,
    "train_runtime": 12.5,
    "global_step": 40,
    "train_loss": 1.23456,
    "eval_accuracy": 0.91234,
    "eval_f1": 0.875,
    "eval_runtime": 3.0,
    "eval_samples_per_second": 10.0,
    "eval_steps_per_second": 1.0,
    "eval_epoch": 2.0,
    "epoch": 2.0,
    "learning_rate": 5e-5,
}
SETUP = dict(
    model_name="user/minilm-banking77",
    task="sequence-classification",
    mode="dynamic",
    masking="dynamic",
    base_model="sentence-transformers/all-MiniLM-L6-v2",
    datasets=["banking77"],
    versions=VERSIONS,
)


def _summary(**overrides) -> TrainingSummary:
    return TrainingSummary.from_totals(TOTALS, eval_dataset="banking77", **{**SETUP, **overrides})


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


# -- TrainingSummary -----------------------------------------------------------------------------------------------


def test_from_totals_reads_totals_and_trainer_metrics():
    summary = _summary()
    assert summary.real_tokens == 123456 and summary.padded_tokens == 160000
    assert summary.train_runtime == 12.5 and summary.train_steps == 40 and summary.train_loss == 1.23456
    assert summary.padding_efficiency == 123456 / 160000
    assert summary.real_tokens_per_second == 123456 / 12.5
    assert summary.eval_results == (
        EvalMetric("accuracy", 0.91234, "banking77", "validation"),
        EvalMetric("f1", 0.875, "banking77", "validation"),
    )
    assert summary.datasets == ("banking77",)  # lists become tuples: the summary is hashable
    assert hash(summary) == hash(_summary())
    with pytest.raises(dataclasses.FrozenInstanceError):
        summary.real_tokens = 1


def test_from_totals_fields_win_and_explicit_eval_results_come_first():
    extra = EvalMetric("exact_match", 0.5, "squad", "validation", dataset_name="SQuAD v1")
    summary = TrainingSummary.from_totals(
        {**TOTALS, "train_steps": 7},
        eval_dataset="banking77",
        eval_split="test",
        **{**SETUP, "train_loss": 0.25, "eval_results": [extra]},
    )
    assert summary.train_steps == 7  # train_steps is preferred over global_step
    assert summary.train_loss == 0.25
    assert [(m.name, m.dataset, m.split) for m in summary.eval_results] == [
        ("exact_match", "squad", "validation"),
        ("accuracy", "banking77", "test"),
        ("f1", "banking77", "test"),
    ]


def test_from_totals_errors_say_what_is_missing():
    with pytest.raises(ValueError, match=r"totals lack \['padded_tokens', 'train_runtime'\]"):
        TrainingSummary.from_totals({"real_tokens": 1}, **SETUP)
    with pytest.raises(ValueError, match=r"evaluation metrics \['accuracy', 'f1'\]: pass eval_dataset="):
        TrainingSummary.from_totals(TOTALS, **SETUP)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"task": "seq2seq"}, "unknown task 'seq2seq'"),
        ({"mode": "bucketed"}, "unknown mode 'bucketed'"),
        ({"masking": "packed"}, "unknown masking 'packed'"),
        ({"task": "masked-lm"}, "task='masked-lm' needs mlm_masking"),
        ({"mlm_masking": "static"}, "mlm_masking applies to task='masked-lm' only"),
        ({"real_tokens": 10, "padded_tokens": 9}, "need 1 <= real_tokens <= padded_tokens"),
        ({"real_tokens": 0, "padded_tokens": 9}, "need 1 <= real_tokens <= padded_tokens"),
        ({"train_runtime": 0.0}, "train_runtime must be > 0"),
    ],
)
def test_summary_validation(overrides, message):
    fields = {**SETUP, "real_tokens": 8, "padded_tokens": 10, "train_runtime": 1.0, **overrides}
    with pytest.raises(ValueError, match=message):
        TrainingSummary(**fields)


def test_eval_metric_needs_name_and_dataset():
    with pytest.raises(ValueError, match="needs a metric name and a dataset id"):
        EvalMetric("accuracy", 0.5, "")


def test_tasks_match_the_collators_and_the_auto_classes():
    assert set(TASKS) == set(collators.TASKS) - {"seq2seq"}  # seq2seq has no DynMask model
    registered = {auto_class.__name__: model_class.__name__ for auto_class, model_class in auto.AUTO_CLASSES.items()}
    for info in TASKS.values():
        assert registered[info.auto_class] == info.model_class


def test_installed_versions():
    versions = FrameworkVersions.installed()
    assert versions.transformers == importlib.metadata.version("transformers")
    assert versions.torch == importlib.metadata.version("torch")
    assert versions.hf_dynmask == importlib.metadata.version("hf-dynmask")


# -- the card ------------------------------------------------------------------------------------------------------


def test_card_shows_the_measured_numbers_and_how_to_load():
    text = str(make_model_card(_summary(), description="Intent classifier."))
    expected_lines = [
        "# user/minilm-banking77",
        "Intent classifier.",
        "A `DynMaskForSequenceClassification` model (text-classification), trained from "
        "[sentence-transformers/all-MiniLM-L6-v2](https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2) "
        "on banking77 with `hf_dynmask`: dynamic padding and sequence packing whose outputs and losses equal those "
        "of a padded batch.",
        "from transformers import AutoTokenizer, AutoModelForSequenceClassification",
        'tokenizer = AutoTokenizer.from_pretrained("user/minilm-banking77", trust_remote_code=True)',
        'model = AutoModelForSequenceClassification.from_pretrained("user/minilm-banking77", trust_remote_code=True)',
        "| Task | `sequence-classification` |",
        "| Base checkpoint | `sentence-transformers/all-MiniLM-L6-v2` |",
        "| Batch layout | `dynamic`: dynamic padding (every batch padded to its longest sequence) |",
        "| Model masking (`config.masking`) | `dynamic`: padding is removed before the embeddings; every layer runs "
        "on real tokens only |",
        "| Optimizer steps | 40 |",
        "| Training loss | 1.2346 |",
        "| Padding efficiency (real / computed input tokens) | 77.2% |",
        "| Real tokens | 123,456 |",
        "| Computed tokens (padding included) | 160,000 |",
        "| Training time (s) | 12.5 |",
        "| Real tokens per second | 9,876.5 |",
        "| banking77 | validation | accuracy | 0.9123 |",
        "| banking77 | validation | f1 | 0.8750 |",
        "- Transformers 5.23.0",
        "- PyTorch 2.13.0",
        "- hf_dynmask 0.1.0",
        "- Datasets not installed",
    ]
    lines = text.splitlines()
    for line in expected_lines:
        assert line in lines, line
    assert "MLM masking" not in text
    assert "{{" not in text and "{%" not in text and "\n\n\n" not in text


def test_masked_lm_card_without_eval_or_base():
    summary = TrainingSummary(
        model_name="tiny-mlm",
        task="masked-lm",
        mode="packed",
        masking="static",
        mlm_masking="static",
        real_tokens=1000,
        padded_tokens=1000,
        train_runtime=4.0,
        versions=VERSIONS,
    )
    card = make_model_card(summary)
    lines = str(card).splitlines()
    assert "| MLM masking | static (BERT): each example keeps a fixed mask per duplicate |" in lines
    assert "| Padding efficiency (real / computed input tokens) | 100.0% |" in lines
    assert "| Real tokens per second | 250.0 |" in lines
    assert "No evaluation results were recorded." in lines
    assert 'model = AutoModelForMaskedLM.from_pretrained("tiny-mlm", trust_remote_code=True)' in lines
    assert "A `DynMaskForMaskedLM` model (fill-mask) with `hf_dynmask`" in str(card)
    assert not any(line.startswith(("| Base checkpoint", "| Optimizer steps", "| Training loss")) for line in lines)
    metadata = _front_matter(str(card))
    assert "model-index" not in metadata and "base_model" not in metadata and "datasets" not in metadata
    assert metadata["pipeline_tag"] == "fill-mask"
    assert metadata["tags"] == ["hf_dynmask", "dynmask", "custom_code", "sequence-packing"]


def test_yaml_metadata_parses_and_round_trips():
    card = make_model_card(_summary())
    metadata = _front_matter(str(card))
    assert metadata == {
        "base_model": "sentence-transformers/all-MiniLM-L6-v2",
        "datasets": ["banking77"],
        "language": "en",
        "library_name": "transformers",
        "license": "apache-2.0",
        "metrics": ["accuracy", "f1"],
        "pipeline_tag": "text-classification",
        "tags": ["hf_dynmask", "dynmask", "custom_code", "dynamic-padding"],
        "model-index": [
            {
                "name": "user/minilm-banking77",
                "results": [
                    {
                        "task": {"type": "text-classification"},
                        "dataset": {"name": "banking77", "type": "banking77", "split": "validation"},
                        "metrics": [{"type": "accuracy", "value": 0.91234}, {"type": "f1", "value": 0.875}],
                    }
                ],
            }
        ],
    }
    reparsed = ModelCard(str(card))  # parses the YAML with huggingface_hub's ModelCardData schema
    assert reparsed.data.to_dict() == card.data.to_dict()
    assert reparsed.data.model_name == "user/minilm-banking77"
    name, results = model_index_to_eval_results(metadata["model-index"])
    assert name == "user/minilm-banking77"
    assert results == [
        EvalResult("text-classification", "banking77", "banking77", "accuracy", 0.91234, dataset_split="validation"),
        EvalResult("text-classification", "banking77", "banking77", "f1", 0.875, dataset_split="validation"),
    ]


def test_template_uses_exactly_the_variables_given():
    source = DEFAULT_TEMPLATE.read_text(encoding="utf-8")
    used = jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(source))
    assert used == set(template_variables(_summary())) | {"card_data"}


def test_custom_template(tmp_path):
    template = tmp_path / "t.md"
    template.write_text(
        "---\n{{ card_data }}\n---\n{{ model_name }}: {{ padding_efficiency }} at {{ real_tokens_per_second }}\n"
    )
    card = make_model_card(_summary(), template_path=template)
    assert str(card).endswith("---\nuser/minilm-banking77: 77.2% at 9,876.5")
    with pytest.raises(ValueError, match="template_path="):
        make_model_card(_summary(), template_path=tmp_path / "missing.md")


def test_write_model_card(tmp_path):
    path = write_model_card(tmp_path, _summary(), description="Written.")
    assert path == tmp_path / "README.md"
    loaded = ModelCard.load(path)  # a local file: no network
    assert loaded.data.to_dict() == make_model_card(_summary()).data.to_dict()
    assert "Written." in loaded.text

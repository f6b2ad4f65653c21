"""Tests for hf_dynmask.sharing.hub: saved and pushed DynMask models load as remote code where hf_dynmask is missing.

One module-scoped fixture trains a tiny model per Auto class (two optimizer steps), saves each with
``save_with_code``, pushes one with ``push_to_hub_with_code`` against a fake Hub (only ``HfApi.create_repo`` and
``HfApi.create_commit`` are replaced), and runs ONE fresh Python process in which ``import hf_dynmask`` fails. That
process loads every folder with ``AutoX.from_pretrained(path, trust_remote_code=True)`` and writes its outputs, which
must equal the parent's bit for bit, on padded and on packed inputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import pytest
import torch
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    BertConfig,
    BertModel,
    BertTokenizer,
)

import hf_dynmask
from hf_dynmask import (
    DynMaskConfig,
    DynMaskForCausalLM,
    DynMaskForMaskedLM,
    DynMaskForQuestionAnswering,
    DynMaskForSequenceClassification,
    DynMaskForTokenClassification,
    DynMaskModel,
)
from hf_dynmask.sharing.hub import auto_map, check_shipped_code, push_to_hub_with_code, save_with_code
from hf_dynmask.sharing.model_card import TrainingSummary, make_model_card

CODE_FILES = (
    "attention.py",
    "batching.py",
    "configuration_dynmask.py",
    "families.py",
    "layout.py",
    "masks.py",
    "modeling_dynmask.py",
)
EXPECTED_AUTO_MAP = {
    "AutoConfig": "configuration_dynmask.DynMaskConfig",
    "AutoModel": "modeling_dynmask.DynMaskModel",
    "AutoModelForMaskedLM": "modeling_dynmask.DynMaskForMaskedLM",
    "AutoModelForCausalLM": "modeling_dynmask.DynMaskForCausalLM",
    "AutoModelForSequenceClassification": "modeling_dynmask.DynMaskForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_dynmask.DynMaskForTokenClassification",
    "AutoModelForQuestionAnswering": "modeling_dynmask.DynMaskForQuestionAnswering",
}
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "packed", "batch"]

# Three sequences (lengths 7, 3, 5): padded (3, 7) with right padding, and packed (1, 15) with cu_seq_lens_q.
SEQUENCES = [[2, 5, 6, 7, 8, 9, 3], [2, 10, 3], [2, 11, 12, 13, 3]]
LENGTHS = [len(s) for s in SEQUENCES]


def _inputs() -> dict[str, dict[str, torch.Tensor | int]]:
    width = max(LENGTHS)
    input_ids = torch.tensor([s + [0] * (width - len(s)) for s in SEQUENCES])
    attention_mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in SEQUENCES])
    cu_seqlens = torch.tensor([0, 7, 10, 15], dtype=torch.int32)
    packed = torch.tensor([[t for s in SEQUENCES for t in s]])
    return {
        "padded": {"input_ids": input_ids, "attention_mask": attention_mask},
        "packed": {"input_ids": packed, "cu_seq_lens_q": cu_seqlens, "max_length_q": width},
    }


def _config(**overrides) -> DynMaskConfig:
    sizes = dict(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    return DynMaskConfig(**{**sizes, **overrides})


# name -> (Auto class loaded in the fresh process, model class, config overrides): every Auto class of the family,
# with static and dynamic masking, both head styles and a decoder among them.
MODELS = {
    "model": ("AutoModel", DynMaskModel, {}),
    "masked_lm": ("AutoModelForMaskedLM", DynMaskForMaskedLM, {"masking": "static"}),
    "causal_lm": ("AutoModelForCausalLM", DynMaskForCausalLM, {"is_decoder": True}),
    "sequence_classification": (
        "AutoModelForSequenceClassification",
        DynMaskForSequenceClassification,
        {"num_labels": 3, "head_style": "roberta"},
    ),
    "token_classification": ("AutoModelForTokenClassification", DynMaskForTokenClassification, {"num_labels": 4}),
    "question_answering": ("AutoModelForQuestionAnswering", DynMaskForQuestionAnswering, {"num_labels": 2}),
}
PUSHED = "pushed"  # the sequence-classification model, pushed to the fake Hub


class Load(NamedTuple):
    """One load in the fresh process: ``auto_class.from_pretrained(folder)``, weights trained as ``source``."""

    folder: str
    auto_class: str
    source: str
    base_only: bool = False  # AutoModel on a head's folder: the encoder must match, the new pooler is random


LOADS = {
    **{name: Load(name, auto, name) for name, (auto, _, _) in MODELS.items()},
    PUSHED: Load(PUSHED, "AutoModelForSequenceClassification", "sequence_classification"),
    # Other Auto classes than the saved one resolve through the same auto_map.
    "masked_lm_as_model": Load("masked_lm", "AutoModel", "masked_lm", base_only=True),
    "question_answering_as_model": Load("question_answering", "AutoModel", "question_answering", base_only=True),
}
NEW_POOLER = {"pooler.dense.weight", "pooler.dense.bias"}


def _loss(name: str, model, batch) -> torch.Tensor:
    real = batch["attention_mask"].bool()
    token_labels = batch["input_ids"].masked_fill(~real, -100)
    if name == "model":
        return model(**batch).last_hidden_state[real].pow(2).mean()
    if name in ("masked_lm", "causal_lm"):
        return model(**batch, labels=token_labels).loss
    if name == "sequence_classification":
        return model(**batch, labels=torch.tensor([0, 2, 1])).loss
    if name == "token_classification":
        return model(**batch, labels=(token_labels % 4).masked_fill(~real, -100)).loss
    return model(**batch, start_positions=torch.tensor([1, 0, 2]), end_positions=torch.tensor([3, 1, 4])).loss


def _trained(name: str, model_class, overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    model = model_class(_config(**overrides))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        _loss(name, model, _inputs()["padded"]).backward()
        optimizer.step()
    model.eval()
    prefix = "" if name == "model" else "bert."
    query = f"{prefix}encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(before[query], model.state_dict()[query])  # the steps moved the weights
    return model


def _outputs(model) -> dict[str, dict[str, torch.Tensor]]:
    with torch.no_grad():
        return {
            layout: {k: v for k, v in model(**batch).items() if isinstance(v, torch.Tensor)}
            for layout, batch in _inputs().items()
        }


class FakeHub:
    """Stands in for the two HTTP calls of a push; keeps a copy of every uploaded file.

    ``install`` puts its bound methods on ``HfApi`` (a bound method is not a descriptor, so ``api.create_commit(...)``
    calls ``hub.create_commit(...)``).
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.commits: list[dict] = []
        self.repos: list[str] = []

    def create_repo(self, repo_id: str, **kwargs):
        self.repos.append(repo_id)
        return SimpleNamespace(repo_id=repo_id)

    def create_commit(self, repo_id: str, operations, **kwargs):
        operations = list(operations)
        self.commits.append({"repo_id": repo_id, "paths": [op.path_in_repo for op in operations], **kwargs})
        for op in operations:
            assert isinstance(op, CommitOperationAdd)
            target = self.folder / op.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(Path(op.path_or_fileobj).read_bytes())
        return SimpleNamespace(oid="0" * 40, commit_url=f"https://hub.invalid/{repo_id}/commit/0")

    def install(self, patch: pytest.MonkeyPatch) -> None:
        patch.setattr(HfApi, "create_repo", self.create_repo)
        patch.setattr(HfApi, "create_commit", self.create_commit)


CHILD = textwrap.dedent(
    """
    import json, sys
    sys.modules["hf_dynmask"] = None  # `import hf_dynmask` raises ImportError from here on
    try:
        import hf_dynmask  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("hf_dynmask is importable in the child")

    import torch
    import transformers

    torch.set_num_threads(1)
    spec = json.loads(open(sys.argv[1]).read())
    inputs = torch.load(spec["inputs"])
    results = {}
    for name, (folder, auto_name) in spec["jobs"].items():
        config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
        model = getattr(transformers, auto_name).from_pretrained(folder, trust_remote_code=True)
        with torch.no_grad():
            outputs = {
                layout: {k: v for k, v in model(**batch).items() if isinstance(v, torch.Tensor)}
                for layout, batch in inputs.items()
            }
        results[name] = {
            "class": type(model).__module__ + "." + type(model).__name__,
            "config_class": type(config).__module__ + "." + type(config).__name__,
            "training": model.training,
            "state_dict": model.state_dict(),
            "outputs": outputs,
        }
    tokenizer = transformers.AutoTokenizer.from_pretrained(spec["jobs"]["pushed"][0])
    results["tokenized"] = tokenizer("hello world").input_ids
    results["dynmask_modules"] = sorted(m for m in sys.modules if m.startswith("hf_dynmask") and sys.modules[m])
    torch.save(results, spec["out"])
    """
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Train, save and push every model; compute the parent's reference outputs (one torch thread)."""
    root = tmp_path_factory.mktemp("hub")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        models, folders, reference, saves = {}, {}, {}, {}
        for name, (_, model_class, overrides) in MODELS.items():
            models[name] = _trained(name, model_class, overrides)
            saves[name] = save_with_code(models[name], root / name)
            folders[name] = saves[name].directory
            reference[name] = _outputs(models[name])
        hub = FakeHub(root / PUSHED)
        tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(VOCAB)})
        summary = TrainingSummary(
            model_name="user/tiny-dynmask",
            task="sequence-classification",
            mode="packed",
            masking="dynamic",
            real_tokens=30,
            padded_tokens=30,
            train_runtime=0.5,
        )
        card = make_model_card(summary)
        with pytest.MonkeyPatch.context() as patch:
            hub.install(patch)
            commit = push_to_hub_with_code(
                models["sequence_classification"], "user/tiny-dynmask", tokenizer=tokenizer, model_card=card
            )
        folders[PUSHED] = root / PUSHED
        for name, load in LOADS.items():
            if load.base_only:
                reference[name] = _outputs(models[load.source].bert)
        reference[PUSHED] = reference["sequence_classification"]
    finally:
        torch.set_num_threads(threads)
    torch.save(_inputs(), root / "inputs.pt")
    return SimpleNamespace(
        root=root, models=models, folders=folders, reference=reference, saves=saves, hub=hub, commit=commit, card=card
    )


@pytest.fixture(scope="module")
def loaded(saved):
    """Load every saved / pushed folder in a fresh process where hf_dynmask cannot be imported."""
    root = saved.root
    spec = {
        "jobs": {name: [str(saved.folders[load.folder]), load.auto_class] for name, load in LOADS.items()},
        "inputs": str(root / "inputs.pt"),
        "out": str(root / "child.pt"),
    }
    (root / "spec.json").write_text(json.dumps(spec))
    (root / "child.py").write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_MODULES_CACHE=str(root / "modules"),
        HF_HOME=str(root / "hf_home"),
        TRANSFORMERS_VERBOSITY="error",
    )
    done = subprocess.run(
        [sys.executable, str(root / "child.py"), str(root / "spec.json")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return torch.load(root / "child.pt")


# -- what is written ----------------------------------------------------------------------------------------------


def test_auto_map_names_every_auto_class_of_the_family():
    assert auto_map() == EXPECTED_AUTO_MAP
    registered = {auto.__name__ for auto in hf_dynmask.modeling.auto.AUTO_CLASSES} | {"AutoConfig"}
    assert set(auto_map()) == registered


def test_saved_folder_holds_weights_config_and_code(saved):
    for name, result in saved.saves.items():
        files = sorted(p.name for p in saved.folders[name].iterdir())
        assert files == sorted([*CODE_FILES, "config.json", "model.safetensors"]), name
        assert result.code_files == CODE_FILES
        config = json.loads((saved.folders[name] / "config.json").read_text())
        assert config["auto_map"] == EXPECTED_AUTO_MAP
        assert config["model_type"] == "dynmask"
        assert config["architectures"] == [MODELS[name][1].__name__]
        for code_file in CODE_FILES:  # byte-for-byte copies of the package's modules
            source = Path(hf_dynmask.__file__).parent / "modeling" / code_file
            assert (saved.folders[name] / code_file).read_bytes() == source.read_bytes()


def test_saving_leaves_the_model_config_as_it_was(saved, tmp_path):
    model = saved.models["token_classification"]
    assert "auto_map" not in model.config.__dict__
    model.save_pretrained(tmp_path / "plain")  # a plain save afterwards ships no code and names none
    assert "auto_map" not in json.loads((tmp_path / "plain" / "config.json").read_text())
    model.config.auto_map = {"AutoTokenizer": "some--repo.tokenization.Tok"}
    try:
        save_with_code(model, tmp_path / "with_code")
        written = json.loads((tmp_path / "with_code" / "config.json").read_text())["auto_map"]
        assert written == {**EXPECTED_AUTO_MAP, "AutoTokenizer": "some--repo.tokenization.Tok"}
        assert model.config.auto_map == {"AutoTokenizer": "some--repo.tokenization.Tok"}
    finally:
        del model.config.auto_map


def test_in_process_load_uses_the_installed_package(saved):
    """Where hf_dynmask is imported, its registration wins: no trust_remote_code needed, same classes."""
    folder = saved.folders["sequence_classification"]
    assert type(AutoConfig.from_pretrained(folder)) is DynMaskConfig
    for trust_remote_code in (None, True):
        model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=trust_remote_code)
        assert type(model) is DynMaskForSequenceClassification
        with torch.no_grad():
            logits = model(**_inputs()["packed"]).logits
        assert torch.allclose(logits, saved.reference["sequence_classification"]["packed"]["logits"], atol=1e-6)


# -- the push path ------------------------------------------------------------------------------------------------


def test_push_uploads_exactly_the_saved_folder_in_one_commit(saved):
    assert saved.hub.repos == ["user/tiny-dynmask"]
    assert len(saved.hub.commits) == 1
    commit = saved.hub.commits[0]
    expected = sorted(
        [*CODE_FILES, "README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    )
    assert commit["repo_id"] == "user/tiny-dynmask"
    assert commit["paths"] == expected
    assert commit["commit_message"] == "Upload DynMask model with its code"
    assert commit["revision"] is None and commit["create_pr"] is False
    assert saved.commit.oid == "0" * 40
    pushed = saved.folders[PUSHED]
    readme = (pushed / "README.md").read_text(encoding="utf-8")
    assert readme == str(saved.card)
    assert ModelCard(readme).data.to_dict() == saved.card.data.to_dict()
    assert 'AutoModelForSequenceClassification.from_pretrained("user/tiny-dynmask", trust_remote_code=True)' in readme
    assert json.loads((pushed / "config.json").read_text())["auto_map"] == EXPECTED_AUTO_MAP
    # The pushed weights are the saved ones.
    saved_weights = (saved.folders["sequence_classification"] / "model.safetensors").read_bytes()
    assert (pushed / "model.safetensors").read_bytes() == saved_weights


def test_push_to_a_branch_creates_it_first(saved, tmp_path, monkeypatch):
    hub = FakeHub(tmp_path)
    calls = []
    hub.install(monkeypatch)
    monkeypatch.setattr(HfApi, "create_branch", lambda api, **kwargs: calls.append(kwargs))
    push_to_hub_with_code(saved.models["model"], "user/r", revision="dev", commit_message="m")
    assert calls == [{"repo_id": "user/r", "branch": "dev", "token": None, "exist_ok": True}]
    assert hub.commits[0]["revision"] == "dev" and hub.commits[0]["commit_message"] == "m"
    assert "README.md" not in hub.commits[0]["paths"]  # no card given: the repository's card is left alone


# -- loading in a fresh process without hf_dynmask -------------------------------------------------------------------


def test_fresh_process_never_imports_hf_dynmask(loaded):
    assert loaded["dynmask_modules"] == []
    assert loaded["tokenized"] == [2, 5, 6, 3]


@pytest.mark.parametrize("name", list(LOADS))
def test_remote_code_loads_each_auto_class(loaded, name):
    load, result = LOADS[name], loaded[name]
    class_name = "DynMaskModel" if load.base_only else MODELS[load.source][1].__name__
    assert result["class"].startswith("transformers_modules.")
    assert result["class"].endswith(f".modeling_dynmask.{class_name}")
    assert result["config_class"].startswith("transformers_modules.")
    assert result["config_class"].endswith(".configuration_dynmask.DynMaskConfig")
    assert result["training"] is False


@pytest.mark.parametrize("name", list(LOADS))
def test_remote_code_weights_are_the_trained_ones(saved, loaded, name):
    load = LOADS[name]
    model = saved.models[load.source]
    expected = model.bert.state_dict() if load.base_only else model.state_dict()
    got = loaded[name]["state_dict"]
    assert set(got) - set(expected) == (NEW_POOLER if load.base_only else set())
    assert set(expected) <= set(got)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("name", list(LOADS))
def test_remote_code_outputs_are_bit_identical(saved, loaded, name, layout):
    expected = saved.reference[name][layout]
    got = loaded[name]["outputs"][layout]
    assert set(got) - set(expected) == ({"pooler_output"} if LOADS[name].base_only else set())
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        assert torch.equal(got[key], value), (name, layout, key)


# -- guards ----------------------------------------------------------------------------------------------------------


def test_check_shipped_code_flags_foreign_and_unshipped_imports(tmp_path):
    for code_file in CODE_FILES:
        (tmp_path / code_file).write_bytes((Path(hf_dynmask.__file__).parent / "modeling" / code_file).read_bytes())
    assert check_shipped_code(tmp_path) == CODE_FILES
    (tmp_path / "extra.py").write_text(
        "import numpy\nfrom hf_dynmask.modeling.layout import unpad\nfrom .missing import x\nfrom . import layout\n"
        "def f():\n    import os, scipy.linalg\n"
    )
    with pytest.raises(ValueError) as error:
        check_shipped_code(tmp_path)
    message = str(error.value)
    assert "extra.py:1 imports 'numpy'" in message
    assert "extra.py:2 imports 'hf_dynmask.modeling.layout'" in message
    assert "extra.py:3 imports .missing, but missing.py is not shipped" in message
    assert "extra.py:4: only 'from .sibling import name'" in message
    assert "extra.py:6 imports 'scipy.linalg'" in message
    assert "'os'" not in message


def test_check_shipped_code_flags_relative_imports_in_docstrings(tmp_path):
    """transformers scans the raw text, so even a docstring line `from .x import y` must name a shipped file."""
    (tmp_path / "a.py").write_text('"""Example:\n\nfrom .nowhere import thing\n"""\n')
    with pytest.raises(ValueError, match=r"transformers would look for nowhere\.py"):
        check_shipped_code(tmp_path)


def test_refuses_other_models_and_push_inside_save(tmp_path):
    bert = BertModel(
        BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    )
    with pytest.raises(ValueError, match="save other models with save_pretrained"):
        save_with_code(bert, tmp_path)
    with pytest.raises(ValueError, match="save other models with save_pretrained"):
        push_to_hub_with_code(bert, "user/r")
    with pytest.raises(ValueError, match="use push_to_hub_with_code"):
        save_with_code(DynMaskModel(_config()), tmp_path, push_to_hub=True)
    assert list(tmp_path.iterdir()) == []

"""Every way a DynMask model gets saved writes a folder that loads where hf_dynmask is not installed.

One module-scoped fixture trains a tiny model per Auto class (two optimizer steps) and saves each with plain
``save_pretrained``; it also writes folders through ``save_with_code``, ``model.push_to_hub`` and
``push_to_hub_with_code`` (against a fake Hub: only ``HfApi.create_repo`` / ``create_commit`` / ``upload_folder`` are
replaced), a ``DynMaskTrainer`` run (its checkpoint, ``save_model`` and ``push_to_hub``), a stock ``Trainer``'s
``save_model`` and a config alone. Then ONE fresh Python process in which ``import hf_dynmask`` fails loads every
folder with ``AutoX.from_pretrained(path, trust_remote_code=True)``, saves one again and reloads it, and writes its
outputs, which must equal the parent's bit for bit, on padded and on packed inputs.
"""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import pytest
import torch
import transformers.utils.hub
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    BertConfig,
    BertModel,
    BertTokenizer,
    Trainer,
    TrainingArguments,
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
    make_collator,
)
from hf_dynmask.sharing.hub import auto_map, check_shipped_code, push_to_hub_with_code, save_with_code
from hf_dynmask.sharing.model_card import TrainingSummary, make_model_card
from hf_dynmask.training import DynMaskTrainer, DynMaskTrainingArguments

CODE_FILES = (
    "attention.py",
    "backends.py",
    "batch.py",
    "configuration_dynmask.py",
    "families.py",
    "input_checks.py",
    "layout.py",
    "masks.py",
    "modeling_dynmask.py",
    "outputs.py",
    "saving.py",
    "stock.py",
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
PUSHED = "pushed"  # the sequence-classification model, pushed with push_to_hub_with_code
SAVE_PATHS = {  # folder -> (Auto class, the model whose weights it holds): every other way of saving
    "with_code": ("AutoModelForSequenceClassification", "sequence_classification"),  # save_with_code + tokenizer
    PUSHED: ("AutoModelForSequenceClassification", "sequence_classification"),
    "model_push_to_hub": ("AutoModelForTokenClassification", "token_classification"),  # model.push_to_hub
    "trainer_checkpoint": ("AutoModelForSequenceClassification", "trainer"),  # DynMaskTrainer's checkpoint-2
    "trainer_save_model": ("AutoModelForSequenceClassification", "trainer"),  # DynMaskTrainer.save_model
    "trainer_push_to_hub": ("AutoModelForSequenceClassification", "trainer"),  # DynMaskTrainer.push_to_hub
    "stock_trainer_save_model": ("AutoModelForMaskedLM", "masked_lm"),  # transformers.Trainer.save_model
}


class Load(NamedTuple):
    """One load in the fresh process: ``auto_class.from_pretrained(folder)``, weights trained as ``source``."""

    folder: str
    auto_class: str
    source: str
    base_only: bool = False  # AutoModel on a head's folder: the encoder must match, the new pooler is random


LOADS = {
    **{name: Load(name, auto, name) for name, (auto, _, _) in MODELS.items()},
    **{name: Load(name, auto, source) for name, (auto, source) in SAVE_PATHS.items()},
    # Other Auto classes than the saved one resolve through the same auto_map.
    "masked_lm_as_model": Load("masked_lm", "AutoModel", "masked_lm", base_only=True),
    "question_answering_as_model": Load("question_answering", "AutoModel", "question_answering", base_only=True),
    # Saved again in the fresh process (remote code, no hf_dynmask) and loaded back.
    "resaved": Load("resaved", "AutoModelForCausalLM", "causal_lm"),
}
NEW_POOLER = {"pooler.dense.weight", "pooler.dense.bias"}
TRAINER_FEATURES = [{"input_ids": s, "label": i % 3} for i, s in enumerate(SEQUENCES * 2)]


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

    def upload_folder(self, repo_id: str, folder_path, ignore_patterns=(), **kwargs):
        """``Trainer.push_to_hub``'s upload: the folder's files, less the ignored patterns (``_*``, checkpoints)."""
        files = [
            path
            for path in sorted(Path(folder_path).rglob("*"))
            if path.is_file()
            and not any(
                Path(part).match(pattern)
                for pattern in ignore_patterns
                for part in path.relative_to(folder_path).parts
            )
        ]
        operations = [
            CommitOperationAdd(path_in_repo=path.relative_to(folder_path).as_posix(), path_or_fileobj=str(path))
            for path in files
        ]
        commit = self.create_commit(repo_id, operations, **kwargs)
        if not kwargs.get("run_as_future"):
            return commit
        future = concurrent.futures.Future()  # the Trainer's mid-training pushes run in the background
        future.set_result(commit)
        return future

    def install(self, patch: pytest.MonkeyPatch) -> None:
        patch.setattr(HfApi, "create_repo", self.create_repo)
        patch.setattr(HfApi, "create_commit", self.create_commit)
        patch.setattr(HfApi, "upload_folder", self.upload_folder)
        # model.push_to_hub reads the repository's card first (a network call): start from a new one.
        patch.setattr(
            transformers.utils.hub, "create_and_tag_model_card", lambda repo_id, tags=None, token=None: card()
        )


def card() -> ModelCard:
    return ModelCard("---\nlibrary_name: transformers\n---\n# A tiny DynMask model\n")


# The child's body (conftest.run_without_plugin runs it where hf_dynmask cannot be imported).
CHILD = """
    inputs = torch.load(spec["inputs"])

    # Saving a model loaded as remote code writes a folder that loads the same way.
    source, auto_name, target = spec["resave"]
    getattr(transformers, auto_name).from_pretrained(source, trust_remote_code=True).save_pretrained(target)
    results["resaved_files"] = sorted(os.listdir(target))
    results["resaved_auto_map"] = json.loads(open(os.path.join(target, "config.json")).read())["auto_map"]

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
    config = transformers.AutoConfig.from_pretrained(spec["config_only"], trust_remote_code=True)
    results["config_only"] = type(config).__module__ + "." + type(config).__name__
    try:  # without trust_remote_code transformers refuses to run the folder's code
        transformers.AutoModel.from_pretrained(spec["jobs"]["model"][0])
    except ValueError as error:
        results["untrusted"] = str(error)
    tokenizer = transformers.AutoTokenizer.from_pretrained(spec["jobs"]["pushed"][0])
    results["tokenized"] = tokenizer("hello world").input_ids
    """


def _tokenizer() -> BertTokenizer:
    return BertTokenizer(vocab={word: i for i, word in enumerate(VOCAB)})


def _trainer_run(root: Path, hub: FakeHub, patch: pytest.MonkeyPatch):
    """A DynMaskTrainer run (two steps, a checkpoint at step 2, pushed to the Hub while training), then
    ``save_model`` and ``push_to_hub``."""
    hub.folder = root / "trainer_push_to_hub"
    hub.install(patch)
    torch.manual_seed(1)
    model = DynMaskForSequenceClassification(_config(num_labels=3))
    args = DynMaskTrainingArguments(
        output_dir=str(root / "run"),
        max_steps=2,
        save_strategy="steps",
        save_steps=2,
        per_device_train_batch_size=3,
        learning_rate=1e-2,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        push_to_hub=True,
        hub_model_id="user/tiny-trainer",
        hub_strategy="every_save",
    )
    collator = make_collator(_tokenizer(), "sequence-classification", "packed")
    trainer = DynMaskTrainer(model=model, args=args, train_dataset=TRAINER_FEATURES, data_collator=collator)
    trainer.train()
    trainer.save_model(str(root / "trainer_save_model"))
    trainer.push_to_hub()
    return trainer.model.eval(), root / "run" / "checkpoint-2"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Train, save and push every model; compute the parent's reference outputs (one torch thread)."""
    root = tmp_path_factory.mktemp("hub")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        models, folders, reference = {}, {}, {}
        for name, (_, model_class, overrides) in MODELS.items():
            models[name] = _trained(name, model_class, overrides)
            models[name].save_pretrained(root / name)  # the plain transformers call
            folders[name] = root / name
            reference[name] = _outputs(models[name])
        tokenizer = _tokenizer()
        with_code = save_with_code(models["sequence_classification"], root / "with_code", tokenizer=tokenizer)
        summary = TrainingSummary(
            model_name="user/tiny-dynmask",
            task="sequence-classification",
            mode="packed",
            masking="dynamic",
            real_tokens=30,
            padded_tokens=30,
            train_runtime=0.5,
        )
        model_card = make_model_card(summary)
        hub = FakeHub(root / PUSHED)
        with pytest.MonkeyPatch.context() as patch:
            hub.install(patch)
            commit = push_to_hub_with_code(
                models["sequence_classification"], "user/tiny-dynmask", tokenizer=tokenizer, model_card=model_card
            )
            hub.folder = root / "model_push_to_hub"
            models["token_classification"].push_to_hub("user/tiny-token-classification")
            models["trainer"], checkpoint = _trainer_run(root, hub, patch)
        reference["trainer"] = _outputs(models["trainer"])
        Trainer(model=models["masked_lm"], args=TrainingArguments(str(root / "stock"), report_to="none")).save_model(
            str(root / "stock_trainer_save_model")
        )
        folders.update({name: root / name for name in SAVE_PATHS})
        folders["trainer_checkpoint"] = checkpoint
        folders["resaved"] = root / "resaved"
        for name, load in LOADS.items():
            if load.base_only:
                reference[name] = _outputs(models[load.source].bert)
            else:
                reference[name] = reference[load.source]
        DynMaskConfig(vocab_size=40).save_pretrained(root / "config_only")
    finally:
        torch.set_num_threads(threads)
    torch.save(_inputs(), root / "inputs.pt")
    return SimpleNamespace(
        root=root,
        models=models,
        folders=folders,
        reference=reference,
        saves={"with_code": with_code},
        hub=hub,
        commit=commit,
        card=model_card,
    )


@pytest.fixture(scope="module")
def loaded(saved, run_without_plugin):
    """Load every saved / pushed folder in a fresh process where hf_dynmask cannot be imported."""
    root = saved.root
    spec = {
        "jobs": {name: [str(saved.folders[load.folder]), load.auto_class] for name, load in LOADS.items()},
        "resave": [str(saved.folders["causal_lm"]), "AutoModelForCausalLM", str(saved.folders["resaved"])],
        "config_only": str(root / "config_only"),
        "inputs": str(root / "inputs.pt"),
    }
    return run_without_plugin(root, CHILD, spec)


# -- what is written ----------------------------------------------------------------------------------------------


def test_auto_map_names_every_auto_class_of_the_family():
    assert auto_map() == EXPECTED_AUTO_MAP
    registered = {auto.__name__ for auto in hf_dynmask.modeling.auto.AUTO_CLASSES} | {"AutoConfig"}
    assert set(auto_map()) == registered


@pytest.mark.parametrize("name", [*MODELS, *SAVE_PATHS])
def test_every_saved_folder_holds_weights_config_and_code(saved, name):
    folder = saved.folders[name]
    files = {p.name for p in folder.iterdir()}
    assert {*CODE_FILES, "config.json", "model.safetensors"} <= files, name
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == EXPECTED_AUTO_MAP
    assert config["model_type"] == "dynmask"
    model_class = MODELS[name][1] if name in MODELS else type(saved.models[SAVE_PATHS[name][1]])
    assert config["architectures"] == [model_class.__name__]
    for code_file in CODE_FILES:  # byte-for-byte copies of the package's modules
        source = Path(hf_dynmask.__file__).parent / "modeling" / code_file
        assert (folder / code_file).read_bytes() == source.read_bytes()
    assert sorted(f for f in files if f.endswith(".py")) == list(CODE_FILES)


def test_plain_save_writes_exactly_weights_config_and_code(saved):
    for name in MODELS:
        assert sorted(p.name for p in saved.folders[name].iterdir()) == sorted(
            [*CODE_FILES, "config.json", "model.safetensors"]
        )
    assert saved.saves["with_code"].code_files == CODE_FILES
    assert saved.saves["with_code"].auto_map == EXPECTED_AUTO_MAP


def test_saving_keeps_other_auto_map_entries(saved, tmp_path):
    model = saved.models["token_classification"]
    previous = model.config.__dict__.get("auto_map")
    model.config.auto_map = {"AutoTokenizer": "some--repo.tokenization.Tok"}
    try:
        model.save_pretrained(tmp_path)
        written = json.loads((tmp_path / "config.json").read_text())["auto_map"]
        assert written == {**EXPECTED_AUTO_MAP, "AutoTokenizer": "some--repo.tokenization.Tok"}
    finally:
        model.config.auto_map = previous


def test_a_config_alone_ships_its_own_module(saved):
    folder = saved.root / "config_only"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "configuration_dynmask.py"]
    assert json.loads((folder / "config.json").read_text())["auto_map"] == {
        "AutoConfig": "configuration_dynmask.DynMaskConfig"
    }


@pytest.mark.parametrize("trust_remote_code", [None, False, True])
def test_in_process_load_uses_the_installed_package(saved, trust_remote_code):
    """Where hf_dynmask is imported, its registration wins over the folder's auto_map, whatever trust_remote_code
    says: transformers loads a registered class that is not its own (``explicit_local_code``) before remote code."""
    folder = saved.folders["sequence_classification"]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    assert type(config) is DynMaskConfig
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=trust_remote_code)
    assert type(model) is DynMaskForSequenceClassification
    with torch.no_grad():
        logits = model(**_inputs()["packed"]).logits
    assert torch.equal(logits, saved.reference["sequence_classification"]["packed"]["logits"])


# -- the push path ------------------------------------------------------------------------------------------------


def test_push_uploads_exactly_the_saved_folder_in_one_commit(saved):
    repos = ["user/tiny-dynmask", "user/tiny-token-classification", "user/tiny-trainer"]
    assert list(dict.fromkeys(saved.hub.repos)) == repos
    # One commit per push; the trainer pushes at its checkpoint, in save_model and in push_to_hub.
    assert [c["repo_id"] for c in saved.hub.commits] == [*repos, "user/tiny-trainer", "user/tiny-trainer"]
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


def test_model_and_trainer_pushes_upload_the_code(saved):
    # model.push_to_hub; DynMaskTrainer's pushes at its checkpoint (hub_strategy="every_save"), in save_model and in
    # push_to_hub.
    messages = [commit["commit_message"] for commit in saved.hub.commits[2:]]
    assert messages == ["Training in progress, step 2", "Model save", "End of training"]
    for commit in saved.hub.commits[1:]:
        assert set(CODE_FILES) | {"config.json", "model.safetensors"} <= set(commit["paths"]), commit["commit_message"]
        assert not any(path.startswith("checkpoint-") for path in commit["paths"])


def test_without_trust_remote_code_transformers_refuses(loaded):
    assert "trust_remote_code=True" in loaded["untrusted"]


def test_resaving_remote_code_ships_it_again(loaded):
    assert loaded["resaved_files"] == sorted([*CODE_FILES, "config.json", "model.safetensors"])
    assert loaded["resaved_auto_map"] == EXPECTED_AUTO_MAP


def test_a_config_alone_loads_as_remote_code(loaded):
    assert loaded["config_only"].startswith("transformers_modules.")
    assert loaded["config_only"].endswith(".configuration_dynmask.DynMaskConfig")


@pytest.mark.parametrize("name", list(LOADS))
def test_remote_code_loads_each_auto_class(saved, loaded, name):
    load, result = LOADS[name], loaded[name]
    class_name = "DynMaskModel" if load.base_only else type(saved.models[load.source]).__name__
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


@pytest.mark.parametrize(("first", "second"), [("sharded", "unsharded"), ("unsharded", "sharded")])
def test_saving_again_leaves_one_complete_save(tmp_path, first, second):
    """A save over an earlier one replaces its weight files as a whole: no index naming deleted shards after an
    unsharded save, no old ``model.safetensors`` (which transformers would load instead of the new shards) after a
    sharded one. Other files, another variant's weights included, stay."""
    options = {"sharded": {"max_shard_size": "20KB"}, "unsharded": {}}
    torch.manual_seed(0)
    old = DynMaskModel(_config())
    torch.manual_seed(1)
    new = DynMaskModel(_config())
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "model.fp16.safetensors").write_bytes(b"another variant")
    save_with_code(old, tmp_path, **options[first])
    save_with_code(new, tmp_path, **options[second])
    weights = {p.name for p in tmp_path.glob("model*") if p.suffix != ".py"} - {"model.fp16.safetensors"}
    if second == "sharded":
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert weights == {"model.safetensors.index.json", *index["weight_map"].values()} and len(weights) > 2
    else:
        assert weights == {"model.safetensors"}
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "model.fp16.safetensors").read_bytes() == b"another variant"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    reloaded = DynMaskModel.from_pretrained(tmp_path)
    for name, tensor in new.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name

"""Saving and pushing DynMask models with their code: checks and one-call helpers over ``save_pretrained``.

Every DynMask model's own ``save_pretrained`` already writes a folder that loads where hf_dynmask is not installed
(:meth:`~hf_dynmask.modeling.modeling_dynmask.DynMaskPreTrainedModel.save_pretrained`): next to the weights and
``config.json`` it holds

- the model-side modules, ``modeling_dynmask.py`` and every sibling it imports relatively, recursively
  (``configuration_dynmask.py``, ``batch.py``, ``input_checks.py``, ``attention.py``, ``backends.py``,
  ``families.py``, ``stock.py``, ``outputs.py``, ``masks.py``, ``layout.py``, ``saving.py``), copied by
  transformers' own :func:`~transformers.dynamic_module_utils.custom_object_save` because every DynMask class is
  registered for its Auto class (``register_for_auto_class``);
- an ``auto_map`` in ``config.json`` naming every Auto class the family supports (``AutoConfig``, ``AutoModel``,
  ``AutoModelForMaskedLM``, ``AutoModelForCausalLM``, ``AutoModelForSequenceClassification``,
  ``AutoModelForTokenClassification``, ``AutoModelForQuestionAnswering``), where ``register_for_auto_class`` alone
  would write only the saved class's entry.

The encoder-decoder family (BART / Marian) does the same with ``modeling_dynmask_seq2seq.py`` and its siblings
(``configuration_dynmask_seq2seq.py`` among them), ``AutoConfig``, ``AutoModel`` and ``AutoModelForSeq2SeqLM``. The
families and their Auto classes are listed once, in :data:`hf_dynmask.modeling.auto.DYNMASK_FAMILIES`.

So ``model.save_pretrained``, ``model.push_to_hub``, ``Trainer.save_model``, Trainer checkpoints and
``trainer.push_to_hub()`` all produce folders that anyone with torch and transformers can load, any head::

    model = AutoModelForSequenceClassification.from_pretrained("user/repo", trust_remote_code=True)

Where hf_dynmask is imported, its registered classes load the folder (transformers prefers a registered class to an
``auto_map``, with or without ``trust_remote_code``).

This module adds the explicit forms: :func:`save_with_code` saves a tokenizer into the same folder, replaces the
weights of an earlier save there as a whole (``save_pretrained`` leaves an earlier save's index, or its unsharded
file, next to the new weights) and checks that every shipped file imports only the standard library, torch,
transformers and its shipped siblings (:func:`check_shipped_code`); :func:`push_to_hub_with_code` uploads that
folder and a model card in one commit through ``HfApi.create_repo`` and ``HfApi.create_commit``, the two calls
transformers' ``push_to_hub`` makes. Unlike ``push_to_hub`` it does not read the repository's model card first (a
network call); pass ``model_card`` to upload one.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from huggingface_hub import CommitOperationAdd, HfApi
from transformers import PreTrainedModel

from ..modeling.auto import DYNMASK_FAMILIES
from ..modeling.configuration_dynmask import DynMaskConfig
from ..modeling.saving import auto_map_of

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo, ModelCard

#: Top-level packages shipped code may import besides the standard library.
ALLOWED_IMPORTS = frozenset({"torch", "transformers"})


class SavedModel(NamedTuple):
    """What :func:`save_with_code` wrote."""

    directory: Path
    code_files: tuple[str, ...]  # shipped ``.py`` file names, sorted
    auto_map: dict[str, str]


def auto_map(config_class: type = DynMaskConfig) -> dict[str, str]:
    """The ``auto_map`` a saved model of ``config_class``'s family writes: its config and every Auto class of it.

    >>> auto_map()["AutoConfig"], auto_map()["AutoModelForMaskedLM"]
    ('configuration_dynmask.DynMaskConfig', 'modeling_dynmask.DynMaskForMaskedLM')
    """
    names = {model_class: auto_class.__name__ for auto_class, model_class in DYNMASK_FAMILIES[config_class].items()}
    return auto_map_of(config_class, names)


def _check_family(model: PreTrainedModel) -> None:
    """``ValueError`` unless ``model`` is a class of one of the DynMask families."""
    for config_class, auto_classes in DYNMASK_FAMILIES.items():
        members = {model_class.__name__ for model_class in auto_classes.values()}
        if getattr(model.config, "model_type", None) == config_class.model_type and type(model).__name__ in members:
            return
    families = sorted(cls.__name__ for classes in DYNMASK_FAMILIES.values() for cls in classes.values())
    raise ValueError(
        f"save_with_code / push_to_hub_with_code ship the DynMask families' code ({families}), got "
        f"{type(model).__name__} (model_type={getattr(model.config, 'model_type', None)!r}); save other models "
        "with save_pretrained"
    )


def check_shipped_code(directory: str | Path, files: Iterable[str] | None = None) -> tuple[str, ...]:
    """Check that the ``.py`` files in ``directory`` (or only ``files``, names in it) load with only torch and
    transformers installed.

    Every import must be of the standard library, torch, transformers, or ``from .sibling import ...`` with
    ``sibling.py`` among the checked files (the only relative form transformers copies and caches). Imports inside
    functions and ``TYPE_CHECKING`` blocks count too. Returns the sorted file names; raises ``ValueError`` listing
    every offending import.
    """
    directory = Path(directory)
    if files is None:
        files = sorted(path.name for path in directory.glob("*.py"))
    else:
        files = sorted(set(files))
    problems = []
    for name in files:
        source = (directory / name).read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source, filename=name)):
            if isinstance(node, ast.Import):
                modules = [(alias.name, 0) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [(node.module, node.level)]
            else:
                continue
            for module, level in modules:
                where = f"{name}:{node.lineno}"
                if level == 0:
                    top = module.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in ALLOWED_IMPORTS:
                        problems.append(f"{where} imports {module!r}, which is not torch, transformers or stdlib")
                elif level != 1 or module is None or "." in module:
                    problems.append(f"{where}: only 'from .sibling import name' is copied by transformers")
                elif module not in {Path(f).stem for f in files}:
                    problems.append(f"{where} imports .{module}, but {module}.py is not shipped")
        # transformers finds relative imports with a regex over the raw text (docstrings included): a match that
        # names no shipped file makes loading fail.
        for module in re.findall(r"^\s*from\s+\.(\S+)\s+import", source, flags=re.MULTILINE):
            if not (directory / f"{module}.py").is_file():
                problems.append(f"{name}: transformers would look for {module}.py ('from .{module} import' in text)")
    if problems:
        raise ValueError(
            "code shipped next to the model would not load without hf_dynmask; keep model-side modules to stdlib, "
            "torch, transformers and relative siblings:\n  " + "\n  ".join(sorted(set(problems)))
        )
    return tuple(files)


def save_with_code(
    model: PreTrainedModel, save_directory: str | Path, *, tokenizer: Any | None = None, **save_kwargs: Any
) -> SavedModel:
    """``model.save_pretrained(save_directory, **save_kwargs)`` (weights, config, code, complete ``auto_map``), the
    tokenizer in the same folder, and a check that the shipped code loads without hf_dynmask.

    The folder then holds one complete save: the model is saved into a temporary folder inside ``save_directory``,
    its files are moved in, and the weight files of an earlier save of the same ``variant`` that the new save does
    not overwrite are removed (``model.safetensors``, ``model-0000i-of-0000n.safetensors`` shards and
    ``model.safetensors.index.json``, and their ``pytorch_model`` ``.bin`` forms). ``save_pretrained`` alone removes
    only stale shards, so a sharded save over an unsharded one would load the old ``model.safetensors``, and an
    unsharded save over a sharded one would leave an index naming deleted shards.

    Args:
        model: a DynMask model (``DynMaskModel`` or one of its heads).
        save_directory: a folder, created if needed (not a file). Only the shipped code files are checked and only
            earlier weight files are removed: other files already in the folder are left alone, whatever they hold.
        tokenizer: optional tokenizer (or processor) saved in the same folder, so one path loads both. Where
            hf_dynmask is not installed, ``AutoTokenizer.from_pretrained(folder, trust_remote_code=True)`` (or
            ``False``) loads it: transformers' ``AutoTokenizer`` reads the folder's ``config.json`` first and, without
            the flag, asks whether to run the config's code.
        save_kwargs: passed to ``save_pretrained`` (``max_shard_size``, ``is_main_process``, ``state_dict``...);
            not ``push_to_hub`` (use :func:`push_to_hub_with_code`, which uploads the same folder).
    """
    _check_family(model)
    if save_kwargs.get("push_to_hub"):
        raise ValueError(
            "save_with_code(push_to_hub=True) would upload before the checks run; use push_to_hub_with_code"
        )
    directory = Path(save_directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(
            f"save_directory {str(directory)!r} is a file; pass a folder path (it is created if missing)"
        )
    if not save_kwargs.get("is_main_process", True):  # the main process writes the folder
        model.save_pretrained(directory, **save_kwargs)
        return SavedModel(directory, (), dict(model.config.auto_map))
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".save_with_code-", dir=directory) as staging:
        model.save_pretrained(staging, **save_kwargs)
        _move_save_into(Path(staging), directory, save_kwargs.get("variant"))
    entries = dict(model.config.auto_map)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return SavedModel(directory, check_shipped_code(directory, _shipped_files(model)), entries)


def _weight_files(variant: str | None) -> re.Pattern[str]:
    """The names of the weight files a save of ``variant`` writes, in the forms transformers uses: unsharded,
    ``-0000i-of-0000n`` shards and the shard index; safetensors and ``.bin``."""
    v = re.escape(f".{variant}") if variant else ""
    shard = r"(-\d{5}-of-\d{5})?"
    return re.compile(
        rf"model{v}{shard}\.safetensors|model\.safetensors\.index{v}\.json"
        rf"|pytorch_model{v}{shard}\.bin|pytorch_model\.bin\.index{v}\.json"
    )


def _move_save_into(staging: Path, directory: Path, variant: str | None) -> None:
    """Move the files ``save_pretrained`` wrote in ``staging`` into ``directory``, then remove the weight files of
    ``variant`` there that the new save did not write (an earlier save's)."""
    written = set()
    for path in staging.iterdir():
        os.replace(path, directory / path.name)
        written.add(path.name)
    weights = _weight_files(variant)
    for path in directory.iterdir():
        if path.name not in written and weights.fullmatch(path.name) and path.is_file():
            path.unlink()


def _shipped_files(model: PreTrainedModel) -> list[str]:
    """The file names ``save_pretrained`` copies for ``model``: its module and every relative import, recursively."""
    from transformers.dynamic_module_utils import get_relative_import_files

    module_file = Path(sys.modules[type(model).__module__].__file__)
    return [module_file.name, *(Path(path).name for path in get_relative_import_files(str(module_file)))]


def _library_version() -> str:
    try:
        return importlib.metadata.version("hf-dynmask")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def push_to_hub_with_code(
    model: PreTrainedModel,
    repo_id: str,
    *,
    tokenizer: Any | None = None,
    model_card: ModelCard | None = None,
    commit_message: str = "Upload DynMask model with its code",
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str = "50GB",
) -> CommitInfo:
    """Upload what :func:`save_with_code` writes (and ``model_card`` as ``README.md``) to ``repo_id`` in one commit.

    The repository is created if missing. Files already in the repository and not in the folder are kept (an
    existing ``README.md`` too, unless ``model_card`` is given). ``revision`` is a branch, created if missing.
    Returns the ``CommitInfo`` of the commit.
    """
    _check_family(model)
    api = HfApi(library_name="hf_dynmask", library_version=_library_version())
    repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    if revision is not None and not create_pr and not revision.startswith("refs/pr"):
        api.create_branch(repo_id=repo_id, branch=revision, token=token, exist_ok=True)
    with tempfile.TemporaryDirectory() as work_dir:
        saved = save_with_code(model, work_dir, tokenizer=tokenizer, max_shard_size=max_shard_size)
        if model_card is not None:
            model_card.save(saved.directory / "README.md")
        operations = [
            CommitOperationAdd(path_in_repo=path.relative_to(saved.directory).as_posix(), path_or_fileobj=str(path))
            for path in sorted(saved.directory.rglob("*"))
            if path.is_file()
        ]
        return api.create_commit(
            repo_id=repo_id,
            operations=operations,
            commit_message=commit_message,
            commit_description=commit_description,
            token=token,
            revision=revision,
            create_pr=create_pr,
        )


__all__ = [
    "ALLOWED_IMPORTS",
    "SavedModel",
    "auto_map",
    "check_shipped_code",
    "push_to_hub_with_code",
    "save_with_code",
]

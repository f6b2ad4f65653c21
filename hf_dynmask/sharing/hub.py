"""Saving and pushing DynMask models together with their code, so they load where hf_dynmask is not installed.

A folder written by :func:`save_with_code` holds what ``save_pretrained`` writes (weights, ``config.json``) plus:

- the model-side modules: ``modeling_dynmask.py`` and every sibling it imports relatively, recursively
  (``configuration_dynmask.py``, ``attention.py``, ``batching.py``, ``families.py``, ``masks.py``, ``layout.py``),
  copied by transformers' own :func:`~transformers.dynamic_module_utils.custom_object_save`, so the copy follows the
  rules transformers uses to load them back;
- an ``auto_map`` in ``config.json`` naming every Auto class the family supports (``AutoConfig``, ``AutoModel``,
  ``AutoModelForMaskedLM``, ``AutoModelForCausalLM``, ``AutoModelForSequenceClassification``,
  ``AutoModelForTokenClassification``, ``AutoModelForQuestionAnswering``), where ``register_for_auto_class`` +
  ``save_pretrained`` would write only the saved class's own entry.

The encoder-decoder family ships ``modeling_dynmask_seq2seq.py`` and its siblings (``batching.py``,
``configuration_dynmask_seq2seq.py`` among them) with ``AutoConfig``, ``AutoModel`` and ``AutoModelForSeq2SeqLM``
(the families and their Auto classes are listed once, in ``hf_dynmask.modeling.auto.FAMILIES``).

Anyone with torch and transformers can then load any head from the folder or its Hub repository::

    model = AutoModelForSequenceClassification.from_pretrained("user/repo", trust_remote_code=True)

Where hf_dynmask is imported, its registration wins (with or without ``trust_remote_code``) and the installed
classes load the folder.

Why functions and not ``register_for_auto_class``: that call takes one Auto class per model class and stays set on
the class for the rest of the process (every later ``save_pretrained`` of that class ships code). These functions
ship code for exactly the save they perform, write the complete ``auto_map``, and check that every shipped file
imports only the standard library, torch, transformers and its shipped siblings.

:func:`push_to_hub_with_code` saves the same folder and uploads it in one commit through ``HfApi.create_repo`` and
``HfApi.create_commit``, the two calls transformers' ``push_to_hub`` makes. Unlike ``push_to_hub`` it does not read
the repository's model card first (a network call); pass ``model_card`` to upload one.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from huggingface_hub import CommitOperationAdd, HfApi
from transformers import PreTrainedModel
from transformers.dynamic_module_utils import custom_object_save

from ..modeling.auto import FAMILIES
from ..modeling.configuration_dynmask import DynMaskConfig

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo, ModelCard

#: Top-level packages shipped code may import besides the standard library.
ALLOWED_IMPORTS = frozenset({"torch", "transformers"})


def _reference(cls: type) -> str:
    """``"module_file_stem.ClassName"``, the form transformers' ``auto_map`` uses for code stored next to a model."""
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


def auto_map(config_class: type = DynMaskConfig) -> dict[str, str]:
    """The ``auto_map`` of a saved model of the family of ``config_class``: every Auto class of it, config included.

    >>> auto_map()["AutoConfig"], auto_map()["AutoModelForMaskedLM"]
    ('configuration_dynmask.DynMaskConfig', 'modeling_dynmask.DynMaskForMaskedLM')
    """
    entries = {"AutoConfig": _reference(config_class)}
    for auto_class, model_class in FAMILIES[config_class].items():
        entries[auto_class.__name__] = _reference(model_class)
    return entries


class SavedModel(NamedTuple):
    """What :func:`save_with_code` wrote."""

    directory: Path
    code_files: tuple[str, ...]  # shipped ``.py`` file names, sorted
    auto_map: dict[str, str]


def _family(model: PreTrainedModel) -> type:
    """The config class of ``model``'s DynMask family; ``ValueError`` for any other model."""
    for config_class, auto_classes in FAMILIES.items():
        members = {model_class.__name__ for model_class in auto_classes.values()}
        if getattr(model.config, "model_type", None) == config_class.model_type and type(model).__name__ in members:
            return config_class
    families = sorted(model_class.__name__ for classes in FAMILIES.values() for model_class in classes.values())
    raise ValueError(
        f"save_with_code / push_to_hub_with_code ship the DynMask families' code ({families}), got "
        f"{type(model).__name__} (model_type={getattr(model.config, 'model_type', None)!r}); save other models "
        "with save_pretrained"
    )


@contextmanager
def _full_auto_map(model: PreTrainedModel) -> Iterator[dict[str, str]]:
    """Give ``model.config`` the family's complete ``auto_map`` while saving; restore the previous value after.

    Restoring matters: an ``auto_map`` left on the config would be written by a later plain ``save_pretrained``
    that ships no code, and the folder would point at files it does not have.
    """
    config = model.config
    had_auto_map = "auto_map" in config.__dict__
    previous = config.__dict__.get("auto_map")
    entries = {**(previous or {}), **auto_map(_family(model))}
    config.auto_map = entries
    try:
        yield entries
    finally:
        if had_auto_map:
            config.auto_map = previous
        else:
            del config.auto_map


def check_shipped_code(directory: str | Path) -> tuple[str, ...]:
    """Check that the ``.py`` files in ``directory`` load with only torch and transformers installed.

    Every import must be of the standard library, torch, transformers, or ``from .sibling import ...`` with
    ``sibling.py`` present in ``directory`` (the only relative form transformers copies and caches). Imports inside
    functions and ``TYPE_CHECKING`` blocks count too. Returns the sorted file names; raises ``ValueError`` listing
    every offending import.
    """
    directory = Path(directory)
    files = sorted(path.name for path in directory.glob("*.py"))
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
    """``model.save_pretrained(save_directory, **save_kwargs)`` plus the model's code and the complete ``auto_map``.

    Args:
        model: a DynMask model (``DynMaskModel`` or one of its heads).
        save_directory: created if needed.
        tokenizer: optional tokenizer (or processor) saved in the same folder, so one path loads both.
        save_kwargs: passed to ``save_pretrained`` (``max_shard_size``, ``is_main_process``, ``state_dict``...);
            not ``push_to_hub`` (use :func:`push_to_hub_with_code`, which uploads the code too).
    """
    _family(model)
    if save_kwargs.get("push_to_hub"):
        raise ValueError(
            "save_with_code(push_to_hub=True) would upload before the code is copied; use push_to_hub_with_code"
        )
    directory = Path(save_directory)
    with _full_auto_map(model) as entries:
        model.save_pretrained(directory, **save_kwargs)
    if not save_kwargs.get("is_main_process", True):
        return SavedModel(directory, (), entries)
    # Copies the model's module file and, recursively, every relative import (configuration_dynmask.py among them).
    custom_object_save(model, directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return SavedModel(directory, check_shipped_code(directory), entries)


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
    _family(model)
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

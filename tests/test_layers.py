"""The package's layers: which module may import which, and no import cycles.

Read from the source (every import statement, including those inside functions and ``TYPE_CHECKING`` blocks), so
a lazy import counts as much as a top-level one:

    modeling/   imports only the standard library, torch, transformers and its own modules (it ships as remote code)
    data/       also what the model side defines for batches: the layout vocabulary (modeling/layout.py), the
                ignored-label value (modeling/input_checks.py) and the unknown-option message
                (modeling/configuration_dynmask.py), nothing else of the package
    training/       also modeling/ and data/
    sharing/        also modeling/ and data/ (training and sharing are side by side: neither imports the other)
    integrations/   also modeling/ and data/ (beside training and sharing: sentence-transformers and PEFT)
    commands/       anything
    hf_dynmask.run  the ``python -m hf_dynmask.run`` entry point: above every layer, imports commands/ only
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_dynmask"
LAYERS = ("modeling", "data", "training", "sharing", "integrations", "commands")
# Modules above the layers: the package itself and the launcher's ``-m`` entry point (nothing imports them).
TOP = {"hf_dynmask", "hf_dynmask.run"}
# What each layer may import from the package, besides its own modules.
ALLOWED = {
    "modeling": set(),
    "data": {
        "hf_dynmask.modeling.layout",
        "hf_dynmask.modeling.input_checks",
        "hf_dynmask.modeling.configuration_dynmask",
    },
    "training": {"modeling", "data"},
    "sharing": {"modeling", "data"},
    "integrations": {"modeling", "data"},
    "commands": {"modeling", "data", "training", "sharing", "integrations"},
}
THIRD_PARTY_IN_MODELING = {"torch", "transformers"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """Absolute names of everything module ``name`` imports (relative imports resolved; ``from a import b`` gives
    ``a.b`` when that is a module of the package, else ``a``)."""
    path = MODULES[name]
    package = name if is_package(path) else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
    return found


GRAPH = {name: {other for other in imports_of(name) if other in MODULES} for name in MODULES}


def layer_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_is_in_a_layer():
    outside = [name for name in MODULES if layer_of(name) is None and name not in TOP]
    assert not outside, f"modules outside the layers {LAYERS}: {outside}"


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_imports_only_layers_below(layer):
    problems = []
    for name, targets in GRAPH.items():
        if layer_of(name) != layer:
            continue
        for target in targets:
            target_layer = layer_of(target)
            if target_layer == layer:
                continue
            if target in TOP or (target_layer not in ALLOWED[layer] and target not in ALLOWED[layer]):
                problems.append(f"{name} imports {target}")
    assert not problems, "\n".join(problems)


def test_the_launcher_entry_point_imports_only_commands():
    assert {layer_of(target) for target in GRAPH["hf_dynmask.run"]} == {"commands"}


def test_modeling_imports_only_stdlib_torch_and_transformers():
    """Model-side modules ship next to saved models and must load where hf_dynmask (and numpy, datasets...) is
    absent."""
    problems = []
    for name in MODULES:
        if layer_of(name) != "modeling":
            continue
        for target in imports_of(name):
            if target.startswith("hf_dynmask.modeling") or target == "__future__":
                continue
            top = target.split(".")[0]
            if top not in sys.stdlib_module_names and top not in THIRD_PARTY_IN_MODELING:
                problems.append(f"{name} imports {target}")
    assert not problems, "\n".join(problems)


def test_no_import_cycles():
    """Tarjan's strongly connected components over the module graph: every component is a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in GRAPH[node]:
                cycles.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_a_cycle_and_a_layer_violation(monkeypatch):
    """The checks above can fail: a made-up edge from modeling back to training is caught by both."""
    patched = {name: set(targets) for name, targets in GRAPH.items()}
    patched["hf_dynmask.modeling.layout"].add("hf_dynmask.training.trainer")
    monkeypatch.setattr(sys.modules[__name__], "GRAPH", patched)
    with pytest.raises(AssertionError, match="modeling.layout imports hf_dynmask.training.trainer"):
        test_layer_imports_only_layers_below("modeling")
    with pytest.raises(AssertionError, match="import cycles"):
        test_no_import_cycles()

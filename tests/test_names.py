"""Names across the package and the benchmarks: shared constants are defined once, and private names stay private.

Read from the source (every import statement, including those inside functions):

- no module imports another module's private (``_x``) names: what two modules share is public in the one that owns
  it (the benchmarks' timing helpers in ``commands/timing.py``, option checks in ``data/options.py``, ...);
- the ignored-label value is ``hf_dynmask.modeling.input_checks.IGNORE_INDEX``: nothing outside ``modeling/``
  assigns an ``IGNORE_INDEX`` of its own or compares with a literal ``-100``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "hf_dynmask").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")])


def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def test_no_module_imports_another_modules_private_names():
    problems = []
    for path in SOURCES:
        for node in ast.walk(tree(path)):
            if not isinstance(node, ast.ImportFrom) or node.module == "__future__":
                continue
            ours = node.level > 0 or (node.module or "").startswith("hf_dynmask")
            private = [alias.name for alias in node.names if alias.name.startswith("_")]
            if ours and private:
                where = "." * node.level + (node.module or "")
                problems.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {private} from {where}")
    assert not problems, "\n".join(problems)


def test_the_ignored_label_value_is_defined_once():
    problems = []
    for path in SOURCES:
        if path.is_relative_to(ROOT / "hf_dynmask" / "modeling"):
            continue
        for node in ast.walk(tree(path)):
            targets = node.targets if isinstance(node, ast.Assign) else []
            if any(isinstance(t, ast.Name) and t.id == "IGNORE_INDEX" for t in targets):
                problems.append(f"{path.relative_to(ROOT)}:{node.lineno} defines IGNORE_INDEX")
            if isinstance(node, ast.Compare) and any(
                isinstance(side, ast.UnaryOp)
                and isinstance(side.op, ast.USub)
                and isinstance(side.operand, ast.Constant)
                and side.operand.value == 100
                for side in (node.left, *node.comparators)
            ):
                problems.append(f"{path.relative_to(ROOT)}:{node.lineno} compares with -100; use IGNORE_INDEX")
    assert not problems, "\n".join(problems)

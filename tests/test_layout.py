"""The house: data flows one way, infra → pipelines → steps → meter, and no module imports itself in a circle.

Every import counts, at module level or inside a function (a lazy import is still a dependency); only imports
under ``if TYPE_CHECKING:`` are left out, since they never run.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("meter", "steps", "pipelines", "infra")
# who may import whom: each package only those below it
ALLOWED = {
    "meter": {"meter"},
    "steps": {"steps", "meter"},
    "pipelines": {"pipelines", "steps", "meter"},
    "infra": {"infra", "pipelines", "steps", "meter"},
}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (the longest known prefix of each imported name)."""
    tree = ast.parse(path.read_text(), str(path))
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _type_checking(node) for n in node.body}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:  # `from meter import stores` imports meter.stores; `from meter import X`, meter
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    found = set()
    for target in targets:
        parts = target.split(".")
        for n in range(len(parts), 0, -1):
            candidate = ".".join(parts[:n])
            if candidate in known:
                if candidate != name:
                    found.add(candidate)
                break
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(name, path, known) for name, path in mods.items()}


def test_data_flows_one_way() -> None:
    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in graph().items()
        for target in targets
        if target.split(".")[0] not in ALLOWED[name.split(".")[0]]
    )
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    # a package's __init__ re-exporting its modules is not a cycle of logic: leave out edges into a parent package
    edges = {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in graph().items()}
    try:
        graphlib.TopologicalSorter(edges).prepare()
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")


def test_the_checker_sees_lazy_and_relative_imports(tmp_path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import pipelines.cli\n"
        "def f():\n    from pipelines import local\n    from .b import c\n"
    )
    assert imports("meter.a", source, {"pipelines.local", "pipelines.cli", "pipelines", "meter.b"}) == {
        "pipelines.local",
        "meter.b",
    }


def test_a_long_module_says_why_it_is_one() -> None:
    """Small modules named for what they hold; one over about 400 lines states why at its top."""
    long = []
    for name, path in modules().items():
        lines = path.read_text().count("\n")
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > 420 and "over 400 lines" not in doc:
            long.append(f"{name}: {lines} lines")
    assert not long, "\n".join(long)

"""The package's folders are its layers, and imports run one way: down this list, never up.

Lazy imports inside functions count too: a cycle through one still ties two layers together.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "dint"
# Lowest first: a layer may import its own modules and the layers before it, nothing after.
LAYERS = ["core", "distributed", "data", "fields", "teaching", "observe", "train", "commands"]
ENTRY_POINTS = {"dint.__main__", "dint.train.__main__"}  # run as programs, imported by nobody


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The dint modules `path` imports, at any depth of its code."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name in modules}


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


SOURCES = {module_name(path): path for path in PACKAGE.rglob("*.py")}
GRAPH = {name: imported_modules(path, set(SOURCES)) for name, path in SOURCES.items()}


def test_every_module_lives_in_a_layer():
    loose = [name for name in SOURCES if layer(name) is None and name not in {"dint", *ENTRY_POINTS}]
    assert not loose, f"modules outside the layers {LAYERS}: {loose}"


@pytest.mark.parametrize(
    "name", sorted(name for name in SOURCES if layer(name) is not None and name not in ENTRY_POINTS)
)
def test_imports_run_down_the_layers(name):
    upward = [other for other in GRAPH[name] if layer(other) is not None and layer(other) > layer(name)]
    assert not upward, f"{name} ({LAYERS[layer(name)]}) imports from a later layer: {upward}"


def test_no_import_cycle_between_modules():
    seen, on_path = set(), []

    def visit(name):
        if name in on_path:
            raise AssertionError("import cycle: " + " -> ".join(on_path[on_path.index(name) :] + [name]))
        if name in seen:
            return
        on_path.append(name)
        for other in sorted(GRAPH[name]):
            if other != name and not name.startswith(other + "."):  # a package's own __init__ is no cycle
                visit(other)
        on_path.pop()
        seen.add(name)

    for name in sorted(GRAPH):
        visit(name)


def test_the_checks_see_an_upward_import():
    """The checker itself: a core module importing training would be caught."""
    assert layer("dint.core.files") < layer("dint.train.trainer")
    assert "dint.train.trainer" in imported_modules(SOURCES["dint.commands.train"], set(SOURCES))

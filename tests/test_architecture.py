"""The import arrows of docs/INTERFACES.md, read from the source (ast, nothing imported).

Floors, top down: flows -> tasks -> models | storage. Nothing imports upward, models and storage import
nothing of each other, code names the packages only through the `layerloop` namespace (relative imports
inside them), and no group of modules imports itself in a circle. Inside tasks/ the rooms have floors too:
config.py < stages/ < reporting/ < recipe.py < runtime/; inside flows/, the flows < cli/. Every import
counts, relative or absolute, also the lazy ones inside functions: a lazy import is still an arrow. A
failure names each offending file:line.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "tasks", "models", "storage")
# What each package may not import (docs/INTERFACES.md, "Import rules").
FORBIDDEN = {
    "storage": {"models", "tasks", "flows"},
    "models": {"storage", "tasks", "flows"},
    "tasks": {"flows"},
    "flows": set(),
}
# Code outside the four packages that imports them.
CLIENTS = ("tests", "bench", "scripts")


def _modules(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    """layerloop.<package>.<...> for a file of one of the four packages."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["layerloop", *parts])


def _absolute(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a relative import names: its file's package, `level - 1` packages up."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[:len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names taken from it) for every import in the file, relative ones made absolute
    (only inside the four packages, the only places they resolve to `layerloop.`)."""
    found = []
    in_package = path.relative_to(ROOT).parts[0] in PACKAGES
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.ImportFrom) and node.level and in_package:
            found.append((node.lineno, _absolute(path, node), [alias.name for alias in node.names]))
    return found


def _package_of(module: str) -> str | None:
    """flows | tasks | models | storage for a layerloop.<package>... module, else None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "layerloop" and parts[1] in PACKAGES else None


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_runs_upward_or_sideways(package):
    offending = [f"{_where(path, line)} imports {module}"
                 for path in _modules(package) for line, module, _ in _imports(path)
                 if _package_of(module) in FORBIDDEN[package]]
    assert not offending, f"{package}/ may not import {sorted(FORBIDDEN[package])}:\n" + "\n".join(offending)


@pytest.mark.parametrize("folder", PACKAGES + CLIENTS)
def test_packages_are_imported_through_the_layerloop_namespace(folder):
    # a bare `models` / `storage` ... would be a second copy of the module, or someone else's package
    offending = [f"{_where(path, line)} imports {module}"
                 for path in _modules(folder) for line, module, _ in _imports(path)
                 if module.split(".")[0] in PACKAGES]
    assert not offending, "import layerloop.<package>, never the bare folder name:\n" + "\n".join(offending)


def _graph() -> dict[str, dict[str, str]]:
    """module -> {imported module of the four packages: where}; `from pkg import mod` points at mod."""
    files = {_module_name(p): p for package in PACKAGES for p in _modules(package)}
    graph: dict[str, dict[str, str]] = {}
    for name, path in files.items():
        edges = graph.setdefault(name, {})
        for line, module, names in _imports(path):
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in files] or [module]
            edges.update({t: _where(path, line) for t in targets if t in files and t != name})
    return graph


def _circle_from(start: str, graph: dict[str, dict[str, str]]) -> list[str] | None:
    """A path start -> ... -> start through the graph, or None (depth-first, each module once)."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in graph.get(node, {}):
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def test_no_module_imports_itself_through_a_circle():
    graph = _graph()
    for module in sorted(graph):
        circle = _circle_from(module, graph)
        if circle:
            steps = [f"{a} -> {b} ({graph[a][b]})" for a, b in zip(circle, circle[1:])]
            pytest.fail("import circle:\n" + "\n".join(steps))


# Rooms inside a package, bottom floor first: a module may import its own room and the rooms below it.
ROOMS = {
    "tasks": ["layerloop.tasks.config", "layerloop.tasks.stages", "layerloop.tasks.reporting",
              "layerloop.tasks.recipe", "layerloop.tasks.runtime"],
    "flows": ["layerloop.flows", "layerloop.flows.cli"],
}


def _room(module: str, rooms: list[str]) -> int | None:
    """The floor of the most specific room holding the module."""
    matches = [i for i, r in enumerate(rooms) if module == r or module.startswith(r + ".")]
    return max(matches, key=lambda i: len(rooms[i])) if matches else None


@pytest.mark.parametrize("package", sorted(ROOMS))
def test_rooms_inside_a_package_import_only_their_floor_and_below(package):
    rooms, graph = ROOMS[package], _graph()
    offending = []
    for module, edges in graph.items():
        here = _room(module, rooms)
        if here is None or module.endswith(".__main__"):  # `python -m layerloop.flows` starts the CLI on top
            continue
        for target, where in edges.items():
            there = _room(target, rooms)
            if there is not None and there > here:
                offending.append(f"{where}: {rooms[here]} imports {target} (floor {rooms[there]})")
    assert not offending, f"{package}/ rooms, floor first {rooms}:\n" + "\n".join(offending)


def test_the_graph_reads_relative_imports():
    # the arrows above are only as good as the reader: a relative import must come out as its module
    graph = _graph()
    assert "layerloop.models.trainer" in graph["layerloop.tasks.stages.handles"] or any(
        t.startswith("layerloop.models.") for t in graph["layerloop.tasks.stages.adapter"])
    assert "layerloop.tasks.recipe" in graph["layerloop.tasks.runtime.driver"]


def test_judge_contract_and_backends_import_no_registry():
    # the registry imports base and (at build time) the backends; the arrows must never come back
    graph = _graph()
    registry = "layerloop.models.judges.registry"
    back = {m: graph[m][registry] for m in graph if registry in graph[m] and m.startswith("layerloop.models.judges")}
    assert not back, f"judge modules importing the registry: {back}"

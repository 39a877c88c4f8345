"""Imports name their files: every import of the project resolves to a file of the checkout, read from the
source (ast, nothing imported), as a static tool (pyright, an editor's go-to-definition) resolves it.

- `layerloop.<package>.<m>` is `<package>/<m>.py` (or `<package>/<m>/__init__.py`); `layerloop` alone is
  `layerloop/__init__.py`. Inside the four packages imports are relative, so each names its file from where
  it stands; tests, bench, scripts and research import through `layerloop.` (make's link-tree editable
  install gives static tools the same files).
- `from M import n`: n is a module file beside M, or a name M defines at its top.
- Project imports sit at module top. One may stay inside a function only where it is needed to keep a heavy
  library (torch, diffusers, transformers, prefect, ray, ...) from loading with the importing module: the
  imported module loads one at its top, itself or through its own top-level imports.
A failure names each offending file:line.
"""
from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "tasks", "models", "storage")
CLIENTS = ("tests", "bench", "scripts", "research")
# Seconds or GPU stacks at import; measured here: pandas 0.5 s, matplotlib 0.6 s, prefect 2.5 s, torch ~2 s.
HEAVY = {"torch", "torchvision", "torchao", "diffusers", "transformers", "peft", "accelerate", "qwen_vl_utils",
         "prefect", "prefect_ray", "ray", "matplotlib", "pandas", "pyarrow", "s3fs", "openai", "datasets",
         "webdataset", "duckdb", "playwright", "moto", "boto3"}


def _files(*folders: str) -> list[Path]:
    return sorted(p for f in folders if (ROOT / f).is_dir() for p in (ROOT / f).rglob("*.py")
                  if "__pycache__" not in p.parts)


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _module_file(parts: list[str]) -> Path | None:
    """The file of a dotted module path given as folders from the repository root."""
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _target(path: Path, node: ast.ImportFrom | ast.Import, name: str | None = None) -> list[str] | None:
    """Folders from the root of the module an import names, or None when it is not the project's."""
    if isinstance(node, ast.ImportFrom) and node.level:
        here = list(path.relative_to(ROOT).parent.parts)
        if node.level - 1 > len(here):
            return ["<above the root>"]
        base = here[:len(here) - (node.level - 1)]
        return base + (node.module.split(".") if node.module else [])
    dotted = (node.module if isinstance(node, ast.ImportFrom) else name) or ""
    parts = dotted.split(".")
    if parts[0] == "layerloop":
        return parts[1:] if len(parts) > 1 and parts[1] in PACKAGES else ["layerloop", *parts[1:]]
    return parts if parts[0] == "tests" else None


def _defines(module: Path, name: str) -> bool:
    """Does the module bind `name` at its top (def, class, assignment, import), or hold it as a file?"""
    if module.name == "__init__.py" and _module_file([*module.parent.relative_to(ROOT).parts, name]):
        return True
    for node in _tree(module).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        targets = (node.targets if isinstance(node, ast.Assign) else [node.target]
                   if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                (a.asname or a.name.split(".")[0]) == name for a in node.names):
            return True
        if isinstance(node, (ast.If, ast.Try)) and name in ast.unparse(node):  # guarded definitions
            return True
    return False


def _imports(path: Path):
    """(node, inside a function?) for every import of the file."""
    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, in_function
            yield from walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))
    yield from walk(_tree(path), False)


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{node.lineno}"


def _unresolved(path: Path) -> list[str]:
    problems = []
    for node, _ in _imports(path):
        names = [None] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
        for name in names:
            parts = _target(path, node, name)
            if parts is None:
                continue
            module = _module_file(parts)
            if module is None:
                problems.append(f"{_where(path, node)}: no file for {'.'.join(parts)}")
            elif isinstance(node, ast.ImportFrom):
                problems += [f"{_where(path, node)}: {module.relative_to(ROOT)} has no {a.name!r}"
                             for a in node.names if a.name != "*" and not _defines(module, a.name)]
    return problems


@pytest.mark.parametrize("folder", PACKAGES + ("layerloop",) + CLIENTS)
def test_every_project_import_resolves_to_a_file(folder):
    problems = [p for path in _files(folder) for p in _unresolved(path)]
    assert not problems, "imports that name no file:\n" + "\n".join(problems)


@pytest.mark.parametrize("package", PACKAGES)
def test_the_packages_import_each_other_relatively(package):
    # `layerloop.tasks.x` inside the packages would lead a reader (and pyright, without the link tree) nowhere
    offending = [f"{_where(path, node)} imports {node.module}" for path in _files(package)
                 for node, _ in _imports(path) if isinstance(node, ast.ImportFrom) and node.level == 0
                 and (node.module or "").startswith("layerloop")]
    offending += [f"{_where(path, node)} imports {a.name}" for path in _files(package) for node, _ in _imports(path)
                  if isinstance(node, ast.Import) for a in node.names if a.name.startswith("layerloop")]
    assert not offending, "use a relative import (from ..models.trainer import X):\n" + "\n".join(offending)


@cache
def _loads_heavy(module: Path) -> bool:
    """Does importing the module load a heavy library: at its top, or through its top-level project imports?"""
    for node in _tree(module).body:
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        if any(n.split(".")[0] in HEAVY for n in names):
            return True
        for name in ([None] if isinstance(node, ast.ImportFrom) else names):
            parts = _target(module, node, name)
            target = _module_file(parts) if parts else None
            if target and target != module and _loads_heavy(target):
                return True
            if target and isinstance(node, ast.ImportFrom) and target.name == "__init__.py":
                subs = [_module_file([*target.parent.relative_to(ROOT).parts, a.name]) for a in node.names]
                if any(s and s != module and _loads_heavy(s) for s in subs):
                    return True
    return False


def _lazy_without_need(path: Path) -> list[str]:
    problems = []
    for node, in_function in _imports(path):
        if not in_function or not isinstance(node, ast.ImportFrom):
            continue
        parts = _target(path, node)
        module = _module_file(parts) if parts else None
        if module is None:
            continue
        subs = [_module_file([*module.parent.relative_to(ROOT).parts, a.name]) for a in node.names
                ] if module.name == "__init__.py" else []
        if not _loads_heavy(module) and not any(s and _loads_heavy(s) for s in subs):
            problems.append(f"{_where(path, node)}: from {'.'.join(parts)} import ... loads nothing heavy")
    return problems


@pytest.mark.parametrize("package", PACKAGES)
def test_project_imports_sit_at_module_top_unless_they_load_a_heavy_library(package):
    problems = [p for path in _files(package) for p in _lazy_without_need(path)]
    assert not problems, "move these imports to the module's top:\n" + "\n".join(problems)

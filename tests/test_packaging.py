"""One installed namespace: the four top-level folders import as layerloop.*, from a wheel and from a bare checkout.

The wheel is built here with setuptools' own backend (offline, no pip) and read as a zip; the checkout
case runs a fresh interpreter without site-packages (`python -S`), so only PYTHONPATH can find the code.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("flows", "tasks", "models", "storage")


def _python_s(code: str, pythonpath: Path, cwd: Path) -> str:
    """Run `code` in a fresh interpreter that sees only the stdlib and `pythonpath`."""
    res = subprocess.run([sys.executable, "-S", "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(pythonpath), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_every_package_folder_is_listed_for_installation():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {"layerloop"} | {
        ".".join(["layerloop", *init.parent.relative_to(ROOT).parts])
        for folder in FOLDERS for init in (ROOT / folder).rglob("__init__.py")}
    missing = on_disk - set(setuptools["packages"])
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"
    assert setuptools["package-dir"] == {"layerloop": "layerloop", **{f"layerloop.{f}": f for f in FOLDERS}}


def test_a_checkout_on_pythonpath_imports_the_namespace_without_installing(tmp_path):
    out = _python_s("import layerloop.storage.errors as e, layerloop.models, layerloop.flows, layerloop.tasks; "
                    "print(e.__file__)", ROOT, tmp_path)
    assert Path(out) == ROOT / "storage" / "errors.py"


def test_the_wheel_holds_one_top_level_package_with_the_tiny_base(tmp_path):
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in ("layerloop", *FOLDERS):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    build = "from setuptools import build_meta; print(build_meta.build_wheel(%r))" % str(tmp_path / "dist")
    res = subprocess.run([sys.executable, "-c", build], cwd=src, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    wheel = tmp_path / "dist" / res.stdout.strip().splitlines()[-1]
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"layerloop"}
    base = ROOT / "models" / "assets" / "tiny-base"
    shipped = {f"layerloop/models/assets/tiny-base/{p.relative_to(base).as_posix()}" for p in base.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert "layerloop/models/assets/tiny-base/model_index.json" in shipped and shipped <= set(names)
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    # installed, the packages sit inside layerloop/: its path must not reach out into site-packages
    out = _python_s("import layerloop, layerloop.storage.errors as e; print(layerloop.__path__, e.__file__)",
                    tmp_path / "site", tmp_path)
    assert out == f"['{tmp_path / 'site' / 'layerloop'}'] {tmp_path / 'site' / 'layerloop' / 'storage' / 'errors.py'}"

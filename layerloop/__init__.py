"""layerloop: cycle-consistent layered image decomposition as a self-improving, versioned data pipeline.

The code lives in four folders at the top of the repository and is imported as one namespace:
`flows/` is `layerloop.flows`, `tasks/` is `layerloop.tasks`, `models/` is `layerloop.models` and
`storage/` is `layerloop.storage`. Installed (a wheel, or `pip install -e .`), pyproject.toml's
package-dir mapping puts them under this package. In a checkout used without installing
(`PYTHONPATH=<repo>`, e.g. a copy on a GPU machine) they sit beside this folder instead, so the
repository root is added to this package's search path; then `layerloop.models` finds `<repo>/models`.
"""
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_PARTS = ("flows", "tasks", "models", "storage")

# Installed, the four packages are inside this folder and the path stays as it is.
if not (_HERE / "models").is_dir() and all((_HERE.parent / p / "__init__.py").is_file() for p in _PARTS):
    __path__.append(str(_HERE.parent))

"""layerloop: cycle-consistent layered image decomposition as a self-improving, versioned data pipeline.

The code lives in four folders at the top of the repository and is imported as one namespace:
`layerloop.flows.<m>` is the file `flows/<m>.py`, and so on for `tasks/`, `models/` and `storage/`. Inside
the four packages imports are relative (`from ..models.trainer import X` is `models/trainer.py`), so they
name their files to a reader and to static tools alike. Installed, pyproject.toml's package-dir mapping puts
the folders under this package: `make` builds an editable link tree (build/__editable__.*/layerloop/, a link
per file) that pyright follows for tests and bench. In a checkout used without installing
(`PYTHONPATH=<repo>`, e.g. a copy on a GPU machine) they sit beside this folder instead, so the repository
root is added to this package's search path; then `layerloop.models` finds `<repo>/models`.
"""
import os
from pathlib import Path

_HERE = Path(os.path.abspath(__file__)).parent  # not resolved: in the link tree the folders sit beside it
_PARTS = ("flows", "tasks", "models", "storage")

# Installed, the four packages are inside this folder and the path stays as it is.
if not (_HERE / "models").is_dir() and all((_HERE.parent / p / "__init__.py").is_file() for p in _PARTS):
    __path__.append(str(_HERE.parent))

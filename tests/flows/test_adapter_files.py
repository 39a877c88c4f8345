"""Adapter directories in the store: published whole (weights last), side files written through fsutil."""
from __future__ import annotations

from pathlib import Path

import pytest

from layerloop.tasks.stages import adapter_files as af


def _trained(tmp_path):
    src = tmp_path / "trained"
    src.mkdir()
    (src / af.WEIGHTS).write_bytes(b"weights")
    (src / "README.md").write_text("card")
    return src


@pytest.mark.parametrize("root", ["local", "memory://adapters-test"])
def test_publish_then_read_back(tmp_path, root):
    base = str(tmp_path / "store") if root == "local" else root
    uri = af.join(base, "adapters/round-0000")
    assert not af.has_weights(uri)
    af.publish_dir(str(_trained(tmp_path)), uri)
    af.write_json(af.join(uri, "heldout.json"), {"metrics": {"psnr_logo": 12.5}})
    assert af.has_weights(uri) and af.read_json(af.join(uri, "heldout.json")) == {"metrics": {"psnr_logo": 12.5}}
    assert af.read_json(af.join(uri, "missing.json")) is None
    # no temp file is left beside them (the atomic write renames its own)
    files = sorted(p.name for p in Path(af.local_dir(uri)).iterdir())
    assert files == sorted(["README.md", af.WEIGHTS, "heldout.json"])


def test_a_directory_without_weights_is_not_published(tmp_path):
    src = tmp_path / "half"
    src.mkdir()
    (src / "README.md").write_text("card")
    with pytest.raises(FileNotFoundError, match="training did not finish"):
        af.publish_dir(str(src), str(tmp_path / "store" / "adapters" / "round-0001"))
    assert not af.exists(str(tmp_path / "store" / "adapters" / "round-0001" / af.WEIGHTS))

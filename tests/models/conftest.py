"""Model-side fixtures: one tiny backbone per test session (real diffusers/transformers classes, CPU)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_backbone():
    """The shipped tiny base; a seeded random one only while the assets have not been committed yet."""
    import torch

    from layerloop.models import tiny
    from layerloop.models.config import ModelConfig
    from layerloop.models.factory import build_backbone

    torch.set_num_threads(1)
    torch.manual_seed(0)
    return build_backbone(ModelConfig(), allow_random_init=not tiny.assets_present(tiny.ASSET_DIR))


@pytest.fixture(scope="module")
def random_tiny_backbone(tmp_path_factory):
    """The tiny backbone's real classes, randomly initialised, one per test module: trainer and LoRA-file
    tests check mechanics, not the shipped base's quality, so they do not depend on models/assets."""
    import torch

    from layerloop.models.config import ModelConfig
    from layerloop.models.factory import build_backbone

    torch.set_num_threads(1)
    empty = tmp_path_factory.mktemp("no-base")
    return build_backbone(ModelConfig(path=str(empty)), allow_random_init=True)

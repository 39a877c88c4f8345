"""Model-side fixtures: one tiny backbone per test session (real diffusers/transformers classes, CPU)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_backbone():
    """The shipped tiny base; a seeded random one only while the assets have not been committed yet."""
    import torch

    from models import tiny
    from models.config import ModelConfig
    from models.factory import build_backbone

    torch.set_num_threads(1)
    torch.manual_seed(0)
    return build_backbone(ModelConfig(), allow_random_init=not tiny.assets_present(tiny.ASSET_DIR))

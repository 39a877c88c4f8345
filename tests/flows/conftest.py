"""Fixtures of the flow tests: a tiny synthetic world (seeds + pool) and a config that runs a round in seconds."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_inputs(tmp_path_factory):
    """Six labeled seeds and six unlabeled pool composites, rendered once per session."""
    from layerloop.tasks.stages.demo import make_inputs

    return make_inputs(str(tmp_path_factory.mktemp("inputs")), n_seeds=6, n_pool=6, panel_size=32, seed=3)


@pytest.fixture
def tiny_cfg(tmp_path, tiny_inputs):
    import torch

    from layerloop.tasks.config import load_config
    from layerloop.tasks.stages.demo import smoke_overrides

    torch.set_num_threads(1)
    # env LAYERLOOP__* still applies (e.g. LAYERLOOP__MODEL__PATH for another tiny base)
    return load_config(None, overrides=smoke_overrides(str(tmp_path / "store"), tiny_inputs))

"""Regional compilation with inductor on a GPU (opt-in: `pytest -m gpu`): the trainer's compiled run
gives the eager run's losses. The CPU tier checks the same with dynamo's eager backend
(tests/models/test_trainer.py); inductor needs a GPU here to be worth compiling."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.gpu


def test_compiled_training_matches_eager_on_cuda(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine")
    from layerloop.models.config import LoraConfig, ModelConfig, TrainConfig
    from layerloop.models.factory import build_backbone
    from layerloop.models.synthetic import make_split
    from layerloop.models.trainer import train_lora

    backbone = build_backbone(ModelConfig(device="cuda"))
    triplets = [t for _, t, _ in make_split("seeds", 8, backbone.panel_size, 0)]
    runs = {}
    for compiled in (False, True):
        cfg = TrainConfig(steps=6, batch_size=4, lr=5e-3, cycle_weight=0.0, compile_blocks=compiled)
        res = train_lora(backbone, triplets, cfg, LoraConfig(rank=8), str(tmp_path / str(compiled)))
        runs[compiled] = [r["loss"] for r in res.loss_curve]
    assert runs[True] == pytest.approx(runs[False], rel=2e-3, abs=1e-4)
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in backbone.transformer.modules())

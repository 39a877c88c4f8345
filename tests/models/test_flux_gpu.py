"""The FLUX.1-Fill-dev path of the factory and sampler on a GPU (opt-in: `pytest -m gpu`).

Needs CUDA and a local FLUX.1-Fill-dev directory in LAYERLOOP_FLUX_PATH (nothing is downloaded);
skips with the reason otherwise. The same Sampler/grid code as the tiny tests runs on the real weights.
"""
from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.gpu


def _flux_path() -> str:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine")
    path = os.environ.get("LAYERLOOP_FLUX_PATH")
    if not path:
        pytest.skip("set LAYERLOOP_FLUX_PATH to a local FLUX.1-Fill-dev directory to run the flux factory test")
    if not os.path.isdir(path):
        pytest.skip(f"LAYERLOOP_FLUX_PATH={path} is not a directory")
    return path


@pytest.fixture(scope="module")
def flux_backbone():
    from layerloop.models.config import ModelConfig
    from layerloop.models.factory import build_backbone

    cfg = ModelConfig(backbone="flux", path=_flux_path(), panel_size=256, gradient_checkpointing=True)
    return build_backbone(cfg)


def test_flux_backbone_is_the_fill_model_in_bf16(flux_backbone):
    import torch
    from diffusers import FluxTransformer2DModel

    assert isinstance(flux_backbone.transformer, FluxTransformer2DModel)
    assert flux_backbone.dtype == torch.bfloat16 and flux_backbone.device.type == "cuda"
    assert flux_backbone.transformer.config.in_channels == 384  # 64 latent + 64 masked latent + 256 mask
    assert flux_backbone.transformer.is_gradient_checkpointing
    pe, pooled, ids = flux_backbone.task_embeddings("decompose")
    assert pe.shape == (1, 512, 4096) and pooled.shape == (1, 768) and ids.shape == (512, 3)
    assert flux_backbone.task_embeddings("decompose")[0] is pe  # cached: T5 at 512 tokens runs once


def test_flux_sampler_decomposes_and_synthesizes(flux_backbone):
    from PIL import Image

    from layerloop.models.config import SampleConfig
    from layerloop.models.sampler import Sampler

    sampler = Sampler(flux_backbone, None, SampleConfig(steps=4, guidance=30.0, batch_size=2))
    comp = Image.new("RGB", (256, 256), (180, 40, 40))
    layers = sampler.decompose([comp, comp])
    assert len(layers) == 2 and all(im.size == (256, 256) for im in layers[0].values())
    composite = sampler.synthesize(layers[:1])[0]
    assert composite.size == (256, 256)

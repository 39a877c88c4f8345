"""The sampler's fuse_lora and fp8 switches: off by default, validated, fusing gives the unfused outputs and is
undone by the next Sampler, FP8 refused with the reason where it cannot run (CPU), and an FP8 backbone serves
only its own adapter. The FP8 numbers themselves need CUDA (`-m gpu`; speed and PSNR: bench/gpu_path.py)."""
from __future__ import annotations

import numpy as np
import pytest

from layerloop.models.acceleration import FP8_MARK, fp8_tag
from layerloop.models.config import LoraConfig, SampleConfig
from layerloop.models.sampler import Sampler
from test_sampler import CFG, _arr, _img  # same folder (tests/models is not a package)


def _max_diff(a: dict, b: dict) -> float:
    return max(np.abs(_arr(a[k]) - _arr(b[k])).max() for k in a)


def _mean_diff(a: dict, b: dict) -> float:
    return float(np.mean([np.abs(_arr(a[k]) - _arr(b[k])).mean() for k in a]))


def _random_adapter(backbone, out_dir) -> str:
    """An adapter with random LoRA factors (so it really changes the model), saved by lora_io."""
    import torch

    from layerloop.models.lora_io import save_adapter
    from layerloop.models.trainer import attach_lora, detach_lora

    params = attach_lora(backbone.transformer, LoraConfig(rank=4), seed=0)
    try:
        with torch.no_grad():
            for i, (_, p) in enumerate(sorted(params.items())):
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.2)
        save_adapter(backbone, str(out_dir), card={})
    finally:
        detach_lora(backbone.transformer)
    return str(out_dir)


def test_switches_are_off_by_default():
    cfg = SampleConfig()
    assert cfg.fp8 is False and cfg.fuse_lora is False


def test_fp8_needs_fuse_lora():
    with pytest.raises(ValueError, match="fuse_lora"):
        SampleConfig(fp8=True)
    assert SampleConfig(fp8=True, fuse_lora=True).fp8


def test_fused_adapter_gives_the_unfused_outputs_and_is_undone(random_tiny_backbone, tmp_path):
    from layerloop.models.lora_io import is_fused

    bb = random_tiny_backbone
    comps = [_img(20), _img(21)]
    base = Sampler(bb, None, CFG).decompose(comps)
    adapter = _random_adapter(bb, tmp_path / "a")
    plain = Sampler(bb, adapter, CFG).decompose(comps)
    fused_sampler = Sampler(bb, adapter, CFG.model_copy(update={"fuse_lora": True}))
    assert is_fused(bb.transformer)
    fused = fused_sampler.decompose(comps)
    assert _mean_diff(plain[0], base[0]) > 1.0, "the adapter must change the outputs for this test to mean anything"
    for a, b in zip(fused, plain):
        assert _max_diff(a, b) <= 2.0  # uint8 levels; CPU kernels are not bit-exact
    restored = Sampler(bb, None, CFG).decompose(comps)  # unfuses, then unloads
    assert not getattr(bb.transformer, "peft_config", None)
    for a, b in zip(restored, base):
        assert _max_diff(a, b) <= 2.0


def test_fp8_on_cpu_is_refused_with_the_reason_before_anything_changes(random_tiny_backbone, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal is the CPU path")
    bb = random_tiny_backbone
    adapter = _random_adapter(bb, tmp_path / "a")
    with pytest.raises(ValueError, match=r"sample\.fp8 cannot run here: no CUDA device"):
        Sampler(bb, adapter, CFG.model_copy(update={"fuse_lora": True, "fp8": True}))
    assert fp8_tag(bb.transformer) is None
    assert not getattr(bb.transformer, "peft_config", None), "the adapter must not be loaded when FP8 is refused"


def test_an_fp8_backbone_serves_only_its_own_adapter(random_tiny_backbone, tmp_path):
    """The bookkeeping of a quantised transformer (its FP8_MARK), checked without quantising."""
    from layerloop.models.lora_io import AdapterError, unload_adapter

    bb = random_tiny_backbone
    setattr(bb.transformer, FP8_MARK, "")  # as quantize_fp8 leaves a base quantised without an adapter
    try:
        fp8 = CFG.model_copy(update={"fuse_lora": True, "fp8": True})
        assert Sampler(bb, None, fp8).fp8_linears is None  # reused as it is: nothing quantised again
        with pytest.raises(ValueError, match="quantised to FP8"):
            Sampler(bb, None, CFG)
        with pytest.raises(ValueError, match="needs a new backbone"):
            Sampler(bb, _random_adapter(bb, tmp_path / "a"), fp8)
        with pytest.raises(AdapterError, match="FP8"):
            unload_adapter(bb)
    finally:
        delattr(bb.transformer, FP8_MARK)


@pytest.mark.gpu
def test_fp8_sampling_on_cuda_is_close_to_bf16(tmp_path):
    import torch

    from layerloop.models.acceleration import fp8_problems
    from layerloop.models.config import ModelConfig
    from layerloop.models.factory import build_backbone
    from layerloop.models.lora_io import AdapterError, unload_adapter

    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine")
    problems = fp8_problems(torch.device("cuda"), torch.bfloat16)
    if problems:
        pytest.skip("; ".join(problems))
    bb = build_backbone(ModelConfig(device="cuda", dtype="bfloat16"))
    adapter = _random_adapter(bb, tmp_path / "a")
    comps = [_img(30), _img(31)]
    fused = CFG.model_copy(update={"fuse_lora": True})
    bf16 = Sampler(bb, adapter, fused).decompose(comps)
    sampler = Sampler(bb, adapter, fused.model_copy(update={"fp8": True}))
    assert sampler.fp8_linears and fp8_tag(bb.transformer)
    fp8 = sampler.decompose(comps)
    assert all(im.size == (32, 32) for item in fp8 for im in item.values())
    assert _mean_diff(fp8[0], bf16[0]) < 32.0  # loose: FP8 rounding, not another model
    with pytest.raises(ValueError, match="needs a new backbone"):
        Sampler(bb, None, fused)
    with pytest.raises(AdapterError):
        unload_adapter(bb)

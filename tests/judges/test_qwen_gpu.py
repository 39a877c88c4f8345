"""The qwen backend on CUDA in bf16 (tiny random Qwen2.5-VL): the GPU path, with qwen_vl_utils when it imports."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from tests.judges.tiny_qwen import build_tiny_qwen

    return build_tiny_qwen(str(tmp_path_factory.mktemp("tiny-qwen-gpu")))


def _score(path, device, dtype, batch_size, items):
    from layerloop.models.judges.config import JudgeConfig
    from layerloop.models.judges.registry import build_judge

    cfg = JudgeConfig(backend="qwen", qwen={"path": path, "device": device, "dtype": dtype,
                                            "batch_size": batch_size, "max_pixels": 112 * 112})
    judge = build_judge(cfg)
    return judge, judge.score(items)


def test_bf16_cuda_matches_cpu_float32_and_batching(qwen_dir):
    from layerloop.models.judges.base import JudgeItem
    from tests.judges.conftest import make_triplet, spoil

    items = [JudgeItem(f"g{i}", make_triplet(i)) for i in range(3)] + [JudgeItem("bad", spoil(make_triplet(0)))]
    judge, gpu = _score(qwen_dir, "auto", "auto", 16, items)
    assert judge.runtime.device == "cuda" and judge.runtime.model.dtype == torch.bfloat16
    _, gpu_single = _score(qwen_dir, "auto", "auto", 1, items)
    _, cpu = _score(qwen_dir, "cpu", "float32", 16, items)
    for g, s, c in zip(gpu, gpu_single, cpu):
        assert all(0.0 <= v <= 1.0 for v in g.scores.values())
        assert g.scores == pytest.approx(s.scores, abs=2e-2)  # bf16 kernels differ with batch shape
        assert g.scores == pytest.approx(c.scores, abs=5e-2)


def test_qwen_vl_utils_path_when_available(qwen_dir):
    pytest.importorskip("torchvision")
    pytest.importorskip("qwen_vl_utils")
    from PIL import Image

    from layerloop.models.judges.qwen_runtime import QwenVL

    runtime = QwenVL(qwen_dir, max_pixels=112 * 112)
    assert runtime.resizer is not None
    _, grid, counts = runtime._vision([Image.new("RGB", (56, 56), "red"), Image.new("RGB", (112, 56), "blue")])
    assert grid.tolist() == [[1, 4, 4], [1, 4, 8]] and counts == [4, 8]

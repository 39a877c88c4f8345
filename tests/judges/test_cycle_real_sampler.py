"""The cycle judge on the real tiny Sampler (FluxFill classes, CPU): real decompose -> re-synthesize."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def real_sampler():
    from layerloop.models import tiny
    from layerloop.models.config import ModelConfig, SampleConfig
    from layerloop.models.factory import build_backbone
    from layerloop.models.sampler import Sampler

    torch.set_num_threads(1)
    torch.manual_seed(0)
    backbone = build_backbone(ModelConfig(), allow_random_init=not tiny.assets_present(tiny.ASSET_DIR))
    return Sampler(backbone, None, SampleConfig(steps=2, batch_size=4))


def test_cycle_judge_with_the_real_sampler(real_sampler):
    from layerloop.models.judges.acceptance import decide_rows
    from layerloop.models.judges.base import results_to_frame
    from layerloop.models.judges.calibration import synthetic_calibration_set
    from layerloop.models.judges.config import CRITERIA, JudgeConfig, ThresholdConfig
    from layerloop.models.judges.registry import build_judge
    from layerloop.models.metrics import cycle_error

    items = synthetic_calibration_set(3, seed=0)
    results = build_judge(JudgeConfig(), sampler=real_sampler).score(items)
    # Same batch as the judge: the sampler seeds noise from each item's content, and a one-level pixel
    # difference between batch sizes (CPU kernels are not bit-exact) would re-seed the re-synthesis.
    again = real_sampler.synthesize(real_sampler.decompose([it.triplet["composite"] for it in items]))
    for item, res, back in zip(items, results, again):
        assert res.error is None and res.backend == "cycle"
        assert all(0.0 <= res.scores[c] <= 1.0 for c in CRITERIA) and 0.0 <= res.overall <= 1.0
        assert res.details["cycle_error"] == pytest.approx(cycle_error(item.triplet["composite"], back), abs=2e-3)
    cfg = ThresholdConfig()
    decided = decide_rows(results_to_frame(results), cfg)
    # each row's reason follows from its own scores: a low score first, else the cycle-error limit, else
    # accepted (which rule fires depends on the base's numbers, which move with package versions)
    for res, reason in zip(results, decided["reason"]):
        low = [c for c, m in cfg.minimums().items() if res.scores[c] < m]
        low += ["overall"] if res.overall < cfg.overall else []
        if low:
            assert reason.startswith("below threshold: ") and all(c in reason for c in low), reason
        elif res.details["cycle_error"] > cfg.max_cycle_error:
            assert reason == f"cycle_error {res.details['cycle_error']:.4f} > {cfg.max_cycle_error:.4f}"
        else:
            assert reason == ""

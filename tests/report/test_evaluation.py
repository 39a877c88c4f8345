"""Held-out evaluation: per-layer PSNR/SSIM vs ground truth, identity baseline, bad input."""
from __future__ import annotations

import math

import pytest

from layerloop.models.evaluation import (
    aggregate,
    evaluate_decomposition,
    identity_baseline,
    identity_predictions,
    per_item_scores,
)
from layerloop.models.metrics import psnr, ssim
from layerloop.models.synthetic import make_split


@pytest.fixture(scope="module")
def items():
    return list(make_split("test", 4, 32, 7))


def test_identity_baseline_matches_direct_metric(items):
    result = identity_baseline(items)
    assert result["n"] == 4
    expected_obj = sum(psnr(t["composite"], t["object"]) for _, t, _ in items) / 4
    assert result["psnr_object"] == pytest.approx(expected_obj, rel=1e-6)
    expected_ssim_logo = sum(ssim(identity_predictions([t["composite"]], ["logo"])[0]["logo"], t["logo"])
                             for _, t, _ in items) / 4
    assert result["ssim_logo"] == pytest.approx(expected_ssim_logo, rel=1e-6)
    # The composite differs from the clean object only where the logo is printed: far better than
    # the blank logo panel is against the true logo.
    assert result["psnr_object"] > result["psnr_logo"]


def test_perfect_predictions_score_at_the_cap(items):
    rows = per_item_scores(items, lambda comps: [{"logo": t["logo"], "object": t["object"]} for _, t, _ in items])
    result = aggregate(rows)
    assert result["psnr_logo"] == 100.0 and result["psnr_object"] == 100.0
    assert result["ssim_object"] == pytest.approx(1.0, abs=1e-6)


def test_two_tuple_items_and_return_rows(items):
    pairs = [(sid, t) for sid, t, _ in items]
    result = identity_baseline(pairs, return_rows=True)
    assert [r["sample_id"] for r in result["rows"]] == [sid for sid, _ in pairs]
    assert all(math.isfinite(r["psnr_logo"]) for r in result["rows"])


def test_bad_items_are_refused(items):
    with pytest.raises(ValueError, match="empty"):
        identity_baseline([])
    sid, triplet, _ = items[0]
    with pytest.raises(ValueError, match="composite"):
        identity_baseline([(sid, {"logo": triplet["logo"]})])
    with pytest.raises(ValueError, match="lacks layer 'object'"):
        per_item_scores(items[:1], lambda comps: [{"logo": triplet["logo"]}])


def test_evaluate_with_real_tiny_sampler(items):
    import torch

    from layerloop.models.config import ModelConfig, SampleConfig
    from layerloop.models.factory import build_backbone
    from layerloop.models.sampler import Sampler

    torch.set_num_threads(1)
    sampler = Sampler(build_backbone(ModelConfig(), allow_random_init=True), None, SampleConfig(steps=2))
    result = evaluate_decomposition(sampler, items[:2], batch_size=1, return_rows=True)
    assert result["n"] == 2 and len(result["rows"]) == 2
    for key in ("psnr_logo", "psnr_object", "ssim_logo", "ssim_object"):
        assert math.isfinite(result[key])
    # An untrained sampler is no oracle: its layers are not the ground truth.
    assert result["psnr_logo"] < 60
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_decomposition(sampler, items[:1], batch_size=0)


def test_slices_report_the_same_means_per_part_of_the_test_set():
    from layerloop.models.evaluation import identity_baseline

    items = list(make_split("test", 6, 32, 0))
    seen = {m["kind"] for _, _, m in items[:2]}
    out = identity_baseline(items, slices={"seen": lambda m: m["kind"] in seen,
                                           "unseen": lambda m: m["kind"] not in seen})
    parts = out["slices"]
    assert parts["seen"]["n"] + parts["unseen"]["n"] == 6 and parts["seen"]["n"] >= 2
    weighted = sum(parts[k]["psnr_object"] * parts[k]["n"] for k in parts if parts[k]["n"]) / 6
    assert weighted == pytest.approx(out["psnr_object"], rel=1e-6)
    assert "iou_logo" in out and "iou_object" not in out

"""Oracle and cycle judges on drawn triplets with known answers."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from layerloop.models.judges.acceptance import decide
from layerloop.models.judges.base import JudgeItem
from layerloop.models.judges.config import CRITERIA, JudgeConfig, ThresholdConfig
from layerloop.models.judges.registry import build_judge
from tests.judges.conftest import GroundTruthSampler, spoil


def noisy(image, sigma, seed=0):
    x = np.asarray(image).astype(np.float32)
    x += np.random.default_rng(seed).normal(0, sigma, x.shape)
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))


def test_oracle_perfect_candidate_scores_one(triplets):
    judge = build_judge(JudgeConfig(backend="oracle"))
    res = judge.score([JudgeItem("s0", triplets[0], truth=triplets[0])])[0]
    assert res.error is None and res.backend == "oracle"
    assert all(v == 1.0 for v in res.scores.values()) and res.overall == 1.0


def test_oracle_score_falls_with_noise(triplets):
    judge = build_judge(JudgeConfig(backend="oracle"))
    truth = triplets[0]
    items = [JudgeItem(f"n{s}", {p: noisy(im, s) for p, im in truth.items()}, truth=truth) for s in (2, 8, 30)]
    overall = [r.overall for r in judge.score(items)]
    assert overall[0] > overall[1] > overall[2]
    assert all(0.0 <= v <= 1.0 for v in overall)


def test_oracle_without_truth_is_unscored(triplets):
    res = build_judge(JudgeConfig(backend="oracle")).score([JudgeItem("s", triplets[0])])[0]
    assert res.overall is None and "truth" in res.error
    accepted, reason = decide(res.scores, res.overall, ThresholdConfig(), error=res.error)
    assert not accepted and reason.startswith("unscored: oracle judge needs")


def test_invalid_item_is_unscored_and_the_rest_scored(triplets):
    judge = build_judge(JudgeConfig(backend="oracle"))
    broken = dict(triplets[1])
    broken["logo"] = broken["logo"].resize((16, 16))
    res = judge.score([JudgeItem("ok", triplets[0], truth=triplets[0]), JudgeItem("bad", broken, truth=triplets[1]),
                       JudgeItem("gone", {"composite": triplets[0]["composite"]})])
    assert [r.sample_id for r in res] == ["ok", "bad", "gone"]
    assert res[0].overall == 1.0
    assert res[1].error.startswith("invalid item: panel sizes differ")
    assert res[2].error.startswith("invalid item: missing panel(s)")
    with pytest.raises(ValueError, match="unique"):
        judge.score([JudgeItem("x", triplets[0]), JudgeItem("x", triplets[1])])


def test_cycle_judge_needs_a_sampler():
    with pytest.raises(ValueError, match="needs a sampler"):
        build_judge(JudgeConfig(backend="cycle"))
    with pytest.raises(ValueError, match="decompose"):
        build_judge(JudgeConfig(backend="cycle"), sampler=object())


def test_cycle_judge_separates_good_from_bad(triplets):
    sampler = GroundTruthSampler(triplets)
    judge = build_judge(JudgeConfig(backend="cycle"), sampler=sampler)
    items = [JudgeItem(f"good{i}", t) for i, t in enumerate(triplets)]
    items += [JudgeItem(f"bad{i}", spoil(t, i)) for i, t in enumerate(triplets)]
    res = judge.score(items)
    # one decompose of every composite, one synthesize of re-decomposed + candidate layers
    assert sampler.calls == [("decompose", 8), ("synthesize", 16)]
    good, bad = res[:4], res[4:]
    for g, b in zip(good, bad):
        assert g.error is None and b.error is None
        for crit in ("logo_clean", "object_clean"):
            assert g.scores[crit] > b.scores[crit] + 0.2, crit
        assert all(0.0 <= g.scores[c] <= 1.0 for c in CRITERIA)
        assert g.details["cycle_error_object"] == pytest.approx(0.0, abs=1e-9)
        assert b.details["cycle_error_object"] > 0.01
    cfg = ThresholdConfig()
    assert all(decide(r.scores, r.overall, cfg)[0] for r in good)
    assert not any(decide(r.scores, r.overall, cfg)[0] for r in bad)


def test_cycle_judge_flags_a_composite_that_does_not_match_its_layers(triplets):
    judge = build_judge(JudgeConfig(backend="cycle"), sampler=GroundTruthSampler(triplets))
    mismatched = {"composite": triplets[1]["composite"], "logo": triplets[0]["logo"], "object": triplets[0]["object"]}
    good, bad = judge.score([JudgeItem("good", triplets[0]), JudgeItem("mismatch", mismatched)])
    assert good.scores["composite_consistent"] == pytest.approx(1.0)
    assert bad.scores["composite_consistent"] < good.scores["composite_consistent"] - 0.1
    assert bad.details["cycle_error_object"] > 0.05 and bad.details["cycle_error_synthesis"] > 0.05


class BlurrySampler(GroundTruthSampler):
    """Re-synthesizes a little off (every pixel +12), like an imperfect model."""

    def synthesize(self, layers):
        return [Image.fromarray(np.clip(np.asarray(im).astype(int) + 12, 0, 255).astype(np.uint8))
                for im in super().synthesize(layers)]


def test_cycle_error_is_the_metric_of_the_composite_round_trip(triplets):
    from layerloop.models.metrics import cycle_error

    sampler = BlurrySampler(triplets)
    res = build_judge(JudgeConfig(backend="cycle"), sampler=sampler).score([JudgeItem("a", triplets[2])])[0]
    again = sampler.synthesize(sampler.decompose([triplets[2]["composite"]]))[0]
    assert res.details["cycle_error"] == pytest.approx(cycle_error(triplets[2]["composite"], again), abs=1e-6)
    assert res.details["cycle_error"] > 0.02
    assert res.to_row()["cycle_error"] == res.details["cycle_error"]


def test_cycle_judge_is_deterministic(triplets):
    judge = build_judge(JudgeConfig(backend="cycle"), sampler=GroundTruthSampler(triplets))
    items = [JudgeItem(f"b{i}", spoil(t, i)) for i, t in enumerate(triplets)]
    first, second = judge.score(items), judge.score(items)
    assert [r.scores for r in first] == [r.scores for r in second]

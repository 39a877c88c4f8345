"""Table tests of the pure acceptance rule (thresholds, then the cycle rule, then human review), and of the
base contract around it."""
from __future__ import annotations

import math

import pandas as pd
import pytest
from pydantic import ValidationError

from layerloop.models.judges.acceptance import decide_rows, rule_of
from layerloop.models.judges.base import JudgeResult, results_to_frame, validate_scores
from layerloop.models.judges.config import CRITERIA, JudgeConfig, ThresholdConfig

CFG = ThresholdConfig(logo_clean=0.5, object_clean=0.5, composite_consistent=0.5, realism=0.3, overall=0.6,
                      max_cycle_error=0.2)


def row(sid, lc=0.9, oc=0.9, cc=0.9, re=0.9, ov=0.9, err=None, cyc=None):
    return {"sample_id": sid, "score_logo_clean": lc, "score_object_clean": oc,
            "score_composite_consistent": cc, "score_realism": re, "score_overall": ov,
            "judge_error": err, "cycle_error": cyc}


CASES = [
    (row("all-good"), True, ""),
    (row("at-minimum", lc=0.5, oc=0.5, cc=0.5, re=0.3, ov=0.6), True, ""),
    (row("logo-low", lc=0.49), False, "below threshold: logo_clean 0.490 < 0.500"),
    (row("two-low", oc=0.1, re=0.2), False, "below threshold: object_clean 0.100 < 0.500; realism 0.200 < 0.300"),
    (row("overall-low", ov=0.59), False, "below threshold: overall 0.590 < 0.600"),
    (row("unscored", lc=None, oc=None, cc=None, re=None, ov=None, err="timeout after 3 attempts"),
     False, "unscored: timeout after 3 attempts"),
    (row("nan-no-error", re=math.nan), False, "unscored: missing realism"),
    (row("overall-missing", ov=None), False, "unscored: missing overall"),
    (row("cycle-high", cyc=0.3), False, "cycle_error 0.3000 > 0.2000"),
    (row("cycle-at-limit", cyc=0.2), True, ""),
    (row("no-cycle-error", cyc=None), True, ""),
    # one reason per rejection: the first rule that rejects, thresholds before the cycle rule
    (row("low-and-cycle-high", lc=0.1, cyc=0.3), False, "below threshold: logo_clean 0.100 < 0.500"),
]


@pytest.mark.parametrize("data,accepted,reason", CASES, ids=[c[0]["sample_id"] for c in CASES])
def test_threshold_table(data, accepted, reason):
    out = decide_rows(pd.DataFrame([data]), CFG)
    assert bool(out["accepted"].iloc[0]) is accepted
    assert out["reason"].iloc[0] == reason
    assert rule_of(reason) == (None if accepted else "cycle" if reason.startswith("cycle") else "thresholds")


def test_whole_table_at_once_keeps_order_and_input_untouched():
    df = pd.DataFrame([c[0] for c in CASES])
    before = df.copy()
    out = decide_rows(df, CFG)
    assert list(out["accepted"]) == [c[1] for c in CASES]
    assert list(out["reason"]) == [c[2] for c in CASES]
    pd.testing.assert_frame_equal(df, before)


def test_cycle_rule_is_on_by_default_and_off_when_null():
    df = pd.DataFrame([row("cyc-high", cyc=0.06), row("cyc-none", cyc=None)])
    assert ThresholdConfig().max_cycle_error == 0.05  # the loop's former cycle_error_threshold
    assert list(decide_rows(df, ThresholdConfig())["accepted"]) == [False, True]
    assert list(decide_rows(df, ThresholdConfig(max_cycle_error=None))["accepted"]) == [True, True]


def test_human_review_comes_last_and_wins_both_ways():
    df = pd.DataFrame([row("judge-accepts"), row("judge-rejects", lc=0.1), row("cycle-rejects", cyc=0.9),
                       row("unreviewed", cyc=0.9)])
    df["content_hash"] = ["h0", "h1", "h2", "h3"]
    overrides = pd.DataFrame([
        {"sample_id": "judge-accepts", "content_hash": "", "accepted": False, "reviewer": "ana",
         "reviewed_at": "2026-01-01T00:00:00+00:00", "note": "blurry"},
        {"sample_id": "an-earlier-id", "content_hash": "h2", "accepted": True, "reviewer": "bob",
         "reviewed_at": "2026-01-01T00:00:00+00:00", "note": ""}])
    out = decide_rows(df, CFG, overrides)
    assert list(out["accepted"]) == [False, False, True, False]
    assert out["reason"].tolist() == ["human review (reject) by ana at 2026-01-01T00:00:00+00:00: blurry",
                                      "below threshold: logo_clean 0.100 < 0.500",
                                      "human review (accept) by bob at 2026-01-01T00:00:00+00:00",
                                      "cycle_error 0.9000 > 0.2000"]
    assert [rule_of(r) for r in out["reason"]] == ["review", "thresholds", "review", "cycle"]


def test_missing_column_and_out_of_range_are_errors():
    with pytest.raises(ValueError, match="score_realism"):
        decide_rows(pd.DataFrame([row("x")]).drop(columns=["score_realism"]), CFG)
    with pytest.raises(ValueError, match="outside"):
        decide_rows(pd.DataFrame([row("x", lc=1.5)]), CFG)


def test_results_round_trip_through_frame():
    good = JudgeResult("a", {c: 0.8 for c in CRITERIA}, 0.8, "{}", "oracle", 0.01)
    bad = JudgeResult("b", {c: None for c in CRITERIA}, None, "", "openai", 1.0, error="HTTP 500 x5")
    out = decide_rows(results_to_frame([good, bad]), CFG)
    assert list(out["accepted"]) == [True, False]
    assert out["reason"].iloc[1] == "unscored: HTTP 500 x5"
    assert list(out["judge_backend"]) == ["oracle", "openai"]


def test_config_rejects_unknown_and_bad_values():
    with pytest.raises(ValidationError):
        ThresholdConfig(logo_clen=0.5)
    with pytest.raises(ValidationError):
        ThresholdConfig(overall=1.2)
    with pytest.raises(ValidationError, match="judge.qwen.path"):
        JudgeConfig(backend="qwen")


@pytest.mark.parametrize("bad", [{"logo_clean": 1.01}, {"logo_clean": "0.5"}, {"logo_clean": math.inf},
                                 {"logo_clean": True}, {}])
def test_validate_scores_rejects(bad):
    scores = {c: 0.5 for c in CRITERIA}
    scores.update(bad)
    if not bad:
        scores.pop("realism")
    with pytest.raises(ValueError, match="criterion"):
        validate_scores(scores)

"""Calibration maths (against brute force) and a judge calibrated on synthetic ground truth."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from layerloop.models.judges.calibration import (calibration_report, oracle_labels, precision_recall,
                                                 read_labels, roc_auc, synthetic_calibration_set,
                                                 threshold_for_precision)
from layerloop.models.judges.config import JudgeConfig
from layerloop.models.judges.registry import build_judge
from tests.judges.conftest import GroundTruthSampler


def brute_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random(40), 1)  # many ties
    labels = rng.random(40) < 0.4
    assert roc_auc(scores, labels) == pytest.approx(brute_auc(scores, labels))


def test_auc_edges():
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert roc_auc([None, 0.5], [0, 1]) == 1.0  # unscored ranks below everything
    with pytest.raises(ValueError, match="both"):
        roc_auc([0.1, 0.2], [1, 1])


def test_precision_recall_and_threshold_table():
    scores = [0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, None]
    labels = [1, 1, 0, 1, 1, 0, 0, 1]
    assert precision_recall(scores, labels, 0.65) == (0.75, 0.6, 4)
    assert precision_recall(scores, labels, 0.99) == (1.0, 0.0, 0)
    assert threshold_for_precision(scores, labels, 1.0) == 0.9
    assert threshold_for_precision(scores, labels, 0.75) == 0.6
    assert threshold_for_precision([0.5, 0.6], [0, 0], 0.5) is None
    report = calibration_report(scores, labels, current_threshold=0.65, target_precision=0.75)
    assert report["unscored"] == 1 and report["proposed_threshold"] == 0.6
    assert report["proposed_precision"] == 0.8 and report["proposed_recall"] == 0.8


def test_read_labels(tmp_path):
    good = tmp_path / "labels.csv"
    good.write_text("sample_id,label,note\na,1,\nb,reject,blurry\nc,Yes,\n")
    assert read_labels(good) == {"a": True, "b": False, "c": True}
    for text, match in [("id,label\na,1\n", "sample_id,label"), ("sample_id,label\na,1\na,0\n", "duplicate"),
                        ("sample_id,label\na,maybe\n", "maybe"), ("sample_id,label\n", "no labels")]:
        (tmp_path / "bad.csv").write_text(text)
        with pytest.raises(ValueError, match=match):
            read_labels(tmp_path / "bad.csv")


def test_cycle_judge_calibrated_on_synthetic_truth():
    items = synthetic_calibration_set(24, seed=1)
    labels = oracle_labels(items, JudgeConfig(backend="oracle"), 0.6)
    assert 0 < sum(labels.values()) < len(labels)
    judge = build_judge(JudgeConfig(backend="cycle"), sampler=GroundTruthSampler([it.truth for it in items]))
    results = judge.score(items)
    report = calibration_report([r.overall for r in results], [labels[r.sample_id] for r in results],
                                current_threshold=0.6, target_precision=0.9)
    # a judge that sees a perfect model's cycle should rank good candidates above spoiled ones
    assert report["roc_auc"] > 0.8
    assert report["proposed_threshold"] is not None and report["proposed_precision"] >= 0.9

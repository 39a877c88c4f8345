"""Oracle judge (synthetic world only): scores each panel against the ground-truth triplet.

Used to calibrate the other judges and to test the pipeline with a judge whose answer is known.
Per panel, PSNR against the truth is mapped linearly from `psnr_floor` (score 0) to `psnr_ceiling`
(score 1); realism is the weakest of the three panels (a sample is only as real as its worst panel).
"""
from __future__ import annotations

import time

from .base import Judge, JudgeItem, JudgeResult, item_problem, panels_of
from .imagestats import linear_score, psnr

_PANEL_CRITERION = {"object": "object_clean", "composite": "composite_consistent"}  # any other panel: a logo


class OracleJudge(Judge):
    """Scores from ground truth carried in `JudgeItem.truth` (the true triplet)."""

    backend = "oracle"

    def _score_valid(self, items: list[JudgeItem]) -> list[JudgeResult]:
        return [self._score_one(item) for item in items]

    def _score_one(self, item: JudgeItem) -> JudgeResult:
        start = time.perf_counter()
        if item.truth is None:
            return self.unscored(item.sample_id, "oracle judge needs item.truth (the true triplet)")
        problem = item_problem(JudgeItem(item.sample_id, item.truth))
        if problem:
            return self.unscored(item.sample_id, f"invalid truth: {problem}")
        if item.truth["composite"].size != item.triplet["composite"].size:
            return self.unscored(item.sample_id, "truth and candidate panel sizes differ")
        cfg, names = self.cfg.oracle, panels_of(item.truth)
        db = {p: psnr(item.triplet[p], item.truth[p]) for p in names}
        scores: dict[str, float] = {}
        for p in names:  # several logo layers: logo_clean is the worst of them
            crit, value = _PANEL_CRITERION.get(p, "logo_clean"), linear_score(db[p], cfg.psnr_floor, cfg.psnr_ceiling)
            scores[crit] = min(value, scores.get(crit, 1.0))
        scores["realism"] = min(scores.values())
        details = {f"psnr_{p}": db[p] for p in names}
        return self.result(item.sample_id, scores, raw="", latency_s=time.perf_counter() - start,
                           details=details)

"""The acceptance rule: a pure function of stored scores and `ThresholdConfig`.

Judging writes scores; this decides. Keeping it pure means thresholds can be re-tuned (and a
calibration replayed) on a committed round without calling any model again.

Columns read: `score_<criterion>` for every criterion, `score_overall`, and optionally `judge_error`
(why a row is unscored) and `cycle_error` (only when `max_cycle_error` is set).
"""
from __future__ import annotations

import pandas as pd

from layerloop.models.judges.config import CRITERIA, ThresholdConfig

SCORE_COLUMNS = {c: f"score_{c}" for c in CRITERIA}
OVERALL_COLUMN = "score_overall"
ERROR_COLUMN = "judge_error"
CYCLE_ERROR_COLUMN = "cycle_error"
ACCEPTED_COLUMN = "accepted"
REASON_COLUMN = "reason"


def _missing(value) -> bool:
    # pandas hands back None, NaN or pd.NA for an empty cell depending on the dtype
    return value is None or bool(pd.isna(value))


def _check_range(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r} is outside [0, 1]; judges must normalise their scores")


def decide(scores: dict[str, float | None], overall: float | None, cfg: ThresholdConfig,
           *, error: str | None = None, cycle_error: float | None = None) -> tuple[bool, str]:
    """Decide one row: (accepted, reason). Unscored rows are never accepted."""
    unscored = [c for c in CRITERIA if _missing(scores.get(c))] + (["overall"] if _missing(overall) else [])
    if unscored:
        return False, f"unscored: {error or 'missing ' + ', '.join(unscored)}"
    failing = []
    for crit, minimum in cfg.minimums().items():
        _check_range(f"score_{crit}", scores[crit])
        if scores[crit] < minimum:
            failing.append(f"{crit} {scores[crit]:.3f} < {minimum:.3f}")
    _check_range("score_overall", overall)
    if overall < cfg.overall:
        failing.append(f"overall {overall:.3f} < {cfg.overall:.3f}")
    if cfg.max_cycle_error is not None and not _missing(cycle_error) and cycle_error > cfg.max_cycle_error:
        failing.append(f"cycle_error {cycle_error:.4f} > {cfg.max_cycle_error:.4f}")
    if failing:
        return False, "below threshold: " + "; ".join(failing)
    return True, ""


def _row_value(row, column: str):
    value = row.get(column)
    return None if _missing(value) else value


def apply_thresholds(scores, cfg: ThresholdConfig):
    """Return a copy of `scores` (a DataFrame) with `accepted` (bool) and `reason` (str) columns set."""
    required = [*SCORE_COLUMNS.values(), OVERALL_COLUMN]
    absent = [c for c in required if c not in scores.columns]
    if absent:
        raise ValueError(f"apply_thresholds: missing score column(s) {absent}; have {list(scores.columns)}")
    out = scores.copy()
    decisions = [
        decide({c: _row_value(row, col) for c, col in SCORE_COLUMNS.items()}, _row_value(row, OVERALL_COLUMN),
               cfg, error=_row_value(row, ERROR_COLUMN), cycle_error=_row_value(row, CYCLE_ERROR_COLUMN))
        for row in scores.to_dict("records")
    ]
    out[ACCEPTED_COLUMN] = [bool(a) for a, _ in decisions]
    out[REASON_COLUMN] = [r for _, r in decisions]
    return out

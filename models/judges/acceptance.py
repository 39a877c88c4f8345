"""The acceptance rule, in one place: which rows of a round are accepted, and the one reason for each rejection.

Three rules, in this order; a row rejected by one is not looked at by the next:
1. thresholds — every criterion score and the overall score at or above its minimum; a row the judge
   could not score is rejected ("unscored: ..."), one with low scores "below threshold: ...";
2. cycle      — the cycle error (decompose, then re-synthesize, vs the composite) at most
   `thresholds.max_cycle_error` ("cycle_error E > MAX"); rows without a cycle error pass;
3. review     — a human decision recorded with `layerloop review import` replaces what 1 and 2 decided
   ("human review (accept|reject) by WHO at WHEN[: note]").
`rule_of(reason)` reads the deciding rule back from a stored reason, so a report reads decisions from
the manifest instead of re-deriving them.

Pure functions of stored scores, cycle errors, `ThresholdConfig` and the review table: thresholds can be
re-tuned (and a calibration replayed) on a committed round without calling any model again.
Columns read: `score_<criterion>` for every criterion, `score_overall`, and when present `judge_error`
(why a row is unscored), `cycle_error`, and for overrides `sample_id` / `content_hash`.
"""
from __future__ import annotations

import re

import pandas as pd

from .config import CRITERIA, ThresholdConfig

SCORE_COLUMNS = {c: f"score_{c}" for c in CRITERIA}
OVERALL_COLUMN = "score_overall"
ERROR_COLUMN = "judge_error"
CYCLE_ERROR_COLUMN = "cycle_error"
ACCEPTED_COLUMN = "accepted"
REASON_COLUMN = "reason"

# How each rule's reasons begin: the one place that knows how to tell them apart again.
_PREFIXES = {"review": ("human review",), "cycle": ("cycle_error",), "thresholds": ("unscored:", "below threshold:")}


def _missing(value) -> bool:
    # pandas hands back None, NaN or pd.NA for an empty cell depending on the dtype
    return value is None or bool(pd.isna(value))


def _check_range(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r} is outside [0, 1]; judges must normalise their scores")


def _threshold_rule(scores: dict[str, float | None], overall: float | None, cfg: ThresholdConfig,
                    error: str | None) -> str:
    """Rule 1's reason to reject, or "" when every score reaches its minimum."""
    unscored = [c for c in CRITERIA if _missing(scores.get(c))] + (["overall"] if _missing(overall) else [])
    if unscored:
        return f"unscored: {error or 'missing ' + ', '.join(unscored)}"
    failing = []
    for crit, minimum in cfg.minimums().items():
        _check_range(f"score_{crit}", scores[crit])
        if scores[crit] < minimum:
            failing.append(f"{crit} {scores[crit]:.3f} < {minimum:.3f}")
    _check_range("score_overall", overall)
    if overall < cfg.overall:
        failing.append(f"overall {overall:.3f} < {cfg.overall:.3f}")
    return "below threshold: " + "; ".join(failing) if failing else ""


def _cycle_rule(cycle_error: float | None, cfg: ThresholdConfig) -> str:
    """Rule 2's reason to reject, or "" (no cycle error, no limit, or within it)."""
    if cfg.max_cycle_error is None or _missing(cycle_error) or cycle_error <= cfg.max_cycle_error:
        return ""
    return f"cycle_error {cycle_error:.4f} > {cfg.max_cycle_error:.4f}"


def decide(scores: dict[str, float | None], overall: float | None, cfg: ThresholdConfig,
           *, error: str | None = None, cycle_error: float | None = None) -> tuple[bool, str]:
    """Rules 1 and 2 on one row: (accepted, reason); reason is "" for an accepted row."""
    reason = _threshold_rule(scores, overall, cfg, error) or _cycle_rule(cycle_error, cfg)
    return not reason, reason


def _row_value(row, column: str):
    value = row.get(column)
    return None if _missing(value) else value


def decide_rows(rows, cfg: ThresholdConfig, overrides=None):
    """A copy of `rows` (a DataFrame) with `accepted` and `reason` set by the three rules, in order.

    `overrides` is the review table (`tasks.review.load_overrides`); None or empty = no human decisions.
    """
    required = [*SCORE_COLUMNS.values(), OVERALL_COLUMN]
    absent = [c for c in required if c not in rows.columns]
    if absent:
        raise ValueError(f"decide_rows: missing score column(s) {absent}; have {list(rows.columns)}")
    out = rows.copy()
    decisions = [
        decide({c: _row_value(row, col) for c, col in SCORE_COLUMNS.items()}, _row_value(row, OVERALL_COLUMN),
               cfg, error=_row_value(row, ERROR_COLUMN), cycle_error=_row_value(row, CYCLE_ERROR_COLUMN))
        for row in rows.to_dict("records")
    ]
    out[ACCEPTED_COLUMN] = [bool(a) for a, _ in decisions]
    out[REASON_COLUMN] = [r for _, r in decisions]
    return out if overrides is None else apply_overrides(out, overrides)


def _override_reason(o: dict) -> str:
    verdict = "accept" if o["accepted"] else "reject"
    note = f": {o['note']}" if o.get("note") else ""
    return f"human review ({verdict}) by {o['reviewer']} at {o['reviewed_at']}{note}"


def apply_overrides(rows, overrides):
    """Rule 3: a copy of `rows` where a human decision (by sample_id, else content_hash) replaces accepted/reason."""
    out = rows.copy()
    if len(overrides) == 0 or len(out) == 0:
        return out
    by_id = {o["sample_id"]: o for o in overrides.to_dict("records")}
    by_hash = {o["content_hash"]: o for o in overrides.to_dict("records") if o.get("content_hash")}
    hashes = out["content_hash"] if "content_hash" in out.columns else [None] * len(out)
    for idx, sid, chash in zip(out.index, out["sample_id"], hashes):
        o = by_id.get(sid) or by_hash.get(chash)
        if o is not None:
            out.at[idx, ACCEPTED_COLUMN] = bool(o["accepted"])
            out.at[idx, REASON_COLUMN] = _override_reason(o)
    return out


_MEASURED = re.compile(r"(\w+) -?\d+(?:\.\d+)?(?:e-?\d+)? ([<>])")


def reason_kind(reason: str | None) -> str:
    """A stored reason without its measured values, so rejections can be counted by cause:
    "below threshold: overall 0.412 < 0.500" -> "below threshold: overall < 0.500"."""
    return _MEASURED.sub(r"\1 \2", "" if _missing(reason) else str(reason))


def rule_of(reason: str | None) -> str | None:
    """The rule a stored reason names (thresholds | cycle | review), or None when no rule spoke (accepted)."""
    text = "" if _missing(reason) else str(reason)
    return next((rule for rule, starts in _PREFIXES.items() if text.startswith(starts)), None)

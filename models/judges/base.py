"""The judge contract: items in, per-criterion scores in [0, 1] out, never a decision.

`Judge.score(items)` validates every item first: an invalid item gets an unscored result naming the
problem (so the pipeline quarantines or rejects it and goes on) while the valid ones are scored by the
backend. The overall score is combined here, once, the same way for every backend. Backends are
built by name in registry.py (`build_judge`); this module imports none of them.
`decide_rows` (acceptance.py) turns stored scores into accepted/reason afterwards.
"""
from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from typing import Any

from .config import CRITERIA, JudgeConfig

PANELS = ("composite", "logo", "object")
INVALID_ITEM = "invalid item"  # the kind of an item's own problem: not the judge's failure


class JudgeUnavailable(RuntimeError):
    """The judge cannot do its job: an answer no retry can fix (bad key, unknown model, unknown host), or
    too many candidates left unscored. The message names the endpoint (never the key); the round stops
    uncommitted, and a rerun once the judge answers resumes at the judge stage."""


def error_kind(error: str | None) -> str | None:
    """The kind of a stored judge error, for counts: `HTTP 500`, `timeout`, `malformed JSON`, `invalid item`..."""
    if error is None:
        return None
    text = str(error)
    cuts = [i for i in (text.find(":"), text.find(" (")) if i > 0]
    return (text[:min(cuts)] if cuts else text).strip()[:40] or "unknown"


@dataclasses.dataclass
class JudgeItem:
    """One candidate: its panels (PIL RGB images keyed by panel name), prompt, and optional ground truth."""

    sample_id: str
    triplet: dict[str, Any]
    prompt: str = ""
    truth: dict[str, Any] | None = None  # the true triplet {panel: PIL image}; synthetic world only


@dataclasses.dataclass
class JudgeResult:
    """Scores of one item. `error` set means unscored: scores/overall are None and it is never accepted."""

    sample_id: str
    scores: dict[str, float | None]
    overall: float | None
    raw: str
    backend: str
    latency_s: float
    error: str | None = None
    details: dict[str, float] = dataclasses.field(default_factory=dict)  # e.g. per-layer cycle errors, attempts

    @property
    def scored(self) -> bool:
        return self.error is None and self.overall is not None

    def to_row(self) -> dict[str, Any]:
        """Flat row in manifest column names (score_<criterion>, score_overall, judge_*)."""
        row = {"sample_id": self.sample_id, **{f"score_{c}": self.scores.get(c) for c in CRITERIA}}
        row.update(score_overall=self.overall, judge_backend=self.backend, judge_error=self.error,
                   judge_latency_s=self.latency_s, judge_raw=self.raw)
        if "cycle_error" in self.details:
            row["cycle_error"] = self.details["cycle_error"]
        return row


def combine(scores: dict[str, float], how: str) -> float:
    """Overall score from the criteria: their mean or their minimum."""
    values = [scores[c] for c in CRITERIA]
    return min(values) if how == "min" else sum(values) / len(values)


def validate_scores(scores: dict[str, Any]) -> dict[str, float]:
    """Every criterion present, finite and in [0, 1]; raises ValueError naming the first bad one."""
    out = {}
    for crit in CRITERIA:
        value = scores.get(crit)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"criterion {crit!r}: expected a number, got {value!r}")
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"criterion {crit!r}: {value!r} is outside [0, 1]")
        out[crit] = float(value)
    return out


BACKGROUND = "object"  # the layer the others are printed on; every other non-composite panel is a logo layer


def panels_of(triplet: dict) -> tuple[str, ...]:
    """The panels an item is judged on: PANELS, or with several logo layers (the K=3 schema logo_1, logo_2,
    object) the composite, its logo layers in order, then the object."""
    logos = [name for name in triplet if name not in ("composite", BACKGROUND)]
    return PANELS if logos in ([], ["logo"]) else ("composite", *logos, BACKGROUND)


def logo_layers(triplet: dict) -> list[str]:
    """The item's logo layers: ["logo"], or e.g. ["logo_1", "logo_2"]."""
    return [name for name in panels_of(triplet) if name not in ("composite", BACKGROUND)]


def item_problem(item: JudgeItem) -> str | None:
    """Why an item cannot be judged (missing panel, not an image, sizes differ), or None when it can."""
    if not isinstance(item.triplet, dict):
        return "triplet is not a dict of panels"
    names = panels_of(item.triplet)
    missing = [p for p in names if p not in item.triplet]
    if missing:
        return f"missing panel(s) {missing}"
    sizes = set()
    for name in names:
        image = item.triplet[name]
        if not hasattr(image, "size") or not hasattr(image, "convert"):
            return f"panel {name!r} is not a PIL image"
        sizes.add(tuple(image.size))
    if len(sizes) != 1:
        return f"panel sizes differ: {sorted(sizes)}"
    return None


class Judge(ABC):
    """A scoring backend. Subclasses implement `_score_valid` on already validated items."""

    backend = "base"

    def __init__(self, cfg: JudgeConfig):
        self.cfg = cfg

    def __enter__(self) -> "Judge":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release what the backend holds (HTTP client, model memory); oracle and cycle hold nothing."""

    def score(self, items: list[JudgeItem]) -> list[JudgeResult]:
        """Score a batch; results come back in input order, one per item."""
        ids = [item.sample_id for item in items]
        if len(set(ids)) != len(ids):
            raise ValueError("judge.score: sample ids in one batch must be unique")
        problems = {item.sample_id: item_problem(item) for item in items}
        valid = [item for item in items if problems[item.sample_id] is None]
        scored = {r.sample_id: r for r in (self._score_valid(valid) if valid else [])}
        return [scored[i] if problems[i] is None else self.unscored(i, f"{INVALID_ITEM}: {problems[i]}")
                for i in ids]

    @abstractmethod
    def _score_valid(self, items: list[JudgeItem]) -> list[JudgeResult]:
        ...

    def result(self, sample_id: str, scores: dict[str, Any], *, raw: str = "", latency_s: float = 0.0,
               details: dict[str, float] | None = None) -> JudgeResult:
        """A scored result; scores are checked and the overall combined per config."""
        checked = validate_scores(scores)
        return JudgeResult(sample_id, checked, combine(checked, self.cfg.overall), raw, self.backend,
                           latency_s, None, dict(details or {}))

    def unscored(self, sample_id: str, error: str, *, raw: str = "", latency_s: float = 0.0,
                 details: dict[str, float] | None = None) -> JudgeResult:
        """An unscored result: no scores, the error says why."""
        return JudgeResult(sample_id, {c: None for c in CRITERIA}, None, raw, self.backend, latency_s,
                           error, dict(details or {}))


def results_to_frame(results: list[JudgeResult]):
    """Results as a DataFrame in manifest column names, ready for `acceptance.decide_rows`."""
    import pandas as pd

    columns = ["sample_id", *(f"score_{c}" for c in CRITERIA), "score_overall", "judge_backend",
               "judge_error", "judge_latency_s", "judge_raw"]
    frame = pd.DataFrame([r.to_row() for r in results])
    return frame if results else pd.DataFrame(columns=columns)


__all__ = ["CRITERIA", "JudgeItem", "JudgeResult", "Judge", "JudgeUnavailable",
           "results_to_frame", "combine", "validate_scores", "error_kind"]

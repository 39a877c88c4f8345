"""Judging: score one unit's triplets with the configured judge. Scores are stored; the acceptance rule
(models/judges/acceptance.py) decides at commit, so thresholds can change without re-judging.

A judge outage must fail the round, not reject its data: when more than `judge.max_unscored_fraction` of
the round's candidates are unscored (server errors, bad answers; an item's own problem does not count),
the judge stage stops as soon as that is certain and the commit refuses (`JudgeUnavailable`, naming the
endpoint and the errors by kind). Parts keep what was scored; a rerun judges only the unscored rows again.
"""
from __future__ import annotations

from typing import Any

from ...models.judges.base import INVALID_ITEM, JudgeItem, JudgeUnavailable, error_kind, results_to_frame
from ...models.judges.registry import NEEDS_SAMPLER, build_judge
from ..config import PipelineConfig
from .handles import RoundWork, Unit, count_build, timed
from .panels import decode

PART = "judge"
_JUDGES: dict[tuple, Any] = {}


def judge_for(cfg: PipelineConfig, work: RoundWork):
    """One judge per process and judge config (and adapter, for the judges that decompose with it): a VLM
    judge loads its weights once, not per unit nor per round."""
    # the sampler (re)loads adapter r-1 into the shared backbone that a cached cycle judge uses
    smp = work.sampler() if cfg.judge.backend in NEEDS_SAMPLER else None
    key = (cfg.judge.model_dump_json(), cfg.sample.model_dump_json(), smp and smp.adapter_dir,
           smp and id(smp.backbone))
    if key not in _JUDGES:
        _JUDGES.clear()
        _JUDGES[key] = build_judge(cfg.judge, sampler=smp)
        count_build("judges")
    return _JUDGES[key]


def judge(cfg: PipelineConfig, round_: int, unit: Unit) -> dict:
    """Score one unit's triplets with the configured judge (with adapter r-1 for the cycle judge).

    A unit judged before keeps its scored rows; only its unscored ones are judged again.
    """
    from ...storage import schema as S

    with timed({"unit": unit.name}) as out:
        work = RoundWork(cfg, round_)
        before = work.writer.get_part(PART, unit.name)
        again = None if before is None else set(before.loc[_unscored(before), S.SAMPLE_ID])
        if again is not None and not again:
            out.update(skipped=True)
            return out
        rows = work.unit_rows(unit)
        if again is not None:
            rows = rows[rows[S.SAMPLE_ID].isin(again)]
        items = [JudgeItem(sample_id=row[S.SAMPLE_ID], triplet=decode(panels), prompt=str(row[S.PROMPT] or ""))
                 for row, panels in work.writer.load_panels(rows)]
        frame = results_to_frame(judge_for(cfg, work).score(items) if items else [])
        frame = frame if before is None else _replace(before, frame)
        work.writer.put_part(PART, unit.name, frame)
        out.update(skipped=False, n=len(items), rejudged=before is not None,
                   failed=int(_unscored(frame).sum()) if len(frame) else 0)
        if out["failed"]:
            stop_if_certain(cfg, work)
    return out


def _unscored(frame):
    """Rows the judge failed to score; an item's own problem ("invalid item: ...") is not the judge's."""
    scoreless = frame["score_overall"].isna()
    if "judge_error" not in frame:
        return scoreless
    return scoreless & ~frame["judge_error"].fillna("").astype(str).str.startswith(INVALID_ITEM)


def _replace(before, fresh):
    """`before` with the rows judged again replaced by their fresh results, in the unit's order."""
    import pandas as pd

    if not len(fresh):
        return before
    kept = before[~before["sample_id"].isin(fresh["sample_id"])]
    order = {sid: i for i, sid in enumerate(before["sample_id"])}
    merged = pd.concat([kept, fresh], ignore_index=True)
    return merged.sort_values("sample_id", key=lambda ids: ids.map(order), kind="stable").reset_index(drop=True)


def stop_if_certain(cfg: PipelineConfig, work: RoundWork) -> None:
    """Stop the judge stage once the round's unscored candidates already pass the allowed share of all
    candidates the round will have: judging the rest cannot save it (a server that is down fails at its
    first unit instead of after every retry of every item)."""
    parts = [work.writer.get_part(PART, u) for u in work.writer.units()]
    errors = [e for p in parts if p is not None and len(p) for e in p.loc[_unscored(p), "judge_error"]]
    # generated candidates + the size of the round's pool slice (consistency.round_pool's length; not
    # imported: consistency imports this module)
    expected = cfg.loop.candidates_per_round + min(cfg.loop.pool_per_round, len(work.store.read_pool()))
    check_share(cfg, work.round, errors, expected, stage="judging")


def check_unscored(cfg: PipelineConfig, round_: int, rows) -> None:
    """Before commit: JudgeUnavailable when too many of the round's rows are unscored (nothing is committed)."""
    if len(rows) and "score_overall" in rows:
        errors = list(rows.loc[_unscored(rows), "judge_error"]) if "judge_error" in rows else []
        check_share(cfg, round_, errors, len(rows), stage="commit")


def check_share(cfg: PipelineConfig, round_: int, errors: list, total: int, *, stage: str) -> None:
    """JudgeUnavailable naming the endpoint and the errors by kind when len(errors) / total passes the limit."""
    from collections import Counter


    limit = cfg.judge.max_unscored_fraction
    if not total or len(errors) <= limit * total:
        return
    kinds = Counter(error_kind(e) if isinstance(e, str) else "not judged" for e in errors)
    counts = ", ".join(f"{kind} x{n}" for kind, n in kinds.most_common())
    share = f"{len(errors)} of {total} candidates" if stage == "commit" else \
        f"already {len(errors)} of the {total} candidates it will have"
    raise JudgeUnavailable(
        f"round {round_} is not committed: {share} are unscored ({len(errors) / total:.0%}), more than "
        f"judge.max_unscored_fraction {limit:g} allows. Judge: {cfg.judge.endpoint()}; errors by kind: {counts}. "
        "Rerun `layerloop run` once the judge answers: finished units are reused and only the unscored "
        "candidates are judged again.")

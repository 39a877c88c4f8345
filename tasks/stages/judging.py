"""Judging: score one unit's triplets with the configured judge. Scores are stored; the acceptance rule
(models/judges/acceptance.py) decides at commit, so thresholds can change without re-judging."""
from __future__ import annotations

from typing import Any

from layerloop.tasks.config import PipelineConfig
from layerloop.tasks.stages.handles import RoundWork, Unit, count_build, timed
from layerloop.tasks.stages.panels import decode

PART = "judge"
_JUDGES: dict[tuple, Any] = {}


def judge_for(cfg: PipelineConfig, smp):
    """One judge per process, judge config and adapter: a VLM judge loads its weights once, not per unit."""
    from layerloop.models.judges.registry import build_judge

    key = (cfg.judge.model_dump_json(), cfg.sample.model_dump_json(), smp.adapter_dir, id(smp.backbone))
    if key not in _JUDGES:
        _JUDGES.clear()
        _JUDGES[key] = build_judge(cfg.judge, sampler=smp)
        count_build("judges")
    return _JUDGES[key]


def judge(cfg: PipelineConfig, round_: int, unit: Unit) -> dict:
    """Score one unit's triplets with the configured judge (with adapter r-1 for the cycle judge)."""
    from layerloop.models.judges.base import JudgeItem, results_to_frame
    from layerloop.storage import schema as S

    with timed({"unit": unit.name}) as out:
        work = RoundWork(cfg, round_)
        if work.already_done(unit, out, part=PART):
            return out
        items = [JudgeItem(sample_id=row[S.SAMPLE_ID], triplet=decode(panels), prompt=str(row[S.PROMPT] or ""))
                 for row, panels in work.writer.load_panels(work.unit_rows(unit))]
        # the sampler (re)loads adapter r-1 into the shared backbone that a cached judge uses
        frame = results_to_frame(judge_for(cfg, work.sampler()).score(items) if items else [])
        work.writer.put_part(PART, unit.name, frame)
        out.update(skipped=False, n=len(items), failed=int(frame["judge_error"].notna().sum()) if len(frame) else 0)
    return out

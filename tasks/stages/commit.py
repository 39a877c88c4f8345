"""Committing a round: join the stage parts into its rows, decide each row, and publish the round whole.

The decision is models/judges/acceptance.py's (thresholds, then the cycle rule, then human review from
`layerloop review import`); the store's commit is put-if-absent, so a committed round is never rewritten.
"""
from __future__ import annotations

from ...models.prompts import prompt_hash
from ..config import PipelineConfig
from . import consistency, judging
from .handles import RoundWork, adapter_id, counts, generator_round, open_store, timed
from .health import loop_health
from .review import load_overrides


def merge_parts(writer, rows):
    """Round rows with judge scores and generated candidates' cycle errors joined in by sample id."""
    import pandas as pd

    from ...models.judges.acceptance import ERROR_COLUMN
    from ...storage import schema as S

    rows = rows.copy()
    for stage, keep in ((judging.PART, [*S.SCORE_COLUMNS, S.JUDGE_BACKEND, ERROR_COLUMN]),
                        (consistency.PART, [S.CYCLE_ERROR])):
        parts = [writer.get_part(stage, u) for u in sorted(rows[S.UNIT].unique())]
        parts = [p for p in parts if p is not None and len(p)]
        if not parts:
            continue
        part = pd.concat(parts, ignore_index=True).set_index(S.SAMPLE_ID)
        part = part[[c for c in keep if c in part.columns]]
        for col in part.columns:
            fill = rows[S.SAMPLE_ID].map(part[col])
            rows[col] = fill.where(fill.notna(), rows[col]) if col in rows.columns else fill
    return rows


def round_info(cfg: PipelineConfig, round_: int, *, trained: dict, measured: dict, control: dict | None,
               pool_used: int, timings: dict) -> dict:
    """What round.json records beside lineage and counts: how adapter r-1 measured, whether it was promoted
    (and so which adapter made the round), the control's measurements, the stage timings."""
    return {"timings": timings, "train": trained.get("metrics", {}), "heldout": measured["heldout"],
            "validation": measured["validation"], "promotion": measured["promotion"],
            "heldout_adapter": adapter_id(round_ - 1),
            "generator": adapter_id(generator_round(open_store(cfg), round_)),
            "control": {k: control[k] for k in ("heldout", "validation")} if control else None,
            "candidates": cfg.loop.candidates_per_round, "pool_used": pool_used}


def commit_round(cfg: PipelineConfig, round_: int, info: dict) -> dict:
    """Decide and commit round r; a committed round is returned unchanged."""
    from ...models.judges.acceptance import ERROR_COLUMN, decide_rows

    with timed({"round": round_}) as out:
        work = RoundWork(cfg, round_)
        if round_ in work.store.committed_rounds():
            out.update(skipped=True, **counts(work.store.round_info(round_)))
            return out
        rows = merge_parts(work.writer, work.writer.rows())
        judging.check_unscored(cfg, round_, rows)  # a judge outage fails the round instead of rejecting its data
        rows = decide_rows(rows, cfg.thresholds, load_overrides(work.store))

        health = loop_health(cfg, work.store, work.writer, rows)
        info = {**info, "prompt_set_sha256": prompt_hash(cfg.loop.prompt_set()), **({"health": health} if health else {})}
        result = work.writer.commit(rows.drop(columns=[ERROR_COLUMN], errors="ignore"), info=info)
        out.update(skipped=False, **counts(result))
    return out

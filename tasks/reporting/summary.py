"""What a committed round reports: its HTML/JSON report (tasks/reporting/report.py) and its row of the
selection-rate table."""
from __future__ import annotations

from ...models.judges.config import CRITERIA
from ..config import PipelineConfig
from ..stages.handles import open_store, timed


def report(cfg: PipelineConfig, round_: int) -> dict:
    """HTML/JSON report of a committed round; returns the written paths."""
    from .report import build_report

    with timed({"round": round_}) as out:
        out["paths"] = dict(build_report(open_store(cfg), round_))
    return out


def round_summary(store, round_: int) -> dict:
    """One row of the `selection-rate` table for a committed round."""
    from ...storage import schema as S

    rows = store.read(round_, "all")
    cand = rows[rows[S.SOURCE] != "seed"]
    acc = rows[rows[S.ACCEPTED].astype(bool)]
    info = (store.round_info(round_).get("info") or {})
    row = {"round": round_, "candidates": int(len(cand)), "accepted": int(len(acc)),
           "selection_rate": round(float(cand[S.ACCEPTED].mean()), 4) if len(cand) else None,
           "cycle_kept": int((acc[S.SOURCE] == "cycle").sum()),
           "dataset_size": int(len(store.training_view(up_to=round_)))}
    for c in CRITERIA:
        col = cand[f"score_{c}"].dropna()
        row[f"mean_{c}"] = round(float(col.mean()), 4) if len(col) else None
    row.update(_measured("heldout", info.get("heldout")))
    row.update(_measured("validation", info.get("validation")))
    control = info.get("control") or {}
    row.update(_measured("control_heldout", control.get("heldout")))
    row.update(_measured("control_validation", control.get("validation")))
    truth = info.get("health") or {}
    if truth:
        for part in ("accepted", "rejected"):
            row[f"true_psnr_object_{part}"] = (truth.get(part) or {}).get("psnr_object")
        row.update(judge_precision=truth.get("precision"), judge_recall=truth.get("recall"),
                   judge_precision_at_k=truth.get("precision_at_k"))
    if info.get("promotion"):
        row["promoted"] = bool(info["promotion"].get("promoted"))
        row["generator"] = info.get("generator")
    return row


def _measured(prefix: str, metrics: dict | None) -> dict:
    """PSNR and logo-shape IoU means (overall and per slice) of one adapter, as `<prefix>_<metric>` columns."""
    return {f"{prefix}_{k}": round(float(v), 3) for k, v in (metrics or {}).items()
            if k.startswith(("psnr_", "iou_")) and v is not None}


def selection_table(cfg: PipelineConfig) -> list[dict]:
    """`selection-rate` rows for every committed round, oldest first."""
    store = open_store(cfg)
    return [round_summary(store, r) for r in store.committed_rounds()]

"""Loop health in the synthetic world: how good were the candidates a round accepted, by the hidden truth?

Every synthetic pool composite was rendered from a seed kept in its meta, so its true layers can be
rendered again. For a round's pool candidates this measures the true per-layer quality of accepted vs
rejected ones, and the judge's precision/recall against an oracle (the oracle judge scoring the same
candidates against the truth, decided by the same thresholds). Real data has no truth: then there is
no health block and the validation split (tasks/stages/adapter.py) is what tells a round's worth.
"""
from __future__ import annotations

import json

from ...models.evaluation import score_layers
from ...models.judges.base import JudgeItem, results_to_frame
from ...models.judges.registry import build_judge
from ...models.synthetic import render_triplet
from .panels import decode


def pool_truths(pool_rows) -> dict:
    """{pool sample id: true triplet} for pool items whose meta says how they were rendered."""
    from ...storage import schema as S

    out = {}
    for row in pool_rows.to_dict("records"):
        meta = (json.loads(row[S.EXTRA_JSON] or "{}").get("meta") or {})
        if "seed" in meta and "size" in meta:  # big render seeds may be stored as strings
            out[row[S.SAMPLE_ID]] = render_triplet(int(meta["seed"]), int(meta["size"]), int(meta.get("logos", 1)))[0]
    return out


def candidate_truths(store, rows) -> dict:
    """{candidate sample id: true triplet of the pool item it was decomposed from} for cycle candidates."""
    from ...storage import schema as S

    pool_id = {r[S.SAMPLE_ID]: json.loads(r[S.EXTRA_JSON] or "{}").get("pool_id") for r in rows.to_dict("records")}
    pool = store.read_pool()
    truths = pool_truths(pool[pool[S.SAMPLE_ID].isin(set(pool_id.values()))])  # render only the round's items
    return {sid: truths[pid] for sid, pid in pool_id.items() if pid in truths}


def candidate_quality(candidate: dict, truth: dict) -> dict:
    """True PSNR of every layer and the shape IoU of every layer but the background."""
    layers = {k: v for k, v in truth.items() if k != "composite"}
    return {k: v for k, v in score_layers(layers, candidate).items() if not k.startswith("ssim_")}


def loop_health(cfg, store, writer, rows) -> dict | None:
    """Accepted-vs-rejected true quality and judge precision/recall of a round's decided pool candidates."""
    from ...storage import schema as S

    cand = rows[rows[S.SOURCE] == "cycle"]
    truths = candidate_truths(store, cand)
    items = [(row, decode(panels), truths[row[S.SAMPLE_ID]])
             for row, panels in writer.load_panels(cand) if row[S.SAMPLE_ID] in truths]
    if not items:
        return None
    quality = [candidate_quality({k: v for k, v in c.items() if k != "composite"}, t) for _, c, t in items]
    judged = [bool(row[S.ACCEPTED]) for row, _, _ in items]
    oracle = oracle_accepts(cfg, [(row[S.SAMPLE_ID], c, t) for row, c, t in items])
    return {"n": len(items), "accepted": _means([q for q, a in zip(quality, judged) if a]),
            "rejected": _means([q for q, a in zip(quality, judged) if not a]),
            **precision_recall(judged, oracle),
            "precision_at_k": precision_at_k(judged, [q.get("psnr_object") for q in quality]),
            "rank_corr": _rank_corr([row[S.SCORE_OVERALL] for row, _, _ in items], quality)}


def oracle_accepts(cfg, items: list[tuple]) -> list[bool]:
    """What the oracle judge (scores from the truth), under the run's thresholds, would have accepted."""
    from ...models.judges.acceptance import decide_rows

    oracle = build_judge(cfg.judge.model_copy(update={"backend": "oracle"}))
    frame = results_to_frame(oracle.score([JudgeItem(sid, c, truth=t) for sid, c, t in items]))
    no_cycle_rule = cfg.thresholds.model_copy(update={"max_cycle_error": None})  # the truth needs no proxy
    return [bool(a) for a in decide_rows(frame, no_cycle_rule)["accepted"]]


def precision_recall(judged: list[bool], oracle: list[bool]) -> dict:
    """Judge vs oracle: precision (of what the judge kept, the share the oracle keeps) and recall."""
    both = sum(j and o for j, o in zip(judged, oracle))
    # with nothing the oracle keeps, precision is 0 by construction and says nothing about the judge
    return {"oracle_accepted": sum(oracle), "judge_accepted": sum(judged),
            "precision": round(both / sum(judged), 4) if any(judged) and any(oracle) else None,
            "recall": round(both / sum(oracle), 4) if any(oracle) else None}


def precision_at_k(judged: list[bool], truth: list[float | None]) -> float | None:
    """Of the k candidates the judge kept, the share that are among the k truly best (by true object PSNR):
    a threshold-free precision, meaningful also when the oracle's fixed thresholds keep nothing."""
    k = sum(judged)
    if not k or any(t is None for t in truth):
        return None
    best = set(sorted(range(len(truth)), key=lambda i: truth[i], reverse=True)[:k])
    return round(sum(1 for i, j in enumerate(judged) if j and i in best) / k, 4)


def _rank_corr(scores: list, quality: list[dict]) -> dict:
    """Spearman correlation of the judge's overall score with each true metric: does it rank well at all,
    whatever the thresholds?"""
    import pandas as pd

    frame = pd.DataFrame(quality).assign(score=pd.to_numeric(pd.Series(scores), errors="coerce"))
    if frame["score"].notna().sum() < 3:
        return {}
    corr = frame.corr(method="spearman")["score"].drop("score")
    return {k: round(float(v), 3) for k, v in corr.items() if v == v}


def _means(rows: list[dict]) -> dict:
    if not rows:
        return {"n": 0}
    return {"n": len(rows), **{k: round(sum(r[k] for r in rows) / len(rows), 3) for k in rows[0]}}

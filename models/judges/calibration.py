"""How well a judge's scores agree with truth, and which threshold reaches a target precision (numpy only).

Truth is either human decisions (CSV of sample_id,label) or the synthetic world's ground truth: a
labelled set made from held-out synthetic triplets, some spoiled on purpose, labelled by the oracle
judge (`synthetic_calibration_set`). Unscored samples count as rejected at every threshold (score -inf),
exactly as the acceptance rule (acceptance.py) treats them.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from ..synthetic import make_split
from .base import JudgeItem
from .oracle import OracleJudge

TRUE_WORDS = {"1", "true", "yes", "y", "accept", "accepted", "good", "pass"}
FALSE_WORDS = {"0", "false", "no", "n", "reject", "rejected", "bad", "fail"}


def _arrays(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.array([-np.inf if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in scores])
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape:
        raise ValueError(f"{len(s)} scores but {len(y)} labels")
    return s, y


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve = P(score of a random positive > a random negative), ties count half."""
    s, y = _arrays(scores, labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC-AUC needs both positive and negative labels")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties (Mann-Whitney U)
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def precision_recall(scores, labels, threshold: float) -> tuple[float, float, int]:
    """(precision, recall, accepted count) when accepting score >= threshold; precision 1.0 if none accepted."""
    s, y = _arrays(scores, labels)
    pred = s >= threshold
    tp = int((pred & y).sum())
    precision = tp / int(pred.sum()) if pred.any() else 1.0
    recall = tp / int(y.sum()) if y.any() else 0.0
    return float(precision), float(recall), int(pred.sum())


def threshold_for_precision(scores, labels, target: float) -> float | None:
    """The lowest threshold whose precision >= target (so the most recall); None when unreachable."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target precision must be in (0, 1]; got {target}")
    s, _ = _arrays(scores, labels)
    for t in sorted({float(v) for v in s if np.isfinite(v)}):
        precision, _, accepted = precision_recall(scores, labels, t)
        if accepted and precision >= target:
            return t
    return None


def calibration_report(scores, labels, *, current_threshold: float, target_precision: float) -> dict:
    """Everything `layerloop calibrate` prints: counts, AUC, P/R now, the proposed threshold and its P/R."""
    s, y = _arrays(scores, labels)
    p_now, r_now, _ = precision_recall(s, y, current_threshold)
    proposed = threshold_for_precision(s, y, target_precision)
    report = {"n": int(len(s)), "positives": int(y.sum()), "unscored": int((~np.isfinite(s)).sum()),
              "roc_auc": roc_auc(s, y), "current_threshold": current_threshold,
              "precision": p_now, "recall": r_now, "target_precision": target_precision,
              "proposed_threshold": proposed}
    if proposed is not None:
        report["proposed_precision"], report["proposed_recall"], _ = precision_recall(s, y, proposed)
    return report


def _parse_label(value: str, where: str) -> bool:
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"{where}: label {value!r} is not one of {sorted(TRUE_WORDS | FALSE_WORDS)}")


def read_labels(path: str | Path) -> dict[str, bool]:
    """CSV with header sample_id,label -> {sample_id: bool}; duplicate or unknown labels are errors."""
    out: dict[str, bool] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"sample_id", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: needs a header with columns sample_id,label; got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            sid = (row["sample_id"] or "").strip()
            if not sid or sid in out:
                raise ValueError(f"{path}:{line}: empty or duplicate sample_id {sid!r}")
            out[sid] = _parse_label(row["label"] or "", f"{path}:{line}")
    if not out:
        raise ValueError(f"{path}: no labels")
    return out


def _spoil(triplet: dict, rng: np.random.Generator) -> dict:
    """A damaged copy: logo residue on the object, clutter behind the logo, or a shifted composite."""
    from PIL import Image, ImageChops

    out, severity = dict(triplet), float(rng.uniform(0.15, 1.0))
    kind = rng.integers(3)
    if kind == 0:
        out["object"] = Image.blend(triplet["object"], triplet["composite"], severity)
    elif kind == 1:
        noise = rng.integers(0, 256, size=(*triplet["logo"].size[::-1], 3), dtype=np.uint8)
        out["logo"] = Image.blend(triplet["logo"], Image.fromarray(noise), severity * 0.6)
    else:
        shift = max(1, int(round(severity * triplet["composite"].size[0] / 6)))
        out["composite"] = ImageChops.offset(triplet["composite"], shift, shift // 2)
    return out


def synthetic_calibration_set(n: int, *, size: int = 32, seed: int = 0, spoil_fraction: float = 0.5):
    """`n` JudgeItems from the held-out synthetic split, a share of them spoiled; truth = the clean triplet."""

    rng = np.random.default_rng(seed)
    items = []
    for sid, triplet, meta in make_split("test", n, size, seed):
        candidate = _spoil(triplet, rng) if rng.random() < spoil_fraction else dict(triplet)
        items.append(JudgeItem(sid, candidate, prompt=str(meta.get("caption", "")), truth=triplet))
    return items


def oracle_labels(items, cfg, label_threshold: float) -> dict[str, bool]:
    """Ground-truth labels: the oracle judge's overall score >= label_threshold."""
    return {r.sample_id: bool(r.overall is not None and r.overall >= label_threshold)
            for r in OracleJudge(cfg).score(items)}

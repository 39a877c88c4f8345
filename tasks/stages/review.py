"""Human spot-checks: export a round's borderline and random samples for review, import the decisions.

Export writes `review.html` (thumbnails as data URIs, scores, the judge's decision and reason) and
`review.csv` (one row per sample with empty `decision`, `reviewer`, `note` columns to fill in).
Import reads that CSV back and records each filled decision, with reviewer and time, as a new
Parquet file under `<store>/reviews/` (never touching a committed round). The decisions count twice:
`reviewed_training_view` applies them to the committed rounds when the next adapter's training data is
read (a reviewed sample enters or leaves it), and the commit stage hands `load_overrides(store)` to the
acceptance rule (models/judges/acceptance.py), whose last rule lets a human decision win over the judge for
new rows with the same content_hash (the same pixels coming back in a later round).
"""
from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import uuid
from pathlib import Path

from ...storage.fsutil import read_table, table_bytes, write_bytes
from .panels import DERIVED_PREFIXES, for_display

OVERRIDE_COLUMNS = ["sample_id", "content_hash", "accepted", "reviewer", "reviewed_at", "note", "source_round"]
REVIEW_CSV_COLUMNS = ["sample_id", "content_hash", "round", "selection", "judge_accepted", "score_overall",
                      "reason", "decision", "reviewer", "note"]
ACCEPT_WORDS = {"accept", "accepted", "yes", "y", "1", "true", "keep"}
REJECT_WORDS = {"reject", "rejected", "no", "n", "0", "false", "drop"}
REVIEWS_DIR = "reviews"


def select_for_review(rows, *, overall_threshold: float, n_borderline: int = 20, n_random: int = 20,
                      seed: int = 0):
    """The rows nearest the overall threshold ('borderline') plus a random sample of the others ('random')."""
    import pandas as pd

    if n_borderline < 0 or n_random < 0:
        raise ValueError("n_borderline and n_random must be >= 0")
    scored = rows[rows["score_overall"].notna()]
    distance = (scored["score_overall"].astype(float) - overall_threshold).abs()
    borderline = scored.loc[distance.sort_values(kind="stable").index[:n_borderline]]
    rest = rows.drop(index=borderline.index)
    randoms = rest.sample(n=min(n_random, len(rest)), random_state=seed) if len(rest) else rest
    return pd.concat([borderline.assign(selection="borderline"), randoms.assign(selection="random")])


def _thumb(data: bytes, side: int) -> str:
    import io


    buf = io.BytesIO()
    for_display(data, side).save(buf, format="PNG")  # 32 px panels enlarged, nearest-neighbour
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(value) -> str:
    try:
        return f"{float(value):.3f}"
    except (TypeError, ValueError):
        return "—"


def _html_row(row: dict, panels: dict[str, bytes], side: int) -> str:
    shown = [p for p in panels if not p.startswith(DERIVED_PREFIXES)]  # composite and layers, any schema
    imgs = "".join(f'<td><img alt="{html.escape(p)}" src="{_thumb(panels[p], side)}"></td>' for p in shown)
    scores = "<br>".join(f"{c[6:]}: {_fmt(row.get(c))}" for c in row if c.startswith("score_"))
    verdict = "accepted" if row.get("accepted") else "rejected"
    return (f"<tr><td><code>{html.escape(str(row['sample_id']))}</code><br>{row['selection']}</td>{imgs}"
            f"<td>{scores}</td><td class='{verdict}'>{verdict}<br>{html.escape(str(row.get('reason') or ''))}"
            "</td></tr>")


def _html_page(round_: int, body: list[str]) -> str:
    style = ("body{font-family:sans-serif}table{border-collapse:collapse}td{border:1px solid #ccc;padding:4px;"
             "vertical-align:top}.accepted{color:#070}.rejected{color:#a00}img{image-rendering:pixelated}")
    head = ("<tr><th>sample</th><th>composite</th><th>logo</th><th>object</th><th>scores</th>"
            "<th>judge</th></tr>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Review round {round_}</title>"
            f"<style>{style}</style></head><body><h1>Review of round {round_}</h1>"
            "<p>Fill <code>decision</code> (accept/reject), <code>reviewer</code> and optionally "
            "<code>note</code> in review.csv, then run <code>layerloop review import review.csv</code>.</p>"
            f"<table>{head}{''.join(body)}</table></body></html>")


def export_review(store, round_: int, out_dir: str | Path, *, overall_threshold: float,
                  n_borderline: int = 20, n_random: int = 20, seed: int = 0, thumb_side: int = 128) -> dict:
    """Write review.html + review.csv for a committed round; returns their paths and the row count."""
    rows = store.read(round_, "all")
    chosen = select_for_review(rows, overall_threshold=overall_threshold, n_borderline=n_borderline,
                               n_random=n_random, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    selection = dict(zip(chosen["sample_id"], chosen["selection"]))
    body, records = [], []
    for row, panels in store.load_panels(chosen.drop(columns=["selection"])):
        row = {**row, "selection": selection[row["sample_id"]]}
        body.append(_html_row(row, panels, thumb_side))
        records.append({"sample_id": row["sample_id"], "content_hash": row.get("content_hash", ""),
                        "round": round_, "selection": row["selection"], "judge_accepted": bool(row.get("accepted")),
                        "score_overall": _fmt(row.get("score_overall")), "reason": row.get("reason") or "",
                        "decision": "", "reviewer": "", "note": ""})
    (out / "review.html").write_text(_html_page(round_, body))
    with open(out / "review.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=REVIEW_CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(records)
    return {"html": str(out / "review.html"), "csv": str(out / "review.csv"), "n": len(records)}


def _decision(value: str, where: str) -> bool | None:
    word = (value or "").strip().lower()
    if not word:
        return None
    if word in ACCEPT_WORDS:
        return True
    if word in REJECT_WORDS:
        return False
    raise ValueError(f"{where}: decision {value!r} must be accept or reject (or empty to skip)")


def read_review_csv(path: str | Path, *, reviewer: str | None = None, now: _dt.datetime | None = None):
    """Filled decisions of a review CSV as an overrides DataFrame; rows with an empty decision are skipped."""
    import pandas as pd

    stamp = (now or _dt.datetime.now(_dt.timezone.utc)).isoformat()
    out = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"sample_id", "decision"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: needs columns sample_id and decision (the review.csv from review export)")
        for line, row in enumerate(reader, start=2):
            accepted = _decision(row.get("decision", ""), f"{path}:{line}")
            if accepted is None:
                continue
            who = (row.get("reviewer") or "").strip() or reviewer
            if not who:
                raise ValueError(f"{path}:{line}: no reviewer; fill the reviewer column or pass --reviewer")
            out.append({"sample_id": row["sample_id"].strip(), "content_hash": (row.get("content_hash") or "").strip(),
                        "accepted": accepted, "reviewer": who, "reviewed_at": stamp,
                        "note": (row.get("note") or "").strip(), "source_round": str(row.get("round") or "")})
    return pd.DataFrame(out, columns=OVERRIDE_COLUMNS)


def import_review(store, path: str | Path, *, reviewer: str | None = None) -> dict:
    """Record a filled review CSV under <store>/reviews/ (a new file per import); returns path and count."""
    import pyarrow as pa


    overrides = read_review_csv(path, reviewer=reviewer)
    if overrides.empty:
        raise ValueError(f"{path}: no filled decision to import")
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = f"{store.root}/{REVIEWS_DIR}/review-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
    write_bytes(store.fs, target, table_bytes(pa.Table.from_pandas(overrides, preserve_index=False)))
    return {"path": target, "n": len(overrides),
            "takes_effect": "in every adapter trained from now on (its training_set.json lists what it used) "
                            "and in later commits of the same pixels; committed rounds stay as they are"}


def load_overrides(store):
    """Every recorded decision, the latest per sample_id: DataFrame(sample_id, accepted, reviewer, ...)."""
    import pandas as pd


    directory = f"{store.root}/{REVIEWS_DIR}"
    files = sorted(store.fs.glob(f"{directory}/review-*.parquet")) if store.fs.exists(directory) else []
    if not files:
        return pd.DataFrame(columns=OVERRIDE_COLUMNS)
    df = pd.concat([read_table(store.fs, f).to_pandas() for f in files], ignore_index=True)
    df = df.sort_values("reviewed_at", kind="stable")
    return df.drop_duplicates("sample_id", keep="last").reset_index(drop=True)[OVERRIDE_COLUMNS]


def reviewed_training_view(store, up_to: int):
    """(store.training_view(up_to) with every recorded human decision applied, the sample ids the decisions
    moved into or out of it). A reviewer who rejects a committed pseudo-label takes it out of the next
    adapter's training data; one who accepts a rejected candidate puts it in (the rounds stay as committed)."""
    from ...models.judges.acceptance import apply_overrides
    from ...storage import schema as S

    overrides = load_overrides(store)
    if overrides.empty:
        return store.training_view(up_to=up_to), []
    changed: list[str] = []

    def decide(rows):
        decided = apply_overrides(rows, overrides)
        moved = decided[S.ACCEPTED].astype(bool) != rows[S.ACCEPTED].astype(bool)
        changed.extend(decided.loc[moved, S.SAMPLE_ID])
        return decided

    return store.training_view(up_to=up_to, decide=decide), sorted(changed)

"""Per-round report: what a data engineer reads to judge a round.

`build_report(store, round)` gathers every committed round up to `round` and writes into that round:
- `report.json`  — every number shown (selection rates, decisions by rule, growth, score summaries,
  timings, loss curves);
- `report.html`  — static and self-contained: plots and sample thumbnails are inline data URIs,
  no script, no external URL, so it opens from disk, an object store or a CI artifact alike;
- `selection_rate.png` — the headline plot on its own (linked from Prefect artifacts).

Sections: selection rate per round, how the round's rows were decided (per acceptance rule, read from
the manifest's reasons), score histograms per criterion with the round's thresholds marked, cycle-error
histogram, accepted vs rejected sample grids with reasons, dataset growth per round and per source,
training loss curves (adapter metrics.json), per-stage timings (round.json `info`).
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from typing import Any

import pandas as pd

from ..stages import adapter_files
from ..stages.panels import for_display

THUMBS_PER_GROUP = 8
THUMB_PANEL_PX = 128  # per panel: 32 px panels shown 4x, nearest-neighbour, large enough to judge
SOURCES_ORDER = ("seed", "generated", "cycle", "imported")
REPORT_JSON, REPORT_HTML, SELECTION_PNG = "report.json", "report.html", "selection_rate.png"


# ----------------------------------------------------------------------------- gathering


def _schema():
    from ...storage import schema

    return schema


def gather(store, round: int) -> dict[str, Any]:
    """Everything the report shows, as plain JSON-able data (plus the round's DataFrames under _frames)."""
    committed = [r for r in store.committed_rounds() if r <= round]
    if round not in committed:
        raise ValueError(f"round {round} is not committed in this store (committed: {store.committed_rounds()})")
    per_round = [_round_summary(store, r) for r in committed]
    current = store.read(round, "all")
    info = store.round_info(round)
    thresholds = round_thresholds(info.get("config") or {})
    data = {
        "round": round,
        "rounds": per_round,
        "thresholds": thresholds,
        "decisions": decisions(current),
        "scores": score_summary(current, thresholds),
        "timings": stage_timings(info.get("info") or {}),
        "loss_curves": {str(r): load_loss_curve(store, r) for r in committed},
        "_frames": {"current": current},
    }
    data["notes"] = decision_notes(data)  # what decided the round, in words (report.json and the page)
    return data


def _round_summary(store, r: int) -> dict[str, Any]:
    s = _schema()
    rows = store.read(r, "all")
    info = store.round_info(r)
    accepted = rows[rows[s.ACCEPTED].astype(bool)]
    candidates = rows[rows[s.SOURCE] != "seed"]
    n_cand_acc = int(candidates[s.ACCEPTED].astype(bool).sum())
    return {
        "round": r,
        "n_rows": int(len(rows)),
        "n_accepted": int(len(accepted)),
        "n_rejected": int(len(rows) - len(accepted)),
        "n_candidates": int(len(candidates)),
        # Seeds are accepted by construction; the rate that shows the model improving is over candidates.
        "selection_rate": (n_cand_acc / len(candidates)) if len(candidates) else None,
        "selection_rate_by_source": _rate_by_source(candidates),
        "accepted_by_source": {src: int(n) for src, n in accepted[s.SOURCE].value_counts().items()},
        "heldout": _heldout(info),
        "loop_health": loop_health_of(info),
    }


def loop_health_of(round_info: dict) -> dict[str, Any]:
    """What the round recorded about the loop's health: the generating adapter's validation metrics and
    promotion, its control's, and (synthetic world) the true quality of accepted vs rejected candidates."""
    info = round_info.get("info") or {}
    control = info.get("control") or {}
    keep = lambda d: {k: float(v) for k, v in (d or {}).items()  # noqa: E731
                      if k.startswith(("psnr_", "iou_")) and isinstance(v, (int, float))}
    return {"adapter": info.get("heldout_adapter"), "validation": keep(info.get("validation")),
            "heldout": keep(info.get("heldout")), "control_heldout": keep(control.get("heldout")),
            "control_validation": keep(control.get("validation")),
            "promoted": (info.get("promotion") or {}).get("promoted"),
            "promotion_reason": (info.get("promotion") or {}).get("reason"),
            "generator": info.get("generator"), "truth": info.get("health")}


def _heldout(round_info: dict) -> dict[str, float]:
    """Held-out PSNR/SSIM the loop recorded for this round (round.json info.heldout), if any."""
    heldout = (round_info.get("info") or {}).get("heldout") or {}
    return {k: float(v) for k, v in heldout.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k.startswith(("psnr_", "ssim_"))}


def _rate_by_source(candidates: pd.DataFrame) -> dict[str, float]:
    s = _schema()
    if candidates.empty:
        return {}
    grouped = candidates.groupby(s.SOURCE)[s.ACCEPTED].agg(lambda a: float(a.astype(bool).mean()))
    return {str(k): float(v) for k, v in grouped.items()}


def criteria_columns() -> dict[str, str]:
    """Criterion name -> manifest column, for every per-criterion score the schema defines."""
    s = _schema()
    pairs = {
        "logo_clean": "SCORE_LOGO_CLEAN",
        "object_clean": "SCORE_OBJECT_CLEAN",
        "composite_consistent": "SCORE_COMPOSITE_CONSISTENT",
        "realism": "SCORE_REALISM",
        "overall": "SCORE_OVERALL",
    }
    return {name: getattr(s, const) for name, const in pairs.items() if hasattr(s, const)}


def round_thresholds(config: dict) -> dict[str, float]:
    """The limits drawn on the histograms, from the round's config.json `thresholds` section (ThresholdConfig's
    own field names): criterion -> minimum, and `cycle_error` -> max_cycle_error. Only drawn: which rows
    were accepted, and by which rule, comes from the manifest (`decisions`)."""
    section = config.get("thresholds") or {}
    names = {**{name: name for name in criteria_columns()}, "cycle_error": "max_cycle_error"}
    return {shown: float(section[field]) for shown, field in names.items()
            if isinstance(section.get(field), (int, float)) and not isinstance(section.get(field), bool)}


def decisions(rows: pd.DataFrame) -> dict[str, dict[str, int]]:
    """How the round's rows were decided, read from the manifest: rule -> {accepted, rejected} counts.

    The rule is the one the stored reason names (models/judges/acceptance.py: thresholds, cycle, review);
    an accepted row that no rule spoke about counts under "passed".
    """
    from ...models.judges.acceptance import rule_of

    s = _schema()
    out: dict[str, dict[str, int]] = {}
    for accepted, reason in zip(rows[s.ACCEPTED].astype(bool), rows[s.REASON]):
        rule = rule_of(reason) or ("passed" if accepted else "no reason recorded")
        counts = out.setdefault(rule, {"accepted": 0, "rejected": 0})
        counts["accepted" if accepted else "rejected"] += 1
    return out


def score_summary(rows: pd.DataFrame, thresholds: dict[str, float]) -> dict[str, dict]:
    """Per criterion (and cycle error): count, mean, share passing its threshold, histogram counts."""
    s = _schema()
    columns = {**criteria_columns(), "cycle_error": s.CYCLE_ERROR}
    out = {}
    for name, col in columns.items():
        values = pd.to_numeric(rows.get(col, pd.Series(dtype=float)), errors="coerce").dropna()
        if values.empty:
            continue
        out[name] = _describe(values, thresholds.get(name), lower_is_better=(name == "cycle_error"))
    return out


def _describe(values: pd.Series, threshold: float | None, *, lower_is_better: bool) -> dict:
    top = max(float(values.max()), 1e-9)
    # A threshold far above every value (a disabled rule) must not squash the histogram into one bin.
    hi = 1.0 if not lower_is_better else max(top, min(threshold or 0.0, 2 * top))
    counts, edges = _histogram(values.to_list(), 0.0, hi, 10)
    described = {"n": int(len(values)), "mean": float(values.mean()), "threshold": threshold,
                 "hist_counts": counts, "hist_edges": edges}
    if threshold is not None:
        passing = values <= threshold if lower_is_better else values >= threshold
        described["pass_rate"] = float(passing.mean())
    return described


def _histogram(values: list[float], lo: float, hi: float, bins: int) -> tuple[list[int], list[float]]:
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int((v - lo) / width)))] += 1
    return counts, [lo + i * width for i in range(bins + 1)]


def stage_timings(info: dict) -> dict[str, float]:
    """Stage -> seconds from round.json `info` (`timings`/`stage_timings` dict, or `<stage>_s` keys)."""
    nested = info.get("timings") or info.get("stage_timings")
    if isinstance(nested, dict):
        items = nested.items()
    else:
        items = ((k.removesuffix("_s"), v) for k, v in info.items() if k.endswith("_s"))
    return {str(k): float(v) for k, v in items if isinstance(v, (int, float)) and not isinstance(v, bool)}


def load_loss_curve(store, r: int) -> list[dict]:
    """The adapter's training loss curve (metrics.json `loss_curve`), [] when that round trained nothing."""
    uri = adapter_files.join(store.adapter_uri(r), "metrics.json")
    metrics = adapter_files.read_json(uri)  # with the store's fsspec options (an S3 endpoint)
    if metrics is None:
        return []
    curve = metrics.get("loss_curve") or []
    if not isinstance(curve, list):
        raise ValueError(f"{uri}: loss_curve must be a list of {{step, loss, ...}}; got {type(curve).__name__}")
    return [{k: v for k, v in point.items() if isinstance(v, (int, float))} for point in curve]


# ----------------------------------------------------------------------------- plots


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.0, 3.0), dpi=90)
    return plt, fig, ax


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def plot_selection_rate(rounds: list[dict]) -> bytes:
    plt, fig, ax = _figure()
    pts = [(r["round"], r["selection_rate"]) for r in rounds if r["selection_rate"] is not None]
    if pts:
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o")
    else:
        ax.text(0.5, 0.5, "no candidates judged yet", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="round", ylabel="selection rate (%)", ylim=(0, 100), title="Selection rate per round")
    ax.set_xticks([r["round"] for r in rounds])
    ax.grid(alpha=0.3)
    return _png(plt, fig)


def plot_histogram(name: str, summary: dict) -> bytes:
    plt, fig, ax = _figure()
    edges, counts = summary["hist_edges"], summary["hist_counts"]
    ax.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges, edges[1:])], align="edge", edgecolor="k")
    if summary.get("threshold") is not None and summary["threshold"] <= edges[-1]:
        ax.axvline(summary["threshold"], color="red", linestyle="--", label=f"threshold {summary['threshold']:g}")
        ax.legend()
    ax.set(xlabel=name, ylabel="samples", title=f"{name} (n={summary['n']})")
    return _png(plt, fig)


def plot_growth(rounds: list[dict]) -> bytes:
    """Stacked bars: cumulative accepted samples per round, split by source."""
    plt, fig, ax = _figure()
    xs = [r["round"] for r in rounds]
    bottom = [0.0] * len(xs)
    for src in _sources(rounds):
        cumulative, total = [], 0
        for r in rounds:
            total += r["accepted_by_source"].get(src, 0)
            cumulative.append(total)
        ax.bar(xs, cumulative, bottom=bottom, label=src)
        bottom = [b + c for b, c in zip(bottom, cumulative)]
    ax.set(xlabel="round", ylabel="accepted samples (cumulative)", title="Dataset growth")
    ax.set_xticks(xs)
    ax.legend()
    return _png(plt, fig)


def _sources(rounds: list[dict]) -> list[str]:
    seen = {src for r in rounds for src in r["accepted_by_source"]}
    return [s for s in SOURCES_ORDER if s in seen] + sorted(seen - set(SOURCES_ORDER))


def plot_loss_curves(curves: dict[str, list[dict]]) -> bytes:
    plt, fig, ax = _figure()
    for r, curve in curves.items():
        pts = [(p["step"], p["loss"]) for p in curve if "step" in p and "loss" in p]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=f"round {r}")
    if ax.lines:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no training metrics", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="step", ylabel="loss", title="Training loss")
    return _png(plt, fig)


def plot_timings(timings: dict[str, float]) -> bytes:
    plt, fig, ax = _figure()
    names = list(timings)
    ax.barh(names, [timings[n] for n in names])
    ax.set(xlabel="seconds", title="Per-stage time")
    return _png(plt, fig)


# ----------------------------------------------------------------------------- sample grids


def sample_thumbnails(store, rows: pd.DataFrame, limit: int = THUMBS_PER_GROUP) -> list[dict]:
    """Up to `limit` rows as {sample_id, source, reason, png}: panels side by side, read verified."""
    s = _schema()
    if rows.empty:
        return []
    picked = rows.sort_values(s.SAMPLE_ID).head(limit)
    out = []
    for row, panels in store.load_panels(picked):
        reason = row.get(s.REASON)
        out.append({"sample_id": str(row[s.SAMPLE_ID]), "source": str(row.get(s.SOURCE, "")),
                    "reason": "" if reason is None or pd.isna(reason) else str(reason), "png": _strip(panels)})
    return out


def _strip(panels: dict[str, bytes]) -> bytes:
    from PIL import Image


    # load_panels has already checked each panel's sha256 against the manifest.
    images = [for_display(data, THUMB_PANEL_PX) for data in panels.values()]
    side = max(max(im.size) for im in images)
    strip = Image.new("RGB", (side * len(images), side), (255, 255, 255))
    for i, im in enumerate(images):
        strip.paste(im, (i * side, 0))
    buf = io.BytesIO()
    strip.save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- rendering


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str) -> str:
    return f'<img src="{_data_uri(png)}" alt="{html.escape(alt)}">'


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _thumb_grid(thumbs: list[dict], empty: str) -> str:
    if not thumbs:
        return f"<p class='empty'>{html.escape(empty)}</p>"
    cells = [
        f"<figure>{_img(t['png'], t['sample_id'])}<figcaption><b>{html.escape(t['sample_id'])}</b> "
        f"({html.escape(t['source'])})<br>{html.escape(t['reason'] or 'accepted')}</figcaption></figure>"
        for t in thumbs
    ]
    return "<div class='grid'>" + "".join(cells) + "</div>"


_CSS = (
    "body{font-family:sans-serif;margin:2em;color:#222}h1{margin-bottom:0}section{margin:1.5em 0}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    ".plots img{margin:4px;border:1px solid #eee}.grid{display:flex;flex-wrap:wrap;gap:8px}"
    "figure{margin:0;width:200px;font-size:12px}figure img{width:192px;image-rendering:pixelated}"
    ".empty{color:#888}.warn{color:#a15c00}"
)


def render_html(data: dict, plots: dict[str, bytes], thumbs: dict[str, list[dict]]) -> str:
    """The report page; every dynamic string is HTML-escaped (reasons and prompts come from models).

    The empty data: icon stops browsers from asking the server for /favicon.ico: the page requests nothing.
    """
    r = data["round"]
    sections = [
        f"<h1>layerloop — round {r}</h1>",
        _summary_section(data),
        "<section><h2>Selection rate per round</h2>" + _img(plots["selection_rate"], "selection rate") + "</section>",
        _decisions_section(data),
        _health_section(data, plots),
        _scores_section(data, plots),
        "<section><h2>Dataset growth</h2>" + _img(plots["growth"], "dataset growth") + _growth_table(data) + "</section>",
        "<section><h2>Accepted samples</h2>" + _thumb_grid(thumbs["accepted"], "no accepted samples") + "</section>",
        "<section><h2>Rejected samples</h2>" + _thumb_grid(thumbs["rejected"], "no rejected samples") + "</section>",
        "<section><h2>Training loss</h2>" + _img(plots["loss"], "training loss") + "</section>",
        _timings_section(data, plots),
    ]
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><link rel='icon' href='data:,'><title>layerloop round {r}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(sections)}</body></html>")


def _summary_section(data: dict) -> str:
    held = sorted({k for x in data["rounds"] for k in x.get("heldout", {}) if k.startswith("psnr_")})
    rows = [[x["round"], x["n_accepted"], x["n_rejected"], x["n_candidates"],
             None if x["selection_rate"] is None else f"{100 * x['selection_rate']:.1f} %",
             *[x.get("heldout", {}).get(k) for k in held]] for x in data["rounds"]]
    header = ["round", "accepted", "rejected", "candidates", "selection rate", *[f"held-out {k}" for k in held]]
    note = ("<p class='empty'>held-out metrics belong to the adapter that generated the round "
            "(round r is made with adapter r-1)</p>") if held else ""
    return "<section><h2>Rounds</h2>" + _table(header, rows) + note + "</section>"


HEALTH_COLUMNS = ("psnr_object@unseen", "psnr_object@seen", "psnr_logo@unseen", "iou_logo@unseen")


def _health_section(data: dict, plots: dict[str, bytes]) -> str:
    """Per round: the adapter that made it against its matched-compute control, validation, promotion,
    and the true quality of what the judge accepted vs rejected (synthetic world)."""
    header = ["round", "adapter", *[f"held-out {c} (loop / control)" for c in HEALTH_COLUMNS],
              "validation psnr object / logo", "promoted", "true object PSNR accepted / rejected",
              "judge precision / recall vs oracle", "judge precision@k"]
    rows = [_health_row(x) for x in data["rounds"] if x["round"] > 0]
    if not rows:
        return ""
    note = ("<p class='empty'>round r is made with the last promoted adapter; its metrics are adapter r-1's, "
            "the control is the same training on the labeled seeds alone</p>")
    img = _img(plots["health"], "loop vs control") if "health" in plots else ""
    return "<section><h2>Loop health: the loop against its control</h2>" + _table(header, rows) + note + img + "</section>"


def _health_row(x: dict) -> list[Any]:
    h = x["loop_health"]
    pair = lambda c: "/".join(_fmt(h[k].get(c)) for k in ("heldout", "control_heldout"))  # noqa: E731
    truth = h.get("truth") or {}
    acc, rej = truth.get("accepted") or {}, truth.get("rejected") or {}
    return [x["round"], h.get("adapter"), *[pair(c) for c in HEALTH_COLUMNS],
            f"{_fmt(h['validation'].get('psnr_object'))} / {_fmt(h['validation'].get('psnr_logo'))}",
            {True: "yes", False: "no"}.get(h.get("promoted"), "-"),
            f"{_fmt(acc.get('psnr_object'))} / {_fmt(rej.get('psnr_object'))}" if truth else "-",
            _precision_recall(truth) if truth else "-",
            _fmt(truth.get("precision_at_k")) if truth else "-"]


def _precision_recall(truth: dict) -> str:
    """Judge vs oracle, or why it cannot be computed (never a 0 that is one by construction)."""
    if truth.get("oracle_accepted") == 0:
        return f"n/a: the oracle's thresholds keep none of {truth.get('n', '?')}; see precision@k"
    if truth.get("judge_accepted") == 0:
        return "n/a: the judge kept none"
    return f"{_fmt(truth.get('precision'))} / {_fmt(truth.get('recall'))}"


def plot_health(rounds: list[dict]) -> bytes | None:
    """Held-out object PSNR per round on each slice: the loop's adapters against their controls."""
    points = [(x["round"], x["loop_health"]) for x in rounds if x["round"] > 0]
    keys = [k for k in ("psnr_object@unseen", "psnr_object@seen", "psnr_object") if any(k in h["heldout"] for _, h in points)]
    if not keys:
        return None
    plt, fig, ax = _figure()
    for key in keys[:2]:
        for variant, style in (("heldout", "-o"), ("control_heldout", "--s")):
            ys = [h[variant].get(key) for _, h in points]
            ax.plot([r - 1 for r, _ in points], ys, style, label=f"{'loop' if variant == 'heldout' else 'control'} {key}")
    ax.set_xticks(sorted({r - 1 for r, _ in points}))  # adapters are whole numbers
    ax.set_xlabel("adapter (round - 1)")
    ax.set_ylabel("held-out PSNR (dB)")
    ax.legend(fontsize=7)
    return _png(plt, fig)


def _decisions_section(data: dict) -> str:
    rows = [[rule, c["accepted"], c["rejected"]] for rule, c in data["decisions"].items()]
    notes = "".join(f"<p class='warn'>{html.escape(line)}</p>" for line in data["notes"])
    return (f"<section><h2>Decisions by rule (round {data['round']})</h2>"
            + _table(["rule", "accepted", "rejected"], rows) + notes + "</section>")


def decision_notes(data: dict) -> list[str]:
    """What decided the round, in words: the rule behind most rejections, and every judge criterion that
    passed (or failed) every candidate, so decided nothing on its own."""
    notes = []
    rejected = {rule: c["rejected"] for rule, c in data["decisions"].items() if c["rejected"]}
    if rejected:
        rule = max(rejected, key=rejected.get)
        notes.append(f"most rejections: the {rule} rule ({rejected[rule]} of {sum(rejected.values())})")
    for name, summary in data["scores"].items():
        rate, n = summary.get("pass_rate"), summary.get("n", 0)
        if rate in (0.0, 1.0) and n and summary.get("threshold") is not None:
            verb = "passed" if rate == 1.0 else "failed"
            notes.append(f"criterion {name} {verb} all {n} candidates: it separated none of them")
    return notes


def _scores_section(data: dict, plots: dict[str, bytes]) -> str:
    imgs = "".join(_img(plots[f"hist_{name}"], f"{name} histogram") for name in data["scores"])
    rows = [[name, s["n"], s["mean"], s.get("threshold"), s.get("pass_rate")] for name, s in data["scores"].items()]
    table = _table(["criterion", "n", "mean", "threshold", "pass rate"], rows)
    return f"<section><h2>Scores and cycle error (round {data['round']})</h2>{table}<div class='plots'>{imgs}</div></section>"


def _growth_table(data: dict) -> str:
    sources = _sources(data["rounds"])
    rows = [[x["round"], *[x["accepted_by_source"].get(s, 0) for s in sources]] for x in data["rounds"]]
    return _table(["round", *sources], rows)


def _timings_section(data: dict, plots: dict[str, bytes]) -> str:
    if not data["timings"]:
        return "<section><h2>Per-stage timings</h2><p class='empty'>no timings recorded</p></section>"
    rows = [[k, v] for k, v in data["timings"].items()]
    return ("<section><h2>Per-stage timings</h2>" + _table(["stage", "seconds"], rows)
            + _img(plots["timings"], "per-stage timings") + "</section>")


# ----------------------------------------------------------------------------- entry point


def make_plots(data: dict) -> dict[str, bytes]:
    plots = {
        "selection_rate": plot_selection_rate(data["rounds"]),
        "growth": plot_growth(data["rounds"]),
        "loss": plot_loss_curves(data["loss_curves"]),
    }
    plots.update({f"hist_{name}": plot_histogram(name, s) for name, s in data["scores"].items()})
    health = plot_health(data["rounds"])
    if health is not None:
        plots["health"] = health
    if data["timings"]:
        plots["timings"] = plot_timings(data["timings"])
    return plots


def build_report(store, round: int) -> dict[str, str]:
    """Write report.json, report.html and selection_rate.png into committed `round`; return their paths."""
    s = _schema()
    data = gather(store, round)
    current = data.pop("_frames")["current"]
    accepted_mask = current[s.ACCEPTED].astype(bool)
    thumbs = {"accepted": sample_thumbnails(store, current[accepted_mask]),
              "rejected": sample_thumbnails(store, current[~accepted_mask])}
    plots = make_plots(data)
    data["samples_shown"] = {k: [t["sample_id"] for t in v] for k, v in thumbs.items()}
    page = render_html(data, plots, thumbs)
    return {
        "json": store.write_artifact(round, REPORT_JSON, json.dumps(data, indent=2, default=str).encode()),
        "html": store.write_artifact(round, REPORT_HTML, page.encode("utf-8")),
        "selection_rate_png": store.write_artifact(round, SELECTION_PNG, plots["selection_rate"]),
    }


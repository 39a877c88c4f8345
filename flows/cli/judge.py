"""Judge commands of the `layerloop` CLI: prompts, calibrate, review export / review import.

Config and store come in the one precedence of flows/cli/config.py (built-in defaults < ./layerloop.yaml or
--config < LAYERLOOP__* env < --store and the other flags). Bad input exits with code 2 and says what to
fix. Models and the judges are imported inside the commands, so `layerloop --help` stays fast.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ...models.judges.base import JudgeItem
from ...models.judges.calibration import calibration_report, oracle_labels, read_labels, synthetic_calibration_set
from ...models.judges.config import CRITERIA
from ...models.judges.registry import build_judge
from ...models.prompts import builtin_prompts, openai_prompts, write_prompt_set
from ...tasks.stages.handles import sampler as make_sampler
from ...tasks.stages.panels import decode
from ...tasks.stages.review import export_review, import_review
from .config import CONFIG_OPT, STORE_OPT, fail, load, open_store

review_app = typer.Typer(help="Human spot-checks of a round's judge decisions.", no_args_is_help=True)


def prompts(n: int = typer.Option(..., "--n", min=1, help="how many prompts"),
            out: Path = typer.Option(..., "--out", help="JSON file to write"),
            backend: str = typer.Option("builtin", "--backend", help="builtin (offline) | openai (judge.openai server)"),
            seed: int = typer.Option(0, "--seed", help="builtin generator seed"),
            config: Optional[Path] = CONFIG_OPT) -> None:
    """Write a versioned product x logo prompt set for candidate generation."""
    try:
        if backend == "builtin":
            ps = builtin_prompts(n, seed=seed)
        elif backend == "openai":
            ps = openai_prompts(n, load(config).judge.openai)
        else:
            fail(f"--backend must be builtin or openai; got {backend!r}")
    except ValueError as exc:
        fail(str(exc))
    write_prompt_set(ps, out)
    typer.echo(json.dumps({"out": str(out), "n": len(ps.prompts), "version": ps.version, "generator": ps.generator}))


def _judge(cfg, name: str):
    judge_cfg = cfg.judge.model_copy(update={"backend": name})
    sampler = None
    if name == "cycle":
        latest = open_store(cfg).latest_round()
        if latest is None:
            fail("--judge cycle needs a committed round with an adapter (run `layerloop seed` first)")
        sampler = make_sampler(cfg, latest)
    return build_judge(judge_cfg, sampler=sampler)


def _round_items(store, round_: int, ids: set[str]):

    rows = store.read(round_, "all")
    rows = rows[rows["sample_id"].isin(ids)]
    return [JudgeItem(r["sample_id"], decode(panels), prompt=str(r.get("prompt") or ""))
            for r, panels in store.load_panels(rows)]


def _scores_and_labels(cfg, judge: str, labels: str, round_: Optional[int], n: int, seed: int,
                       label_threshold: float, criterion: str):
    column = f"score_{criterion}"
    if labels == "synthetic":
        if judge == "stored":
            fail("--judge stored needs --labels CSV and --round (synthetic items have no stored scores)")
        items = synthetic_calibration_set(n, size=cfg.model.panel_size, seed=seed)
        truth = oracle_labels(items, cfg.judge, label_threshold)
        results = _judge(cfg, judge).score(items)
        return [r.to_row()[column] for r in results], [truth[r.sample_id] for r in results]
    truth = read_labels(labels)
    if round_ is None:
        fail("--labels CSV needs --round R (the round whose samples were labelled)")
    store = open_store(cfg)
    if judge == "stored":
        rows = store.read(round_, "all").set_index("sample_id")
        known = [sid for sid in truth if sid in rows.index]
        return [rows.loc[sid, column] for sid in known], [truth[sid] for sid in known]
    results = _judge(cfg, judge).score(_round_items(store, round_, set(truth)))
    return [r.to_row()[column] for r in results], [truth[r.sample_id] for r in results]


def calibrate(judge: str = typer.Option(..., "--judge", help="oracle | cycle | qwen | openai | stored"),
              labels: str = typer.Option(..., "--labels", help="CSV of sample_id,label, or 'synthetic'"),
              round_: Optional[int] = typer.Option(None, "--round", help="round of the labelled samples (CSV)"),
              criterion: str = typer.Option("overall", "--criterion", help="overall or one criterion"),
              target_precision: float = typer.Option(0.9, "--target-precision"),
              n: int = typer.Option(64, "--n", min=2, help="synthetic items"),
              seed: int = typer.Option(0, "--seed"),
              label_threshold: float = typer.Option(0.6, "--label-threshold", help="oracle overall that counts as good"),
              json_out: Optional[Path] = typer.Option(None, "--json-out"),
              config: Optional[Path] = CONFIG_OPT, store: Optional[str] = STORE_OPT) -> None:
    """Precision, recall and ROC-AUC of a judge against truth, and the threshold for a target precision."""

    if criterion not in ("overall", *CRITERIA):
        fail(f"--criterion must be overall or one of {list(CRITERIA)}")
    if judge not in ("oracle", "cycle", "qwen", "openai", "stored"):
        fail(f"--judge must be oracle, cycle, qwen, openai or stored; got {judge!r}")
    cfg = load(config, store=store)
    try:
        scores, truth = _scores_and_labels(cfg, judge, labels, round_, n, seed, label_threshold, criterion)
        report = calibration_report(scores, truth, current_threshold=getattr(cfg.thresholds, criterion),
                                    target_precision=target_precision)
    except (ValueError, KeyError, OSError) as exc:
        fail(str(exc))
    report.update(judge=judge, criterion=criterion, labels=labels)
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2))
    for key, value in report.items():
        typer.echo(f"{key:>20}: {value:.4f}" if isinstance(value, float) else f"{key:>20}: {value}")


@review_app.command("export")
def review_export(round_: int = typer.Argument(..., metavar="ROUND", help="a committed round"),
                  out: Path = typer.Option(..., "--out", help="folder for review.html and review.csv"),
                  borderline: int = typer.Option(20, "--borderline", min=0, help="samples nearest the threshold"),
                  random_: int = typer.Option(20, "--random", min=0, help="random other samples"),
                  seed: int = typer.Option(0, "--seed"),
                  config: Optional[Path] = CONFIG_OPT, store: Optional[str] = STORE_OPT) -> None:
    """Write a review sheet (HTML with thumbnails + CSV to fill) of a round's borderline and random samples."""
    cfg = load(config, store=store)
    try:
        result = export_review(open_store(cfg), round_, out, overall_threshold=cfg.thresholds.overall,
                               n_borderline=borderline, n_random=random_, seed=seed)
    except (ValueError, KeyError, FileNotFoundError) as exc:  # RoundNotFoundError is a KeyError
        fail(str(exc))
    typer.echo(json.dumps(result))


@review_app.command("import")
def review_import(file: Path = typer.Argument(..., exists=True, dir_okay=False, metavar="FILE",
                                             help="the filled review.csv"),
                  reviewer: Optional[str] = typer.Option(None, "--reviewer", help="for rows without a reviewer"),
                  config: Optional[Path] = CONFIG_OPT, store: Optional[str] = STORE_OPT) -> None:
    """Record review decisions: every adapter trained from now on trains on the rounds as reviewed, and later
    commits follow them for the same pixels (committed rounds and trained adapters stay as they are)."""
    cfg = load(config, store=store)
    try:
        result = import_review(open_store(cfg), file, reviewer=reviewer)
    except ValueError as exc:
        fail(str(exc))
    typer.echo(json.dumps(result))


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("prompts")(prompts)
    app.command("calibrate")(calibrate)
    app.add_typer(review_app, name="review")

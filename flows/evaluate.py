"""The `evaluate` flow: the paper-style table of held-out decomposition quality, one row per adapter.

Rows: identity baseline, round 0, each round, final. Each row decomposes the same held-out synthetic
test set (`make_split("test", ...)`, never seen in training) and scores each layer against ground truth
(PSNR / SSIM); with a VLM judge backend configured (qwen / openai) VQAScore per layer and the judge's mean
score (VLMScore) are added. The table is written as markdown, CSV and JSON and published as a Prefect
table artifact.

Torch and the models are imported inside functions: this module imports without torch.
"""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

from prefect import flow, task

from ..models.evaluation import evaluate_decomposition, identity_baseline
from ..models.judges.qwen import QwenJudge
from ..models.judges.qwen_runtime import QwenVL
from ..models.judges.registry import build_judge
from ..models.judges.vqascore import VQAScorer
from ..models.sampler import Sampler
from ..models.synthetic import make_split, world_logos
from ..tasks.config import PipelineConfig
from ..tasks.stages import adapter_files
from ..tasks.stages.handles import backbone, open_store

METRIC_ORDER = ("psnr_logo", "psnr_object", "ssim_logo", "ssim_object", "iou_logo", "alpha_iou_logo", "l1_logo",
                "l1_object", "layer_edit", "vqa_logo", "vqa_object", "vlm_score")
VLM_BACKENDS = ("qwen", "openai")
ARTIFACT_KEY = "heldout-eval"
_SCORERS: dict[str, tuple[Any, Any]] = {}  # one loaded VLM per process and judge config


class AdapterNotFound(ValueError):
    """An --adapter that names no committed round's adapter and no directory with LoRA weights."""


# ----------------------------------------------------------------------------- adapters


def resolve_adapter(spec: str | int, cfg: PipelineConfig) -> tuple[str, str]:
    """(label, local adapter dir) for a round number or a path; AdapterNotFound says what exists."""

    text = str(spec).strip()
    if re.fullmatch(r"\d+", text):
        store = open_store(cfg)
        uri = store.adapter_uri(int(text))
        if not adapter_files.has_weights(uri):
            raise AdapterNotFound(f"round {text} has no trained adapter at {uri} "
                                  f"(rounds with adapters: {adapter_rounds(cfg) or 'none'})")
        return f"round {int(text)}", adapter_files.local_dir(uri)
    path = Path(text).expanduser()
    if not (path / adapter_files.WEIGHTS).is_file():
        raise AdapterNotFound(f"--adapter {text!r} is neither a round number nor a directory holding "
                              f"{adapter_files.WEIGHTS}")
    return path.name or str(path), str(path)


def adapter_rounds(cfg: PipelineConfig) -> list[int]:
    """Rounds whose adapter directory holds finished weights, ascending."""

    store = open_store(cfg)
    candidates = sorted(set(store.committed_rounds()) | {r + 1 for r in store.committed_rounds()})
    return [r for r in candidates if adapter_files.has_weights(store.adapter_uri(r))]


def default_rows(cfg: PipelineConfig) -> list[tuple[str, str]]:
    """(label, local dir) for every round's adapter; the last one is labelled final."""
    rounds = adapter_rounds(cfg)
    if not rounds:
        raise AdapterNotFound(f"no trained adapters in store {cfg.store.uri}: run `layerloop run` first")
    rows = [resolve_adapter(r, cfg) for r in rounds]
    rows[-1] = (f"final (round {rounds[-1]})", rows[-1][1])
    return rows


# ----------------------------------------------------------------------------- scoring


def heldout_items(cfg: PipelineConfig, n: int | None = None, seed: int | None = None) -> list[tuple]:
    """The held-out synthetic test split at the model's panel size."""
    n = cfg.loop.eval_size if n is None else n
    if n < 1:
        raise ValueError("the held-out set is empty: set loop.eval_size (or --n) to at least 1")
    seed = cfg.loop.eval_seed if seed is None else seed
    return list(make_split("test", n, cfg.model.panel_size, seed, logos=world_logos(cfg.model.layers)))


def vlm_scorers(cfg: PipelineConfig) -> tuple[Any, Any]:
    """(vqa, judge) when a VLM backend is configured, else (None, None).

    qwen: one loaded Qwen2.5-VL serves both VQAScore and the judge (a 7B model is not loaded twice).
    openai: the judge only; VQAScore needs token probabilities of a local model.
    """
    key = cfg.judge.model_dump_json()
    if key in _SCORERS:
        return _SCORERS[key]
    if cfg.judge.backend not in VLM_BACKENDS:
        return None, None

    if cfg.judge.backend == "openai":
        scorers = (None, build_judge(cfg.judge))
    else:

        q = cfg.judge.qwen
        runtime = QwenVL(q.path, device=q.device, dtype=q.dtype, min_pixels=q.min_pixels,
                         max_pixels=q.max_pixels, batch_size=q.batch_size)
        scorers = (VQAScorer(runtime=runtime), QwenJudge(cfg.judge, runtime=runtime))
    _SCORERS.clear()
    _SCORERS[key] = scorers
    return scorers


def score_identity(cfg: PipelineConfig, items: list[tuple]) -> dict:
    vqa, judge = vlm_scorers(cfg)
    return {"method": "identity baseline", "adapter": "", **identity_baseline(items, vqa=vqa, judge=judge)}


def score_adapter(cfg: PipelineConfig, label: str, adapter_dir: str, items: list[tuple]) -> dict:
    """Decompose the held-out items with one adapter and return its table row."""
    import torch


    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    sampler = Sampler(backbone(cfg), adapter_dir, cfg.sample)
    vqa, judge = vlm_scorers(cfg)
    result = evaluate_decomposition(sampler, items, vqa=vqa, judge=judge, batch_size=cfg.sample.batch_size)
    return {"method": label, "adapter": adapter_dir, **result}


def evaluation_table(cfg: PipelineConfig, adapters: list[tuple[str, str]], *, n: int | None = None,
                     seed: int | None = None) -> list[dict]:
    """Plain (no Prefect) version of the flow: identity row + one row per (label, adapter dir)."""
    items = heldout_items(cfg, n, seed)
    rows = [score_identity(cfg, items)]
    rows += [score_adapter(cfg, label, path, items) for label, path in adapters]
    return rows


# ----------------------------------------------------------------------------- output


def _columns(rows: list[dict]) -> list[str]:
    present = {k for r in rows for k in r}
    return ["method", *[m for m in METRIC_ORDER if m in present], "n"]


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def to_markdown(rows: list[dict]) -> str:
    cols = _columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*_columns(rows), "adapter"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_outputs(rows: list[dict], out_dir: str) -> dict[str, str]:
    """eval.md, eval.csv and eval.json under out_dir (created); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "eval.md", "csv": out / "eval.csv", "json": out / "eval.json"}
    paths["markdown"].write_text(to_markdown(rows))
    paths["csv"].write_text(to_csv(rows))
    paths["json"].write_text(json.dumps(rows, indent=2, default=str))
    return {k: str(v) for k, v in paths.items()}


# ----------------------------------------------------------------------------- Prefect


@task(name="eval-identity", tags=["eval"])
def identity_task(cfg: PipelineConfig, n: int | None, seed: int | None) -> dict:
    return score_identity(cfg, heldout_items(cfg, n, seed))


@task(name="eval-adapter", tags=["eval"])
def adapter_task(cfg: PipelineConfig, label: str, adapter_dir: str, n: int | None, seed: int | None) -> dict:
    return score_adapter(cfg, label, adapter_dir, heldout_items(cfg, n, seed))


def publish_table(rows: list[dict]) -> None:
    """The table as a Prefect table artifact (keys: lowercase, digits, dashes)."""
    from prefect.artifacts import create_table_artifact

    cols = _columns(rows)
    table = [{c: _cell(r.get(c)) for c in cols} for r in rows]
    create_table_artifact(key=ARTIFACT_KEY, table=table,
                          description="Held-out decomposition quality (PSNR/SSIM vs ground truth)")


@flow(name="evaluate", log_prints=True)
def evaluate(config: PipelineConfig, adapters: list[str] | None = None, out_dir: str = "eval",
             n: int | None = None, seed: int | None = None) -> dict:
    """Held-out table: identity baseline, each round's adapter (or the given ones), final."""
    pairs = [resolve_adapter(a, config) for a in adapters] if adapters else default_rows(config)
    rows = [identity_task(config, n, seed)]
    rows += [adapter_task(config, label, path, n, seed) for label, path in pairs]
    paths = write_outputs(rows, out_dir)
    publish_table(rows)
    print(to_markdown(rows))
    return {"rows": rows, "paths": paths}

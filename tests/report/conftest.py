"""A small real store for report tests: round 0 (seeds) and round 1 (generated + cycle, some rejected)."""
from __future__ import annotations

import io
import json

import pytest


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _samples(split: str, n: int, seed: int, fields_for):
    from layerloop.models.synthetic import make_split

    for i, (sid, triplet, meta) in enumerate(make_split(split, n, 32, seed)):
        yield fields_for(i, sid, meta), {p: _png(im) for p, im in triplet.items()}


def _round0(store, cfg: dict) -> None:
    from layerloop.storage import schema as S

    w = store.begin(0, parent_round=None, adapter_id=None, config=cfg)
    rows = w.write_unit("seed-0000", _samples("seeds", 4, 0, lambda i, sid, meta: {
        S.SAMPLE_ID: sid, S.ROUND: 0, S.SOURCE: "seed", S.CAPTION: meta["caption"], S.ACCEPTED: True}))
    w.commit(rows, info={"timings": {"ingest": 0.5, "train": 12.0}, "heldout": {"psnr_logo": 11.5, "psnr_object": 20.25}})


def _gen_fields(i: int, sid: str, meta: dict) -> dict:
    from layerloop.storage import schema as S

    accepted = i < 2
    score = 0.9 if accepted else 0.2
    reason = "below threshold: logo_clean 0.200 < 0.500 <script>"
    if i == 4:  # a person looked at it too (review import) and rejected it
        reason = "human review (reject) by ann at 2026-01-02T03:04:05+00:00: smudged"
    return {S.SAMPLE_ID: f"gen-{sid}", S.ROUND: 1, S.SOURCE: "generated", S.PROMPT: f"a mug <b>{i}</b>",
            S.SCORE_LOGO_CLEAN: score, S.SCORE_OBJECT_CLEAN: score, S.SCORE_COMPOSITE_CONSISTENT: score,
            S.SCORE_REALISM: score, S.SCORE_OVERALL: score, S.CYCLE_ERROR: 0.01 + 0.02 * i,
            S.ACCEPTED: accepted, S.REASON: None if accepted else reason, S.JUDGE_BACKEND: "cycle"}


def _round1(store, cfg: dict) -> None:
    from layerloop.storage import schema as S

    w = store.begin(1, parent_round=0, adapter_id="round-0000", config=cfg)
    gen = w.write_unit("gen-0000", _samples("pool", 5, 1, _gen_fields))
    cyc = w.write_unit("cycle-0000", _samples("pool", 1, 2, lambda i, sid, meta: {
        S.SAMPLE_ID: f"cyc-{sid}", S.ROUND: 1, S.SOURCE: "cycle", S.CYCLE_ERROR: 0.02, S.ACCEPTED: True,
        S.SCORE_LOGO_CLEAN: 0.8, S.SCORE_OBJECT_CLEAN: 0.8, S.SCORE_COMPOSITE_CONSISTENT: 0.8,
        S.SCORE_REALISM: 0.8, S.SCORE_OVERALL: 0.8}))
    import pandas as pd

    w.commit(pd.concat([gen, cyc], ignore_index=True),
             info={"timings": {"train": 30.0, "generate": 4.0, "judge": 2.5, "cycle": 3.0, "commit": 0.2}})


def _adapter_metrics(store, r: int, losses: list[float]) -> None:
    from pathlib import Path

    d = Path(store.adapter_uri(r))
    d.mkdir(parents=True, exist_ok=True)
    curve = [{"step": i * 10, "loss": v, "loss_fm": v * 0.8, "loss_cyc": v * 0.2} for i, v in enumerate(losses)]
    (d / "metrics.json").write_text(json.dumps({"loss_curve": curve, "final_loss": losses[-1]}))


@pytest.fixture
def two_round_store(tmp_path):
    """A local RoundStore with rounds 0 and 1 committed and adapter metrics for both."""
    from layerloop.storage.rounds import RoundStore
    from layerloop.tasks.config import PipelineConfig

    store = RoundStore(str(tmp_path / "store"))
    store.init()
    cfg = PipelineConfig().model_dump(mode="json")
    cfg["thresholds"]["max_cycle_error"] = 0.04
    _round0(store, cfg)
    _round1(store, cfg)
    _adapter_metrics(store, 0, [1.0, 0.7, 0.5, 0.45])
    _adapter_metrics(store, 1, [0.5, 0.4, 0.33])
    return store


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory):
    """A tiny random base written with models.tiny.save_base and a 3-step LoRA trained on 4 seed triplets.

    Returns {"model_path", "adapter_dir"}; quality is irrelevant, the files and classes are the real ones.
    """
    import torch

    from layerloop.models import tiny
    from layerloop.models.config import DEFAULT_PROMPT_TEMPLATES, LoraConfig, ModelConfig, TrainConfig
    from layerloop.models.factory import build_backbone
    from layerloop.models.synthetic import make_split
    from layerloop.models.trainer import train_lora

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny-world")
    meta = tiny.default_meta(DEFAULT_PROMPT_TEMPLATES)
    tiny.save_base(tiny.build_modules(meta), root / "base", meta)
    backbone = build_backbone(ModelConfig(path=str(root / "base")))
    triplets = [t for _, t, _ in make_split("seeds", 4, 32, 0)]
    result = train_lora(backbone, triplets, TrainConfig(steps=3, batch_size=2, cycle_warmup_steps=0),
                        LoraConfig(rank=4), str(root / "adapter"))
    return {"model_path": str(root / "base"), "adapter_dir": result.adapter_dir}


@pytest.fixture
def config_file(tmp_path, tiny_adapter):
    """layerloop.yaml for the CLI tests: the tiny base, 2 sampler steps, the store at tmp_path/store."""
    path = tmp_path / "layerloop.yaml"
    path.write_text(f"store:\n  uri: {tmp_path / 'store'}\nmodel:\n  path: {tiny_adapter['model_path']}\n"
                    "sample:\n  steps: 2\nloop:\n  eval_size: 3\n")
    return path

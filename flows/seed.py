"""The seed flow: round 0 = the validated labeled seeds, and the seed LoRA trained on them (adapters/round-0000)."""
from __future__ import annotations

from prefect import flow

from layerloop.tasks import publish
from layerloop.tasks.config import PipelineConfig
from layerloop.tasks.prefect_tasks import configured, gpu_slot


@flow(name="seed", flow_run_name="seed", log_prints=True)
def seed(config: PipelineConfig = PipelineConfig()) -> dict:
    """Round 0: ingest the labeled seeds and the pool (once), train the seed LoRA -> adapters/round-0000."""
    cfg, t = config, configured(config)
    publish.ensure_gpu_slot(cfg)
    ingested = t.ingest_seeds(cfg)
    with gpu_slot(cfg):
        trained = t.train(cfg, 0)
        heldout = t.evaluate(cfg, 0)
    reported = t.report(cfg, 0) if cfg.loop.report else None
    publish.publish_round(cfg, 0, reported, heldout["metrics"])
    return {"ingest": ingested, "train": trained, "heldout": heldout["metrics"]}

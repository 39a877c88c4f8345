"""The seed flow: round 0 = the validated labeled seeds, and the seed LoRA trained on them (adapters/round-0000)."""
from __future__ import annotations

from prefect import flow

from flows.config import PipelineConfig
from tasks import publish as artifacts
from tasks.prefect_tasks import evaluate_task, ingest_seeds_task, report_task, train_adapter_task


@flow(name="seed", flow_run_name="seed", log_prints=True)
def seed(config: PipelineConfig = PipelineConfig()) -> dict:
    """Round 0: ingest the labeled seeds (once) and train the seed LoRA -> adapters/round-0000."""
    cfg = config
    artifacts.ensure_gpu_slot(cfg)
    ingested = ingest_seeds_task(cfg)
    trained = train_adapter_task(cfg, 0)
    heldout = evaluate_task(cfg, 0)
    reported = report_task(cfg, 0) if cfg.loop.report else None
    artifacts.publish_round(cfg, 0, reported, heldout["metrics"])
    return {"ingest": ingested, "train": trained, "heldout": heldout["metrics"]}

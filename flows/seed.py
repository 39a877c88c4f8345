"""The seed flow: round 0 = the validated labeled seeds, and the seed LoRA trained on them (adapters/round-0000)."""
from __future__ import annotations

from prefect import flow

from layerloop.tasks import executor, publish
from layerloop.tasks.config import PipelineConfig
from layerloop.tasks.prefect_tasks import (evaluate_adapter_task, ingest_seeds_task, report_task,
                                           train_adapter_task, with_retries)
from layerloop.tasks.run_lock import store_run_lock
from layerloop.tasks.secrets import apply_secret_env


@flow(name="seed", flow_run_name="seed", log_prints=True)
def seed(config: PipelineConfig = PipelineConfig()) -> dict:
    """Round 0: ingest the labeled seeds and the pool (once), train the seed LoRA -> adapters/round-0000."""
    cfg = config
    apply_secret_env(cfg)  # credentials (loop.secret_env) before anything opens the store or starts Ray
    with store_run_lock(cfg):  # re-entrant: self_improve already holds it when it starts this flow
        executor.ensure_guard(cfg)
        with executor.session(cfg):  # under Ray the seed LoRA trains on a worker
            ingested = with_retries(ingest_seeds_task, cfg)(cfg)
            with executor.gpu_guard(cfg):
                trained = executor.call(with_retries(train_adapter_task, cfg), cfg, cfg, 0)
                heldout = executor.call(with_retries(evaluate_adapter_task, cfg), cfg, cfg, 0)
            reported = with_retries(report_task, cfg)(cfg, 0) if cfg.loop.report else None
            publish.publish_round(cfg, 0, reported, heldout["metrics"])
        return {"ingest": ingested, "train": trained, "heldout": heldout["metrics"]}

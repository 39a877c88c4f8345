"""The seed flow: round 0 = the validated labeled seeds, and the seed LoRA trained on them (adapters/round-0000)."""
from __future__ import annotations

from prefect import flow

from ..tasks import recipe
from ..tasks.config import PipelineConfig
from ..tasks.runtime import executor, publish
from ..tasks.runtime.run_lock import store_run_lock
from ..tasks.runtime.runner import PrefectRunner
from ..tasks.runtime.secrets import apply_secret_env


@flow(name="seed", flow_run_name="seed", log_prints=True)
def seed(config: PipelineConfig = PipelineConfig()) -> dict:
    """Round 0: ingest the labeled seeds and the pool (once), train the seed LoRA -> adapters/round-0000."""
    cfg = config
    apply_secret_env(cfg)  # credentials (loop.secret_env) before anything opens the store or starts Ray
    with store_run_lock(cfg):  # re-entrant: self_improve already holds it when it starts this flow
        executor.ensure_guard(cfg)
        with executor.session(cfg):  # under Ray the seed LoRA trains on a worker
            runner = PrefectRunner(cfg)
            ingested = runner.run(recipe.INGEST, cfg)
            with runner.gpu(cfg):
                (_, [trained]), (_, [heldout]) = recipe.measure(cfg, 0, runner, recipe.SEED)
            reported = runner.run(recipe.REPORT, cfg, 0) if cfg.loop.report else None
            publish.publish_round(cfg, 0, reported, heldout["metrics"])
        return {"ingest": ingested, "train": trained, "heldout": heldout["metrics"]}

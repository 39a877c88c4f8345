"""The round's LoRA: train adapters/round-NNNN on every accepted triplet so far, and measure it on held-out data.

`adapters/round-NNNN` is the LoRA trained on `training_view(up_to=N)`; an adapter that already exists is
never retrained, and held-out metrics are cached next to it, keyed by what they depend on.
"""
from __future__ import annotations

from layerloop.tasks import adapter_files
from layerloop.tasks.config import PipelineConfig
from layerloop.tasks.stages.handles import adapter_id, backbone, open_store, sampler, timed
from layerloop.tasks.stages.panels import decode

METRICS_FILE = "metrics.json"
EVAL_FILE = "heldout.json"


def adapter_exists(cfg: PipelineConfig, round_: int) -> bool:
    return adapter_files.has_weights(open_store(cfg).adapter_uri(round_))


def training_triplets(store, up_to: int) -> tuple[list[dict], list[str]]:
    """Accepted triplets of rounds <= up_to (deduplicated by the store) and their captions."""
    from layerloop.storage import schema as S

    triplets, captions = [], []
    for row, panels in store.load_panels(store.training_view(up_to=up_to)):
        triplets.append(decode(panels))
        captions.append(str(row.get(S.PROMPT) or ""))
    return triplets, captions


def train_adapter(cfg: PipelineConfig, round_: int) -> dict:
    """Make sure adapters/round-NNNN exists: the LoRA trained on training_view(up_to=round_)."""
    with timed({"adapter_round": round_}) as out:
        store = open_store(cfg)
        uri = store.adapter_uri(round_)
        out["adapter_uri"] = uri
        if adapter_files.has_weights(uri):
            out.update(skipped=True, metrics=_summary(adapter_files.read_json(adapter_files.join(uri, METRICS_FILE))))
            return out
        if round_ not in store.committed_rounds():
            raise ValueError(f"cannot train adapter {adapter_id(round_)}: round {round_} is not committed")
        triplets, captions = training_triplets(store, round_)
        if not triplets:
            raise ValueError(f"training_view(up_to={round_}) is empty: no accepted triplets to train on")
        out.update(skipped=False, n_train=len(triplets), metrics=_train(cfg, store, round_, triplets, captions))
    return out


def _init_adapter(cfg: PipelineConfig, store, round_: int) -> str | None:
    """The previous round's adapter to continue from (train.continue_from_previous), when there is one."""
    if round_ == 0 or not cfg.train.continue_from_previous:
        return None
    previous = store.adapter_uri(round_ - 1)
    return adapter_files.local_dir(previous) if adapter_files.has_weights(previous) else None


def train_config(cfg: PipelineConfig, *, continues: bool):
    """train.steps for an adapter trained from scratch; loop.round_train_steps (when set) for one that
    continues from the previous round's adapter, which needs fewer steps to take in the new data."""
    if continues and cfg.loop.round_train_steps is not None:
        return cfg.train.model_copy(update={"steps": cfg.loop.round_train_steps})
    return cfg.train


def train_work_dir(adapter_uri: str, round_: int) -> str:
    """Where training of adapter round_ writes checkpoints: kept across a crash so a rerun resumes."""
    import hashlib
    import tempfile
    from pathlib import Path

    if adapter_files.is_local(adapter_uri):
        path = Path(adapter_files.local_path(adapter_uri)).parent / "_train" / adapter_id(round_)
    else:
        digest = hashlib.sha256(adapter_uri.encode()).hexdigest()[:16]
        path = Path(tempfile.gettempdir()) / "layerloop-train" / digest
    return str(path)


def _train(cfg: PipelineConfig, store, round_: int, triplets: list[dict], captions: list[str]) -> dict:
    import shutil

    from layerloop.models.lora_io import unload_adapter
    from layerloop.models.trainer import train_lora

    uri = store.adapter_uri(round_)
    work = train_work_dir(uri, round_)
    bb = backbone(cfg)
    unload_adapter(bb)  # the shared backbone may still carry the adapter the last sampler loaded
    init = _init_adapter(cfg, store, round_)
    result = train_lora(bb, triplets, train_config(cfg, continues=init is not None), cfg.lora, work,
                        init_adapter=init, captions=captions)
    adapter_files.publish_dir(result.adapter_dir, uri)
    shutil.rmtree(work, ignore_errors=True)
    return _summary(dict(result.metrics))


def _summary(metrics: dict | None) -> dict:
    """Scalar metrics only (the loss curve stays in the adapter's metrics.json)."""
    return {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float, str, bool)) or v is None}


def evaluate_adapter(cfg: PipelineConfig, round_: int) -> dict:
    """Held-out per-layer PSNR/SSIM of adapter round_ on the synthetic test split (cached next to it)."""
    with timed({"adapter_round": round_}) as out:
        if cfg.loop.eval_size == 0:
            out["metrics"] = {}
            return out
        store = open_store(cfg)
        uri = adapter_files.join(store.adapter_uri(round_), EVAL_FILE)
        cached = adapter_files.read_json(uri)
        key = {"eval_size": cfg.loop.eval_size, "eval_seed": cfg.loop.eval_seed,
               "sample": cfg.sample.model_dump(mode="json")}
        if cached and cached.get("key") == key:
            out.update(skipped=True, metrics=cached["metrics"])
            return out
        from layerloop.models.evaluation import evaluate_decomposition
        from layerloop.models.synthetic import make_split

        items = list(make_split("test", cfg.loop.eval_size, cfg.model.panel_size, cfg.loop.eval_seed))
        metrics = _summary(evaluate_decomposition(sampler(cfg, round_, store), items))
        adapter_files.write_json(uri, {"key": key, "metrics": metrics})
        out.update(skipped=False, metrics=metrics)
    return out

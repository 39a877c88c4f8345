"""Round 0's inputs: the labeled seed triplets (committed as round 0) and the unlabeled pool, validated once."""
from __future__ import annotations

import json
from typing import Any

from ..config import PipelineConfig
from .handles import counts, open_store, timed
from .panels import rgba_members

SEEDS_UNSET = ("loop.seeds_path is not set and round 0 is not committed: point it at the labeled seed "
               "triplets (folder of <id>/{composite,logo,object}.png or a CSV)")


def check_inputs(cfg: PipelineConfig) -> None:
    """Before a run starts anything: the inputs its seed round will ingest are set and exist.

    ValueError saying which field to fix; a store whose round 0 is committed needs no seeds, and a pool
    path is only read while the store holds no pool yet.
    """
    store = open_store(cfg)
    if 0 not in store.committed_rounds():
        if not cfg.loop.seeds_path:
            raise ValueError(SEEDS_UNSET)
        _must_exist("loop.seeds_path", cfg.loop.seeds_path)
    if cfg.loop.pool_path and not len(store.read_pool()):
        _must_exist("loop.pool_path", cfg.loop.pool_path)


def _must_exist(field: str, path: str) -> None:
    import fsspec

    fs, root = fsspec.core.url_to_fs(path)
    if not fs.exists(root):
        raise ValueError(f"{field}: input path {path} does not exist — fix the path in the config file, "
                         f"LAYERLOOP__{field.upper().replace('.', '__')} or the flag that sets it")


def ingest_seeds(cfg: PipelineConfig) -> dict:
    """Round 0 = the validated seed triplets; a no-op when round 0 is already committed."""
    with timed({"round": 0}) as out:
        store = open_store(cfg)
        if 0 in store.committed_rounds():
            out.update(skipped=True, **counts(store.round_info(0)), pool=ingest_pool(cfg, store))
            return out
        if not cfg.loop.seeds_path:
            raise ValueError(SEEDS_UNSET)
        from ...storage.ingest import ingest_seeds as ingest

        report = ingest(cfg.loop.seeds_path, store, cfg.store, validation_size=cfg.loop.validation_size,
                        derive=rgba_members, layers=tuple(cfg.model.layers))
        out.update(skipped=False, report=_jsonable(report), pool=ingest_pool(cfg, store))
    return out


def ingest_pool(cfg: PipelineConfig, store) -> dict:
    """Validate loop.pool_path into the store's versioned pool once (bad files are quarantined)."""
    with timed({}) as out:
        size = len(store.read_pool())
        if not cfg.loop.pool_path or size:
            out.update(skipped=True, pool_size=int(size))
            return out
        from ...storage.ingest import ingest_pool as ingest

        out.update(skipped=False, report=_jsonable(ingest(cfg.loop.pool_path, store, cfg.store)))
        out["pool_size"] = int(len(store.read_pool()))
    return out


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return json.loads(json.dumps(dataclasses.asdict(obj), default=str))
    return json.loads(json.dumps(obj, default=str))

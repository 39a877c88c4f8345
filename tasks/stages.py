"""Plain stage functions of the self-improving loop: the real work, callable and testable without Prefect.

Round semantics (kept exactly so the store's lineage is readable):
- `adapters/round-NNNN` is the LoRA trained on `training_view(up_to=N)`;
- round r's samples are made with adapter r-1, so round r names parent_round r-1, adapter_id "round-(r-1)".

Every stage works on one unit (a batch of prompts or pool composites), takes and returns JSON-able values
(ids, URIs, counts, seconds), and skips work whose output already sits in the store, so a rerun after a
kill -9 continues from the last finished unit and a committed round is never rewritten.
"""
from __future__ import annotations

import io
import json
import time
from contextlib import contextmanager
from typing import Any, Iterator

from layerloop.models.prompts import prompt_hash
from layerloop.tasks import adapter_files
from layerloop.tasks.config import PipelineConfig

EVAL_FILE = "heldout.json"
_BACKBONES: dict[str, Any] = {}
_JUDGES: dict[tuple, Any] = {}


def adapter_id(round_: int) -> str:
    return f"round-{round_:04d}"


def unit_names(prefix: str, n_items: int, batch_size: int) -> list[str]:
    """Unit ids for n_items split into batches: gen-0000, gen-0001, ..."""
    n_units = (n_items + batch_size - 1) // batch_size
    return [f"{prefix}-{i:04d}" for i in range(n_units)]


def batch_slice(unit: str, n_items: int, batch_size: int) -> range:
    """Item indices a unit covers (its number times the batch size)."""
    index = int(unit.rsplit("-", 1)[1])
    return range(index * batch_size, min(n_items, (index + 1) * batch_size))


@contextmanager
def timed(result: dict) -> Iterator[dict]:
    """Record the plain function's wall time in `result["seconds"]` (summed into round info and the bench)."""
    start = time.perf_counter()
    try:
        yield result
    finally:
        result["seconds"] = time.perf_counter() - start


# --- shared handles -------------------------------------------------------------------------------------

def open_store(cfg: PipelineConfig):
    from layerloop.storage.rounds import RoundStore

    return RoundStore(cfg.store.uri, cfg.store.storage_options)


def backbone(cfg: PipelineConfig):
    """One backbone per process and model config: building it dominates a small batch's cost."""
    from layerloop.models.factory import build_backbone

    key = cfg.model.model_dump_json()
    if key not in _BACKBONES:
        _BACKBONES.clear()
        _BACKBONES[key] = build_backbone(cfg.model)
    return _BACKBONES[key]


def sampler(cfg: PipelineConfig, adapter_round: int):
    from layerloop.models.sampler import Sampler

    local = adapter_files.local_dir(open_store(cfg).adapter_uri(adapter_round))
    return Sampler(backbone(cfg), local, cfg.sample)


def writer(cfg: PipelineConfig, round_: int):
    """The resumable writer of round r (same round id after a crash reuses its finished units)."""
    return open_store(cfg).begin(round_, parent_round=round_ - 1 if round_ > 0 else None,
                                 adapter_id=adapter_id(round_ - 1) if round_ > 0 else None,
                                 config=cfg.model_dump(mode="json"), shard_max_bytes=cfg.store.shard_max_bytes,
                                 shard_max_samples=cfg.store.shard_max_samples)


def is_committed(cfg: PipelineConfig, round_: int) -> bool:
    return round_ in open_store(cfg).committed_rounds()


def adapter_exists(cfg: PipelineConfig, round_: int) -> bool:
    return adapter_files.has_weights(open_store(cfg).adapter_uri(round_))


def _decode(panels: dict[str, bytes]) -> dict:
    from PIL import Image

    return {name: Image.open(io.BytesIO(data)).convert("RGB") for name, data in panels.items()}


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # ~3x faster than the default level, ~10 % larger
    return buf.getvalue()


def _encode(triplet: dict) -> dict[str, bytes]:
    return {name: _png(img) for name, img in triplet.items()}


# --- seed round -----------------------------------------------------------------------------------------

def ingest_seeds(cfg: PipelineConfig) -> dict:
    """Round 0 = the validated seed triplets; a no-op when round 0 is already committed."""
    with timed({"round": 0}) as out:
        store = open_store(cfg)
        if 0 in store.committed_rounds():
            out.update(skipped=True, **_counts(store.round_info(0)), pool=ingest_pool(cfg))
            return out
        if not cfg.loop.seeds_path:
            raise ValueError("loop.seeds_path is not set and round 0 is not committed: point it at the "
                             "labeled seed triplets (folder of <id>/{composite,logo,object}.png or a CSV)")
        from layerloop.storage.ingest import ingest_seeds as ingest

        report = ingest(cfg.loop.seeds_path, store, cfg.store)
        out.update(skipped=False, report=_jsonable(report), pool=ingest_pool(cfg))
    return out


def _counts(info: dict) -> dict:
    return {k: info.get(k) for k in ("accepted", "rejected") if k in info}


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return json.loads(json.dumps(dataclasses.asdict(obj), default=str))
    return json.loads(json.dumps(obj, default=str))


# --- train ----------------------------------------------------------------------------------------------

def training_triplets(cfg: PipelineConfig, up_to: int) -> tuple[list[dict], list[str]]:
    """Accepted triplets of rounds <= up_to (deduplicated by the store) and their captions."""
    from layerloop.storage import schema as S

    store = open_store(cfg)
    rows = store.training_view(up_to=up_to)
    triplets, captions = [], []
    for row, panels in store.load_panels(rows):
        triplets.append(_decode(panels))
        captions.append(str(row.get(S.PROMPT) or ""))
    return triplets, captions


def train_adapter(cfg: PipelineConfig, round_: int) -> dict:
    """Make sure adapters/round-NNNN exists: the LoRA trained on training_view(up_to=round_)."""
    with timed({"adapter_round": round_}) as out:
        store = open_store(cfg)
        uri = store.adapter_uri(round_)
        out["adapter_uri"] = uri
        if adapter_exists(cfg, round_):
            out.update(skipped=True, metrics=_summary(adapter_files.read_json(adapter_files.join(uri, "metrics.json"))))
            return out
        if round_ not in store.committed_rounds():
            raise ValueError(f"cannot train adapter {adapter_id(round_)}: round {round_} is not committed")
        triplets, captions = training_triplets(cfg, round_)
        if not triplets:
            raise ValueError(f"training_view(up_to={round_}) is empty: no accepted triplets to train on")
        out.update(skipped=False, n_train=len(triplets), metrics=_train(cfg, round_, triplets, captions))
    return out


def _init_adapter(cfg: PipelineConfig, round_: int) -> str | None:
    if round_ == 0 or not cfg.train.continue_from_previous or not adapter_exists(cfg, round_ - 1):
        return None
    return adapter_files.local_dir(open_store(cfg).adapter_uri(round_ - 1))


def train_config(cfg: PipelineConfig, *, continues: bool):
    """train.steps for an adapter trained from scratch; loop.round_train_steps (when set) for one that
    continues from the previous round's adapter, which needs fewer steps to take in the new data."""
    if continues and cfg.loop.round_train_steps is not None:
        return cfg.train.model_copy(update={"steps": cfg.loop.round_train_steps})
    return cfg.train


def train_work_dir(cfg: PipelineConfig, round_: int) -> str:
    """Where training of adapter round_ writes checkpoints: kept across a crash so a rerun resumes."""
    import hashlib
    import tempfile
    from pathlib import Path

    uri = open_store(cfg).adapter_uri(round_)
    if adapter_files.is_local(uri):
        path = Path(adapter_files.local_path(uri)).parent / "_train" / adapter_id(round_)
    else:
        digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
        path = Path(tempfile.gettempdir()) / "layerloop-train" / digest
    return str(path)


def _train(cfg: PipelineConfig, round_: int, triplets: list[dict], captions: list[str]) -> dict:
    import shutil

    from layerloop.models.lora_io import unload_adapter
    from layerloop.models.trainer import train_lora

    work = train_work_dir(cfg, round_)
    bb = backbone(cfg)
    unload_adapter(bb)  # the shared backbone may still carry the adapter the last sampler loaded
    init = _init_adapter(cfg, round_)
    result = train_lora(bb, triplets, train_config(cfg, continues=init is not None), cfg.lora, work,
                        init_adapter=init, captions=captions)
    adapter_files.publish_dir(result.adapter_dir, open_store(cfg).adapter_uri(round_))
    shutil.rmtree(work, ignore_errors=True)
    return _summary(dict(result.metrics))


def _summary(metrics: dict | None) -> dict:
    """Scalar metrics only (the loss curve stays in the adapter's metrics.json)."""
    return {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float, str, bool)) or v is None}


# --- held-out evaluation --------------------------------------------------------------------------------

def evaluate_adapter(cfg: PipelineConfig, round_: int) -> dict:
    """Held-out per-layer PSNR/SSIM of adapter round_ on the synthetic test split (cached next to it)."""
    with timed({"adapter_round": round_}) as out:
        if cfg.loop.eval_size == 0:
            out["metrics"] = {}
            return out
        uri = adapter_files.join(open_store(cfg).adapter_uri(round_), EVAL_FILE)
        cached = adapter_files.read_json(uri)
        key = {"eval_size": cfg.loop.eval_size, "eval_seed": cfg.loop.eval_seed,
               "sample": cfg.sample.model_dump(mode="json")}
        if cached and cached.get("key") == key:
            out.update(skipped=True, metrics=cached["metrics"])
            return out
        from layerloop.models.evaluation import evaluate_decomposition
        from layerloop.models.synthetic import make_split

        items = list(make_split("test", cfg.loop.eval_size, cfg.model.panel_size, cfg.loop.eval_seed))
        metrics = _summary(evaluate_decomposition(sampler(cfg, round_), items))
        adapter_files.write_json(uri, {"key": key, "metrics": metrics})
        out.update(skipped=False, metrics=metrics)
    return out


# --- generate -------------------------------------------------------------------------------------------

def round_prompts(cfg: PipelineConfig, round_: int) -> list[str]:
    """The round's candidate prompts: the prompt set cycled to candidates_per_round, offset by round."""
    prompts = cfg.loop.prompt_set()
    if not prompts:
        raise ValueError("loop.prompts is empty: give at least one prompt (or products and logos)")
    n, start = cfg.loop.candidates_per_round, (round_ - 1) * cfg.loop.candidates_per_round
    return [prompts[(start + i) % len(prompts)] for i in range(n)]


def _row(cfg: PipelineConfig, round_: int, sample_id: str, source: str, **fields: Any) -> dict:
    from layerloop.storage import schema as S

    return S.empty_row(**{S.SAMPLE_ID: sample_id, S.ROUND: round_, S.SOURCE: source,
                          S.PARENT_ROUND: round_ - 1, S.ADAPTER_ID: adapter_id(round_ - 1)}, **fields)


def generate(cfg: PipelineConfig, round_: int, unit: str) -> dict:
    """tau_G on one batch of prompts with adapter r-1; writes the unit's shard (skipped when done)."""
    from layerloop.storage import schema as S

    with timed({"unit": unit}) as out:
        w = writer(cfg, round_)
        if w.unit_done(unit):
            out.update(skipped=True, n=int((w.rows()[S.UNIT] == unit).sum()))
            return out
        prompts = round_prompts(cfg, round_)
        idx = list(batch_slice(unit, len(prompts), cfg.loop.batch_size))
        triplets = sampler(cfg, round_ - 1).generate([prompts[i] for i in idx])
        samples = [(_row(cfg, round_, f"r{round_:04d}-{unit}-{i:04d}", "generated", **{S.PROMPT: prompts[i]}),
                    _encode(t)) for i, t in zip(idx, triplets)]
        out.update(skipped=False, n=len(w.write_unit(unit, samples)))
    return out


# --- cycle: re-synthesis error of generated candidates, new triplets from the unlabeled pool ---------------

def ingest_pool(cfg: PipelineConfig) -> dict:
    """Validate loop.pool_path into the store's versioned pool once (bad files are quarantined)."""
    with timed({}) as out:
        store = open_store(cfg)
        size = len(store.read_pool())
        if not cfg.loop.pool_path or size:
            out.update(skipped=True, pool_size=int(size))
            return out
        from layerloop.storage.ingest import ingest_pool as ingest

        out.update(skipped=False, report=_jsonable(ingest(cfg.loop.pool_path, store, cfg.store)))
        out["pool_size"] = int(len(store.read_pool()))
    return out


def round_pool(cfg: PipelineConfig, round_: int):
    """This round's slice of the store's pool: the next pool_per_round rows by sample id, wrapping around."""
    from layerloop.storage import schema as S

    rows = open_store(cfg).read_pool().sort_values(S.SAMPLE_ID, kind="stable").reset_index(drop=True)
    if not len(rows) or cfg.loop.pool_per_round == 0:
        return rows.iloc[:0]
    n, start = min(cfg.loop.pool_per_round, len(rows)), (round_ - 1) * cfg.loop.pool_per_round
    return rows.iloc[[(start + i) % len(rows) for i in range(n)]].reset_index(drop=True)


def _cycle_errors(smp, composites: list) -> tuple[list[dict], list, list[float]]:
    from layerloop.models.metrics import cycle_error

    layers = smp.decompose(composites)
    again = smp.synthesize(layers)
    return layers, again, [float(cycle_error(a, b)) for a, b in zip(composites, again)]


def cycle_pool(cfg: PipelineConfig, round_: int, unit: str) -> dict:
    """Decompose + re-synthesize one batch of pool composites; write them as candidate triplets."""
    from layerloop.storage import schema as S

    with timed({"unit": unit}) as out:
        w = writer(cfg, round_)
        if w.unit_done(unit):
            out.update(skipped=True, n=int((w.rows()[S.UNIT] == unit).sum()))
            return out
        pool = round_pool(cfg, round_)
        batch = pool.iloc[list(batch_slice(unit, len(pool), cfg.loop.batch_size))]
        items = [(row, _decode({"composite": p["composite"]})["composite"])
                 for row, p in open_store(cfg).load_panels(batch)]
        samples = []
        if items:
            layers, again, errors = _cycle_errors(sampler(cfg, round_ - 1), [img for _, img in items])
            keep_original = cfg.loop.cycle_keep_composite == "original"
            for (prow, original), lay, resynth, err in zip(items, layers, again, errors):
                pid = prow[S.SAMPLE_ID]
                row = _row(cfg, round_, f"r{round_:04d}-{unit}-{pid}", "cycle", **{
                    S.CYCLE_ERROR: err, S.CAPTION: prow.get(S.CAPTION), S.KIND: prow.get(S.KIND),
                    S.EXTRA_JSON: {"pool_id": pid}})
                composite = original if keep_original else resynth
                samples.append((row, _encode({"composite": composite, **lay})))
        out.update(skipped=False, n=len(w.write_unit(unit, samples)))
    return out


def _unit_rows(w, unit: str):
    from layerloop.storage import schema as S

    rows = w.rows()
    return rows[rows[S.UNIT] == unit]


def cycle_generated(cfg: PipelineConfig, round_: int, unit: str) -> dict:
    """Cycle error of generated candidates (composite -> layers -> composite), stored as a stage part."""
    import pandas as pd

    from layerloop.storage import schema as S

    with timed({"unit": unit}) as out:
        w = writer(cfg, round_)
        if w.get_part("cycle", unit) is not None:
            out.update(skipped=True)
            return out
        judged = w.get_part("judge", unit)
        if judged is not None and S.CYCLE_ERROR in judged and judged[S.CYCLE_ERROR].notna().all():
            # the cycle judge already decomposed and re-synthesized these composites: reuse, don't redo
            w.put_part("cycle", unit, judged[[S.SAMPLE_ID, S.CYCLE_ERROR]].copy())
            out.update(skipped=False, n=len(judged), reused_judge=True)
            return out
        rows = _unit_rows(w, unit)
        ids, composites = [], []
        for row, panels in w.load_panels(rows):
            ids.append(row[S.SAMPLE_ID])
            composites.append(_decode({"composite": panels["composite"]})["composite"])
        errors = _cycle_errors(sampler(cfg, round_ - 1), composites)[2] if composites else []
        w.put_part("cycle", unit, pd.DataFrame({S.SAMPLE_ID: ids, S.CYCLE_ERROR: errors}))
        out.update(skipped=False, n=len(ids))
    return out


# --- judge ----------------------------------------------------------------------------------------------

def judge_for(cfg: PipelineConfig, adapter_round: int):
    """One judge per process, judge config and adapter: a VLM judge loads its weights once, not per unit."""
    from layerloop.models.judges.registry import build_judge

    smp = sampler(cfg, adapter_round)  # (re)loads this adapter into the shared backbone a cached judge uses
    key = (cfg.judge.model_dump_json(), cfg.sample.model_dump_json(), smp.adapter_dir, id(smp.backbone))
    if key not in _JUDGES:
        _JUDGES.clear()
        _JUDGES[key] = build_judge(cfg.judge, sampler=smp)
    return _JUDGES[key]


def judge(cfg: PipelineConfig, round_: int, unit: str) -> dict:
    """Score one unit's triplets with the configured judge; scores are stored, thresholds come later."""
    from layerloop.models.judges.base import JudgeItem, results_to_frame
    from layerloop.storage import schema as S

    with timed({"unit": unit}) as out:
        w = writer(cfg, round_)
        if w.get_part("judge", unit) is not None:
            out.update(skipped=True)
            return out
        items = [JudgeItem(sample_id=row[S.SAMPLE_ID], triplet=_decode(panels), prompt=str(row[S.PROMPT] or ""))
                 for row, panels in w.load_panels(_unit_rows(w, unit))]
        frame = results_to_frame(judge_for(cfg, round_ - 1).score(items) if items else [])
        w.put_part("judge", unit, frame)
        out.update(skipped=False, n=len(items), failed=int(frame["judge_error"].notna().sum()) if len(frame) else 0)
    return out


# --- commit ---------------------------------------------------------------------------------------------

def _merge_parts(w, rows):
    """Round rows with judge scores and generated candidates' cycle errors joined in by sample id."""
    import pandas as pd

    from layerloop.storage import schema as S

    rows = rows.copy()
    for stage, keep in (("judge", [*S.SCORE_COLUMNS, S.JUDGE_BACKEND, "judge_error"]), ("cycle", [S.CYCLE_ERROR])):
        parts = [w.get_part(stage, u) for u in sorted(rows[S.UNIT].unique())]
        parts = [p for p in parts if p is not None and len(p)]
        if not parts:
            continue
        part = pd.concat(parts, ignore_index=True).set_index(S.SAMPLE_ID)
        part = part[[c for c in keep if c in part.columns]]
        for col in part.columns:
            fill = rows[S.SAMPLE_ID].map(part[col])
            rows[col] = fill.where(fill.notna(), rows[col]) if col in rows.columns else fill
    return rows


def commit(cfg: PipelineConfig, round_: int, info: dict) -> dict:
    """Decide (models/judges/acceptance.py: thresholds, cycle rule, human review) and commit round r
    (put-if-absent); a committed round is returned unchanged."""
    with timed({"round": round_}) as out:
        store = open_store(cfg)
        if round_ in store.committed_rounds():
            out.update(skipped=True, **_counts(store.round_info(round_)))
            return out
        from layerloop.models.judges.acceptance import ERROR_COLUMN, decide_rows
        from layerloop.tasks.review import load_overrides

        w = writer(cfg, round_)
        rows = decide_rows(_merge_parts(w, w.rows()), cfg.thresholds, load_overrides(store))
        info = {**info, "prompt_set_sha256": prompt_hash(cfg.loop.prompt_set())}
        result = w.commit(rows.drop(columns=[ERROR_COLUMN], errors="ignore"), info=info)
        out.update(skipped=False, **_counts(result))
    return out


# --- report and the selection-rate table ------------------------------------------------------------------

def report(cfg: PipelineConfig, round_: int) -> dict:
    """HTML/JSON report of a committed round (tasks.report); returns the written paths."""
    with timed({"round": round_}) as out:
        from layerloop.tasks.report import build_report

        out["paths"] = dict(build_report(open_store(cfg), round_))
    return out


def round_summary(cfg: PipelineConfig, round_: int) -> dict:
    """One row of the `selection-rate` table for a committed round."""
    from layerloop.models.judges.config import CRITERIA
    from layerloop.storage import schema as S

    store = open_store(cfg)
    rows = store.read(round_, "all")
    cand = rows[rows[S.SOURCE] != "seed"]
    acc = rows[rows[S.ACCEPTED].astype(bool)]
    info = (store.round_info(round_).get("info") or {})
    row = {"round": round_, "candidates": int(len(cand)), "accepted": int(len(acc)),
           "selection_rate": round(float(cand[S.ACCEPTED].mean()), 4) if len(cand) else None,
           "cycle_kept": int((acc[S.SOURCE] == "cycle").sum()),
           "dataset_size": int(len(store.training_view(up_to=round_)))}
    for c in CRITERIA:
        col = cand[f"score_{c}"].dropna()
        row[f"mean_{c}"] = round(float(col.mean()), 4) if len(col) else None
    for k, v in (info.get("heldout") or {}).items():
        if k.startswith("psnr_"):
            row[f"heldout_{k}"] = round(float(v), 3)
    return row


def selection_table(cfg: PipelineConfig) -> list[dict]:
    """`selection-rate` rows for every committed round, oldest first."""
    return [round_summary(cfg, r) for r in open_store(cfg).committed_rounds()]


def next_round(cfg: PipelineConfig) -> int:
    """The first round not yet committed (rounds >= 1; round 0 belongs to the seed flow)."""
    latest = open_store(cfg).latest_round()
    return 1 if latest is None else latest + 1

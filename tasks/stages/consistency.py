"""The cycle stage: decompose a composite, re-synthesize it from its layers, and measure how far it moved.

Generated candidates get their cycle error stored as a part (the acceptance rule's cycle rule reads it);
unlabeled pool composites become new candidate triplets (the real composite, or its re-synthesis, with
the decomposed layers), judged like the generated ones. With `loop.pool_targets: anchored` (the default)
a candidate's object is the real composite wherever the model left it unchanged, and trust panels say
which pixels are real (models/anchoring.py): a single draw of the model's own output is never trusted as a
target. With `loop.consensus_draws` k > 1 (the default) the candidate's layers are the mean of k draws,
and its logo is trusted `loop.consensus_trust`.
"""
from __future__ import annotations

from ...models.anchoring import anchor, consensus
from ...models.metrics import cycle_error
from ..config import PipelineConfig
from .handles import RoundWork, Unit, timed
from .judging import PART as JUDGE_PART
from .panels import decode, encode, encode_trust

PART = "cycle"


def round_pool(store, cfg: PipelineConfig, round_: int):
    """This round's slice of the store's pool: the next pool_per_round rows by sample id, wrapping around."""
    from ...storage import schema as S

    rows = store.read_pool().sort_values(S.SAMPLE_ID, kind="stable").reset_index(drop=True)
    if not len(rows) or cfg.loop.pool_per_round == 0:
        return rows.iloc[:0]
    n, start = min(cfg.loop.pool_per_round, len(rows)), (round_ - 1) * cfg.loop.pool_per_round
    return rows.iloc[[(start + i) % len(rows) for i in range(n)]].reset_index(drop=True)


def _cycle_errors(smp, composites: list, layers: list[dict] | None = None) -> tuple[list[dict], list, list[float]]:
    """(layers, re-synthesized composites, cycle errors); the layers are decomposed here unless given."""
    layers = smp.decompose(composites) if layers is None else layers
    again = smp.synthesize(layers)
    return layers, again, [float(cycle_error(a, b)) for a, b in zip(composites, again)]


def decompose_pool(cfg: PipelineConfig, smp, composites: list) -> list[dict]:
    """Every composite's layers: one draw, or with `loop.consensus_draws` k > 1 the per-pixel mean of k
    draws, which is closer to the truth than any single one (models/anchoring.consensus)."""
    k = cfg.loop.consensus_draws
    if k == 1:
        return smp.decompose(composites)

    draws = [smp.decompose(composites, draw=d) for d in range(k)]
    return [consensus([draw[i] for draw in draws]) for i in range(len(composites))]


def cycle_pool(cfg: PipelineConfig, round_: int, unit: Unit) -> dict:
    """Decompose + re-synthesize one batch of pool composites; write them as candidate triplets."""
    from ...storage import schema as S

    with timed({"unit": unit.name}) as out:
        work = RoundWork(cfg, round_)
        if work.already_done(unit, out):
            return out
        pool = round_pool(work.store, cfg, round_)
        batch = pool.iloc[list(unit.items(len(pool), cfg.loop.batch_size))]
        items = [(row, decode({"composite": p["composite"]})["composite"])
                 for row, p in work.store.load_panels(batch)]
        samples = []
        if items:
            smp, composites = work.sampler(), [img for _, img in items]
            layers, again, errors = _cycle_errors(smp, composites, decompose_pool(cfg, smp, composites))
            keep_original = cfg.loop.cycle_keep_composite == "original"
            for (prow, original), lay, resynth, err in zip(items, layers, again, errors):
                pid = prow[S.SAMPLE_ID]
                row = work.row(f"r{round_:04d}-{unit.name}-{pid}", "cycle", **{
                    S.CYCLE_ERROR: err, S.CAPTION: prow.get(S.CAPTION), S.KIND: prow.get(S.KIND),
                    S.EXTRA_JSON: {"pool_id": pid, "targets": cfg.loop.pool_targets,
                                   "draws": cfg.loop.consensus_draws}})
                samples.append((row, pool_panels(cfg, original if keep_original else resynth, lay)))
        out.update(skipped=False, n=len(work.writer.write_unit(unit.name, samples)))
    return out


def pool_panels(cfg: PipelineConfig, composite, layers: dict) -> dict[str, bytes]:
    """A pool candidate's stored panels: composite, layers (anchored or as decomposed) and trust panels.

    Foreground layers (the logo) get trust `loop.consensus_trust` when they are a consensus of several
    draws, else 0.
    """
    if cfg.loop.pool_targets == "decomposed":
        return encode({"composite": composite, **layers})
    import numpy as np


    # the last layer of the schema is the background the others are printed on ("object" by default)
    background = cfg.model.layers[-1]
    # one draw is just the model's own logo (no better than the adapter): only a consensus is worth trusting
    weight = cfg.loop.consensus_trust if cfg.loop.consensus_draws > 1 else 0.0
    fg_trust = {name: np.full(composite.size[::-1], weight, np.float32) for name in layers if name != background}
    anchored, trust = anchor(composite, layers, threshold=cfg.loop.anchor_threshold, grow=cfg.loop.anchor_grow,
                             background=background, foreground_trust=fg_trust,
                             drawn_threshold=cfg.loop.anchor_drawn_threshold)
    return {**encode({"composite": composite, **anchored}), **encode_trust(trust)}


def cycle_generated(cfg: PipelineConfig, round_: int, unit: Unit) -> dict:
    """Cycle error of generated candidates (composite -> layers -> composite), stored as a stage part."""
    import pandas as pd

    from ...storage import schema as S

    with timed({"unit": unit.name}) as out:
        work = RoundWork(cfg, round_)
        if work.already_done(unit, out, part=PART):
            return out
        judged = work.writer.get_part(JUDGE_PART, unit.name)
        if judged is not None and S.CYCLE_ERROR in judged and judged[S.CYCLE_ERROR].notna().all():
            # the cycle judge already decomposed and re-synthesized these composites: reuse, don't redo
            work.writer.put_part(PART, unit.name, judged[[S.SAMPLE_ID, S.CYCLE_ERROR]].copy())
            out.update(skipped=False, n=len(judged), reused_judge=True)
            return out
        ids, composites = [], []
        for row, panels in work.writer.load_panels(work.unit_rows(unit)):
            ids.append(row[S.SAMPLE_ID])
            composites.append(decode({"composite": panels["composite"]})["composite"])
        errors = _cycle_errors(work.sampler(), composites)[2] if composites else []
        work.writer.put_part(PART, unit.name, pd.DataFrame({S.SAMPLE_ID: ids, S.CYCLE_ERROR: errors}))
        out.update(skipped=False, n=len(ids))
    return out

"""Cycle judge (CPU default): scores from the current model's own cycle plus simple image statistics.

For each candidate triplet (C, L, O) the sampler decomposes C -> (L', O') and re-synthesizes
(L', O') -> C'; it also synthesizes the candidate's own layers (L, O) -> C*. With the mean absolute
error e(., .) in [0, 1] and s(e) = 1 - min(1, e / error_scale), w = cycle_weight:

    logo_clean           = w * s(e(L', L)) + (1 - w) * border_whiteness(L)
    object_clean         = w * s(e(O', O)) + (1 - w) * (1 - logo_residue(O, C, L))
    composite_consistent = w * s(e(C', C)) + (1 - w) * s(e(C*, C))
    realism              = w * s(e(C', C)) + (1 - w) * min(1, grey_std(C) / contrast_target)

`details` carries the per-layer errors (`cycle_error_logo`, `cycle_error_object`, `cycle_error_composite`,
`cycle_error_synthesis`) and `cycle_error` = e(C', C), the same number as models.metrics.cycle_error of the
composite round trip, so the flow's cycle stage can reuse it instead of decomposing twice.
No VLM is involved: this is a weak but free judge, calibrated against the oracle (calibration.py).
"""
from __future__ import annotations

import time

from . import imagestats as st
from .base import BACKGROUND, Judge, JudgeItem, JudgeResult, logo_layers


class CycleJudge(Judge):
    """Needs a sampler: any object with `decompose(composites)` and `synthesize(layers)`."""

    backend = "cycle"

    def __init__(self, cfg, sampler):
        super().__init__(cfg)
        if not (callable(getattr(sampler, "decompose", None)) and callable(getattr(sampler, "synthesize", None))):
            raise ValueError("cycle judge: sampler must have decompose(composites) and synthesize(layers)")
        self.sampler = sampler

    def _score_valid(self, items: list[JudgeItem]) -> list[JudgeResult]:
        start = time.perf_counter()
        decomposed = self.sampler.decompose([it.triplet["composite"] for it in items])
        own_layers = [{k: it.triplet[k] for k in (*logo_layers(it.triplet), BACKGROUND)} for it in items]
        synthesized = self.sampler.synthesize(list(decomposed) + own_layers)
        if len(decomposed) != len(items) or len(synthesized) != 2 * len(items):
            raise ValueError("cycle judge: sampler returned a different number of outputs than inputs")
        latency = (time.perf_counter() - start) / len(items)
        n = len(items)
        return [self._score_one(it, decomposed[i], synthesized[i], synthesized[n + i], latency)
                for i, it in enumerate(items)]

    def _err(self, a, b) -> float:
        if a.size != b.size:
            a = a.resize(b.size)  # a sampler working at another resolution is compared at the candidate's
        return st.mean_abs_error(a, b)

    def _score_one(self, item: JudgeItem, layers: dict, recomposed, synthesized, latency: float) -> JudgeResult:
        cfg, t, logos = self.cfg.cycle, item.triplet, logo_layers(item.triplet)
        per_layer = {k: self._err(layers[k], t[k]) for k in (*logos, BACKGROUND)}
        # several logo layers (K=3): the logo criterion follows the worst of them
        e = {"logo": max(per_layer[k] for k in logos), "object": per_layer[BACKGROUND],
             "composite": self._err(recomposed, t["composite"]), "synthesis": self._err(synthesized, t["composite"])}
        s = {k: 1.0 - min(1.0, v / cfg.error_scale) for k, v in e.items()}
        residue = max(st.logo_residue(t["object"], t["composite"], t[k], white_level=cfg.white_level,
                                      palette_size=cfg.palette_size, tol=cfg.colour_tol) for k in logos)
        whiteness = min(st.border_whiteness(t[k], cfg.white_level, cfg.border_frac) for k in logos)
        stats = {"logo_clean": whiteness,
                 "object_clean": 1.0 - residue,
                 "composite_consistent": s["synthesis"],
                 "realism": min(1.0, st.grey_contrast(t["composite"]) / cfg.contrast_target)}
        cycle = {"logo_clean": s["logo"], "object_clean": s["object"],
                 "composite_consistent": s["composite"], "realism": s["composite"]}
        w = cfg.cycle_weight
        scores = {c: min(1.0, max(0.0, w * cycle[c] + (1.0 - w) * stats[c])) for c in stats}
        details = {f"cycle_error_{k}": v for k, v in e.items()}
        if logos != ["logo"]:
            details.update({f"cycle_error_{k}": v for k, v in per_layer.items()})
        details.update(cycle_error=e["composite"], logo_residue=residue)
        return self.result(item.sample_id, scores, latency_s=latency, details=details)

"""Candidate making (tau_G): adapter r-1 generates whole triplets from the round's prompts, one unit at a time."""
from __future__ import annotations

from ..config import PipelineConfig
from .handles import RoundWork, Unit, timed
from .panels import encode


def round_prompts(cfg: PipelineConfig, round_: int) -> list[str]:
    """The round's candidate prompts: the prompt set cycled to candidates_per_round, offset by round."""
    prompts = cfg.loop.prompt_set()
    if not prompts:
        raise ValueError("loop.prompts is empty: give at least one prompt (or products and logos)")
    n, start = cfg.loop.candidates_per_round, (round_ - 1) * cfg.loop.candidates_per_round
    return [prompts[(start + i) % len(prompts)] for i in range(n)]


def generate(cfg: PipelineConfig, round_: int, unit: Unit) -> dict:
    """tau_G on one batch of prompts with adapter r-1; writes the unit's shard (skipped when done)."""
    from ...storage import schema as S

    with timed({"unit": unit.name}) as out:
        work = RoundWork(cfg, round_)
        if work.already_done(unit, out):
            return out
        prompts = round_prompts(cfg, round_)
        idx = list(unit.items(len(prompts), cfg.loop.batch_size))
        triplets = work.sampler().generate([prompts[i] for i in idx])
        samples = [(work.row(f"r{round_:04d}-{unit.name}-{i:04d}", "generated", **{S.PROMPT: prompts[i]}),
                    encode(t)) for i, t in zip(idx, triplets)]
        out.update(skipped=False, n=len(work.writer.write_unit(unit.name, samples)))
    return out

"""Which class scores for each `judge.backend` name, and how one is built.

Backends are named here as "module:Class" strings and imported only when built, so the judge contract
(base.py) imports no backend and a backend's heavy libraries (transformers, openai) load only when it
is the one configured. A new backend: a `Judge` subclass in its own module, a line in BACKENDS and the
name in `JudgeConfig.backend` (tests/judges/test_registry.py checks the two lists agree).
"""
from __future__ import annotations

import importlib

from .base import Judge
from .config import JudgeConfig

BACKENDS = {
    "cycle": "layerloop.models.judges.cycle:CycleJudge",
    "oracle": "layerloop.models.judges.oracle:OracleJudge",
    "qwen": "layerloop.models.judges.qwen:QwenJudge",
    "openai": "layerloop.models.judges.openai_judge:OpenAIJudge",
}
# The cycle judge scores by decomposing and re-synthesizing, so it is built around a sampler.
NEEDS_SAMPLER = frozenset({"cycle"})


def judge_class(backend: str) -> type[Judge]:
    """The Judge subclass registered for `backend`; ValueError naming the known ones otherwise."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown judge backend {backend!r}; known: {sorted(BACKENDS)}")
    module, _, name = BACKENDS[backend].partition(":")
    return getattr(importlib.import_module(module), name)


def build_judge(cfg: JudgeConfig, *, sampler=None) -> Judge:
    """The judge `cfg.backend` names. `sampler` (decompose/synthesize) is required by the cycle judge."""
    cls = judge_class(cfg.backend)
    if cfg.backend not in NEEDS_SAMPLER:
        return cls(cfg)
    if sampler is None:
        raise ValueError(f"judge backend {cfg.backend!r} needs a sampler (an object with decompose/synthesize)")
    return cls(cfg, sampler)

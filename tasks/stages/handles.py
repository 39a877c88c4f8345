"""What every stage opens, once per call: the store, the round's resumable writer, the shared backbone and
its sampler, and the unit of work a stage runs on.

A stage call builds one `RoundWork(cfg, round_)` and reaches the store, the writer and adapter r-1's
sampler through it, instead of reopening them in every helper. The backbone (and its weights) is built
once per process and model config: building it dominates a small batch's cost.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterator

from ...models.factory import build_backbone
from ...models.sampler import Sampler
from ..config import PipelineConfig
from . import adapter_files

_BACKBONES: dict[str, Any] = {}
_BUILDS: dict[str, int] = {}  # models this process built, by kind: scale-out checks "once per worker"
PROMOTION_FILE = "promotion.json"  # beside an adapter: was it promoted to generate the next round, and why


def adapter_id(round_: int) -> str:
    """How lineage names an adapter: round-0003."""
    return f"round-{round_:04d}"


@dataclass(frozen=True)
class Unit:
    """One batch of a round's work, one Prefect task run: its `kind` (gen | pool) and `index` from 0."""

    kind: str
    index: int

    @property
    def name(self) -> str:
        """How the store and the task-run names spell the unit: gen-0003."""
        return f"{self.kind}-{self.index:04d}"

    def __str__(self) -> str:
        return self.name

    def items(self, n_items: int, batch_size: int) -> range:
        """Indices of the items this unit covers."""
        return range(self.index * batch_size, min(n_items, (self.index + 1) * batch_size))


def units(kind: str, n_items: int, batch_size: int) -> list[Unit]:
    """The units that split n_items into batches: gen-0000, gen-0001, ..."""
    return [Unit(kind, i) for i in range((n_items + batch_size - 1) // batch_size)]


@contextmanager
def timed(result: dict) -> Iterator[dict]:
    """Record the plain function's wall time in `result["seconds"]` (summed into round info and the bench)."""
    start = time.perf_counter()
    try:
        yield result
    finally:
        result["seconds"] = time.perf_counter() - start


def stage_seconds(**stages_: list[dict]) -> dict[str, float]:
    """Seconds of plain-function work per stage, summed over its units (goes into round info)."""
    return {name: round(sum(r.get("seconds", 0.0) for r in results), 4) for name, results in stages_.items()}


def open_store(cfg: PipelineConfig):
    """The config's store; its fsspec options also reach the adapter files kept in it."""
    from ...storage.rounds import RoundStore

    store = RoundStore(cfg.store.uri, cfg.store.storage_options)
    adapter_files.use_store_options(store.url(""), cfg.store.storage_options)
    return store


def generator_round(store, round_: int) -> int:
    """The adapter that makes round r's samples: the newest adapter before r that was promoted.

    An adapter not yet judged for promotion counts as promoted (the flow judges adapter r-1 before round
    r generates anything); adapter 0, the seed adapter, always is.
    """
    for k in range(round_ - 1, 0, -1):
        uri = store.adapter_uri(k)
        if not adapter_files.has_weights(uri):
            continue
        decision = adapter_files.read_json(adapter_files.join(uri, PROMOTION_FILE))
        if decision is None or decision.get("promoted"):
            return k
    return 0


def counts(round_info: dict) -> dict:
    """Accepted and rejected counts of a committed round (what a skipped stage reports)."""
    return {k: round_info.get(k) for k in ("accepted", "rejected") if k in round_info}


def is_committed(cfg: PipelineConfig, round_: int) -> bool:
    return round_ in open_store(cfg).committed_rounds()


def next_round(cfg: PipelineConfig) -> int:
    """The first round not yet committed (rounds >= 1; round 0 belongs to the seed flow)."""
    latest = open_store(cfg).latest_round()
    return 1 if latest is None else latest + 1


def count_build(kind: str) -> None:
    """Note that this process built one more model of `kind` (backbones, judges)."""
    _BUILDS[kind] = _BUILDS.get(kind, 0) + 1


def builds() -> dict[str, int]:
    """Models this process has built so far, by kind (a unit's result carries it: tasks/runtime/executor.py)."""
    return dict(_BUILDS)


def backbone(cfg: PipelineConfig):
    """One backbone per process and model config (the device included: a Ray worker moved to another GPU
    builds it there)."""
    key = cfg.model.model_dump_json()
    if key not in _BACKBONES:
        _BACKBONES.clear()
        _BACKBONES[key] = build_backbone(cfg.model)
        count_build("backbones")
    return _BACKBONES[key]


def sampler(cfg: PipelineConfig, adapter_round: int, store=None):
    """The shared backbone with adapter `adapter_round` loaded (a remote adapter is fetched to a cache)."""
    return sampler_at(cfg, (store or open_store(cfg)).adapter_uri(adapter_round))


def sampler_at(cfg: PipelineConfig, adapter_uri: str):
    """The shared backbone with the adapter at `adapter_uri` loaded (e.g. a control adapter)."""
    return Sampler(backbone(cfg), adapter_files.local_dir(adapter_uri), cfg.sample)


class RoundWork:
    """The handles of one stage call on round r, each opened once: the store, the round's writer, and the
    sampler of the current (last promoted) adapter, which makes round r's samples."""

    def __init__(self, cfg: PipelineConfig, round_: int):
        self.cfg, self.round = cfg, round_
        self.store = open_store(cfg)

    @cached_property
    def generator(self) -> int:
        """The round of the adapter that makes this round's samples (see generator_round)."""
        return generator_round(self.store, self.round)

    @cached_property
    def writer(self):
        """The resumable writer of round r (same round id after a crash reuses its finished units)."""
        r = self.round
        return self.store.begin(r, parent_round=r - 1 if r > 0 else None,
                                adapter_id=adapter_id(self.generator) if r > 0 else None,
                                config=self.cfg.model_dump(mode="json"), **self.cfg.store.writer_options())

    def sampler(self):
        return sampler(self.cfg, self.generator, self.store)

    def unit_rows(self, unit: Unit):
        """The rows the unit has written to the round so far."""
        return self.writer.unit_rows(unit.name)

    def already_done(self, unit: Unit, out: dict, part: str | None = None) -> bool:
        """True, with `out` saying so, when the unit's output is already in the store: a rerun skips it.

        part None: the unit's samples (generate, cycle_pool); else that stage's part table (judge, cycle).
        """
        if part is None and self.writer.unit_done(unit.name):
            out.update(skipped=True, n=len(self.unit_rows(unit)))
            return True
        if part is not None and self.writer.get_part(part, unit.name) is not None:
            out.update(skipped=True)
            return True
        return False

    def row(self, sample_id: str, source: str, **fields: Any) -> dict:
        """A manifest row of this round with its lineage filled in."""
        from ...storage import schema as S

        return S.empty_row(**{S.SAMPLE_ID: sample_id, S.ROUND: self.round, S.SOURCE: source,
                              S.PARENT_ROUND: self.round - 1, S.ADAPTER_ID: adapter_id(self.generator)}, **fields)

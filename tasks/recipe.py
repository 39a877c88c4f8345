"""The one definition of a round: its stages in order, each a plain function with what it runs over and
whether it holds the GPU. The Prefect flow (flows/self_improve.py), the plain driver (tasks/runtime/driver.py)
and the tests all execute these lists through a `Runner`; adding a stage is one entry here and one function
in tasks/stages/.

Round r: measure adapter r-1 (train it on training_view(r-1) if missing, evaluate it on the validation
split and held-out data, promote it or keep the current adapter), the matched-compute control beside it
(loop.control), then the unit stages: generate candidates with the current adapter, judge them, cycle them,
decompose a slice of the unlabeled pool and judge it; then commit round r (single and last) and report it.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Callable, Protocol

from .config import PipelineConfig
from .reporting import summary
from .stages import adapter, commit, consistency, generation, ingest, judging
from .stages.handles import Unit, open_store, stage_seconds, units

# What a stage runs over, and so its arguments after the config:
OVER_ADAPTER = "adapter"  # (adapter_round): one call on the adapter a round measures (r - 1)
OVER_GEN = "gen"          # (round_, unit): one call per batch of generated candidates
OVER_POOL = "pool"        # (round_, unit): one call per batch of the round's pool composites
OVER_ROUND = "round"      # (round_) or (round_, info): one call per round, in the driver's process


def _always(cfg: PipelineConfig, adapter_round: int) -> bool:
    return True


def _control(cfg: PipelineConfig, adapter_round: int) -> bool:
    return cfg.loop.control


def _control_trains(cfg: PipelineConfig, adapter_round: int) -> bool:
    return cfg.loop.control and adapter_round >= 1  # control 0 is the seed adapter itself


@dataclass(frozen=True)
class Stage:
    """One step: `fn(cfg, *args)` per `over` (above). `label` names its Prefect task runs, `timing` the
    round.json timings entry its seconds count toward (None: not counted), `when` whether it runs."""

    name: str
    fn: Callable[..., dict]
    over: str
    gpu: bool
    label: str = ""
    timing: str | None = None
    when: Callable[[PipelineConfig, int], bool] = _always

    @property
    def run_label(self) -> str:
        return self.label or self.name


INGEST = Stage("ingest-seeds", ingest.ingest_seeds, OVER_ROUND, gpu=False)
MEASURE: tuple[Stage, ...] = (
    Stage("train-adapter", adapter.train_adapter, OVER_ADAPTER, gpu=True, timing="train"),
    Stage("evaluate-adapter", adapter.evaluate_adapter, OVER_ADAPTER, gpu=True, timing="evaluate"),
    Stage("train-control", adapter.train_control, OVER_ADAPTER, gpu=True, when=_control_trains),
    Stage("evaluate-control", adapter.evaluate_control, OVER_ADAPTER, gpu=True, when=_control),
)
UNITS: tuple[Stage, ...] = (
    Stage("generate", generation.generate, OVER_GEN, gpu=True, timing="generate"),
    Stage("judge", judging.judge, OVER_GEN, gpu=True, timing="judge"),
    Stage("cycle-generated", consistency.cycle_generated, OVER_GEN, gpu=True, label="cycle", timing="cycle"),
    Stage("cycle-pool", consistency.cycle_pool, OVER_POOL, gpu=True, label="cycle", timing="cycle"),
    Stage("judge", judging.judge, OVER_POOL, gpu=True, timing="judge"),
)
COMMIT = Stage("commit-round", commit.commit_round, OVER_ROUND, gpu=False, label="commit")
REPORT = Stage("report", summary.report, OVER_ROUND, gpu=False)
SEED: tuple[Stage, ...] = MEASURE[:2]  # round 0: the seed LoRA trained and measured, no control yet
ROUND: tuple[Stage, ...] = MEASURE + UNITS + (COMMIT, REPORT)


class Runner(Protocol):
    """Executes stages: in this process (the driver, tests) or as Prefect tasks (the flows)."""

    def run(self, stage: Stage, cfg: PipelineConfig, *args) -> dict: ...

    def run_units(self, stage: Stage, cfg: PipelineConfig, round_: int, units_: list[Unit]) -> list[dict]: ...

    def gpu(self, cfg: PipelineConfig) -> AbstractContextManager: ...


@dataclass
class RoundRun:
    """What one execution of ROUND produced: every stage's results by stage, in order."""

    round: int
    pool_used: int
    results: list[tuple[Stage, list[dict]]] = field(default_factory=list)
    committed: dict | None = None
    reported: dict | None = None

    def of(self, name: str) -> list[dict]:
        return [r for stage, rs in self.results if stage.name == name for r in rs]

    def timed(self) -> list[dict]:
        """The results whose seconds count toward round.json's timings (the control's do not)."""
        return [r for stage, rs in self.results if stage.timing for r in rs]

    def timings(self) -> dict[str, float]:
        buckets: dict[str, list[dict]] = {}
        for stage, rs in self.results:
            if stage.timing:
                buckets.setdefault(stage.timing, []).extend(rs)
        return stage_seconds(**buckets)

    @property
    def task_runs(self) -> int:
        return sum(len(rs) for _, rs in self.results) + (self.committed is not None) + (self.reported is not None)


def round_units(cfg: PipelineConfig, round_: int) -> tuple[int, dict[str, list[Unit]]]:
    """The round's pool size and its units per kind (gen, pool)."""
    n_pool = len(consistency.round_pool(open_store(cfg), cfg, round_))
    return n_pool, {OVER_GEN: units("gen", cfg.loop.candidates_per_round, cfg.loop.batch_size),
                    OVER_POOL: units("pool", n_pool, cfg.loop.batch_size)}


def unit_count(work: dict[str, list[Unit]]) -> int:
    """How many unit task runs ROUND makes over `work` (a progress bar's total)."""
    return sum(len(work[stage.over]) for stage in UNITS)


def measure(cfg: PipelineConfig, adapter_round: int, runner: Runner, stages: tuple[Stage, ...] = MEASURE
            ) -> list[tuple[Stage, list[dict]]]:
    """Train and measure adapter `adapter_round` (and its control, when on): the stages that run, in order."""
    return [(s, [runner.run(s, cfg, adapter_round)]) for s in stages if s.when(cfg, adapter_round)]


def run_round(cfg: PipelineConfig, round_: int, runner: Runner, execution: Callable[[list[dict]], dict] | None = None,
              planned: tuple[int, dict[str, list[Unit]]] | None = None) -> RoundRun:
    """ROUND on round r, stage by stage; `execution` summarises which processes ran the units (round.json);
    `planned` is `round_units`' answer when the caller already asked (the pool is read once)."""
    n_pool, work = planned or round_units(cfg, round_)
    done = RoundRun(round_, n_pool)
    with runner.gpu(cfg):
        done.results += measure(cfg, round_ - 1, runner)
        done.results += [(s, runner.run_units(s, cfg, round_, work[s.over])) for s in UNITS]
    info = commit.round_info(cfg, round_, trained=done.of("train-adapter")[0], measured=done.of("evaluate-adapter")[0],
                             control=(done.of("evaluate-control") or [None])[0], pool_used=n_pool,
                             timings=done.timings())
    if execution is not None:
        info["execution"] = execution(done.timed())
    done.committed = runner.run(COMMIT, cfg, round_, info)
    if cfg.loop.report:
        done.reported = runner.run(REPORT, cfg, round_)
    return done

"""The composed pipeline config: one typed model for a whole run, loaded from YAML with env overrides.

Each package owns its section (storage/config.py, models/config.py, models/judges/config.py); this module
adds the loop's own section and composes them. It sits at the tasks floor because the stages read it;
flows import it from here, and nothing below imports it. A bad config stops a run at once with a
`ConfigError` that names the field path and what to fix. The exact config is saved into every committed round.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from layerloop.models.config import LoraConfig, ModelConfig, SampleConfig, TrainConfig
from layerloop.models.judges.config import JudgeConfig, ThresholdConfig
from layerloop.models.prompts import TEMPLATE, load_prompt_set
from layerloop.storage.config import StoreConfig

ENV_PREFIX = "LAYERLOOP__"

# loop fields that moved: a config that still sets one is told where it went, not just "unknown field".
MOVED_LOOP_FIELDS = {"cycle_error_threshold": "thresholds.max_cycle_error (the one cycle-error threshold)"}

# Product x logo descriptions for tau_G; kept short so the tiny text encoder sees familiar words.
DEFAULT_PRODUCTS = ["mug", "t-shirt", "tote bag", "cap", "bottle", "notebook", "sneaker", "phone case"]
DEFAULT_LOGOS = ["a red circle logo", "a blue star logo", "a green triangle logo", "a black wordmark logo"]


class ConfigError(ValueError):
    """A config that cannot run; the message says which field and what to change."""


class LoopConfig(BaseModel):
    """The self-improving loop: how many rounds, how much to generate, where seeds and the pool live."""

    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(3, ge=1, le=1000, description="run rounds 1..rounds (round 0 is the seed round)")
    candidates_per_round: int = Field(16, ge=1, description="triplets generated with tau_G per round")
    prompts: list[str] | None = Field(
        None, description="prompt set for generation; null = prompts_file, else every product x logo pair")
    prompts_file: str | None = Field(
        None, description="prompt-set JSON written by `layerloop prompts` (used when prompts is null)")
    products: list[str] = Field(default_factory=lambda: list(DEFAULT_PRODUCTS),
                                description="product descriptions crossed with logos when prompts is null")
    logos: list[str] = Field(default_factory=lambda: list(DEFAULT_LOGOS),
                             description="logo descriptions crossed with products when prompts is null")
    seeds_path: str | None = Field(None, description="labeled seed triplets (folder or CSV) for round 0")
    pool_path: str | None = Field(
        None, description="unlabeled composites (folder or CSV) validated into the store's pool once; "
                          "null = use whatever pool the store already holds (layerloop ingest-pool)")
    pool_per_round: int = Field(16, ge=0, description="pool composites decomposed + re-synthesized per round")
    batch_size: int = Field(8, ge=1, description="images per task (one Prefect task per batch, never per image)")
    cycle_keep_composite: Literal["original", "resynthesized"] = Field(
        "original", description="composite stored with a kept pool sample's decomposed layers: the real pool "
                                "image or its re-synthesis from those layers")
    eval_size: int = Field(16, ge=0, description="held-out synthetic test triplets for per-layer PSNR; 0 = off")
    eval_seed: int = Field(1234, description="seed of the held-out split")
    train_final: bool = Field(False, description="after the last round, train and evaluate its adapter too")
    round_train_steps: int | None = Field(
        None, ge=1, description="training steps of an adapter that continues from the previous round's "
                                "(train.continue_from_previous); null = train.steps, as the seed adapter")
    gpu_slot: str = Field("gpu", description="global concurrency limit (strict) held around GPU stages; "
                                             "create it with: prefect gcl create gpu --limit 1")
    gpu_lease_s: float = Field(60.0, ge=60, le=86400, description="lease of a held gpu slot, renewed while the "
                               "task runs; after a kill -9 the slot frees within this + ~15 s (server minimum 60)")
    gpu_wait_s: float | None = Field(3600.0, gt=0, description="give up waiting for the gpu slot after this "
                                     "many seconds, with a message on how to inspect/reset it; null = forever")
    create_gpu_slot: bool = Field(True, description="create the gpu limit (limit 1) when the server lacks it")
    gpu_lock_dir: str | None = Field(None, description="folder of this machine's gpu host lock (flock, released by "
                                     "the kernel when its holder dies); null = the system temp folder")
    store_lock_wait_s: float | None = Field(0.0, ge=0, description="when another run holds the store: 0 = fail at "
                                            "once naming it, N = wait up to N s for it, null = wait as long as it takes")
    wait_report_s: float = Field(30.0, gt=0, le=30, description="a run waiting for the GPU or the store says what "
                                 "it waits for and how to inspect it this often")
    task_retries: int = Field(2, ge=0, le=10, description="retries of a task on a transient failure")
    task_retry_delay_s: float = Field(2.0, ge=0, description="seconds between task retries")
    report: bool = Field(True, description="build report.html/json/png for each committed round")

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        moved = [f"loop.{old} moved to {new}" for old, new in MOVED_LOOP_FIELDS.items()
                 if isinstance(data, dict) and old in data]
        if moved:
            raise ValueError("; ".join(moved))
        return data

    @field_validator("gpu_slot")
    @classmethod
    def _slot_name(cls, v: str) -> str:
        if not v or not all(c.isalnum() or c in "-_" for c in v):
            raise ValueError(f"gpu_slot must be letters, digits, '-' or '_'; got {v!r}")
        return v

    def prompt_set(self) -> list[str]:
        """The prompts of tau_G, in a stable order (its models.prompts.prompt_hash is recorded with every round)."""
        if self.prompts is not None:
            return list(self.prompts)
        if self.prompts_file is not None:
            return list(load_prompt_set(self.prompts_file).prompts)
        return [TEMPLATE.format(product=p, logo=logo) for p in self.products for logo in self.logos]


class PipelineConfig(BaseModel):
    """Everything one run needs. Unknown fields anywhere are errors."""

    model_config = ConfigDict(extra="forbid")

    store: StoreConfig = Field(default_factory=StoreConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    thresholds: ThresholdConfig = Field(default_factory=ThresholdConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)

    def fingerprint(self) -> str:
        """Short stable hash of the config (for caching per-process backbones and logs)."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


def _describe_error(err: dict, source: str) -> str:
    path = ".".join(str(p) for p in err["loc"]) or "<root>"
    if err["type"] == "extra_forbidden":
        return f"{path}: unknown field (typo?) — remove it or fix its name [{source}]"
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{path}: {err['msg']}{shown} [{source}]"


def validate_config(data: dict, source: str = "config") -> PipelineConfig:
    """Build a `PipelineConfig` from plain data, turning validation errors into one clear `ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections, got {type(data).__name__}")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        lines = [_describe_error(e, source) for e in exc.errors()]
        raise ConfigError("invalid layerloop config:\n  " + "\n  ".join(lines)) from None


def env_overrides(environ: dict[str, str] | None = None) -> dict:
    """`LAYERLOOP__SECTION__FIELD=value` pairs as a nested dict; values parse as YAML scalars/lists."""
    out: dict = {}
    for key, raw in (os.environ if environ is None else environ).items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX):].split("__")]
        if len(path) < 2 or not all(path):
            raise ConfigError(f"env {key}: expected LAYERLOOP__SECTION__FIELD=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"env {key}: value is not valid YAML: {exc}") from None
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def deep_merge(base: dict, extra: dict) -> dict:
    """Merge `extra` into a copy of `base`, recursing into mappings."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | os.PathLike) -> dict:
    """Read one YAML config file; a missing or malformed file is a ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found — pass an existing file or run `layerloop init`")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {p} cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: top level must be a mapping of sections")
    return data


def load_config(path: str | os.PathLike | None = None, *, defaults: dict | None = None,
                overrides: dict | None = None, environ: dict[str, str] | None = None) -> PipelineConfig:
    """The one precedence, validated once: built-in defaults < `defaults` (a caller's own sizes, e.g. the
    demo's) < the YAML file at `path` < LAYERLOOP__* env (`environ`, default os.environ) < `overrides`
    (command-line flags). The CLI picks `path` (--config, else ./layerloop.yaml): flows/cli_config.py."""
    data = deep_merge(defaults or {}, read_yaml(path) if path is not None else {})
    data = deep_merge(data, env_overrides(environ))
    data = deep_merge(data, overrides or {})
    source = f"{path}" if path is not None else "defaults"
    return validate_config(data, source)


def _yaml_value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()


def _field_lines(model: BaseModel, indent: str) -> list[str]:
    lines: list[str] = []
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            lines += _section_lines(name, value, indent)
            continue
        doc = info.description or f"{name} ({_type_name(info.annotation)})"
        lines.append(f"{indent}# {doc}")
        lines.append(f"{indent}{name}: {_yaml_value(value)}")
    return lines


def _type_name(annotation: Any) -> str:
    if getattr(annotation, "__origin__", None) is None and hasattr(annotation, "__name__"):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _section_lines(name: str, section: BaseModel, indent: str) -> list[str]:
    doc = (type(section).__doc__ or "").strip().splitlines()
    head = [f"{indent}# {doc[0]}"] if doc else []
    return head + [f"{indent}{name}:"] + _field_lines(section, indent + "  ")


def default_yaml_text() -> str:
    """A commented default layerloop.yaml: every section and field with its description."""
    lines = ["# layerloop configuration. Every field has a default (the tiny CPU world).",
             "# Env overrides: LAYERLOOP__SECTION__FIELD=value (e.g. LAYERLOOP__LOOP__ROUNDS=5).", ""]
    cfg = PipelineConfig()
    for name in PipelineConfig.model_fields:
        lines += _section_lines(name, getattr(cfg, name), "") + [""]
    return "\n".join(lines)

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
from typing import Any, Callable, Iterable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..models.config import LAB_LEVER, LoraConfig, ModelConfig, SampleConfig, TrainConfig, lab
from ..models.judges.config import JudgeConfig, ThresholdConfig
from ..models.prompts import TEMPLATE, load_prompt_set
from ..storage.config import StoreConfig

ENV_PREFIX = "LAYERLOOP__"

# loop fields that moved: a config that still sets one is told where it went, not just "unknown field".
MOVED_LOOP_FIELDS = {"cycle_error_threshold": "thresholds.max_cycle_error (the one cycle-error threshold)"}

# Product x logo descriptions for tau_G; kept short so the tiny text encoder sees familiar words.
DEFAULT_PRODUCTS = ["mug", "t-shirt", "tote bag", "cap", "bottle", "notebook", "sneaker", "phone case"]
DEFAULT_LOGOS = ["a red circle logo", "a blue star logo", "a green triangle logo", "a black wordmark logo"]


class ConfigError(ValueError):
    """A config that cannot run; the message says which field and what to change."""


# env var names that look like credentials: they would be saved into every round's config.json
_SECRET_NAME = ("KEY", "SECRET", "TOKEN", "PASSWORD", "CREDENTIAL")


class RayConfig(BaseModel):
    """Ray execution of a round (loop.executor: ray): where the cluster is and what each unit reserves."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(
        None, description="Ray cluster to join: auto (the cluster of this node), host:6379 or ray://host:10001; "
                          "null = start a local Ray for the run. The auth token comes from RAY_AUTH_TOKEN or "
                          "~/.ray/auth_token, never from here (docs/scale-out.md)")
    num_cpus: float = Field(1.0, gt=0, description="CPUs each unit (a batch of generate/judge/cycle, or a "
                                                   "training) reserves on its worker")
    num_gpus: float = Field(0.0, ge=0, description="GPUs each unit reserves; 1 = every unit on a GPU of its own "
                                                   "(replaces the strict gpu slot of the local executor)")
    local_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray started when address is null "
                                                           "(= units in parallel); null = all of this machine's")
    local_gpus: int | None = Field(None, ge=0, description="GPUs of the local Ray started when address is null; "
                                                           "null = the GPUs Ray finds")
    reuse_workers: bool = Field(True, description="GPU units keep their worker process, and so its model, from "
                                                  "unit to unit (Ray would start a new process per GPU task)")
    max_retries: int = Field(3, ge=0, le=20, description="times Ray reruns a unit whose worker process died "
                                                         "(a rerun skips what the unit already wrote)")
    runtime_env: dict[str, Any] = Field(
        default_factory=dict, description="Ray runtime_env of the run's workers, e.g. {working_dir: .} to ship "
                                          "this checkout; no credentials in env_vars (they would be saved "
                                          "with every round): give the cluster's nodes their own env")

    @field_validator("address")
    @classmethod
    def _resolved(cls, v: str | None) -> str | None:
        if v is not None and ("{{" in v or not v.strip()):
            raise ValueError(f"address {v!r} is not a Ray address: a prefect.yaml placeholder left unresolved? "
                             "Set LAYERLOOP_RAY_ADDRESS before `prefect deploy`, or give host:6379 / auto")
        return v

    @field_validator("runtime_env")
    @classmethod
    def _no_secrets(cls, v: dict[str, Any]) -> dict[str, Any]:
        env = v.get("env_vars") or {}
        if not isinstance(env, dict):
            raise ValueError("runtime_env.env_vars must be a mapping of names to strings")
        bad = sorted(k for k in env if any(word in str(k).upper() for word in _SECRET_NAME))
        if bad:
            raise ValueError(f"runtime_env.env_vars {bad} look like credentials; set them in the workers' own "
                             "environment (or a Prefect Secret block), not in the config that every round saves")
        return v


class LoopConfig(BaseModel):
    """The self-improving loop: how many rounds, how much to generate, where seeds and the pool live."""

    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(3, ge=1, le=1000, description="run rounds 1..rounds (round 0 is the seed round)")
    candidates_per_round: int = Field(
        0, ge=0, description="triplets generated with tau_G per round; 0 = off (default: on the tiny world "
                             "0-3 % of them passed the judge and they added nothing the pool does not)")
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
    pool_targets: Literal["anchored", "decomposed"] = lab(
        "anchored", description="what a kept pool sample trains on: anchored = the real composite wherever the "
                                "model left it unchanged (trusted), the model's layers elsewhere (untrusted, "
                                "decomposition only); decomposed = the model's own layers as plain targets "
                                "(measured to make the decomposer worse)")
    anchor_threshold: float = lab(
        64.0, ge=0, le=255, description="anchored targets: a pixel the model's object departs from the composite "
                                        "by more than this (0-255, max over channels) is the logo's footprint")
    anchor_grow: int = lab(1, ge=0, le=8, description="anchored targets: pixels the footprint is grown by")
    anchor_drawn_threshold: float | None = lab(
        None, ge=0, le=255, description="anchored targets: pixels where the decomposed logo departs from white by "
                                        "more than this join the footprint too (the object's difference from the "
                                        "composite misses faint logo pixels, which would be trusted as object); "
                                        "null = the difference alone")
    consensus_draws: int = lab(
        6, ge=1, le=32, description="decompositions of every pool composite, each from its own noise; with more "
                                    "than 1 the candidate's layers are their per-pixel mean (the consensus), which "
                                    "beats any single draw against the truth")
    consensus_trust: float = lab(
        0.5, ge=0, le=1, description="anchored targets: trust of every pixel of the consensus logo (the mean of "
                                     "the draws); 0 = the logo of a pool sample is never a target. A single "
                                     "draw's logo (consensus_draws 1) is never trusted")
    validation_size: int = Field(
        10, ge=0, description="labeled seeds held out of training as the validation split (chosen by id hash "
                              "when round 0 is ingested, at most a fifth of them; fixed from then on)")
    promotion_tolerance_db: float | None = Field(
        0.3, ge=0, description="adapter r generates round r+1 only if its validation PSNR (logo and object) is "
                               "not below the current adapter's by more than this, a drop counting only when the "
                               "split resolves it (paired 95 % interval of the change below 0); null = always "
                               "promote")
    control: bool = Field(
        False, description="also train a matched-compute control beside every round (same steps, labeled seeds "
                           "only) and report the loop against it")
    cycle_keep_composite: Literal["original", "resynthesized"] = lab(
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
    executor: Literal["local", "ray"] = Field(
        "local", description="where a round's units run: local = one after another in this process, under the "
                             "gpu slot; ray = in parallel on Ray workers (loop.ray; install layerloop[ray])")
    ray: RayConfig = Field(default_factory=RayConfig)
    secret_env: dict[str, str] = Field(
        default_factory=dict, description="environment variables a run reads from Prefect Secret blocks, "
                                          "{VARIABLE: block name}, e.g. {AWS_SECRET_ACCESS_KEY: s3-secret}; names "
                                          "only, values never logged or saved (tasks/runtime/secrets.py)")

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        moved = [f"loop.{old} moved to {new}" for old, new in MOVED_LOOP_FIELDS.items()
                 if isinstance(data, dict) and old in data]
        if moved:
            raise ValueError("; ".join(moved))
        return data

    @field_validator("secret_env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        bad = sorted(k for k in v if not k or not all(c.isalnum() or c == "_" for c in k) or k[0].isdigit())
        if bad:
            raise ValueError(f"secret_env keys must be environment variable names, got {bad}")
        return v

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

    @model_validator(mode="after")
    def _judge_reads_the_schema(self) -> "PipelineConfig":
        # the VLM judges' prompts and grids are the three-panel ones; cycle and oracle read any logo count
        if self.judge.backend in ("qwen", "openai") and list(self.model.layers) != ["logo", "object"]:
            raise ValueError(f"judge.backend {self.judge.backend!r} reads three-panel triplets (composite, logo, "
                             f"object); model.layers {self.model.layers} needs judge.backend cycle or oracle")
        return self

    def fingerprint(self) -> str:
        """Short stable hash of the config (for caching per-process backbones and logs)."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


def _describe_error(err: dict, source: str | Callable[[tuple], str]) -> str:
    path = ".".join(str(p) for p in err["loc"]) or "<root>"
    where = source(tuple(err["loc"])) if callable(source) else source
    if err["type"] == "extra_forbidden":
        return f"{path}: unknown field (typo?) — remove it or fix its name [{where}]"
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{path}: {err['msg']}{shown} [{where}]"


def validate_config(data: dict, source: str | Callable[[tuple], str] = "config") -> PipelineConfig:
    """Build a `PipelineConfig` from plain data, turning validation errors into one clear `ConfigError`.

    `source` names where a bad value came from: one label, or a function of the field's path (load_config
    passes one that says which file line, env variable or flag set it)."""
    if not isinstance(data, dict):
        where = source(()) if callable(source) else source
        raise ConfigError(f"{where}: top level must be a mapping of sections, got {type(data).__name__}")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        lines = [_describe_error(e, source) for e in exc.errors()]
        raise ConfigError("invalid layerloop config:\n  " + "\n  ".join(lines)) from None


def _env_items(environ: dict[str, str] | None) -> list[tuple[tuple[str, ...], str, Any]]:
    """(field path, variable name, parsed value) of every LAYERLOOP__SECTION__FIELD variable."""
    items = []
    for key, raw in (os.environ if environ is None else environ).items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = tuple(p.lower() for p in key[len(ENV_PREFIX):].split("__"))
        if len(path) < 2 or not all(path):
            raise ConfigError(f"env {key}: expected LAYERLOOP__SECTION__FIELD=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"env {key}: value is not valid YAML: {exc}") from None
        items.append((path, key, value))
    return items


def env_overrides(environ: dict[str, str] | None = None) -> dict:
    """`LAYERLOOP__SECTION__FIELD=value` pairs as a nested dict; values parse as YAML scalars/lists."""
    return nest((path, value) for path, _, value in _env_items(environ))


def nest(items: Iterable[tuple[tuple[str, ...], Any]]) -> dict:
    """(field path, value) pairs as the nested dict a config layer is, e.g. (("loop", "rounds"), 3)."""
    out: dict = {}
    for path, value in items:
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def round_config(store_uri: str, round_: int, changes: dict | None = None) -> PipelineConfig:
    """The config committed round `round_` ran with, pointed at where its store is now (stores move between
    machines), with `changes` merged in: how a benchmark re-reads a finished run."""
    from ..storage.rounds import RoundStore

    saved = RoundStore(store_uri).round_info(round_)["config"]
    data = deep_merge(deep_merge(saved, {"store": {"uri": store_uri}}), changes or {})
    return validate_config(data, source=f"{store_uri} round {round_}")


def deep_merge(base: dict, extra: dict) -> dict:
    """Merge `extra` into a copy of `base`, recursing into mappings."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_text(p: Path) -> str:
    if not p.is_file():
        raise ConfigError(f"config file {p} not found — pass an existing file or run `layerloop init`")
    try:
        return p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p} cannot be read: {exc}") from None


def _parse_yaml(text: str, p: Path) -> Any:
    """The file's data; a syntax error names the file, line and column (PyYAML says `<unicode string>`)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(p)
        context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and context_mark is not None:
            context = f"{context} (from line {context_mark.line + 1})"
        problem = "; ".join(str(x) for x in (getattr(exc, "problem", None), context) if x)
        raise ConfigError(f"config file {where}: not valid YAML: {problem or exc}") from None


def yaml_lines(text: str) -> dict[tuple[str, ...], int]:
    """Field path -> 1-based line of its key in a YAML mapping document (for error messages)."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        for key, value in node.value:
            sub = (*path, str(key.value))
            lines[sub] = key.start_mark.line + 1
            walk(value, sub)

    walk(yaml.compose(text, Loader=yaml.SafeLoader), ())
    return lines


def _read_config_file(path: str | os.PathLike) -> tuple[dict, dict[tuple[str, ...], int]]:
    p = Path(path)
    text = _read_text(p)
    data = _parse_yaml(text, p)
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: top level must be a mapping of sections")
    return data, yaml_lines(text)


def _paths(data: Any, prefix: tuple = ()) -> set[tuple]:
    """Every field path a nested dict sets (mappings and their leaves)."""
    if not isinstance(data, dict):
        return set()
    out: set[tuple] = set()
    for key, value in data.items():
        out |= {(*prefix, key)} | _paths(value, (*prefix, key))
    return out


def _origin(loc: tuple, layers: list[tuple[str, dict[tuple, str]]]) -> str:
    """Where the value at `loc` came from: the layer that sets the longest part of its path (the higher
    layer on a tie, as it won the merge); else the highest layer setting something under it."""
    loc = tuple(str(p) for p in loc)
    best, best_len = None, 0
    for name, labels in layers:  # highest precedence first
        for path, label in labels.items():
            if loc[:len(path)] == path and len(path) > best_len:
                best, best_len = label or name, len(path)
    if best is not None:
        return best
    below = [label or name for name, labels in layers for path, label in labels.items() if path[:len(loc)] == loc]
    return below[0] if below else "defaults"


def load_config(path: str | os.PathLike | None = None, *, defaults: dict | None = None,
                overrides: dict | None = None, environ: dict[str, str] | None = None) -> PipelineConfig:
    """The one precedence, validated once: built-in defaults < `defaults` (a caller's own sizes, e.g. the
    demo's) < the YAML file at `path` < LAYERLOOP__* env (`environ`, default os.environ) < `overrides`
    (command-line flags). The CLI picks `path` (--config, else ./layerloop.yaml): flows/cli/config.py.
    An invalid value is reported with where it came from: `file:line`, the env variable, or a flag."""
    file_data, lines = _read_config_file(path) if path is not None else ({}, {})
    env = _env_items(environ)
    data = deep_merge(defaults or {}, file_data)
    data = deep_merge(data, nest((p, value) for p, _, value in env))
    data = deep_merge(data, overrides or {})
    layers = [  # highest precedence first
        ("command-line flag", dict.fromkeys(_paths(overrides or {}), "")),
        ("env", {p: f"env {key}" for p, key, _ in env}),
        (str(path), {p: f"{path}:{lines[p]}" if p in lines else str(path) for p in _paths(file_data)}),
        ("defaults", dict.fromkeys(_paths(defaults or {}), "")),
    ]
    return validate_config(data, lambda loc: _origin(loc, layers))


def _yaml_value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()


def is_lab_lever(info: Any) -> bool:
    """A field marked with models.config.lab: a research lever (research/README.md has its verdict)."""
    return bool((info.json_schema_extra or {}).get(LAB_LEVER)) if isinstance(info.json_schema_extra, dict) else False


def lab_levers(model: type[BaseModel] = None, prefix: tuple = ()) -> list[str]:
    """Dotted paths of every research lever of the config (`train.anchor_fraction`, ...)."""
    out: list[str] = []
    for name, info in (model or PipelineConfig).model_fields.items():
        sub = info.annotation if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel) else None
        if sub is not None:
            out += lab_levers(sub, (*prefix, name))
        elif is_lab_lever(info):
            out.append(".".join((*prefix, name)))
    return out


def _field_lines(model: BaseModel, indent: str) -> list[str]:
    lines: list[str] = []
    for name, info in type(model).model_fields.items():
        if is_lab_lever(info):
            continue  # accepted when set, never written out: the product's default is the measured choice
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
    body = _field_lines(section, indent + "  ")
    return head + [f"{indent}{name}:"] + body if body else []  # a section of research levers only stays out


def default_yaml_text(values: dict | None = None) -> str:
    """A commented default layerloop.yaml: every section and field with its description; `values` (e.g.
    {"store": {"uri": DIR}} from `layerloop init --store DIR`) replace the defaults they name."""
    lines = ["# layerloop configuration. Every field has a default (the tiny CPU world).",
             "# Env overrides: LAYERLOOP__SECTION__FIELD=value (e.g. LAYERLOOP__LOOP__ROUNDS=5).",
             "# Research levers (anchoring, consensus, cycle-term variants, the CPU judge's internals) are accepted",
             "# too but not listed here: research/README.md says what each measured.", ""]
    cfg = validate_config(values or {}, "layerloop init")
    for name in PipelineConfig.model_fields:
        lines += _section_lines(name, getattr(cfg, name), "") + [""]
    return "\n".join(lines)

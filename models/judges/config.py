"""Typed config of the judges (which backend scores candidates, and how) and of the thresholds applied later.

Scores are stored first and thresholds applied afterwards, so `ThresholdConfig` is separate from
`JudgeConfig`: re-tuning a threshold never needs re-judging. Every score is in [0, 1]. Defaults describe
the CPU world (the `cycle` judge); unknown fields are errors so a typo stops the run at once.
"""
from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..config import lab

CRITERIA = ("logo_clean", "object_clean", "composite_consistent", "realism")


def safe_url(url: str) -> str:
    """A URL fit for messages and logs: no user:password@ and no query (some servers take keys there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OracleJudgeConfig(_Section):
    """Synthetic world only: scores from ground truth; PSNR in dB mapped linearly onto [0, 1]."""

    psnr_floor: float = Field(12.0, description="PSNR (dB) that maps to score 0")
    psnr_ceiling: float = Field(32.0, description="PSNR (dB) that maps to score 1")

    @model_validator(mode="after")
    def _ordered(self) -> "OracleJudgeConfig":
        if self.psnr_ceiling <= self.psnr_floor:
            raise ValueError("judge.oracle.psnr_ceiling must be greater than psnr_floor")
        return self


class CycleJudgeConfig(_Section):
    """CPU judge: decompose -> re-synthesize cycle error blended with simple image statistics."""

    cycle_weight: float = lab(0.5, ge=0.0, le=1.0, description="share of the cycle term in each criterion")
    error_scale: float = lab(0.25, gt=0.0, description="mean abs error (0-1 units) that maps to score 0")
    white_level: int = lab(230, ge=0, le=255, description="min channel value counted as white background")
    border_frac: float = lab(0.125, gt=0.0, le=0.5, description="width of the logo panel's border ring")
    colour_tol: float = lab(40.0, gt=0.0, description="RGB distance to a logo colour counted as residue")
    palette_size: int = lab(6, ge=1, le=32)
    contrast_target: float = lab(0.08, gt=0.0, description="grey std (0-1) of a composite that scores 1")


class QwenJudgeConfig(_Section):
    """Local Qwen2.5-VL: one yes/no question per criterion, score = P(Yes) / (P(Yes) + P(No))."""

    path: str | None = Field(None, description="local Qwen2.5-VL model directory")
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(8, ge=1, description="sequences per forward pass (items x criteria)")
    min_pixels: int = Field(56 * 56, ge=28 * 28)
    max_pixels: int = Field(1024 * 28 * 28, ge=28 * 28)
    questions: dict[str, str] | None = Field(None, description="override the yes/no question per criterion")

    @model_validator(mode="after")
    def _check(self) -> "QwenJudgeConfig":
        if self.max_pixels < self.min_pixels:
            raise ValueError("judge.qwen.max_pixels must be >= min_pixels")
        if self.questions is not None and set(self.questions) != set(CRITERIA):
            raise ValueError(f"judge.qwen.questions must have exactly the keys {list(CRITERIA)}")
        return self


class OpenAIJudgeConfig(_Section):
    """Any OpenAI-compatible chat-completions server (vLLM, GPT-4o). The key itself is never in config."""

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    api_key_env: str | None = Field("OPENAI_API_KEY", description="env var holding the key; None = no auth")
    api_key_secret: str | None = Field(None, description="Prefect Secret block name; wins over api_key_env")
    concurrency: int = Field(8, ge=1, le=1024)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(4, ge=0, le=20)
    backoff_base_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    jitter: float = Field(0.5, ge=0, le=1, description="fraction of each backoff drawn at random")
    retry_on_bad_json: bool = True
    structured_output: Literal["none", "response_format", "vllm"] = "response_format"
    max_tokens: int = Field(400, ge=16)
    temperature: float = Field(0.0, ge=0)
    scale_min: float = Field(1.0, description="the model answers on [scale_min, scale_max]; normalised to [0,1]")
    scale_max: float = 5.0
    image_detail: Literal["auto", "low", "high"] = "auto"

    def endpoint(self) -> str:
        """The server and model, as errors name them (never the key, nor credentials in the URL)."""
        return f"{safe_url(self.base_url)} (model {self.model})"

    @model_validator(mode="after")
    def _check(self) -> "OpenAIJudgeConfig":
        if self.scale_max <= self.scale_min:
            raise ValueError("judge.openai.scale_max must be greater than scale_min")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"judge.openai.base_url must be an http(s) URL; got {self.base_url!r}")
        return self


class JudgeConfig(_Section):
    """Which judge scores candidates; each backend has its own sub-section."""

    backend: Literal["cycle", "oracle", "qwen", "openai"] = "cycle"
    overall: Literal["mean", "min"] = Field("mean", description="how criteria combine into the overall score")
    cycle: CycleJudgeConfig = Field(default_factory=CycleJudgeConfig)
    oracle: OracleJudgeConfig = Field(default_factory=OracleJudgeConfig)
    qwen: QwenJudgeConfig = Field(default_factory=QwenJudgeConfig)
    openai: OpenAIJudgeConfig = Field(default_factory=OpenAIJudgeConfig)
    max_unscored_fraction: float = Field(
        0.2, ge=0.0, le=1.0, description="a round with a larger share of candidates the judge could not score "
        "(server errors, bad answers; not invalid items) fails uncommitted instead of rejecting them, and a "
        "rerun judges those again; the judge stage stops as soon as the share is sure to be passed")

    def endpoint(self) -> str:
        """What scores the candidates, as error messages name it: the openai server, the qwen path, or the backend."""
        if self.backend == "openai":
            return f"openai-compatible server {self.openai.endpoint()}"
        if self.backend == "qwen":
            return f"qwen at {self.qwen.path}"
        return f"the {self.backend} judge"

    @model_validator(mode="after")
    def _qwen_needs_path(self) -> "JudgeConfig":
        if self.backend == "qwen" and not self.qwen.path:
            raise ValueError("judge.qwen.path is required for backend 'qwen' (a local Qwen2.5-VL directory)")
        return self


class ThresholdConfig(_Section):
    """Acceptance rule applied to stored scores: per-criterion and overall minimums, then the cycle-error maximum."""

    logo_clean: float = Field(0.5, ge=0.0, le=1.0)
    object_clean: float = Field(
        0.4, ge=0.0, le=1.0, description="the cycle judge compares one fresh decomposition with the candidate's; "
                                         "a consensus candidate (loop.consensus_draws) is the mean of several, so "
                                         "the distance grows: at 0.5, 2 of 128 consensus candidates passed")
    composite_consistent: float = Field(0.5, ge=0.0, le=1.0)
    realism: float = Field(0.3, ge=0.0, le=1.0)
    overall: float = Field(0.6, ge=0.0, le=1.0)
    max_cycle_error: float | None = Field(
        0.05, ge=0.0, description="cycle rule: reject rows whose cycle_error (decompose -> re-synthesize vs the "
                                  "composite) is above this; rows without one pass; null = no cycle rule")

    def minimums(self) -> dict[str, float]:
        """Per-criterion minimums keyed by criterion name (overall excluded)."""
        return {c: float(getattr(self, c)) for c in CRITERIA}

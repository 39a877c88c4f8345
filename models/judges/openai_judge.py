"""OpenAI-compatible judge: any chat-completions server (vLLM serving Qwen2.5-VL, GPT-4o, ...).

Each item is one request: the three panels as PNG data URLs plus instructions asking for JSON scores on
[scale_min, scale_max] per criterion (normalised to [0, 1] here). Requests run concurrently under a
semaphore (`concurrency`), each with a timeout. The openai client's own retries are off (max_retries=0):
retries happen here, with exponential backoff and jitter, on 429, 5xx, timeouts, connection errors and
(when `retry_on_bad_json`) malformed / truncated / schema-violating answers, each one logged. After the
last attempt the item is unscored with the last error, and the acceptance rule never accepts it.
Answers no retry can fix (401/403: the key; 404: the model or path; a host name that does not resolve)
stop the whole batch at once with `JudgeUnavailable`, naming the endpoint and what to check.

The API key comes from a Prefect Secret block or an env var; it is kept out of repr, logs, errors and
results (any echo of it is replaced with ***).
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import random
import socket
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from .base import PANELS, Judge, JudgeItem, JudgeResult, JudgeUnavailable
from .config import CRITERIA, JudgeConfig, OpenAIJudgeConfig

log = logging.getLogger("layerloop.judges.openai")

SAMPLE_HEADER = "X-Layerloop-Sample"
RAW_LIMIT = 2000

CRITERION_TEXT = {
    "logo_clean": "the LOGO image shows only the logo, complete, on a clean plain white background",
    "object_clean": "the OBJECT image shows the product with no trace of the logo (no residue, ghosting or hole)",
    "composite_consistent": ("the COMPOSITE is exactly this object wearing exactly this logo, with lighting, "
                             "perspective and curvature that fit the surface"),
    "realism": "the COMPOSITE looks like a real photograph of a real product",
}


class BadResponse(ValueError):
    """The server answered, but not with usable JSON scores."""


class RetryableHTTP(Exception):
    """A transient transport/HTTP failure worth another attempt (429, 5xx, timeout, connection)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Fatal(Exception):
    """An answer no retry can fix; `hint` says which setting to check."""

    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.hint = hint


FATAL_STATUS = {
    401: "the server refused the API key: check the key behind judge.openai.api_key_env / api_key_secret",
    403: "the server refused the API key: check the key behind judge.openai.api_key_env / api_key_secret",
    404: "the server knows no such model or path: check judge.openai.model and judge.openai.base_url "
         "(usually ending in /v1)",
}


def resolve_api_key(cfg: OpenAIJudgeConfig) -> str:
    """The key from the Prefect Secret block, else the env var; 'EMPTY' for servers without auth."""
    if cfg.api_key_secret:
        from prefect.blocks.system import Secret

        return Secret.load(cfg.api_key_secret).get()
    if cfg.api_key_env is None:
        return "EMPTY"
    key = os.environ.get(cfg.api_key_env)
    if not key:
        raise ValueError(f"judge.openai: env var {cfg.api_key_env} is not set; set it, name a Prefect Secret "
                         "block in judge.openai.api_key_secret, or set api_key_env: null for a server without auth")
    return key


def png_data_url(image) -> str:
    """PIL image -> data:image/png;base64 URL."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def score_schema(cfg: OpenAIJudgeConfig) -> dict:
    """JSON schema of one answer: a number per criterion on the configured scale, plus a short comment."""
    number = {"type": "number", "minimum": cfg.scale_min, "maximum": cfg.scale_max}
    props = {c: dict(number) for c in CRITERIA}
    props["comment"] = {"type": "string"}
    return {"type": "object", "properties": props, "required": [*CRITERIA, "comment"], "additionalProperties": False}


def system_prompt(cfg: OpenAIJudgeConfig) -> str:
    lines = [f'- "{c}": {text}' for c, text in CRITERION_TEXT.items()]
    return ("You are a strict quality judge for layered product images. You get three images: COMPOSITE "
            "(a product with a printed logo), LOGO (the logo alone) and OBJECT (the same product without "
            f"the logo). Rate each criterion from {cfg.scale_min:g} (fails) to {cfg.scale_max:g} (perfect):\n"
            + "\n".join(lines)
            + '\nAnswer with one JSON object only, with these keys and a short "comment", nothing else.')


def build_messages(item: JudgeItem, cfg: OpenAIJudgeConfig) -> list[dict]:
    content: list[dict] = [{"type": "text", "text": f"Product description: {item.prompt or '(none)'}"}]
    for panel in PANELS:
        content.append({"type": "text", "text": f"{panel.upper()}:"})
        content.append({"type": "image_url",
                        "image_url": {"url": png_data_url(item.triplet[panel]), "detail": cfg.image_detail}})
    return [{"role": "system", "content": system_prompt(cfg)}, {"role": "user", "content": content}]


def structured_output_kwargs(cfg: OpenAIJudgeConfig, schema: dict, name: str) -> dict:
    """Request kwargs that make the server enforce the schema (NOTES: vLLM >= 0.12 uses structured_outputs)."""
    if cfg.structured_output == "response_format":
        return {"response_format": {"type": "json_schema",
                                    "json_schema": {"name": name, "schema": schema, "strict": True}}}
    if cfg.structured_output == "vllm":
        return {"extra_body": {"structured_outputs": {"json": schema}}}
    return {}


def extract_json(text: str | None, finish_reason: str | None) -> Any:
    """The first JSON value in a model answer, tolerating code fences and prose around it."""
    if text is None or not text.strip():
        raise BadResponse(f"empty answer (finish_reason={finish_reason})")
    stripped = text.strip()
    start = min([i for i in (stripped.find("{"), stripped.find("[")) if i >= 0], default=-1)
    if start < 0:
        raise BadResponse(f"malformed JSON: no object in answer {stripped[:80]!r}")
    try:
        value, _ = json.JSONDecoder().raw_decode(stripped[start:])
    except json.JSONDecodeError as exc:
        kind = "truncated JSON" if finish_reason == "length" or exc.pos >= len(stripped[start:]) - 1 else "malformed JSON"
        raise BadResponse(f"{kind} (finish_reason={finish_reason}): {exc.msg} at {exc.pos}") from None
    return value


def _number(value: Any, key: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise BadResponse(f"schema violation: {key}={value!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadResponse(f"schema violation: {key}={value!r} is not a number")
    return float(value)


def parse_scores(text: str | None, finish_reason: str | None, cfg: OpenAIJudgeConfig) -> dict[str, float]:
    """Normalised scores in [0, 1] from an answer; BadResponse says what is wrong with it."""
    value = extract_json(text, finish_reason)
    if not isinstance(value, dict):
        raise BadResponse(f"schema violation: expected an object, got {type(value).__name__}")
    missing = [c for c in CRITERIA if c not in value]
    if missing:
        raise BadResponse(f"schema violation: missing {missing}")
    scores = {}
    for crit in CRITERIA:
        raw = _number(value[crit], crit)
        if not cfg.scale_min <= raw <= cfg.scale_max:
            raise BadResponse(f"schema violation: {crit}={raw:g} outside [{cfg.scale_min:g}, {cfg.scale_max:g}]")
        scores[crit] = (raw - cfg.scale_min) / (cfg.scale_max - cfg.scale_min)
    return scores


def _causes(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _connection_detail(exc: BaseException) -> str:
    """The OS-level reason under an openai connection error (`Connection refused`), else its class name."""
    for cause in _causes(exc):
        if isinstance(cause, OSError) and cause.errno:
            return os.strerror(cause.errno)  # asyncio words it "Connect call failed (...)"; errno is plainer
    return type(exc).__name__


def classify(exc: BaseException) -> Exception:
    """Map openai exceptions onto RetryableHTTP (try again), Fatal (stop the judge) or a final ValueError."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return RetryableHTTP("timeout")
    if isinstance(exc, openai.APIConnectionError):
        if any(isinstance(c, socket.gaierror) for c in _causes(exc)):
            return Fatal("unresolvable host", "the host name in judge.openai.base_url does not resolve")
        return RetryableHTTP(f"connection error: {_connection_detail(exc)}")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status in FATAL_STATUS:
            return Fatal(f"HTTP {status}", FATAL_STATUS[status])
        if status == 429 or status >= 500:
            return RetryableHTTP(f"HTTP {status}", _retry_after(exc.response))
        return ValueError(f"HTTP {status} (not retried)")
    return exc if isinstance(exc, Exception) else RuntimeError(str(exc))


def _retry_after(response) -> float | None:
    try:
        return float(response.headers.get("retry-after"))
    except (TypeError, ValueError, AttributeError):
        return None


@dataclass
class Outcome:
    """What one call-with-retries produced: a value, or the last error, plus attempts and raw text."""

    value: Any
    error: str | None
    attempts: int
    raw: str
    latency_s: float


def backoff_delay(attempt: int, cfg: OpenAIJudgeConfig, retry_after: float | None, rng: random.Random) -> float:
    """Exponential backoff with jitter; a server's Retry-After is honoured up to backoff_max_s."""
    delay = min(cfg.backoff_max_s, cfg.backoff_base_s * 2 ** attempt)
    delay *= 1.0 - cfg.jitter * rng.random()
    if retry_after is not None:
        delay = max(delay, min(retry_after, cfg.backoff_max_s))
    return delay


class ChatCaller:
    """One AsyncOpenAI client, a semaphore and the retry loop; shared by the judge and the prompt generator."""

    def __init__(self, cfg: OpenAIJudgeConfig, api_key: str, seed: int = 0):
        self.cfg = cfg
        self._api_key = api_key
        self._rng = random.Random(seed)

    def __repr__(self) -> str:
        return f"ChatCaller(base_url={self.cfg.base_url!r}, model={self.cfg.model!r})"

    def unavailable(self, error: str, hint: str) -> JudgeUnavailable:
        """The error that stops the judge: endpoint, what it answered, what to check (never the key)."""
        return JudgeUnavailable(f"judge endpoint {self.cfg.endpoint()} answered {error}, which no retry can fix: "
                                f"{hint}. The round stops here, uncommitted; rerun once it is fixed.")

    def scrub(self, text: str) -> str:
        """Replace any echo of the key (a server quoting our headers back) with ***."""
        return text.replace(self._api_key, "***") if self._api_key and len(self._api_key) >= 4 else text

    def client(self):
        # no custom http_client: openai 1.x ships httpx, 3.x httpx2; its default pool (1000 connections)
        # is wider than any sane `concurrency`, which our semaphore bounds
        from openai import AsyncOpenAI

        return AsyncOpenAI(base_url=self.cfg.base_url, api_key=self._api_key, max_retries=0,
                           timeout=self.cfg.timeout_s)

    async def call(self, client, sem: asyncio.Semaphore, label: str, messages: list[dict], extra: dict,
                   parse: Callable[[str | None, str | None], Any]) -> Outcome:
        """POST until parsed or out of attempts; the semaphore is held only while a request is in flight."""
        start, raw, error = time.perf_counter(), "", "no attempt made"
        attempts = self.cfg.max_retries + 1
        for attempt in range(attempts):
            retry_after = None
            async with sem:
                try:
                    text, finish = await self._post(client, label, messages, extra)
                    raw = self.scrub(text or "")[:RAW_LIMIT]
                    return Outcome(parse(text, finish), None, attempt + 1, raw, time.perf_counter() - start)
                except BadResponse as exc:
                    error = self.scrub(str(exc))
                    if not self.cfg.retry_on_bad_json:
                        return Outcome(None, error, attempt + 1, raw, time.perf_counter() - start)
                except Exception as exc:  # noqa: BLE001 - mapped below: retry, stop, or give up with the reason
                    mapped = classify(exc)
                    error = self.scrub(str(mapped))
                    if isinstance(mapped, Fatal):
                        raise self.unavailable(error, mapped.hint) from None
                    if not isinstance(mapped, RetryableHTTP):
                        return Outcome(None, error, attempt + 1, raw, time.perf_counter() - start)
                    retry_after = mapped.retry_after
            if attempt + 1 < attempts:
                delay = backoff_delay(attempt, self.cfg, retry_after, self._rng)
                log.warning("openai judge: %s attempt %d/%d failed (%s); retrying in %.2fs",
                            label, attempt + 1, attempts, error, delay)
                await asyncio.sleep(delay)
        log.warning("openai judge: %s unscored after %d attempts (%s)", label, attempts, error)
        return Outcome(None, f"{error} (after {attempts} attempts)", attempts, raw, time.perf_counter() - start)

    async def _post(self, client, label: str, messages: list[dict], extra: dict) -> tuple[str | None, str | None]:
        # client.post with the ready JSON body: `chat.completions.create` re-walks every message (base64
        # images included) through its TypedDict transform, ~10 ms of CPU per request (bench/judge.py)
        from openai.types.chat import ChatCompletion

        body = {"model": self.cfg.model, "messages": messages, "max_tokens": self.cfg.max_tokens,
                "temperature": self.cfg.temperature}
        body.update({k: v for k, v in extra.items() if k != "extra_body"})
        body.update(extra.get("extra_body") or {})
        resp = await client.post("/chat/completions", cast_to=ChatCompletion, body=body,
                                 options={"headers": {SAMPLE_HEADER: label}})
        if not resp.choices:
            raise BadResponse("empty answer: no choices")
        choice = resp.choices[0]
        return choice.message.content, choice.finish_reason


def run_sync(make_coro: Callable[[], Awaitable[Any]]) -> Any:
    """Run a coroutine from sync code, also when this thread already runs an event loop (then in a thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coro())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(make_coro())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class LoopThread:
    """One event loop on a daemon thread, kept for the judge's life, so the HTTP client and its kept-alive
    connections survive between score() calls (a new client per call cost ~50-90 ms: SSL context, pool)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="openai-judge-loop", daemon=True)
        self._thread.start()

    def run(self, coro) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        if self.loop.is_running():
            self.run(self.loop.shutdown_default_executor())  # the to_thread() workers of PNG encoding
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
            self.loop.close()

    @staticmethod
    def stop_soon(loop) -> None:
        """Non-blocking stop for a garbage-collection finalizer (which may run on the loop's own thread)."""
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


class OpenAIJudge(Judge):
    """Scores through an OpenAI-compatible chat-completions endpoint. `close()` (or `with`) frees the client."""

    backend = "openai"

    def __init__(self, cfg: JudgeConfig, *, seed: int = 0):
        super().__init__(cfg)
        self.caller = ChatCaller(cfg.openai, resolve_api_key(cfg.openai), seed=seed)
        self.schema = score_schema(cfg.openai)
        self._loop: LoopThread | None = None
        self._client = None

    def __repr__(self) -> str:
        return f"OpenAIJudge({self.caller!r})"

    def __enter__(self) -> "OpenAIJudge":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP client and stop the judge's event loop thread."""
        if self._loop is None:
            return
        if self._client is not None:
            self._loop.run(self._client.close())
            self._client = None
        self._loop.stop()
        self._loop = None

    def _score_valid(self, items: list[JudgeItem]) -> list[JudgeResult]:
        if self._loop is None:
            self._loop = LoopThread()
            weakref.finalize(self, LoopThread.stop_soon, self._loop.loop)
        return self._loop.run(self.ascore(items))

    async def ascore(self, items: list[JudgeItem]) -> list[JudgeResult]:
        """Score all items concurrently (at most `concurrency` requests in flight)."""
        if self._client is None:
            self._client = self.caller.client()
        sem = asyncio.Semaphore(self.cfg.openai.concurrency)
        tasks = [asyncio.ensure_future(self._score_item(self._client, sem, it)) for it in items]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:  # one item hit an error no retry fixes (JudgeUnavailable): the rest stop now
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _score_item(self, client, sem: asyncio.Semaphore, item: JudgeItem) -> JudgeResult:
        cfg = self.cfg.openai
        extra = structured_output_kwargs(cfg, self.schema, "judge_scores")
        # PNG encoding off the event loop: done inline, every task's encode ran before any response was
        # read (~25 % of the ideal time at concurrency 16 in bench/judge.py)
        messages = await asyncio.to_thread(build_messages, item, cfg)
        outcome = await self.caller.call(client, sem, item.sample_id, messages, extra,
                                         lambda text, finish: parse_scores(text, finish, cfg))
        details = {"attempts": float(outcome.attempts)}
        if outcome.error is not None:
            return self.unscored(item.sample_id, outcome.error, raw=outcome.raw, latency_s=outcome.latency_s,
                                 details=details)
        return self.result(item.sample_id, outcome.value, raw=outcome.raw, latency_s=outcome.latency_s,
                           details=details)

"""Prompt sets for candidate generation (paper stage (a)): diverse "a <product> with <logo>" descriptions.

Two generators: `builtin` (deterministic, offline; products and logos drawn from the synthetic world's
kinds, shapes, colours and words) and `openai` (asks an OpenAI-compatible server, e.g. GPT-4o, for JSON
lists of product and logo descriptions, with the judge's client, retries and key handling).
A prompt set is versioned by `prompt_hash` (sha256 of its JSON), the hash the commit stage records with
every round that uses it. `TEMPLATE` is the one way a product and a logo make a prompt.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from pathlib import Path
from .judges.openai_judge import (BadResponse, extract_json, ChatCaller, resolve_api_key, run_sync,
                                  structured_output_kwargs)
from .synthetic import COLOURS, KINDS, SHAPES, WORDS

MATERIALS = ("ceramic", "glass", "matte", "glossy", "metal", "recycled", "pastel", "vintage")
TEMPLATE = "a {product} with {logo}"
PROMPT_SCHEMA = {
    "type": "object",
    "properties": {"items": {"type": "array", "items": {
        "type": "object", "properties": {"product": {"type": "string"}, "logo": {"type": "string"}},
        "required": ["product", "logo"], "additionalProperties": False}}},
    "required": ["items"], "additionalProperties": False,
}


def prompt_hash(prompts: list[str]) -> str:
    """The version of a prompt set: sha256 of the prompts as JSON, in order."""
    return hashlib.sha256(json.dumps(prompts).encode()).hexdigest()


@dataclasses.dataclass
class PromptSet:
    """An ordered list of prompts, the generator that made it and its parameters; `version` is its hash."""

    prompts: list[str]
    generator: str
    params: dict

    @property
    def version(self) -> str:
        return prompt_hash(self.prompts)

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "generator": self.generator, "params": self.params,
                           "prompts": self.prompts}, indent=2)


def write_prompt_set(ps: PromptSet, path: str | Path) -> Path:
    """Write the set as JSON (temp file then rename, so a crash never leaves half a set)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(ps.to_json())
    tmp.replace(path)
    return path


def load_prompt_set(path: str | Path) -> PromptSet:
    """Read a prompt-set file; a version that does not match its prompts is an error (edited by hand)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read prompt set {path}: {exc}") from None
    prompts = data.get("prompts") if isinstance(data, dict) else None
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError(f"prompt set {path}: 'prompts' must be a non-empty list of non-empty strings")
    ps = PromptSet(prompts, str(data.get("generator", "unknown")), dict(data.get("params") or {}))
    if data.get("version") not in (None, ps.version):
        raise ValueError(f"prompt set {path}: version {data['version']} does not match its prompts ({ps.version})")
    return ps


def _vocab() -> dict[str, tuple[str, ...]]:
    return {"kinds": KINDS, "shapes": SHAPES, "words": WORDS, "colours": tuple(COLOURS)}


def _builtin_one(rng: random.Random, kind: str, v: dict) -> str:
    colour, ink = rng.sample(v["colours"], 2)
    product = f"{rng.choice(MATERIALS)} {colour} {kind}"
    logo = f"a {ink} {rng.choice(v['shapes'])} logo with the word \"{rng.choice(v['words'])}\""
    return TEMPLATE.format(product=product, logo=logo)


def builtin_prompts(n: int, seed: int = 0) -> PromptSet:
    """`n` distinct prompts, product kinds in rotation so every kind is equally represented."""
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    v, rng = _vocab(), random.Random(seed)
    out, seen, tries = [], set(), 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise ValueError(f"cannot make {n} distinct prompts from the built-in vocabulary")
        prompt = _builtin_one(rng, v["kinds"][len(out) % len(v["kinds"])], v)
        if prompt not in seen:
            seen.add(prompt)
            out.append(prompt)
    return PromptSet(out, "builtin", {"n": n, "seed": seed})


def _request_messages(k: int, avoid: list[str]) -> list[dict]:
    ask = (f"Invent {k} diverse consumer products (mugs, bottles, cans, boxes, t-shirts, bags, and others) "
           "each paired with a distinctive printable brand logo. Vary colours, materials, shapes and logo "
           "styles; keep each description under 15 words. Answer with JSON only: "
           '{"items": [{"product": "...", "logo": "..."}]}.')
    if avoid:
        ask += " Do not repeat any of: " + "; ".join(avoid[-40:])
    return [{"role": "system", "content": "You write short, concrete product photography briefs."},
            {"role": "user", "content": ask}]


def _parse_items(text, finish) -> list[str]:
    value = extract_json(text, finish)
    items = value.get("items") if isinstance(value, dict) else value
    if not isinstance(items, list):
        raise BadResponse("schema violation: expected {'items': [...]}")
    good = [i for i in items if isinstance(i, dict) and isinstance(i.get("product"), str)
            and isinstance(i.get("logo"), str) and i["product"].strip() and i["logo"].strip()]
    if not good:
        raise BadResponse("schema violation: no item with a product and a logo")
    return [TEMPLATE.format(product=i["product"].strip(), logo=i["logo"].strip()) for i in good]


def openai_prompts(n: int, cfg, *, chunk: int = 25, max_requests: int | None = None) -> PromptSet:
    """`n` distinct prompts from an OpenAI-compatible server; `cfg` is an OpenAIJudgeConfig."""
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    caller = ChatCaller(cfg, resolve_api_key(cfg))
    extra = structured_output_kwargs(cfg, PROMPT_SCHEMA, "prompt_set")
    return run_sync(lambda: _collect(caller, extra, n, chunk, max_requests or 4 * (n // chunk + 1)))


async def _collect(caller, extra: dict, n: int, chunk: int, max_requests: int) -> PromptSet:
    import asyncio

    out: list[str] = []
    sem = asyncio.Semaphore(1)
    async with caller.client() as client:
        for request in range(max_requests):
            k = min(chunk, n - len(out))
            outcome = await caller.call(client, sem, f"prompts-{request}", _request_messages(k, out), extra,
                                        _parse_items)
            if outcome.error is not None:
                raise ValueError(f"prompt generation failed: {outcome.error}")
            out.extend(p for p in dict.fromkeys(outcome.value) if p not in out)
            if len(out) >= n:
                return PromptSet(out[:n], "openai", {"n": n, "model": caller.cfg.model})
    raise ValueError(f"the server gave only {len(out)} distinct prompts of {n} in {max_requests} requests")

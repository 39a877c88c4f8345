"""The baselines bench/loop.py sets the loop against, beyond its step-matched control: what they cost and how
they are trained, and the per-item scores every "A - B" interval is drawn from.

- **Model compute per stage** (`CountingRunner`): every forward of the flow transformer is counted in image
  tokens, with and without grad, under the pipeline stage (and round) that ran it. Training a step costs its
  forward and a backward (~2x the forward), so a grad-enabled token counts 3; a sampler token counts 1. The
  tokens of one panel grid are the same for the trainer and the sampler, so the counts are FLOPs up to one
  constant, measured rather than derived from the recipe.
- **compute_control**: the control's chain (labeled seeds only, continuing from the previous one) with each
  adapter's steps raised by the loop's sampler compute of the round that made that adapter's data
  (generation, judging, the pool's decompositions and re-syntheses), converted to training steps.
- **supervised**: the ceiling. The seed adapter continued for every round's steps on labeled triplets of
  every kind, as many as the loop's final training view holds: the labeled seeds plus the renderer's truth
  of the loop's own pool items, taken in pool order.
- **Per-item scores** of any adapter in either inference mode on the test split, cached as JSON under the
  work folder (keyed by what they depend on), each row tagged with its slice (seen / unseen).
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

UNIT_STAGES = ("generate", "judge", "cycle-generated", "cycle-pool")  # the loop's sampler work per round
GRAD_COST = 3  # forward + backward of a token, in forwards
SCORE_KEYS = ("psnr_object", "psnr_logo", "iou_logo")
SAMPLE_KEY = ("steps", "guidance", "seed")  # what of sample.* a score depends on besides the mode (batching does not)


class CountingRunner:
    """driver.PlainRunner that labels every transformer forward with the stage and round that ran it; counts
    persist in `path` after every stage, so a resumed run keeps what finished runs counted."""

    def __init__(self, path: Path):
        from layerloop.tasks.runtime.driver import PlainRunner

        self._plain, self.path, self.stage = PlainRunner(), Path(path), None
        self.counts: dict[str, dict[str, int]] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def run(self, stage, cfg, *args):
        return self._counted(f"{stage.name}@{args[0]}" if args else stage.name, self._plain.run, stage, cfg, *args)

    def run_units(self, stage, cfg, round_, units):
        return self._counted(f"{stage.name}@{round_}", self._plain.run_units, stage, cfg, round_, units)

    def gpu(self, cfg):
        return self._plain.gpu(cfg)

    def _counted(self, key: str, fn, *args):
        from torch.nn.modules.module import register_module_forward_hook

        self.stage = self.counts.setdefault(key, {"grad": 0, "nograd": 0})
        handle = register_module_forward_hook(self._hook)
        try:
            return fn(*args)
        finally:
            handle.remove()
            self.path.write_text(json.dumps(self.counts, indent=1, sort_keys=True))

    def _hook(self, module, inputs, output) -> None:
        import torch

        if type(module).__name__ != "FluxTransformer2DModel":
            return
        sample = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
        tokens = int(sample.shape[0]) * int(sample.shape[1])
        self.stage["grad" if torch.is_grad_enabled() else "nograd"] += tokens


def cost(count: dict[str, int]) -> int:
    """A stage's compute in forward-token units."""
    return GRAD_COST * count["grad"] + count["nograd"]


def extra_steps(counts: dict, rounds: int, round_steps: int) -> dict[int, int]:
    """Per adapter k >= 1: the training steps worth the loop's sampler compute in round k, priced by the
    control's own measured cost per step (train-control@k, or train-adapter@k: the same steps)."""
    out = {}
    for k in range(1, rounds + 1):
        train = counts.get(f"train-control@{k}") or counts.get(f"train-adapter@{k}")
        if not train or not cost(train):
            raise ValueError(f"no measured training compute for adapter {k} in the counts: the loop ran before "
                             "counting existed or was resumed past it; rerun that seed with --fresh")
        per_step = cost(train) / round_steps
        sampler = sum(cost(counts[f"{s}@{k}"]) for s in UNIT_STAGES if f"{s}@{k}" in counts)
        out[k] = round(sampler / per_step)
    return out


def _adapter_uri(root: Path, name: str) -> str:
    return str(root / name)


def _trained(cfg, uri: str, data, init: str | None, steps: int, key: str, train: bool) -> str | None:
    """Continue `init` for `steps` on `data()` with the pipeline's own trainer (adapter stage), once; None
    when it is not there and `train` is off (or `init` is missing)."""
    from layerloop.tasks.stages import adapter, adapter_files

    if adapter_files.has_weights(uri):
        return uri
    if not train or init is None:
        return None
    cfg = cfg.model_copy(update={"loop": cfg.loop.model_copy(update={"round_train_steps": steps})})
    # labeled seeds only: no human review moved a row in or out
    adapter._train(cfg, uri, work_key=key, data=data(), init=adapter_files.local_dir(init), reviewed=[])
    return uri


def train_compute_control(cfg, store, root: Path, steps: dict[int, int], round_steps: int, *, train: bool = True
                          ) -> dict[int, str | None]:
    """compute_control-000k for k = 1..rounds: each from the previous (the seed adapter first) on the
    labeled seeds, round_steps + steps[k] steps."""
    from functools import cache

    from layerloop.tasks.stages.adapter import training_set

    data = cache(lambda: training_set(store, store.training_view(up_to=0)))
    out, before = {}, store.adapter_uri(0)
    for k in sorted(steps):
        t0 = time.perf_counter()
        before = out[k] = _trained(cfg, _adapter_uri(root, f"compute_control-{k:04d}"), data, before,
                                   round_steps + steps[k], f"compute_control-{k:04d}", train)
        print(f"  compute_control {k}: {round_steps} + {steps[k]} steps ({time.perf_counter() - t0:.0f} s)", flush=True)
    return out


def supervised_data(cfg, store, rounds: int) -> dict:
    """The labeled seeds plus the truth of the loop's first pool items, as many as its final training view."""
    from layerloop.models.synthetic import make_split
    from layerloop.tasks.stages.adapter import training_set

    data = training_set(store, store.training_view(up_to=0))
    n_view = len(store.training_view(up_to=rounds))
    n_extra = n_view - len(data["triplets"])
    for _, triplet, meta in make_split("pool", n_extra, cfg.model.panel_size, _base_seed(store)):
        for key, value in (("triplets", triplet), ("captions", meta.get("caption", "")), ("trust", None),
                           ("tasks", None), ("labeled", True)):
            data[key].append(value)
    return data


def _base_seed(store) -> int:
    """The base seed of the seeds' rendering (the pool was rendered with the same one)."""
    from layerloop.storage import schema as S

    meta = json.loads(store.read(0)[S.EXTRA_JSON][0] or "{}").get("meta") or {}
    if "base_seed" not in meta:
        raise ValueError("the seeds carry no synthetic meta: the supervised ceiling needs the renderer's world")
    return int(meta["base_seed"])


def train_supervised(cfg, store, root: Path, rounds: int, round_steps: int, *, train: bool = True) -> str | None:
    """supervised: the seed adapter continued rounds x round_steps steps on supervised_data."""
    t0 = time.perf_counter()
    uri = _trained(cfg, _adapter_uri(root, "supervised"), lambda: supervised_data(cfg, store, rounds),
                   store.adapter_uri(0), rounds * round_steps, "supervised", train)
    print(f"  supervised: {rounds * round_steps} steps ({time.perf_counter() - t0:.0f} s)", flush=True)
    return uri


def scored(root: Path, variant: str, inference: str) -> bool:
    return (root / "scores" / f"{variant}-{inference}.json").exists()


def item_scores(cfg, store, uri: str, draws: int, anchor: bool, cache: Path) -> list[dict]:
    """Per test item: sample_id, slice and SCORE_KEYS of the adapter at `uri` in the given inference mode."""
    from layerloop.models.evaluation import evaluate_decomposition
    from layerloop.models.synthetic import make_split, world_logos
    from layerloop.tasks.stages.adapter import seen_slices
    from layerloop.tasks.stages.handles import sampler_at

    key = {"uri": uri, "draws": draws, "anchor": anchor, "n": cfg.loop.eval_size, "seed": cfg.loop.eval_seed,
           "sample": {k: getattr(cfg.sample, k) for k in SAMPLE_KEY}}
    if cache.exists() and (cached := json.loads(cache.read_text())).get("key") == key:
        return cached["rows"]
    items = list(make_split("test", cfg.loop.eval_size, cfg.model.panel_size, cfg.loop.eval_seed,
                            logos=world_logos(cfg.model.layers)))
    mode = cfg.model_copy(update={"sample": cfg.sample.model_copy(update={"draws": draws, "anchor": anchor})})
    slices = seen_slices(store) or {}
    result = evaluate_decomposition(sampler_at(mode, uri), items, return_rows=True)
    rows = [{"sample_id": r["sample_id"], "slice": _slice_of(meta, slices), **{k: r.get(k) for k in SCORE_KEYS}}
            for r, (_, _, meta) in zip(result["rows"], items)]
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "rows": rows}))
    return rows


def _slice_of(meta: dict, slices: dict) -> str:
    names = [name for name, keep in slices.items() if keep(meta)]
    return names[0] if names else "all"


def slice_means(rows: list[dict], slices: tuple[str, ...]) -> dict:
    """`<metric>@<slice>` means of per-item rows."""
    out = {}
    for sl in slices:
        picked = [r for r in rows if r["slice"] == sl]
        for k in SCORE_KEYS:
            vals = [r[k] for r in picked if r.get(k) is not None]
            if vals:
                out[f"{k}@{sl}"] = sum(vals) / len(vals)
    return out


def by_slice(rows_per_seed: list[list[dict]], metric: str, sl: str) -> list[list[float]]:
    """seeds x items matrix of one metric on one slice, items in sample_id order (the same items per seed)."""
    out = defaultdict(list)
    for s, rows in enumerate(rows_per_seed):
        for r in sorted(rows, key=lambda r: r["sample_id"]):
            if r["slice"] == sl:
                out[s].append(r[metric])
    return [out[s] for s in range(len(rows_per_seed))]

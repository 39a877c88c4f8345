"""The GPU path of issue 25 in one call: training MFU, a few hundred LoRA steps, decomposition throughput
(bf16 and FP8) through the product's sampler, the gpu test tier and Ray scale-out, each a section whose
numbers come from this run only and go to a JSON file (rewritten after every measurement, so a run cut
off by a timeout keeps what it finished) and to markdown tables on stdout.

Sections, in the order they run (`--only` picks some; each has a `--budget-<name>` in seconds, checked
between measurements, so a section can overrun by one measurement):

  train   CycleTrainer.step (models/trainer.py, the step train_lora runs) on FLUX.1-Fill-dev's transformer
          and VAE shapes with random weights (bf16, 11.9 B parameters, no download), 3x512 triptychs of the
          synthetic world, LoRA rank 32, over compiled blocks on/off x gradient checkpointing on/off x
          batch 2/4: seconds per step, peak GPU memory, MFU. MFU counts model FLOPs = 3 x forward FLOPs
          (forward + backward), the forward counted from the model itself: 2 x weights x tokens of every
          Linear (image-stream linears x image tokens, text-stream x text tokens, modulation x 1) + 4 x
          width x tokens^2 per attention block (the formula of bench/train_gpu.py, generalised to any size;
          at FLUX shapes it agrees with it within 0.2 %). HFU counts what the step really executes with the
          base frozen (no weight gradients): 2 x forward, 3 x with checkpointing. Peak: 790 TFLOP/s
          (bf16 on the lent H200, --peak-tflops). Best config = highest MFU within 40 GB.
  steps   --steps (300) bf16 LoRA steps, fp32 master LoRA weights (models/trainer.attach_lora), on ONE
          fixed batch (a cache of exactly `batch` triplets), in the best train config: loss finite and
          falling (first vs last window mean); the LoRA saved by models/lora_io.save_adapter, reloaded
          through FluxFillPipeline.load_lora_weights (lora_io.load_adapter), compared tensor by tensor.
  sample  Sampler.decompose (models/sampler.py), batch 4, that LoRA fused (SampleConfig.fuse_lora),
          compiled blocks, 28 steps: seconds per triptych in bf16, then with SampleConfig.fp8 (torchao FP8
          linears; irreversible, so last) and the PSNR between the bf16 and FP8 layers of the same inputs
          and noises. With random weights the PSNR says how far FP8 rounding moves the outputs, not quality.
          The text encoders are not built: their cached embeddings are random stand-ins (T5 runs once per
          prompt in the product; the Backbone's prompt cache is filled with them).
  pytest  `python -m pytest -m gpu -q -rs` (+ --continue-on-collection-errors) as a subprocess: passed /
          skipped counts and each skip reason.
  ray     one round of the real loop (flows/self_improve.improve_round on bench/scale.py's tiny-world
          store, the Ray executor of tasks/runtime/executor.py) with 1, 2 and 4 workers on one local Ray
          (workers = units at once: each unit reserves 1/workers of the CPUs and of the GPU), after an
          untimed round that starts the workers: speed-ups, per-unit overhead (bench/scale.py's definition)
          against unit time; and, with CUDA, tasks/runtime/placement.placed run in a Ray GPU worker puts the
          model on the GPU Ray assigned it.

    python bench/gpu_path.py --json gpu_path.json            # one H200, ~8 min
    python bench/gpu_path.py --only sample,pytest --json x.json
    python bench/gpu_path.py --quick --json /tmp/q.json      # CPU smoke run, tiny sizes, 2-4 min

--quick runs every section at tiny sizes on the CPU (the tiny world's configs with random weights, fp32:
bf16 matmuls are ~50x slower on this CPU): its numbers are labelled as such, say nothing about FLUX and are
not held against the targets; compiled configs are skipped there (inductor's compile time dominates at tiny
sizes) and the FP8 part reports why it cannot run.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SECTIONS = ("train", "steps", "sample", "pytest", "ray")  # the order they run in
BACKBONE_SECTIONS = ("train", "steps", "sample")
# seconds; ~7.5 min with the build while the GPU image has no Ray (the ray section then skips at once)
BUDGETS = {"train": 130, "steps": 100, "sample": 120, "pytest": 60, "ray": 120}
QUICK_RAY_BUDGET = 180  # a 2-core CPU: Prefect + Ray start-up, seed flow, 4 rounds
TARGETS = {"mfu": 0.50, "peak_gb": 40.0, "sec_per_triptych": 2.5, "speedup_2": 1.8, "overhead_share": 0.10}


# --------------------------------------------------------------------------------------------------
# arguments, report, budget
# --------------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CPU smoke run at tiny sizes (numbers labelled tiny)")
    p.add_argument("--json", help="write the numbers here (after every measurement)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {','.join(SECTIONS)}")
    p.add_argument("--workdir", help="where the LoRA file is written (default: a new temp dir)")
    for name, seconds in BUDGETS.items():
        p.add_argument(f"--budget-{name}", type=float, default=seconds, help=f"seconds for section {name}")
    p.add_argument("--panel", type=int, default=512)
    p.add_argument("--text-len", type=int, default=512)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--peak-tflops", type=float, default=790.0, help="the device's bf16 peak, for MFU")
    p.add_argument("--train-batches", type=int, nargs="+", default=[2, 4])
    p.add_argument("--train-steps", type=int, default=3, help="timed steps per train config")
    p.add_argument("--train-warmup", type=int, default=2, help="untimed steps first (compiling included)")
    p.add_argument("--steps", type=int, default=300, help="LoRA steps of section steps (cut at its budget)")
    p.add_argument("--steps-lr", type=float, default=1e-4)
    p.add_argument("--steps-window", type=int, default=20, help="steps in the first / last loss window")
    p.add_argument("--sample-batch", type=int, default=4)
    p.add_argument("--sample-steps", type=int, default=28)
    p.add_argument("--ray-workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--ray-seeds", type=int, default=12, help="labeled seeds of the ray section's store")
    p.add_argument("--ray-candidates", type=int, default=64, help="generated candidates of the round")
    p.add_argument("--ray-pool", type=int, default=32, help="pool composites of the round")
    p.add_argument("--ray-batch", type=int, default=16, help="items per unit")
    p.add_argument("--ray-sample-steps", type=int, default=28, help="sampler steps: the work per unit")
    p.add_argument("--pytest-args", nargs=argparse.REMAINDER, default=[], help="extra pytest arguments (last)")
    args = p.parse_args(argv)
    if args.quick:
        args.panel, args.text_len, args.rank, args.train_batches = 32, 16, 4, [2, 4]
        args.train_steps, args.train_warmup, args.steps, args.steps_window = 2, 1, 30, 5
        args.sample_steps = 4
        args.ray_seeds, args.ray_candidates, args.ray_pool, args.ray_batch, args.ray_sample_steps = 8, 8, 4, 2, 2
        if args.budget_ray == BUDGETS["ray"]:
            args.budget_ray = QUICK_RAY_BUDGET
    args.only = _sections(args.only)
    _check(args)
    return args


def _sections(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown or not names:
        raise ValueError(f"--only takes sections of {', '.join(SECTIONS)}; got {text!r}")
    return names


def _check(args) -> None:
    if args.panel % 16:
        raise ValueError(f"--panel must be a multiple of 16; got {args.panel}")
    if min(args.train_batches) < 2 or args.sample_batch < 4:
        raise ValueError("issue 25 measures batch >= 2 for training and >= 4 for sampling")
    if args.train_steps < 1 or args.train_warmup < 0 or args.steps < 1 or args.steps_window < 1:
        raise ValueError("--train-steps, --steps and --steps-window must be >= 1, --train-warmup >= 0")
    top = max(args.ray_workers)
    if min(args.ray_workers) < 1 or any(top % w for w in args.ray_workers) or 1 not in args.ray_workers:
        raise ValueError(f"--ray-workers must include 1 and divide the largest; got {args.ray_workers}")


class Report:
    """The run's numbers: meta + one dict per section, written to `path` (temp file + rename) on save()."""

    def __init__(self, path: str | None, meta: dict):
        self.path, self.data = path, {"meta": meta, "sections": {}}

    def section(self, name: str) -> dict:
        return self.data["sections"].setdefault(name, {"status": "running"})

    def save(self) -> None:
        if not self.path:
            return
        tmp = f"{self.path}.tmp"
        Path(tmp).write_text(json.dumps(_clean(self.data), indent=1))
        os.replace(tmp, self.path)


def _clean(value):
    """JSON-safe: NaN -> null, inf -> "inf", tuples -> lists."""
    if isinstance(value, float):
        return None if math.isnan(value) else ("inf" if math.isinf(value) else value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class Budget:
    def __init__(self, seconds: float):
        self.seconds, self.t0 = seconds, time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)

    def spent(self) -> bool:
        return self.left() <= 0


# --------------------------------------------------------------------------------------------------
# the backbone: FLUX.1-Fill shapes with random weights (or the tiny configs with --quick)
# --------------------------------------------------------------------------------------------------
def build(args):
    """A Backbone of random-weight FLUX-shaped modules; no text encoders (their embeddings are stand-ins)."""
    from train_gpu import random_backbone

    backbone = random_backbone(args.quick, args.panel, args.text_len)
    prime_embeddings(backbone, args)
    return backbone


def prime_embeddings(backbone, args) -> None:
    """Random stand-ins for the cached T5/CLIP embeddings of the task prompts and of "" (text dropout),
    put into the Backbone's prompt cache, where `task_embeddings` finds them as it finds real ones."""
    import torch

    from layerloop.models.grid import task_prompt

    cfg = backbone.transformer.config
    gen = torch.Generator().manual_seed(0)
    prompts = [task_prompt(t, backbone.prompt_templates) for t in ("decompose", "synthesize")] + [""]
    for prompt in prompts:
        pe = torch.randn(1, args.text_len, cfg.joint_attention_dim, generator=gen)
        pooled = torch.randn(1, cfg.pooled_projection_dim, generator=gen)
        ids = torch.zeros(args.text_len, 3)
        backbone._embeds[prompt] = tuple(x.to(backbone.device, backbone.dtype) for x in (pe, pooled, ids))


def get_backbone(args, state: dict):
    if "backbone" not in state:
        import torch

        t0 = time.perf_counter()
        state["backbone"] = build(args)
        if not args.quick:  # every config below compiles the blocks again: keep dynamo from giving up
            limits = (("recompile_limit", 256), ("cache_size_limit", 256), ("accumulated_recompile_limit", 4096))
            for key, value in limits:
                if hasattr(torch._dynamo.config, key):
                    setattr(torch._dynamo.config, key, value)
        state["build_s"] = time.perf_counter() - t0
    return state["backbone"]


def release_backbone(state: dict) -> None:
    if state.pop("backbone", None) is not None:
        state.pop("caches", None)
        gc.collect()
        _empty_cache()


def _empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak_gb(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def triplets(panel: int, n: int, split: str = "seeds") -> list[dict]:
    """n synthetic-world triplets at `panel` px (the product's own data generator)."""
    from layerloop.models.synthetic import make_split

    return [t for _, t, _ in make_split(split, n, panel, 0)]


# --------------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------------
def linear_tokens(name: str, img: int, txt: int) -> int:
    """How many tokens pass through the Linear called `name` in a FluxTransformer2DModel forward."""
    if ".norm" in name or name.startswith(("norm_out", "time_text_embed")):
        return 1  # modulation / timestep embedding: once per sample
    if any(k in name for k in ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "ff_context")):
        return txt  # the text stream of a double block
    if name.startswith("context_embedder"):
        return txt
    if name.startswith("single_transformer_blocks"):
        return img + txt
    return img  # image stream of a double block, x_embedder, proj_out


def forward_flops(transformer, img: int, txt: int) -> float:
    """Forward FLOPs per sample: every base Linear (LoRA factors left out) + attention over img + txt tokens."""
    import torch

    linear = sum(2 * m.weight.numel() * linear_tokens(n, img, txt) for n, m in transformer.named_modules()
                 if isinstance(m, torch.nn.Linear) and "lora_" not in n)
    cfg = transformer.config
    width, blocks = cfg.num_attention_heads * cfg.attention_head_dim, cfg.num_layers + cfg.num_single_layers
    return linear + 4 * blocks * width * (img + txt) ** 2


# --------------------------------------------------------------------------------------------------
# section train
# --------------------------------------------------------------------------------------------------
def set_checkpointing(transformer, on: bool) -> None:
    """What ModelConfig.gradient_checkpointing does at build time, switched on the built model."""
    if on:
        transformer.enable_gradient_checkpointing()
    else:
        transformer.disable_gradient_checkpointing()


def data_cache(backbone, state: dict, batch: int):
    """(codec, DataCache) of exactly `batch` triplets: every step trains on this one fixed batch."""
    from layerloop.models.trainer import FillCodec, build_cache

    caches = state.setdefault("caches", {})
    if batch not in caches:
        codec = FillCodec(backbone)
        caches[batch] = (codec, build_cache(codec, triplets(backbone.panel_size, batch), None, 0, False))
    return caches[batch]


def make_trainer(backbone, args, state: dict, batch: int, lr: float, compiled: bool, steps: int = 10_000):
    from layerloop.models.config import LoraConfig, TrainConfig
    from layerloop.models.trainer import CycleTrainer, attach_lora

    codec, cache = data_cache(backbone, state, batch)
    params = attach_lora(backbone.transformer, LoraConfig(rank=args.rank), seed=0)
    cfg = TrainConfig(steps=steps, batch_size=batch, lr=lr, lr_schedule="constant", cycle_weight=0.0,
                      compile_blocks=compiled)
    return CycleTrainer(backbone, cache, codec, cfg, params)


def train_plan(batches: list[int]) -> list[tuple[bool, bool, int]]:
    """(compiled, checkpointing, batch), likeliest best first, each eager twin soon after for the speed-up."""
    b0, rest = batches[0], batches[1:]
    plan = [(True, True, b0), (False, True, b0), (True, False, b0)]
    for b in rest:
        plan += [(True, False, b), (True, True, b)]
    plan += [(False, False, b0)] + [(False, ck, b) for b in rest for ck in (True, False)]
    return plan


def measure_train(backbone, args, state: dict, compiled: bool, ckpt: bool, batch: int) -> dict:
    """Seconds per CycleTrainer.step, peak memory, MFU / HFU of one config; the LoRA is removed after."""
    from layerloop.models.acceleration import compiled_blocks
    from layerloop.models.trainer import detach_lora

    set_checkpointing(backbone.transformer, ckpt)
    trainer = make_trainer(backbone, args, state, batch, 1e-4, compiled)
    try:
        backbone.transformer.train()
        with compiled_blocks(backbone.transformer, compiled):  # what TrainConfig.compile_blocks does in train_lora
            t0 = time.perf_counter()
            for k in range(args.train_warmup):
                trainer.step(k)
            _sync(backbone.device)
            warmup = time.perf_counter() - t0
            _reset_peak(backbone.device)
            t0 = time.perf_counter()
            for k in range(args.train_warmup, args.train_warmup + args.train_steps):
                trainer.step(k)
            _sync(backbone.device)
            sec = (time.perf_counter() - t0) / args.train_steps
    finally:
        backbone.transformer.eval()
        trainer.optimizer.zero_grad(set_to_none=True)
        detach_lora(backbone.transformer)
    img = trainer.cache.x0.shape[1]
    fwd = forward_flops(backbone.transformer, img, args.text_len)
    peak = args.peak_tflops * 1e12
    return {"sec": sec, "warmup_s": warmup, "peak_gb": _peak_gb(backbone.device), "tokens": img + args.text_len,
            "tflops": 3 * batch * fwd / sec / 1e12, "mfu": 3 * batch * fwd / sec / peak,
            "hfu": (3 if ckpt else 2) * batch * fwd / sec / peak}


def attempt(fn, *a) -> dict:
    """fn's row, or its error as a row (an OOM or a compiler failure must not hide the other configs)."""
    try:
        return {"status": "ok", **fn(*a)}
    except Exception as exc:  # noqa: BLE001 - reported in the table, the run goes on
        msg = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        print(f"  failed: {msg}", flush=True)
        return {"status": "error", "error": msg}
    finally:
        gc.collect()
        _empty_cache()


def best_train(rows: list[dict]) -> dict | None:
    """Highest MFU among configs within the memory target (any config when none is)."""
    ok = [r for r in rows if r.get("status") == "ok"]
    fits = [r for r in ok if r.get("peak_gb") is None or r["peak_gb"] <= TARGETS["peak_gb"]]
    pool = fits or ok
    return max(pool, key=lambda r: r["mfu"]) if pool else None


def section_train(args, state, sec, budget, save) -> None:
    backbone = get_backbone(args, state)
    sec.update(peak_tflops=args.peak_tflops, rank=args.rank, rows=[])
    for compiled, ckpt, batch in train_plan(args.train_batches):
        row = {"compiled": compiled, "checkpointing": ckpt, "batch": batch}
        if compiled and args.quick:
            row.update(status="skipped", reason="--quick: inductor's compile time dominates at tiny CPU sizes")
        elif budget.spent():
            row.update(status="skipped", reason="section budget spent")
        else:
            print(f"train: compiled {compiled}, checkpointing {ckpt}, batch {batch}", flush=True)
            row.update(attempt(measure_train, backbone, args, state, compiled, ckpt, batch))
        sec["rows"].append(row)
        save()
    best = best_train(sec["rows"])
    sec["best"] = best
    if best:
        state["train_best"] = (best["compiled"], best["checkpointing"], best["batch"])
        sec["targets"] = {"mfu >= 50 %": best["mfu"] >= TARGETS["mfu"],
                          "peak <= 40 GB": None if best["peak_gb"] is None else best["peak_gb"] <= TARGETS["peak_gb"]}


# --------------------------------------------------------------------------------------------------
# section steps
# --------------------------------------------------------------------------------------------------
def loss_stats(losses: list[float], window: int) -> dict:
    w = max(1, min(window, len(losses) // 2))
    first, last = losses[:w], losses[-w:]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    finite = all(math.isfinite(x) for x in losses)
    out = {"window": w, "loss_first_mean": mean(first), "loss_last_mean": mean(last), "all_finite": finite}
    out["falling"] = finite and out["loss_last_mean"] < out["loss_first_mean"]
    return out


def dtypes(backbone, trainer) -> dict:
    """The precision the step ran in: base weights, LoRA masters."""
    base = {str(p.dtype) for n, p in backbone.transformer.named_parameters() if "lora_" not in n}
    return {"base_weights": sorted(base), "lora_masters": sorted({str(p.dtype) for p in trainer.params.values()}),
            "lora_params": sum(p.numel() for p in trainer.params.values())}


def run_steps(trainer, args, budget, sec, save) -> list[float]:
    losses = []
    t0 = time.perf_counter()
    for k in range(args.steps):
        if budget.spent():
            sec["stopped"] = f"section budget spent after {k} steps"
            break
        losses.append(trainer.step(k)["loss"])
        if (k + 1) % 25 == 0:
            sec.update(steps_done=k + 1, sec_per_step=(time.perf_counter() - t0) / (k + 1))
            save()
    _sync(trainer.backbone.device)
    sec.update(steps_done=len(losses), sec_per_step=(time.perf_counter() - t0) / max(1, len(losses)))
    return losses


def section_steps(args, state, sec, budget, save) -> None:
    from peft.utils import get_peft_model_state_dict

    from layerloop.models.acceleration import compiled_blocks
    from layerloop.models.lora_io import save_adapter
    from layerloop.models.trainer import ADAPTER_NAME, detach_lora

    backbone = get_backbone(args, state)
    compiled, ckpt, batch = state.get("train_best") or (not args.quick, True, 2)
    sec.update(config={"compiled": compiled, "checkpointing": ckpt, "batch": batch,
                       "from": "best train config" if "train_best" in state else "default"},
               steps_planned=args.steps, lr=args.steps_lr, rank=args.rank)
    set_checkpointing(backbone.transformer, ckpt)
    trainer = make_trainer(backbone, args, state, batch, args.steps_lr, compiled, steps=args.steps)
    try:
        sec["dtypes"] = dtypes(backbone, trainer)
        backbone.transformer.train()
        with compiled_blocks(backbone.transformer, compiled):
            losses = run_steps(trainer, args, budget, sec, save)
        backbone.transformer.eval()
        sec["loss"] = loss_stats(losses, args.steps_window) if losses else None
        sec["loss_curve"] = losses
        out_dir = str(Path(state["workdir"]) / "adapter")
        save_adapter(backbone, out_dir, card={"bench": "gpu_path", "steps": len(losses)}, adapter_name=ADAPTER_NAME)
        trained = {k: v.detach().float().cpu().clone()
                   for k, v in get_peft_model_state_dict(backbone.transformer, adapter_name=ADAPTER_NAME).items()}
    finally:
        backbone.transformer.eval()
        detach_lora(backbone.transformer)
    sec["reload"] = check_reload(backbone, out_dir, trained)
    state["adapter_dir"] = out_dir


def check_reload(backbone, out_dir: str, trained: dict) -> dict:
    """The saved file and the LoRA diffusers loads from it (FluxFillPipeline.load_lora_weights through
    lora_io.load_adapter) against the trained fp32 weights: keys, dtypes, exact equality in the loaded dtype."""
    import torch
    from peft.utils import get_peft_model_state_dict

    from layerloop.models.lora_io import LOADED_NAME, load_adapter, read_adapter_state, unload_adapter

    saved = read_adapter_state(out_dir)  # safetensors only
    load_adapter(backbone, out_dir)
    try:
        loaded = {k: v.detach().cpu() for k, v in
                  get_peft_model_state_dict(backbone.transformer, adapter_name=LOADED_NAME).items()}
    finally:
        unload_adapter(backbone)
    keys = set(trained) == set(saved) == set(loaded)
    common = sorted(set(trained) & set(saved) & set(loaded))
    return {
        "tensors": len(trained), "keys_equal": keys,
        "saved_dtypes": sorted({str(v.dtype) for v in saved.values()}),
        "loaded_dtypes": sorted({str(v.dtype) for v in loaded.values()}),
        "saved_equal_trained": keys and all(torch.equal(saved[k].float(), trained[k]) for k in common),
        "loaded_equal_trained_in_loaded_dtype": keys and all(
            torch.equal(loaded[k], trained[k].to(loaded[k].dtype)) for k in common),
        "max_abs_diff_loaded_vs_trained": max((float((loaded[k].float() - trained[k]).abs().max()) for k in common),
                                              default=None),
    }


# --------------------------------------------------------------------------------------------------
# section sample
# --------------------------------------------------------------------------------------------------
def random_adapter(backbone, args, out_dir: str) -> str:
    """A LoRA with small random factors, saved by lora_io (when section steps did not run)."""
    import torch

    from layerloop.models.config import LoraConfig
    from layerloop.models.lora_io import save_adapter
    from layerloop.models.trainer import attach_lora, detach_lora

    params = attach_lora(backbone.transformer, LoraConfig(rank=args.rank), seed=0)
    try:
        with torch.no_grad():
            for i, (_, p) in enumerate(sorted(params.items())):
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 1e-2)
        save_adapter(backbone, out_dir, card={"bench": "gpu_path", "random": True})
    finally:
        detach_lora(backbone.transformer)
    return out_dir


def time_decompose(backbone, adapter: str, cfg, composites) -> tuple[dict, list]:
    """Sampler(...).decompose of one batch: set-up (load, fuse, quantise), a 2-step warm-up (compiles),
    then the timed call at cfg.steps."""
    from layerloop.models.sampler import Sampler

    t0 = time.perf_counter()
    sampler = Sampler(backbone, adapter, cfg)
    _sync(backbone.device)
    prepare = time.perf_counter() - t0
    sampler.cfg = cfg.model_copy(update={"steps": 2})
    t0 = time.perf_counter()
    sampler.decompose(composites)
    _sync(backbone.device)
    warmup = time.perf_counter() - t0
    sampler.cfg = cfg
    t0 = time.perf_counter()
    out = sampler.decompose(composites)
    _sync(backbone.device)
    sec = time.perf_counter() - t0
    return {"dtype": str(backbone.dtype).replace("torch.", ""), "sec": sec, "sec_per_triptych": sec / len(composites),
            "warmup_s": warmup, "prepare_s": prepare,
            "fp8_linears": sampler.fp8_linears, "constant_outputs": _constant(out)}, out


def _constant(out: list[dict]) -> int:
    """Output layers that are one flat colour (NaNs in the model come out so)."""
    import numpy as np

    return sum(int(np.asarray(im).std() == 0) for item in out for im in item.values())


def psnr_between(a: list[dict], b: list[dict]) -> dict:
    from layerloop.models.metrics import psnr

    per_layer = {k: [psnr(x[k], y[k]) for x, y in zip(a, b)] for k in a[0]}
    means = {k: sum(v) / len(v) for k, v in per_layer.items()}
    return {"per_layer_mean_db": means, "min_db": min(min(v) for v in per_layer.values())}


def section_sample(args, state, sec, budget, save) -> None:
    from layerloop.models.acceleration import fp8_problems
    from layerloop.models.config import SampleConfig

    backbone = get_backbone(args, state)
    set_checkpointing(backbone.transformer, False)
    adapter = state.get("adapter_dir")
    sec["adapter"] = "trained by section steps" if adapter else "random LoRA (section steps did not run)"
    adapter = adapter or random_adapter(backbone, args, str(Path(state["workdir"]) / "random-adapter"))
    composites = [t["composite"] for t in triplets(args.panel, args.sample_batch, "test")]
    cfg = SampleConfig(steps=args.sample_steps, guidance=30.0, batch_size=args.sample_batch,
                       compile_blocks=not args.quick, fuse_lora=True)
    sec["config"] = cfg.model_dump(include={"steps", "guidance", "batch_size", "compile_blocks", "fuse_lora"})
    print(f"sample: bf16, batch {args.sample_batch}, {args.sample_steps} steps", flush=True)
    row, bf16_out = time_decompose(backbone, adapter, cfg, composites)
    sec["bf16"] = row
    sec["targets"] = {"bf16 <= 2.5 s per triptych": row["sec_per_triptych"] <= TARGETS["sec_per_triptych"]}
    save()
    problems = fp8_problems(backbone.device, backbone.dtype)
    if problems:
        sec["fp8"] = {"status": "skipped", "reason": "; ".join(problems)}
        return
    if budget.spent():
        sec["fp8"] = {"status": "skipped", "reason": "section budget spent"}
        return
    print("sample: FP8 (torchao), same inputs and noises", flush=True)
    fp8_row, fp8_out = time_decompose(backbone, adapter, cfg.model_copy(update={"fp8": True}), composites)
    sec["fp8"] = {"status": "ok", **fp8_row, "speedup_vs_bf16": row["sec"] / fp8_row["sec"],
                  "psnr_vs_bf16": psnr_between(bf16_out, fp8_out)}
    sec["targets"]["fp8 <= 2.5 s per triptych"] = fp8_row["sec_per_triptych"] <= TARGETS["sec_per_triptych"]


# --------------------------------------------------------------------------------------------------
# section pytest
# --------------------------------------------------------------------------------------------------
def pytest_command(extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
            "--continue-on-collection-errors", *extra]


def parse_pytest(output: str) -> dict:
    """Counts of pytest's closing line, each SKIPPED reason, ERROR and FAILED lines."""
    lines = output.splitlines()
    summary = next((ln for ln in reversed(lines) if re.search(r"\d+ (passed|failed|skipped|deselected|error)", ln)), "")
    kinds = r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)"
    counts = {m.group(2): int(m.group(1)) for m in re.finditer(kinds, summary)}
    skips = []
    for ln in lines:
        m = re.match(r"SKIPPED \[(\d+)\] ([^:]+:\d+): (.*)", ln)
        if m:
            skips.append({"count": int(m.group(1)), "where": m.group(2), "reason": m.group(3)})
    return {"counts": counts, "summary": summary.strip(" ="), "skips": skips,
            "errors": [ln for ln in lines if ln.startswith("ERROR")],
            "failed": [ln for ln in lines if ln.startswith("FAILED")]}


def section_pytest(args, state, sec, budget, save) -> None:
    cmd = pytest_command(args.pytest_args)
    paths = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(paths)}
    sec["command"] = " ".join(["python"] + cmd[1:])
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(30.0, budget.left()))
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        sec.update(status="timeout", reason=f"pytest ran past the section budget ({budget.seconds:.0f} s)",
                   **parse_pytest(out), tail=out[-3000:])
        return
    out = proc.stdout + proc.stderr
    sec.update(rc=proc.returncode, **parse_pytest(out), tail=out[-3000:])


# --------------------------------------------------------------------------------------------------
# section ray
# --------------------------------------------------------------------------------------------------
def ray_config(store: str, inputs: dict, args, workers: int | None, cuda: bool):
    """bench/scale.py's round (smoke sizes), with bigger units; under Ray `workers` units at once, each
    reserving 1/workers of the local Ray's CPUs (and of its GPU when there is one)."""
    from layerloop.tasks.config import deep_merge, load_config
    from layerloop.tasks.stages.demo import smoke_overrides

    loop = {"candidates_per_round": args.ray_candidates, "pool_per_round": args.ray_pool, "batch_size": args.ray_batch}
    if workers is not None:
        top = max(args.ray_workers)
        ray = {"local_cpus": top, "num_cpus": top / workers}
        if cuda:
            ray.update(local_gpus=1, num_gpus=1 / workers)
        loop.update(executor="ray", ray=ray)
    over = deep_merge(smoke_overrides(store, inputs, rounds=1),
                      {"loop": loop, "sample": {"steps": args.ray_sample_steps, "batch_size": args.ray_batch}})
    return load_config(None, overrides=over)


def ray_round(seeded: str, root: str, name: str, inputs: dict, args, workers: int, cuda: bool) -> dict:
    """Round 1 on a fresh copy of the seeded store with `workers` units at once; its wall and overhead."""
    import shutil

    from scale import _manifest, _round

    from layerloop.storage.rounds import RoundStore

    store = str(Path(root) / name)
    shutil.copytree(seeded, store)
    wall, result = _round(ray_config(store, inputs, args, workers, cuda))
    stage = sum(v for k, v in result["timings"].items() if k not in ("commit", "report"))
    runs = max(1, result["task_runs"])
    overhead = (wall * workers - stage) / runs  # bench/scale.py's per-unit overhead, in seconds
    execution = RoundStore(store).round_info(1).get("info", {}).get("execution", {})
    return {"workers": workers, "wall_s": wall, "stage_s": stage, "task_runs": result["task_runs"],
            "unit_s": stage / runs, "overhead_ms": 1000 * overhead, "overhead_share": overhead / (stage / runs),
            "processes": len(execution.get("processes", {})),
            "gpu_ids": sorted({g for p in execution.get("processes", {}).values() for g in p.get("gpu_ids", [])}),
            "manifest": _manifest(store)}


def placement_probe(cfg) -> dict:
    """In a Ray GPU worker: where tasks/runtime/placement.placed puts the model, and where Ray says it should."""
    import ray
    import torch

    from layerloop.tasks.runtime.placement import NOSET_CUDA, placed, torch_index

    new_cfg, where = placed(cfg)
    ids = ray.get_gpu_ids()
    expected = f"cuda:{torch_index(ids[0], os.environ.get('CUDA_VISIBLE_DEVICES'))}" if ids else None
    tensor = str(torch.zeros(1, device=new_cfg.model.device).device) if expected else None
    return {"gpu_ids": [str(i) for i in ids], "noset": os.environ.get(NOSET_CUDA), "model_device": new_cfg.model.device,
            "expected": expected, "tensor_device": tensor, "where": where}


def check_placement(cfg, top: int) -> dict:
    import ray

    probe = ray.remote(num_gpus=1 / top, num_cpus=1)(placement_probe)
    got = ray.get(probe.remote(cfg))
    got["ok"] = got["expected"] is not None and got["model_device"] == got["expected"] == got["tensor_device"]
    return got


def section_ray(args, state, sec, budget, save) -> None:
    import importlib.util

    missing = [m for m in ("ray", "prefect_ray", "prefect") if importlib.util.find_spec(m) is None]
    if missing:
        sec.update(status="skipped", reason=f"{', '.join(missing)} not importable here (pip install 'layerloop[ray]')")
        return
    for key, value in (("PREFECT_SERVER_ANALYTICS_ENABLED", "false"), ("PREFECT_LOGGING_LEVEL", "WARNING"),
                       ("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE",
                        "prefect.server.concurrency.lease_storage.filesystem"), ("RAY_DEDUP_LOGS", "1")):
        os.environ.setdefault(key, value)
    import torch

    cuda = torch.cuda.is_available()
    torch.set_num_threads(1)  # as bench/scale.py: Ray gives each worker OMP_NUM_THREADS=1
    with tempfile.TemporaryDirectory(prefix="gpu-path-ray-") as root:
        ray_rounds(args, sec, budget, save, root, cuda)


def ray_rounds(args, sec, budget, save, root: str, cuda: bool) -> None:
    import ray

    from layerloop.flows.seed import seed
    from layerloop.tasks.runtime import executor
    from layerloop.tasks.stages.demo import make_inputs

    inputs = make_inputs(str(Path(root) / "in"), n_seeds=args.ray_seeds, n_pool=max(16, args.ray_pool))
    seeded = str(Path(root) / "seeded")
    t0 = time.perf_counter()
    seed(ray_config(seeded, inputs, args, None, cuda))
    top = max(args.ray_workers)
    sec.update(seed_s=time.perf_counter() - t0, cuda=cuda, unit_items=args.ray_batch,
               sample_steps=args.ray_sample_steps, candidates=args.ray_candidates, pool=args.ray_pool, rows=[])
    t0 = time.perf_counter()
    ray.init(**executor.init_kwargs(ray_config(seeded, inputs, args, top, cuda)))
    try:
        sec["ray_up_s"] = time.perf_counter() - t0
        cold = ray_round(seeded, root, "cold", inputs, args, top, cuda)
        sec["cold_round"] = {k: v for k, v in cold.items() if k != "manifest"}
        save()
        rows = []
        for workers in sorted(args.ray_workers):
            if budget.spent():
                sec["rows"].append({"workers": workers, "status": "skipped", "reason": "section budget spent"})
                continue
            rows.append(ray_round(seeded, root, f"w{workers}", inputs, args, workers, cuda))
            sec["rows"].append({k: v for k, v in rows[-1].items() if k != "manifest"})
            save()
        sec["placement"] = (check_placement(ray_config(seeded, inputs, args, top, cuda), top) if cuda
                            else {"status": "skipped", "reason": "no CUDA device: placement keeps model.device"})
    finally:
        ray.shutdown()
    summarize_ray(sec, rows, cold)


def summarize_ray(sec: dict, rows: list[dict], cold: dict) -> None:
    if not rows or rows[0]["workers"] != 1:
        return
    base = rows[0]["wall_s"]
    for r, out in zip(rows, [x for x in sec["rows"] if x.get("status") != "skipped"]):
        out["speedup"] = base / r["wall_s"]
    sec["manifests_identical"] = all(r["manifest"] == cold["manifest"] for r in rows)
    by = {r["workers"]: r for r in sec["rows"] if "speedup" in r}
    sec["targets"] = {"speed-up >= 1.8x at 2 workers": by[2]["speedup"] >= TARGETS["speedup_2"] if 2 in by else None,
                      "overhead < 10 % of unit time": all(r["overhead_share"] < TARGETS["overhead_share"]
                                                          for r in by.values())}


# --------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------
def _f(value, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def _row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _config_text(c: dict) -> str:
    return (f"batch {c.get('batch')}, {'compiled' if c.get('compiled') else 'eager'}, "
            f"ckpt {'on' if c.get('checkpointing') else 'off'}")


def table_train(sec: dict) -> list[str]:
    out = [_row("train config", "status", "s/step", "peak GB", "TFLOP/s", "MFU", "HFU", "warm-up s"), "|---" * 8 + "|"]
    for r in sec.get("rows", []):
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('reason') or r.get('error')}"
        out.append(_row(_config_text(r), status, _f(r.get("sec")), _f(r.get("peak_gb"), ".1f"),
                        _f(r.get("tflops"), ".1f"), _f(r.get("mfu"), ".1%"), _f(r.get("hfu"), ".1%"),
                        _f(r.get("warmup_s"), ".1f")))
    return out


def table_steps(sec: dict) -> list[str]:
    loss, rl, dt = sec.get("loss") or {}, sec.get("reload") or {}, sec.get("dtypes") or {}
    c = sec.get("config") or {}
    diff = _f(rl.get("max_abs_diff_loaded_vs_trained"), ".2e")
    return [_row("steps", "value"), "|---|---|",
            _row("config", f"{_config_text(c)} ({c.get('from')})"),
            _row("steps done / planned",
                 f"{sec.get('steps_done')} / {sec.get('steps_planned')} {sec.get('stopped', '')}".strip()),
            _row("s/step", _f(sec.get("sec_per_step"))),
            _row("precision", f"base {dt.get('base_weights')}, LoRA masters {dt.get('lora_masters')}"),
            _row(f"loss first / last {loss.get('window')}-step mean",
                 f"{_f(loss.get('loss_first_mean'), '.4f')} / {_f(loss.get('loss_last_mean'), '.4f')}"),
            _row("all finite, falling", f"{_f(loss.get('all_finite'))}, {_f(loss.get('falling'))}"),
            _row("reload: keys equal, file == trained",
                 f"{_f(rl.get('keys_equal'))}, {_f(rl.get('saved_equal_trained'))} ({rl.get('saved_dtypes')})"),
            _row(f"reload: loaded == trained in {rl.get('loaded_dtypes')}",
                 f"{_f(rl.get('loaded_equal_trained_in_loaded_dtype'))} (max abs diff {diff})")]


def table_sample(sec: dict) -> list[str]:
    out = [_row("sample path", "s per batch", "s / triptych", "warm-up s", "set-up s", "speed-up vs bf16",
                "PSNR vs bf16 (dB)"), "|---" * 7 + "|"]
    for key in ("bf16", "fp8"):
        r = sec.get(key)
        if not r:
            continue
        if r.get("status") == "skipped":
            out.append(_row(key, f"skipped: {r['reason']}", "", "", "", "", ""))
            continue
        ps = r.get("psnr_vs_bf16")
        ps_text = ", ".join(f"{k} {_f(v, '.1f')}" for k, v in ps["per_layer_mean_db"].items()) if ps else "-"
        what = r.get("dtype", key) + (" + FP8 linears" if key == "fp8" else "")
        out.append(_row(what, _f(r["sec"]), _f(r["sec_per_triptych"]), _f(r["warmup_s"], ".1f"),
                        _f(r["prepare_s"], ".1f"), _f(r.get("speedup_vs_bf16"), ".2f"), ps_text))
    return out


def table_pytest(sec: dict) -> list[str]:
    if sec.get("status") == "skipped":
        return [f"pytest: skipped: {sec.get('reason')}"]
    out = [f"`{sec.get('command')}` -> rc {sec.get('rc')}: {sec.get('summary')}"]
    out += [f"- skipped x{s['count']} {s['where']}: {s['reason']}" for s in sec.get("skips", [])]
    out += [f"- {line}" for line in sec.get("errors", []) + sec.get("failed", [])]
    return out


def table_ray(sec: dict) -> list[str]:
    if sec.get("status") == "skipped":
        return [f"ray: skipped: {sec.get('reason')}"]
    out = [_row("ray workers", "wall s", "speed-up", "unit s", "overhead ms/unit", "overhead / unit time",
                "processes"), "|---" * 7 + "|"]
    for r in sec.get("rows", []):
        if r.get("status") == "skipped":
            out.append(_row(r["workers"], f"skipped: {r['reason']}", "", "", "", "", ""))
            continue
        out.append(_row(r["workers"], _f(r["wall_s"], ".2f"), _f(r.get("speedup"), ".2f"), _f(r["unit_s"]),
                        _f(r["overhead_ms"], ".0f"), _f(r["overhead_share"], ".1%"), r["processes"]))
    pl = sec.get("placement") or {}
    if pl.get("status") == "skipped":
        placement = f"skipped: {pl.get('reason')}"
    else:
        placement = (f"{'ok' if pl.get('ok') else 'NOT ok'} (model.device {pl.get('model_device')}, "
                     f"expected {pl.get('expected')}, tensor on {pl.get('tensor_device')})")
    return out + [f"placement: {placement}; manifests identical: {_f(sec.get('manifests_identical'))}"]


TABLES = {"train": table_train, "steps": table_steps, "sample": table_sample, "pytest": table_pytest, "ray": table_ray}


def print_section(name: str, sec: dict) -> None:
    print(f"\n### {name} ({sec.get('status')}, {_f(sec.get('wall_s'), '.0f')} s)")
    if sec.get("error"):
        print(f"error: {sec['error']}")
    try:
        print("\n".join(TABLES[name](sec)))
    except (KeyError, TypeError) as exc:  # a section that stopped half-way: its JSON has what it has
        print(f"(table incomplete: {type(exc).__name__} {exc})")
    for target, met in (sec.get("targets") or {}).items():
        print(f"- target {target}: {'met' if met else ('not met' if met is False else 'n/a')}")
    if sec.get("targets_note"):
        print(f"- targets: {sec['targets_note']}")
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------
RUNNERS = {"train": section_train, "steps": section_steps, "sample": section_sample, "pytest": section_pytest,
           "ray": section_ray}


def meta(args) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {"device": torch.cuda.get_device_name() if cuda and not args.quick else "cpu",
            "torch": torch.__version__, "quick": args.quick,
            "world": ("tiny configs, fp32, on the CPU (--quick smoke run: numbers are tiny-size, NOT FLUX numbers)"
                      if args.quick else "FLUX.1-Fill-dev transformer + VAE shapes, random weights, bf16"),
            "panel": args.panel, "text_len": args.text_len, "sections": args.only,
            "budgets_s": {n: getattr(args, f"budget_{n}") for n in SECTIONS}, "targets": TARGETS,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


def main(argv=None) -> dict:
    import torch

    args = parse_args(argv)
    if args.quick:
        torch.set_num_threads(2)
    t_start = time.perf_counter()
    report = Report(args.json, meta(args))
    state = {"workdir": args.workdir or tempfile.mkdtemp(prefix="gpu-path-")}
    print(f"gpu_path: {report.data['meta']['device']}; {report.data['meta']['world']}; sections {','.join(args.only)}",
          flush=True)
    for name in (s for s in SECTIONS if s in args.only):
        if name not in BACKBONE_SECTIONS:
            release_backbone(state)
        sec = report.section(name)
        t0 = time.perf_counter()
        try:
            RUNNERS[name](args, state, sec, Budget(getattr(args, f"budget_{name}")), report.save)
            if sec.get("status") == "running":
                sec["status"] = "done"
        except Exception as exc:  # noqa: BLE001 - one section's failure must not lose the others
            traceback.print_exc()
            sec.update(status="error", error=f"{type(exc).__name__}: {str(exc)[:500]}")
        sec["wall_s"] = time.perf_counter() - t0
        if args.quick and sec.get("targets"):  # tiny CPU numbers are not held against the GPU targets
            sec["targets"] = {k: None for k in sec["targets"]}
            sec["targets_note"] = "not applicable to --quick's tiny CPU numbers"
        if "build_s" in state:
            report.data["meta"]["backbone_build_s"] = state["build_s"]
        report.save()
        print_section(name, sec)
    release_backbone(state)
    report.data["meta"]["total_s"] = time.perf_counter() - t_start
    report.save()
    print(f"\ntotal wall time {report.data['meta']['total_s']:.0f} s; adapter files under {state['workdir']}"
          + (f"; JSON {args.json}" if args.json else ""))
    return report.data


if __name__ == "__main__":
    main()

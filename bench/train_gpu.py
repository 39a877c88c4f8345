"""GPU benchmark of the trainer's step on FLUX.1-Fill-dev's real shapes (random weights, no download).

Builds FluxTransformer2DModel with FLUX.1-Fill-dev's config (11.9 B parameters) and the FLUX VAE's
config, both randomly initialised straight on the GPU in bf16, attaches the trainer's LoRA (rank 32,
default targets) and runs `models.trainer.CycleTrainer.step` -- the very step code of train_lora -- on
a 3x512 triptych (3,072 image tokens + 512 cached text tokens) with gradient checkpointing:

  * flow-matching step (cycle weight 0) and flow-matching + cycle step (one-step intermediate);
  * step seconds, peak GPU memory, MFU against 790 TFLOP/s, counting the transformer FLOPs the
    step really performs (forward ~ 2*6.45e9*T + 4*57*3072*T^2 per sample: 6.45 B matmul parameters per token
    plus attention over T tokens in 57 blocks of width 3072; backward 2x);
  * batch 1 and 2, and the step with every transformer block regionally torch.compile'd;
  * triptych inference seconds at 28 steps through FluxFillPipeline, eager and with compiled blocks.

Goals (issue #3): >= 35 % MFU, <= 40 GB peak, <= 3 s compiled inference on one H100.

    python bench/train_gpu.py                 # one H100, < 8 min
    python bench/train_gpu.py --quick         # CPU smoke run at tiny sizes (seconds)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from layerloop.models.acceleration import compiled_blocks  # noqa: E402

PEAK_TFLOPS = 790.0
FLUX_FILL_TRANSFORMER = dict(
    patch_size=1, in_channels=384, out_channels=64, num_layers=19, num_single_layers=38,
    attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
    guidance_embeds=True, axes_dims_rope=[16, 56, 56],
)
FLUX_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=16, down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
    norm_num_groups=32, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
    use_quant_conv=False, use_post_quant_conv=False, force_upcast=True,
)
FLUX_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                      max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CPU smoke run with the tiny configs")
    p.add_argument("--panel", type=int, default=512)
    p.add_argument("--text-len", type=int, default=512)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 2], help="flow-matching step batch sizes to time")
    p.add_argument("--steps", type=int, default=5, help="timed training steps per variant")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--infer-steps", type=int, default=28)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--no-checkpointing", action="store_true")
    p.add_argument("--fp8", action="store_true", help="also time inference with torchao FP8 linears (last)")
    p.add_argument("--no-compile-train", action="store_true",
                   help="skip the regionally compiled training step (each block compiled once, LoRA inside)")
    args = p.parse_args(argv)
    if args.quick:
        args.panel, args.text_len, args.rank, args.steps, args.warmup, args.infer_steps = 32, 16, 4, 2, 1, 2
        args.no_compile = args.no_compile_train = True
        args.batch = [1]
    return args


def build(args):
    """A Backbone of FLUX-shaped random modules (no text encoders: embeddings are cached tensors)."""
    backbone = random_backbone(args.quick, args.panel, args.text_len)
    if not args.no_checkpointing:
        backbone.transformer.enable_gradient_checkpointing()
    return backbone


def random_backbone(quick: bool, panel: int, text_len: int):
    """Random-weight modules of FLUX.1-Fill's shapes on CUDA in bf16, or (quick) of the tiny base's on CPU.

    No text encoders: the GPU benches feed stand-in or cached embeddings. Shared by bench/gpu_path.py.
    """
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    from layerloop.models.config import DEFAULT_PROMPT_TEMPLATES
    from layerloop.models.factory import Backbone
    from layerloop.models.grid import LayerSchema

    if quick:
        from layerloop.models import tiny

        t_cfg, v_cfg, s_cfg = tiny.transformer_config(), tiny.vae_config(), tiny.scheduler_config()
        device, dtype = torch.device("cpu"), torch.float32  # bf16 matmuls crawl on CPUs without AMX
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --quick for the CPU smoke run")
        t_cfg, v_cfg, s_cfg = FLUX_FILL_TRANSFORMER, FLUX_VAE, FLUX_SCHEDULER
        device, dtype = torch.device("cuda"), torch.bfloat16
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # initialised on the GPU: 12 B fp32 weights would not fit host RAM
            transformer, vae = FluxTransformer2DModel(**t_cfg), AutoencoderKL(**v_cfg)
    finally:
        torch.set_default_dtype(previous)
    transformer.requires_grad_(False).eval()
    vae.requires_grad_(False).eval()
    return Backbone(
        transformer=transformer, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
        tokenizer_2=None, scheduler=FlowMatchEulerDiscreteScheduler(**s_cfg), schema=LayerSchema(),
        panel_size=panel, device=device, dtype=dtype, prompt_templates=dict(DEFAULT_PROMPT_TEMPLATES),
        max_sequence_length=text_len, base_id="random-tiny" if quick else "random-flux-fill-shapes",
    )


def cached_embeddings(backbone, args):
    """Stand-ins for the cached T5/CLIP task embeddings (the trainer never runs the encoders per step)."""
    import torch

    cfg = backbone.transformer.config
    gen = torch.Generator().manual_seed(0)

    def one():
        pe = torch.randn(1, args.text_len, cfg.joint_attention_dim, generator=gen).to(backbone.device, backbone.dtype)
        pooled = torch.randn(1, cfg.pooled_projection_dim, generator=gen).to(backbone.device, backbone.dtype)
        return pe, pooled, torch.zeros(args.text_len, 3, device=backbone.device, dtype=backbone.dtype)

    return {("decompose", None): one(), ("synthesize", None): one(), ("", None): one()}


def random_grids(n: int, backbone):
    import numpy as np
    from PIL import Image

    w, h = backbone.schema.grid_size(backbone.panel_size)
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for _ in range(n)]


def make_trainer(backbone, args, cycle: bool, batch: int):
    from layerloop.models.config import LoraConfig, TrainConfig
    from layerloop.models.trainer import CycleTrainer, DataCache, FillCodec, attach_lora, encode_views

    codec = FillCodec(backbone)
    grids = random_grids(max(4, batch), backbone)
    x0, cond = encode_views(codec, grids, ["decompose", "synthesize"], seed=0, chunk=1)
    cache = DataCache(grids, x0, cond, cached_embeddings(backbone, args), [None] * len(grids), "bench")
    params = attach_lora(backbone.transformer, LoraConfig(rank=args.rank), seed=0)
    cfg = TrainConfig(batch_size=batch, cycle_weight=0.5 if cycle else 0.0, cycle_warmup_steps=0, lr=1e-4)
    return CycleTrainer(backbone, cache, codec, cfg, params)


def flops_forward(tokens: int) -> float:
    """FLUX.1 forward FLOPs per sample for `tokens` image + text tokens (see the module docstring)."""
    return 2 * 6.45e9 * tokens + 4 * 57 * 3072 * tokens ** 2


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def time_training(backbone, args, cycle: bool, batch: int, compiled: bool = False) -> dict:
    """Seconds per step and peak memory of CycleTrainer.step; the LoRA is removed afterwards."""
    import torch

    from layerloop.models.trainer import detach_lora

    trainer = make_trainer(backbone, args, cycle, batch)
    backbone.transformer.train()
    try:
        # compiled: what TrainConfig(compile_blocks=True) does around the training loop
        with compiled_blocks(backbone.transformer, compiled):
            for k in range(args.warmup):
                trainer.step(k)
            _sync(backbone.device)
            if backbone.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            for k in range(args.warmup, args.warmup + args.steps):
                trainer.step(k)
            _sync(backbone.device)
            sec = (time.perf_counter() - t0) / args.steps
    finally:
        backbone.transformer.eval()
        trainer.optimizer.zero_grad(set_to_none=True)
        detach_lora(backbone.transformer)
    peak = torch.cuda.max_memory_allocated() / 2**30 if backbone.device.type == "cuda" else float("nan")
    tokens = trainer.cache.x0.shape[1] + args.text_len
    # FM: fwd+bwd on B; cycle: + a no-grad fwd on B (intermediate) + fwd+bwd on the B cycled samples
    fwd_equiv = 3 * batch + ((1 + 3) * batch if cycle else 0)
    flops = fwd_equiv * flops_forward(tokens)
    return {"sec": sec, "peak_gb": peak, "tflops": flops / sec / 1e12, "mfu": flops / sec / (PEAK_TFLOPS * 1e12),
            "tokens": tokens}


def time_inference(backbone, args, compiled: bool, fused: bool = False) -> dict:
    """Seconds of one decomposition triptych through FluxFillPipeline at `infer_steps` steps."""
    import torch

    from layerloop.models.grid import task_mask

    pipe = backbone.pipeline()
    emb = cached_embeddings(backbone, args)[("decompose", None)]
    grid = random_grids(1, backbone)[0]
    w, h = backbone.schema.grid_size(backbone.panel_size)
    kwargs = dict(image=grid, mask_image=task_mask("decompose", backbone.schema, backbone.panel_size),
                  prompt_embeds=emb[0], pooled_prompt_embeds=emb[1], height=h, width=w, guidance_scale=30.0,
                  max_sequence_length=args.text_len, output_type="pil")
    if fused:
        pipe.transformer.fuse_qkv_projections()
    try:
        with torch.inference_mode(), compiled_blocks(pipe.transformer, compiled):
            t0 = time.perf_counter()
            pipe(num_inference_steps=2, generator=torch.Generator().manual_seed(0), **kwargs)  # warm-up / compile
            _sync(backbone.device)
            warmup_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            pipe(num_inference_steps=args.infer_steps, generator=torch.Generator().manual_seed(0), **kwargs)
            _sync(backbone.device)
            sec = time.perf_counter() - t0
    finally:
        if fused:
            pipe.transformer.unfuse_qkv_projections()
    return {"sec": sec, "warmup_s": warmup_s}


def time_fp8_inference(backbone, args) -> dict:
    """Compiled inference after FP8 (e4m3) weights + dynamic per-row FP8 activations in every Linear
    (torchao). Irreversible: the benchmark's last row. The warm-up column is the compile run only."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    quantize_(backbone.transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    return time_inference(backbone, args, compiled=True)


def main(argv=None) -> list[dict]:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(2 if args.quick else torch.get_num_threads())
    t_start = time.perf_counter()
    backbone = build(args)
    n_params = sum(p.numel() for p in backbone.transformer.parameters())
    device_name = torch.cuda.get_device_name() if backbone.device.type == "cuda" else "cpu"
    print(f"device {device_name}; transformer {n_params / 1e9:.2f} B params; build {time.perf_counter() - t_start:.1f} s;"
          f" triptych 3x{args.panel}, LoRA rank {args.rank}, checkpointing {not args.no_checkpointing}", flush=True)
    rows = []
    plan = [(False, b, False) for b in args.batch] + [(True, 1, False)]
    if not args.no_compile_train:
        plan.append((False, max(args.batch), True))
    for cycle, batch, compiled in plan:
        r = _attempt(time_training, backbone, args, cycle, batch, compiled)
        what = "flow matching" + (" + cycle (one-step)" if cycle else "") + (", compiled blocks" if compiled else "")
        base = f"train step batch {batch}, flow matching" if compiled else None
        rows.append({"what": f"train step batch {batch}, {what}", "vs": base, **r})
        print(rows[-1], flush=True)
    eager_inference = f"inference {args.infer_steps} steps, eager"
    variants = [(False, False)] if args.no_compile else [(False, False), (True, False), (True, True)]
    for compiled, fused in variants:
        r = _attempt(time_inference, backbone, args, compiled, fused)
        what = ("compiled blocks" if compiled else "eager") + (", fused QKV" if fused else "")
        rows.append({"what": f"inference {args.infer_steps} steps, {what}", "vs": eager_inference if compiled else None, **r})
        print(rows[-1], flush=True)
    if args.fp8:  # last: quantization replaces the weights in place
        r = _attempt(time_fp8_inference, backbone, args)
        rows.append({"what": f"inference {args.infer_steps} steps, FP8 weights+activations (torchao), compiled blocks",
                     "vs": eager_inference, **r})
        print(rows[-1], flush=True)
    print_table(rows, device_name, time.perf_counter() - t_start)
    return rows


def _attempt(fn, *args) -> dict:
    """One variant's numbers, or its error as a row (a compiler failure must not hide the other rows)."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - reported in the table, the benchmark goes on
        print(f"{fn.__name__}{args[2:]} failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        return {"sec": float("nan"), "error": type(exc).__name__}


def print_table(rows: list[dict], device_name: str, total_s: float) -> None:
    """The table; 'speed-up' is the row's eager counterpart's seconds over its own, from this same run."""
    seconds = {r["what"]: r["sec"] for r in rows}
    print(f"\n| {device_name} | seconds | speed-up | peak GB | TFLOP/s | MFU (of {PEAK_TFLOPS:.0f}) | warm-up s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        speedup = seconds.get(r.get("vs"), float("nan")) / r["sec"] if r.get("vs") else None
        cells = [_fmt(r["sec"], ".3f"), _fmt(speedup, ".2f"), _fmt(r.get("peak_gb"), ".1f"), _fmt(r.get("tflops"), ".1f"),
                 _fmt(r.get("mfu"), ".1%"), _fmt(r.get("warmup_s"), ".1f")]
        print(f"| {r['what']} | " + " | ".join(cells) + " |")
    print(f"\ntotal wall time {total_s:.0f} s; goals: MFU >= 35 %, peak <= 40 GB, compiled inference <= 3 s")


def _fmt(value, spec: str) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return format(value, spec)


if __name__ == "__main__":
    main()

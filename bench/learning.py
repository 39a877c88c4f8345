"""Learning benchmark: does the seed LoRA decompose held-out synthetic composites better than baselines?

Trains the seed LoRA on N synthetic seed triplets on the CPU (tiny shipped base) and reports held-out
per-layer PSNR/SSIM against ground truth for
  * identity baseline (object = composite, logo = blank white panel),
  * the untrained base (no LoRA; the spread comes from two sampling seeds),
  * the seed LoRA without the cycle loss (two training seeds),
  * the seed LoRA with the cycle loss (two training seeds),
with mean, min..max over seeds, and training seconds per LoRA. A benchmark, not a test: it prints.

    python bench/learning.py                      # 100 seeds, 192 test items, the headline config
    python bench/learning.py --quick              # seconds: checks the script end to end
    python bench/learning.py --steps 300 --lr 2e-3 --rank 16   # sweeps
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LAYERS = ("logo", "object")


def parse_args(argv=None) -> argparse.Namespace:
    from layerloop.models.config import SampleConfig, TrainConfig

    t, s = TrainConfig(), SampleConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-seeds", type=int, default=100, help="training triplets (the paper's 100 seeds)")
    p.add_argument("--n-test", type=int, default=192,
                   help="held-out test triplets (48 left ~0.3 dB of sampling noise in the logo PSNR)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training / sampling seeds")
    p.add_argument("--data-seed", type=int, default=0)
    # defaults: the headline run of docs/training.md (fits 5 min per LoRA on 2 CPU cores)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--batch", type=int, default=t.batch_size)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default=t.lr_schedule)
    p.add_argument("--lr-warmup", type=int, default=t.lr_warmup_steps)
    p.add_argument("--loss-region", choices=["all", "generated"], default=t.loss_region)
    p.add_argument("--train-guidance", type=float, default=t.guidance, help="FLUX guidance while training")
    p.add_argument("--logit-mean", type=float, default=t.logit_mean, help="centre of the logit-normal t")
    p.add_argument("--compile-blocks", action="store_true", help="regional torch.compile while training (GPU)")
    p.add_argument("--cycle-weight", type=float, default=0.1)
    p.add_argument("--cycle-warmup", type=int, default=2000, help="steps before the cycle term starts")
    p.add_argument("--cycle-intermediate", choices=["one_step", "sampler"], default=t.cycle_intermediate)
    p.add_argument("--cycle-sampler-steps", type=int, default=t.cycle_sampler_steps)
    p.add_argument("--sample-steps", type=int, default=s.steps)
    p.add_argument("--guidance", type=float, nargs="+", default=[s.guidance],
                   help="sampler guidance; several values evaluate every model at each (rows 'name g=G')")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", nargs="+", default=["identity", "base", "lora", "lora_cycle"])
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--quick", action="store_true", help="tiny counts to check the script")
    p.add_argument("--model-path", default=None, help="tiny base directory (default: the shipped one)")
    p.add_argument("--random-base", action="store_true",
                   help="use a randomly initialised tiny base when the shipped one is missing (smoke runs only)")
    args = p.parse_args(argv)
    if args.quick:
        args.n_seeds, args.n_test, args.steps, args.cycle_warmup, args.sample_steps = 8, 4, 3, 1, 2
    return args


def evaluate(backbone, adapter_dir, items, args, seed: int) -> dict[float, dict]:
    """Scores of one model per sampler guidance."""
    from layerloop.models.config import SampleConfig
    from layerloop.models.evaluation import evaluate_decomposition
    from layerloop.models.sampler import Sampler

    out = {}
    for g in args.guidance:
        cfg = SampleConfig(steps=args.sample_steps, guidance=g, seed=seed)
        out[g] = evaluate_decomposition(Sampler(backbone, adapter_dir, cfg), items, batch_size=cfg.batch_size)
    return out


def _add(results: dict, name: str, by_guidance: dict[float, dict], extra: dict | None = None) -> None:
    for g, row in by_guidance.items():
        key = name if len(by_guidance) == 1 else f"{name} g={g:g}"
        results.setdefault(key, []).append({**row, **(extra or {})})


def train(backbone, triplets, args, seed: int, cycle: bool, out_dir: str) -> tuple[str, float]:
    from layerloop.models.config import LoraConfig, TrainConfig
    from layerloop.models.trainer import train_lora

    cfg = TrainConfig(steps=args.steps, lr=args.lr, batch_size=args.batch, seed=seed,
                      cycle_weight=args.cycle_weight if cycle else 0.0, cycle_warmup_steps=args.cycle_warmup,
                      checkpoint_every=max(args.steps, 1), lr_schedule=args.lr_schedule,
                      lr_warmup_steps=args.lr_warmup, loss_region=args.loss_region, guidance=args.train_guidance,
                      logit_mean=args.logit_mean, compile_blocks=args.compile_blocks,
                      cycle_intermediate=args.cycle_intermediate, cycle_sampler_steps=args.cycle_sampler_steps)
    t0 = time.perf_counter()
    res = train_lora(backbone, triplets, cfg, LoraConfig(rank=args.rank), out_dir)
    return res.adapter_dir, time.perf_counter() - t0


def run(args) -> dict[str, list[dict]]:
    from layerloop.models.config import ModelConfig
    from layerloop.models.evaluation import identity_baseline
    from layerloop.models.factory import build_backbone
    from layerloop.models.synthetic import make_split

    backbone = build_backbone(ModelConfig(path=args.model_path), allow_random_init=args.random_base)
    print(f"base {backbone.base_id}", flush=True)
    size = backbone.panel_size
    train_set = [trip for _, trip, _ in make_split("seeds", args.n_seeds, size, args.data_seed)]
    test_set = list(make_split("test", args.n_test, size, args.data_seed))
    results: dict[str, list[dict]] = {}
    if "identity" in args.variants:
        results["identity"] = [identity_baseline(test_set)]
    if "base" in args.variants:
        for s in args.seeds:
            _add(results, "base", evaluate(backbone, None, test_set, args, s))
    with tempfile.TemporaryDirectory(prefix="layerloop-bench-") as tmp:
        for name, cycle in (("lora", False), ("lora_cycle", True)):
            if name not in args.variants:
                continue
            for s in args.seeds:
                adapter, secs = train(backbone, train_set, args, s, cycle, f"{tmp}/{name}-{s}")
                scores = evaluate(backbone, adapter, test_set, args, s)
                _add(results, name, scores, {"train_s": secs})
                for g, row in scores.items():
                    print(f"  {name} seed {s} g={g:g}: " + _brief({**row, "train_s": secs}), flush=True)
    return results


def _brief(row: dict) -> str:
    return ", ".join(f"{k} {row[k]:.2f}" for k in ("psnr_logo", "psnr_object", "train_s") if k in row)


def _stats(rows: list[dict], key: str) -> tuple[float, float, float]:
    vals = [r[key] for r in rows if key in r]
    return sum(vals) / len(vals), min(vals), max(vals)


def print_table(results: dict[str, list[dict]], args) -> list[str]:
    print(f"\nheld-out decomposition, {args.n_test} test items, LoRA trained on {args.n_seeds} seeds "
          f"({args.steps} steps, batch {args.batch}, rank {args.rank}, lr {args.lr} {args.lr_schedule}, loss on "
          f"{args.loss_region} panels, train guidance {args.train_guidance}); sampler {args.sample_steps} "
          f"steps, guidance {args.guidance}; seeds {args.seeds}")
    print("| variant | PSNR logo (min..max) | PSNR object (min..max) | SSIM logo | SSIM object | train s / LoRA |")
    print("|---|---|---|---|---|---|")
    for name, rows in results.items():
        cells = []
        for layer in LAYERS:
            m, lo, hi = _stats(rows, f"psnr_{layer}")
            cells.append(f"{m:.2f} ({lo:.2f}..{hi:.2f})")
        cells += [f"{_stats(rows, f'ssim_{layer}')[0]:.3f}" for layer in LAYERS]
        cells.append(f"{_stats(rows, 'train_s')[0]:.0f}" if "train_s" in rows[0] else "-")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return verdicts(results)


def verdicts(results: dict[str, list[dict]]) -> list[str]:
    """Does each LoRA variant beat each baseline on each layer by more than the seed spread?

    With several sampler guidances a LoRA row is compared with the base row of the same guidance.
    """
    lines = []
    for name in [k for k in results if k.startswith("lora")]:
        suffix = name[len(name.split(" ")[0]):]
        for base in ("identity", "base" + suffix):
            if base not in results:
                continue
            for layer in LAYERS:
                key = f"psnr_{layer}"
                m, lo, hi = _stats(results[name], key)
                bm, blo, bhi = _stats(results[base], key)
                spread = max(hi - lo, bhi - blo)
                ok = m - bm > spread
                lines.append(f"{name} vs {base} on {layer}: {m - bm:+.2f} dB, spread {spread:.2f} dB -> "
                             f"{'BEATS' if ok else 'does NOT beat'}")
    print("\n".join(lines))
    return lines


def main(argv=None) -> dict:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    results = run(args)
    lines = print_table(results, args)
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, "verdicts": lines}, indent=1))
    return results


if __name__ == "__main__":
    main()

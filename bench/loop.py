"""Loop benchmark: does every round's data make a better decomposer than the same training without it?

Runs the self-improving loop (the pipeline's own stage functions, tasks/runtime/driver.py, no Prefect) on the
shifted synthetic world -- 100 labeled seeds from a narrow slice (mugs and bottles), an unlabeled pool and a
held-out test set from the whole world -- with `loop.control` on, so every adapter r has its matched-compute
control beside it (the same steps, from the previous control, on the labeled seeds alone). For each training
seed it prints, per adapter, held-out PSNR and logo-shape IoU on the slice the seeds showed ("seen") and on
the rest ("unseen"), the validation split's PSNR, the selection rate of the round the adapter's data came
from, and loop minus control; then the verdicts of issue 11 against the spread over seeds.

    python bench/loop.py                       # CPU: 2 seeds x 3 rounds (timing below)
    python bench/loop.py --gpu-scale           # GPU: 8 rounds x 512 pool candidates, bigger sampler batches
    python bench/loop.py --quick               # seconds: checks the script end to end
    python bench/loop.py --json rows.json      # one row per (variant loop|control, seed, adapter)

Timing: the CPU default from scratch took 1,489 s (25 min) on 2 otherwise idle cores, run as its seeds in two
processes: render the inputs once (--seeds 0 --report-only, so the two do not render them at the same time),
then --seeds 0 and --seeds 1 with --threads 1 and one --work side by side, then --seeds 0 1 --report-only for
the joint table from the finished stores. One process with --seeds 0 1 runs the seeds one after the other.

With --separate-control the control is its own pipeline (no pool: every round accepts nothing, so each
adapter gets the same steps on the labeled seeds alone) in its own store, so that `--only loop` and
`--only control` can run in two processes side by side (one GPU serves both); `--report-only` then reads
both stores and prints the table.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METRICS = ("psnr_object", "psnr_logo", "iou_logo")
SLICES = ("unseen", "seen")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training / sampling seeds")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pool-per-round", type=int, default=128, help="pool candidates per round")
    p.add_argument("--seed-steps", type=int, default=1500, help="steps of the seed adapter")
    p.add_argument("--round-steps", type=int, default=600, help="steps of every later adapter (and control)")
    p.add_argument("--n-seeds", type=int, default=100, help="labeled triplets (validation carved from them)")
    p.add_argument("--validation", type=int, default=10, help="labeled seeds held out as the validation split")
    p.add_argument("--n-test", type=int, default=192, help="held-out test items (all kinds)")
    p.add_argument("--kinds", nargs="+", default=["mug", "bottle"], help="the seeds' slice of product kinds")
    p.add_argument("--sample-steps", type=int, default=8)
    p.add_argument("--sample-batch", type=int, default=16)
    p.add_argument("--anchor-fraction", type=float, default=None, help="train.anchor_fraction (default: config's)")
    p.add_argument("--pool-targets", choices=["anchored", "decomposed"], default="anchored")
    p.add_argument("--work", default="bench-loop-work", help="stores and inputs (kept: a rerun resumes)")
    p.add_argument("--fresh", action="store_true", help="delete --work first")
    p.add_argument("--json", default=None, help="write one row per (variant, seed, adapter) here")
    p.add_argument("--gpu-scale", action="store_true", help="8 rounds x 512 candidates, sampler batch 128")
    p.add_argument("--quick", action="store_true", help="tiny counts to check the script")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--separate-control", action="store_true",
                   help="the control as its own pipeline and store (see above)")
    p.add_argument("--only", choices=["loop", "control"], default=None, help="with --separate-control: run one")
    p.add_argument("--report-only", action="store_true", help="read the stores under --work, run nothing")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a config field of the loop (not the control), e.g. loop.cycle_keep_composite="
                        "resynthesized; values parse as YAML; repeatable")
    p.add_argument("--name", default="loop", help="name of this loop variant's store (--separate-control)")
    args = p.parse_args(argv)
    if args.gpu_scale:
        args.rounds, args.pool_per_round, args.sample_batch = max(args.rounds, 8), max(args.pool_per_round, 512), 128
    if args.quick:
        args.seeds, args.rounds, args.pool_per_round, args.seed_steps, args.round_steps = [0], 2, 4, 3, 2
        args.n_seeds, args.validation, args.n_test, args.sample_steps = 12, 3, 8, 2
    return args


def make_inputs(args, root: Path) -> dict[str, str]:
    """Seeds from the slice, pool and test from everything (rendered once; reruns reuse them)."""
    from layerloop.tasks.stages.demo import make_inputs as render

    return render(str(root), n_seeds=args.n_seeds, n_pool=args.pool_per_round * args.rounds, panel_size=32, seed=0,
                  seed_slice={"kinds": list(args.kinds)})


def config(args, seed: int, store: Path, inputs: dict[str, str], variant: str = "both"):
    """The benchmark's pipeline config: the default recipe at the benchmark's sizes, control on (variant
    "both"), or the loop alone ("loop"), or the separate control pipeline ("control": no pool)."""
    from layerloop.tasks.config import deep_merge, validate_config

    data = _base_config(args, seed, store, inputs, variant)
    if variant != "control":
        data = deep_merge(data, _overrides(args.set))
    return validate_config(data, source="bench/loop.py")


def _overrides(pairs: list[str]) -> dict:
    """--set SECTION.FIELD=VALUE pairs as a nested dict (values parsed as YAML)."""
    import yaml

    from layerloop.tasks.config import nest

    items = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        path = tuple(key.strip().split("."))
        if not sep or len(path) < 2 or not all(path):
            raise SystemExit(f"--set {pair!r}: expected SECTION.FIELD=VALUE")
        items.append((path, yaml.safe_load(raw)))
    return nest(items)


def _base_config(args, seed: int, store: Path, inputs: dict[str, str], variant: str) -> dict:
    train = {"steps": args.seed_steps, "batch_size": 4, "lr": 5e-3, "seed": seed, "checkpoint_every": 10**6}
    if args.anchor_fraction is not None:
        train["anchor_fraction"] = args.anchor_fraction
    return {
        "store": {"uri": str(store)}, "lora": {"rank": 16}, "train": train,
        "sample": {"steps": args.sample_steps, "batch_size": args.sample_batch, "seed": seed},
        "loop": {"rounds": args.rounds, "seeds_path": inputs["seeds"], "pool_path": inputs["pool"],
                 "pool_per_round": args.pool_per_round, "batch_size": args.sample_batch,
                 "eval_size": args.n_test, "validation_size": args.validation, "control": variant == "both",
                 "train_final": True, "round_train_steps": args.round_steps, "report": False,
                 "pool_targets": args.pool_targets,
                 # the control continues from its own previous adapter every round, as loop.control does
                 **({"pool_per_round": 0, "promotion_tolerance_db": None} if variant == "control" else {})}}


def rows_of(cfg, seed: int, control_cfg=None) -> list[dict]:
    """One row per (variant, adapter): held-out overall and per slice, validation, selection rate.
    Control rows come from the loop's own store, or from the separate control pipeline's."""
    from layerloop.tasks.stages import adapter_files
    from layerloop.tasks.stages.adapter import EVAL_FILE
    from layerloop.tasks.stages.handles import PROMOTION_FILE, open_store
    from layerloop.tasks.reporting.summary import round_summary

    store = open_store(cfg)
    cstore = open_store(control_cfg) if control_cfg is not None else None
    table = {r: round_summary(store, r) for r in store.committed_rounds()}
    out = []
    for k in range(cfg.loop.rounds + 1):
        control_uri = cstore.adapter_uri(k) if cstore else (store.control_adapter_uri(k) if k else store.adapter_uri(0))
        promo = adapter_files.read_json(adapter_files.join(store.adapter_uri(k), PROMOTION_FILE)) or {}
        for variant, uri in (("loop", store.adapter_uri(k)), ("control", control_uri)):
            measured = adapter_files.read_json(adapter_files.join(uri, EVAL_FILE)) or {}
            out.append({"variant": variant, "seed": seed, "round": k, **_prefixed(measured),
                        "selection_rate": table.get(k, {}).get("selection_rate") if variant == "loop" else None,
                        "promoted": promo.get("promoted") if variant == "loop" else None})
    return out


def _prefixed(measured: dict) -> dict:
    row = {f"heldout_{k}": v for k, v in (measured.get("heldout") or {}).items() if k.startswith(("psnr", "iou"))}
    row.update({f"validation_{k}": v for k, v in (measured.get("validation") or {}).items()
                if k.startswith(("psnr", "iou"))})
    return row


def run_seed(args, seed: int, root: Path, inputs: dict[str, str]) -> tuple[list[dict], float]:
    """Run (unless --report-only) and read one training seed's pipeline(s)."""
    from layerloop.tasks.runtime.driver import run_loop

    if not args.separate_control:
        cfgs = {"both": config(args, seed, root / f"store-seed{seed}", inputs)}
    else:
        cfgs = {v: config(args, seed, root / f"store-{args.name if v == 'loop' else v}-seed{seed}", inputs, v)
                for v in ("loop", "control")}
    start = time.perf_counter()
    for variant, cfg in cfgs.items():
        if not args.report_only and args.only in (None, variant):
            run_loop(cfg, log=lambda m: print(f"  seed {seed} {variant}: {m}", flush=True))
    main_cfg = cfgs.get("both") or cfgs["loop"]
    return rows_of(main_cfg, seed, cfgs.get("control")), time.perf_counter() - start


def print_table(rows: list[dict], seeds: list[int], rounds: int) -> None:
    """Per adapter: loop and control (mean over seeds) on each slice, and loop - control."""
    cols = [(s, m) for s in SLICES for m in METRICS]
    print("\n| adapter | variant | " + " | ".join(f"{m} {s}" for s, m in cols)
          + " | validation psnr_object | selection rate |")
    print("|---|---|" + "---|" * (len(cols) + 2))
    for k in range(rounds + 1):
        means = {v: _mean_row(rows, v, k) for v in ("loop", "control")}
        for v in ("loop", "control"):
            cells = [_fmt(means[v].get(f"heldout_{m}@{s}")) for s, m in cols]
            cells += [_fmt(means[v].get("validation_psnr_object")), _fmt(means[v].get("selection_rate"), pct=True)]
            print(f"| {k} | {v} | " + " | ".join(cells) + " |")
        diff = [_fmt(_sub(means["loop"].get(f"heldout_{m}@{s}"), means["control"].get(f"heldout_{m}@{s}")), sign=True)
                for s, m in cols]
        print(f"| {k} | loop - control | " + " | ".join(diff) + " | | |")


def _mean_row(rows: list[dict], variant: str, k: int) -> dict:
    picked = [r for r in rows if r["variant"] == variant and r["round"] == k]
    keys = {key for r in picked for key, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {key: sum(r[key] for r in picked if r.get(key) is not None) / max(1, sum(r.get(key) is not None
                                                                                    for r in picked))
            for key in keys}


def _sub(a, b):
    return None if a is None or b is None else a - b


def _fmt(v, pct: bool = False, sign: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f} %" if pct else (f"{v:+.2f}" if sign else f"{v:.2f}")


def verdicts(rows: list[dict], seeds: list[int], rounds: int) -> list[str]:
    """Issue 11's CPU criteria, each measured against the spread over seeds."""
    lines = []
    final = lambda v, key: [r.get(key) for r in rows if r["variant"] == v and r["round"] == rounds]  # noqa: E731
    for metric in METRICS:
        for sl in SLICES:
            key = f"heldout_{metric}@{sl}"
            loop, ctrl = final("loop", key), final("control", key)
            if None in loop + ctrl or not loop:
                continue
            diff = sum(loop) / len(loop) - sum(ctrl) / len(ctrl)
            spread = max(max(loop) - min(loop), max(ctrl) - min(ctrl))
            ok = diff > spread if sl == "unseen" else diff >= -spread
            goal = "beats control by more than the spread" if sl == "unseen" else "loses no more than the spread"
            lines.append(f"final adapter {metric} on {sl}: loop - control {diff:+.3f}, spread {spread:.3f} -> "
                         f"{'MET' if ok else 'NOT met'} ({goal})")
    lines += _monotone(rows, seeds, rounds)
    lines += _selection(rows, rounds)
    print("\n".join(lines))
    return lines


def _selection(rows: list[dict], rounds: int) -> list[str]:
    """The last round's selection rate against round 1's (mean over seeds), at the run's fixed thresholds."""
    def rate(k):
        vals = [r["selection_rate"] for r in rows if r["variant"] == "loop" and r["round"] == k
                and r.get("selection_rate") is not None]
        return sum(vals) / len(vals) if vals else None

    first, last = rate(1), rate(rounds)
    if first is None or last is None:
        return []
    ratio = f"{last / first:.2f}x" if first else "n/a (round 1 accepted nothing)"
    return [f"selection rate: round 1 {100 * first:.1f} %, round {rounds} {100 * last:.1f} % -> {ratio}"]


def _monotone(rows: list[dict], seeds: list[int], rounds: int) -> list[str]:
    """No loop adapter below its predecessor by more than the seed spread (mean over seeds, per slice)."""
    out = []
    for sl in SLICES:
        key = f"heldout_psnr_object@{sl}"
        vals = [[r.get(key) for r in rows if r["variant"] == "loop" and r["round"] == k] for k in range(rounds + 1)]
        if any(None in v or not v for v in vals):
            continue
        spread = max(max(v) - min(v) for v in vals)
        means = [sum(v) / len(v) for v in vals]
        worst = min(b - a for a, b in zip(means, means[1:])) if len(means) > 1 else 0.0
        out.append(f"loop adapters, psnr_object on {sl}: worst round-over-round change {worst:+.3f}, spread "
                   f"{spread:.3f} -> {'MET' if worst >= -spread else 'NOT met'}")
    return out


def main(argv=None) -> list[dict]:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    root = Path(args.work)
    if args.fresh:
        shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    inputs = make_inputs(args, root)
    rows, seconds = [], {}
    for seed in args.seeds:
        got, seconds[seed] = run_seed(args, seed, root, inputs)
        rows += got
    print(f"\nshifted world: seeds {args.n_seeds} ({'/'.join(args.kinds)}, {args.validation} held out for "
          f"validation), pool {args.pool_per_round}/round, test {args.n_test} (all kinds); seed adapter "
          f"{args.seed_steps} steps, then {args.round_steps} per adapter; seeds {args.seeds}; wall per seed "
          + ", ".join(f"{s}: {v:.0f} s" for s, v in seconds.items()))
    print_table(rows, args.seeds, args.rounds)
    lines = verdicts(rows, args.seeds, args.rounds)
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "verdicts": lines}, indent=1))
    return rows


if __name__ == "__main__":
    main()

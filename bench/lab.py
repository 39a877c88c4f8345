"""Lab benchmark (issue 26): what the paper's mechanisms need from the base model and a seed adapter.

On the DEV split (`make_split("dev", n, ...)`, never the test split) it measures, each beside its goal:

  * text following (tau_G): the seed adapter generates a triplet from each dev item's caption; classifiers
    built from the renderer's truth (models/lab_metrics.py, nearest neighbour among rendered templates)
    read the product kind and object colour off the object panel and the logo shape off the logo panel.
    Their accuracy on the dev items' REAL panels is printed beside them (a low score is then the model's),
    and so is chance. Measured plain and again with caption guidance (`--caption-guidance`, the
    `_caption_guidance` rows; models/guidance.py);
  * synthesis (tau_C): PSNR against the real composite of tau_C from the true logo and object panels,
    minus that of returning the object panel; whole panel and inside the logo's box in the composite
    (meta["logo_box"]: the renderer's printed-logo alpha, in composite pixels); plain and in the inference
    mode (`Sampler.compose` with sample.draws 6: the mean of six syntheses, the object kept outside where the
    model printed something; the `_inference_mode` rows);
  * decomposition on unseen kinds (kinds the seeds did not show): logo PSNR, logo shape IoU, object PSNR
    with one draw, and with the inference mode (sample.draws 6, sample.anchor true);
  * wall time of training the seed adapter (its metrics.json), and of `make demo` when --demo-time says.

    python bench/lab.py --json lab.json                         # the shipped base: trains the default recipe's
                                                                # seed adapter into bench-lab-work/ (reused), measures
    python bench/lab.py --store /work/bench-loop/store-seed0 --json research/results/lab.json
    python bench/lab.py --adapter path/to/adapter --n 64       # an adapter folder, default config
    python bench/lab.py --base-only --n 64                      # the base alone: tau_G / tau_C
    python bench/lab.py --store STORE --quick                   # seconds: checks the script end to end
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_WORK = "bench-lab-work"  # where a plain run trains (and then reuses) its seed adapter
SEEN_KINDS_DEFAULT = ("mug", "bottle")  # bench/loop.py's seed slice, when no store says otherwise
INFERENCE_MODE = {"draws": 6, "anchor": True}
CAPTION_GUIDANCE = 4.0  # sample.caption_guidance of the guided text rows: the best of 1-8 on dev (research/README.md)
REFERENCE_SUFFIXES = ("_inference_mode", "_caption_guidance")  # rows shown beside their one-draw / plain goal
# (metric, goal): every goal is "value >= goal" (issue 26)
GOALS = {
    "text_kind_acc": 0.80, "text_colour_acc": 0.80, "text_shape_acc": 0.60,
    "synth_gain_db": 3.0, "synth_gain_logo_box_db": 5.0,
    "logo_psnr_unseen": 15.0, "logo_iou_unseen": 0.80, "object_psnr_unseen": 25.0,
}
DECOMPOSE_KEYS = {"logo_psnr_unseen": "psnr_logo", "logo_iou_unseen": "iou_logo", "object_psnr_unseen": "psnr_object"}
QUICK = {"n": 6, "templates": 240, "steps": 2}


def parse_args(argv=None) -> argparse.Namespace:
    from layerloop.models.lab_metrics import DEFAULT_TEMPLATES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--store", help="a store written by bench/loop.py: its seed adapter (adapters/round-0000), "
                                     "round 1's saved config and its seeds' slice")
    src.add_argument("--train-seed", metavar="WORK",
                     help="first train the seed adapter by bench/loop.py's recipe (its 100 mug/bottle seeds, "
                          "1,500 steps) on --base into WORK/store, then measure it; a seeded WORK is reused (the default, "
                          f"into {DEFAULT_WORK}, when neither --store, --adapter nor --base-only is given)")
    src.add_argument("--adapter", help="a seed adapter directory (default config; unseen = kinds not mug/bottle)")
    p.add_argument("--base-only", action="store_true", help="the base without any adapter: tau_G and tau_C only")
    p.add_argument("--base", default=None, help="base model directory (default: the config's, i.e. the shipped "
                                                "tiny base)")
    p.add_argument("--n", type=int, default=64, help="dev items")
    p.add_argument("--templates", type=int, default=DEFAULT_TEMPLATES, help="rendered templates per classifier")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="with --train-seed: override a field of the seed round's config, e.g. "
                        "train.generate_fraction=0.25 (values parse as YAML; repeatable)")
    p.add_argument("--caption-guidance", type=float, default=CAPTION_GUIDANCE,
                   help="sample.caption_guidance of the guided text rows (1 = measure text plain only)")
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps of every measurement (default: the config's sample.steps)")
    p.add_argument("--demo-time", type=float, default=None, help="seconds a `make demo` took, measured elsewhere")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--quick", action="store_true", help="a few items, 2 sampler steps: checks the script")
    args = p.parse_args(argv)
    if not args.base_only and not (args.store or args.adapter or args.train_seed):
        args.train_seed = DEFAULT_WORK  # the plain `python bench/lab.py`: the default recipe's seed adapter
    if args.set and not args.train_seed:
        p.error("--set changes the seed round --train-seed trains; without it there is nothing to change")
    if args.quick:
        args.n, args.templates, args.steps = QUICK["n"], min(args.templates, QUICK["templates"]), QUICK["steps"]
    if args.n < 1 or args.templates < 1 or args.threads < 1 or (args.steps is not None and args.steps < 1):
        p.error("--n, --templates, --threads and --steps must be >= 1")
    if args.caption_guidance < 0:
        p.error("--caption-guidance must be >= 0")
    return args


# ----------------------------------------------------------------- inputs


def train_seed(args):
    """bench/loop.py's seed round (ingest + seed adapter + its measurement) on --base; returns its config
    (the store's round 0 keeps the ingest's record, not a pipeline config) and sets args.store."""
    import loop as loop_bench

    from layerloop.tasks import recipe
    from layerloop.tasks.config import deep_merge, validate_config
    from layerloop.tasks.runtime.driver import PlainRunner
    from layerloop.tasks.stages.handles import is_committed

    largs = loop_bench.parse_args(["--seeds", "0", "--threads", str(args.threads), *(["--quick"] if args.quick else [])])
    root = Path(args.train_seed)
    check_seeded_base(root, base_stamp(args.base))
    inputs = loop_bench.make_inputs(largs, root)
    data = deep_merge(loop_bench._base_config(largs, 0, root / "store", inputs, "loop"),
                      loop_bench._overrides(args.set))
    cfg = validate_config(deep_merge(data, {"model": {"path": args.base}} if args.base else {}),
                          source="bench/lab.py --train-seed")
    runner = PlainRunner()
    if not is_committed(cfg, 0):
        runner.run(recipe.INGEST, cfg)
    started = time.perf_counter()
    recipe.measure(cfg, 0, runner, recipe.SEED)
    print(f"seed round of {root / 'store'} done in {time.perf_counter() - started:.0f} s", flush=True)
    args.store = str(root / "store")
    return cfg


BASE_STAMP = "base.sha256"  # the id digest of the base a seeded WORK's adapter was trained on


def base_stamp(base: str | None) -> str:
    """The base's id digest (`tiny-base@<digest>`; the shipped tiny base when `base` is None)."""
    from layerloop.models import tiny
    from layerloop.models.factory import weights_digest

    return weights_digest(tiny.weights_path(Path(base) if base else tiny.ASSET_DIR, "transformer"))


def check_seeded_base(root: Path, stamp: str) -> None:
    """A reused WORK must hold a seed adapter of THIS base: a new shipped base would otherwise be measured
    through the old base's adapter without a word. An unstamped WORK is stamped (it predates the check)."""
    path = root / BASE_STAMP
    if path.is_file() and path.read_text().strip() != stamp:
        raise SystemExit(f"error: {root} holds a seed adapter trained on another base (tiny-base@"
                         f"{path.read_text().strip()}, this base tiny-base@{stamp}); delete it or give another "
                         "--train-seed WORK")
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(stamp + "\n")


def pipeline_config(args):
    """The store's round-1 config (its sampler, model and eval seed) or the defaults, with --base / --steps."""
    from layerloop.tasks.config import round_config, validate_config

    changes: dict = {}
    if args.base:
        changes["model"] = {"path": args.base}
    if args.steps is not None:
        changes["sample"] = {"steps": args.steps}
    if args.store:
        if not Path(args.store).is_dir():
            raise SystemExit(f"store {args.store} does not exist: run bench/loop.py first")
        return round_config(str(args.store), 1, changes)
    return validate_config(changes, source="bench/lab.py flags")


def adapter_and_unseen(args, cfg) -> tuple[str | None, object, str]:
    """(adapter directory or None, predicate on meta: is the item of an unseen kind, how unseen was decided)."""
    from layerloop.tasks.stages import adapter_files
    from layerloop.tasks.stages.adapter import seen_slices
    from layerloop.tasks.stages.handles import open_store

    default = (lambda m: m["kind"] not in SEEN_KINDS_DEFAULT, f"kinds other than {'/'.join(SEEN_KINDS_DEFAULT)}")
    if not args.store:
        adapter = None if args.base_only else str(Path(args.adapter))
        if adapter is not None and not (Path(adapter) / "pytorch_lora_weights.safetensors").is_file():
            raise SystemExit(f"--adapter {adapter}: no pytorch_lora_weights.safetensors there")
        return adapter, *default
    store = open_store(cfg)
    slices = seen_slices(store)
    unseen = (slices["unseen"], "outside the store's seed slice (seen_slices)") if slices else default
    return None if args.base_only else adapter_files.local_dir(store.adapter_uri(0)), *unseen


def dev_items(cfg, n: int) -> list[tuple[str, dict, dict]]:
    from layerloop.models.synthetic import make_split, world_logos

    if world_logos(cfg.model.layers) != 1:
        raise SystemExit("bench/lab.py measures the one-logo schema [logo, object]")
    return list(make_split("dev", n, cfg.model.panel_size, cfg.loop.eval_seed))


def train_seconds(adapter_dir: str | None) -> dict | None:
    """The seed adapter's training summary (train_seconds, steps, sec_per_step) from its metrics.json."""
    path = Path(adapter_dir or "") / "metrics.json"
    if not adapter_dir or not path.is_file():
        return None
    summary = json.loads(path.read_text()).get("summary") or {}
    keep = ("train_seconds", "steps", "sec_per_step", "n_triplets", "batch_size")
    return {k: summary[k] for k in keep if k in summary} if "train_seconds" in summary else None


# ----------------------------------------------------------------- measurements


def measure_text(smp, items, classifiers) -> dict:
    """tau_G from each item's caption, read by the truth classifiers; their accuracy on the real panels too."""
    from layerloop.models.lab_metrics import confusions, score_triplets

    metas = [m for _, _, m in items]
    generated = smp.generate([m["caption"] for m in metas])
    model = score_triplets(classifiers, generated, metas)
    truth = score_triplets(classifiers, [t for _, t, _ in items], metas)
    mistakes = {name: confusions(c, [g[c.attribute.panel] for g in generated],
                                 [m[c.attribute.meta_key] for m in metas])
                for name, c in classifiers.items()}
    chance = {name: c.attribute.chance for name, c in classifiers.items()}
    # a caption names two colours; a model that learned the words but not which one paints the object
    # reads as the logo's colour on the object about as often as the object's own
    as_logo = classifiers["colour"].accuracy([g["object"] for g in generated], [m["logo_colour"] for m in metas])
    return {"model": model, "truth": truth, "chance": chance, "confusions": mistakes,
            "object_colour_reads_logo_colour": as_logo}


def measure_synthesis(smp, mode_smp, items) -> dict:
    """tau_C from the true layers against copying the object panel, whole and inside the logo's box: plain
    (`synthesize`, one draw: what the cycle stage and judge use) and in the inference mode (`compose` of a
    sampler in INFERENCE_MODE: the mean of its draws, anchored)."""
    from layerloop.models.lab_metrics import synthesis_gains

    layers = [{"logo": t["logo"], "object": t["object"]} for _, t, _ in items]
    out = {}
    for name, made in (("plain", smp.synthesize(layers)), ("inference_mode", mode_smp.compose(layers))):
        rows = synthesis_gains([t["composite"] for _, t, _ in items], made, [t["object"] for _, t, _ in items],
                               [m["logo_box"] for _, _, m in items])
        out[name] = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    return {**out["plain"], "inference_mode": out["inference_mode"]}


def measure_decomposition(backbone, adapter_dir, sample_cfg, items, unseen) -> dict:
    """Per inference mode (one draw; draws 6 + anchor): mean metrics over all, unseen and seen items."""
    from layerloop.models.evaluation import evaluate_decomposition
    from layerloop.models.sampler import Sampler

    slices = {"unseen": unseen, "seen": lambda m: not unseen(m)}
    modes = {"one_draw": {"draws": 1, "anchor": False}, "inference_mode": INFERENCE_MODE}
    out = {}
    for name, mode in modes.items():
        smp = Sampler(backbone, adapter_dir, sample_cfg.model_copy(update=mode))
        result = evaluate_decomposition(smp, items, batch_size=sample_cfg.batch_size, slices=slices)
        out[name] = {"all": {k: v for k, v in result.items() if k != "slices"}, **result["slices"]}
    return out


# ----------------------------------------------------------------- the table


def headline(text: dict, guided: dict | None, synth: dict, decomposition: dict | None) -> dict[str, float | None]:
    """The metrics issue 26 sets goals for (caption-guidance and inference-mode rows beside the plain ones)."""
    out: dict[str, float | None] = {f"text_{k}_acc": v for k, v in text["model"].items()}
    out.update({f"text_{k}_acc_caption_guidance": v for k, v in (guided or {}).get("model", {}).items()})
    out.update(synth_gain_db=synth["gain"], synth_gain_logo_box_db=synth["gain_box"])
    anchored = synth["inference_mode"]
    out.update(synth_gain_db_inference_mode=anchored["gain"],
               synth_gain_logo_box_db_inference_mode=anchored["gain_box"])
    for suffix, mode in (("", "one_draw"), ("_inference_mode", "inference_mode")):
        unseen = (decomposition or {}).get(mode, {}).get("unseen", {})
        out.update({f"{name}{suffix}": unseen.get(key) for name, key in DECOMPOSE_KEYS.items()})
    return out


def verdicts(metrics: dict[str, float | None]) -> dict[str, dict]:
    """Each metric with its goal and whether it is met (caption-guidance and inference-mode rows: the plain,
    one-draw goal, for reference)."""
    rows = {}
    for name, value in metrics.items():
        suffix = next((s for s in REFERENCE_SUFFIXES if name.endswith(s)), "")
        goal = GOALS.get(name.removesuffix(suffix) if suffix else name)
        met = None if value is None or goal is None else bool(value >= goal)
        rows[name] = {"value": value, "goal": goal, "met": met, "reference_only": bool(suffix)}
    return rows


def print_table(rows: dict[str, dict], text: dict, guided: dict | None, extra: dict) -> None:
    print("| metric | value | goal | verdict |\n|---|---|---|---|")
    for name, r in rows.items():
        value = "not measured" if r["value"] is None else f"{r['value']:.3f}"
        goal = "-" if r["goal"] is None else f">= {r['goal']:g}" + (" (plain goal)" if r["reference_only"] else "")
        verdict = "-" if r["met"] is None else ("MET" if r["met"] else "NOT met")
        print(f"| {name} | {value} | {goal} | {verdict}{' (ref.)' if r['reference_only'] and r['met'] is not None else ''} |")
    print("\n| classifier | on tau_G outputs | on real dev panels (validation) | chance |\n|---|---|---|---|")
    for name in text["model"]:
        print(f"| {name} | {text['model'][name]:.3f} | {text['truth'][name]:.3f} | {text['chance'][name]:.3f} |")
    print(f"object colour read as the caption's LOGO colour: {text['object_colour_reads_logo_colour']:.3f} "
          "(the two colours bound the wrong way round)" + (
              f"; with caption guidance {guided['object_colour_reads_logo_colour']:.3f}" if guided else ""))
    for key, line in extra.items():
        print(f"{key}: {line}")


def main(argv=None) -> dict:
    import torch

    from layerloop.models.lab_metrics import build_classifiers
    from layerloop.models.sampler import Sampler
    from layerloop.tasks.stages.handles import backbone as shared_backbone

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    cfg = train_seed(args) if args.train_seed else pipeline_config(args)
    adapter_dir, unseen, unseen_rule = adapter_and_unseen(args, cfg)
    items = dev_items(cfg, args.n)
    classifiers = build_classifiers(cfg.model.panel_size, args.templates)
    bb = shared_backbone(cfg)
    print(f"base {bb.base_id}, adapter {adapter_dir or 'none (base only)'}, {len(items)} dev items "
          f"(eval seed {cfg.loop.eval_seed}), {sum(map(unseen, (m for *_, m in items)))} of unseen kinds "
          f"({unseen_rule}), sampler {cfg.sample.steps} steps guidance {cfg.sample.guidance:g}", flush=True)
    seconds: dict[str, float] = {}
    smp = Sampler(bb, adapter_dir, cfg.sample)
    t = time.perf_counter()
    text = measure_text(smp, items, classifiers)
    seconds["text"] = time.perf_counter() - t
    guided = None
    if args.caption_guidance != 1:
        t = time.perf_counter()
        guide = {"caption_guidance": args.caption_guidance}
        guided = measure_text(Sampler(bb, adapter_dir, cfg.sample.model_copy(update=guide)), items, classifiers)
        seconds["text_caption_guidance"] = time.perf_counter() - t
    print(f"  text following measured in {seconds['text']:.0f} s; synthesis next", flush=True)
    t = time.perf_counter()
    synth = measure_synthesis(smp, Sampler(bb, adapter_dir, cfg.sample.model_copy(update=INFERENCE_MODE)), items)
    seconds["synthesis"] = time.perf_counter() - t
    decomposition = None
    if not args.base_only:
        print(f"  synthesis measured in {seconds['synthesis']:.0f} s; decomposition next (one draw, then "
              f"{INFERENCE_MODE['draws']} anchored draws)", flush=True)
        t = time.perf_counter()
        decomposition = measure_decomposition(bb, adapter_dir, cfg.sample, items, unseen)
        seconds["decomposition"] = time.perf_counter() - t
    rows = verdicts(headline(text, guided, synth, decomposition))
    training = train_seconds(adapter_dir)
    wall = time.perf_counter() - t0
    extra = {
        "synthesis PSNR vs the composite": f"tau_C {synth['psnr_synth']:.2f} dB, object panel "
                                           f"{synth['psnr_object']:.2f} dB; in the logo box {synth['psnr_synth_box']:.2f}"
                                           f" vs {synth['psnr_object_box']:.2f} dB; inference mode (compose, "
                                           f"{INFERENCE_MODE['draws']} draws) "
                                           f"{synth['inference_mode']['psnr_synth']:.2f} / "
                                           f"{synth['inference_mode']['psnr_synth_box']:.2f} dB",
        "seed adapter training wall time": (f"{training['train_seconds']:.1f} s ({training.get('steps')} steps, "
                                            f"{training.get('sec_per_step')} s/step; its metrics.json)")
        if training else "not measured (no metrics.json with train_seconds beside the adapter)",
        "make demo wall time": f"{args.demo_time:.1f} s (given with --demo-time)" if args.demo_time is not None
        else "not measured in this run (measure `make demo` separately; pass --demo-time SECONDS)",
        "this run's wall time": f"{wall:.1f} s (" + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()) + ")",
    }
    print_table(rows, text, guided, extra)
    result = {"base": bb.base_id, "adapter": adapter_dir, "store": args.store, "base_only": args.base_only,
              "n": len(items), "n_unseen": sum(map(unseen, (m for *_, m in items))), "unseen": unseen_rule,
              "eval_seed": cfg.loop.eval_seed, "templates": args.templates, "quick": args.quick,
              "sample": cfg.sample.model_dump(mode="json"), "inference_mode": INFERENCE_MODE,
              "caption_guidance": args.caption_guidance, "metrics": rows, "classifiers": text,
              "classifiers_caption_guidance": guided, "synthesis": synth, "decomposition": decomposition,
              "seed_training": training, "demo_seconds": args.demo_time, "seconds": seconds, "wall_seconds": wall}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1, default=float))
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()

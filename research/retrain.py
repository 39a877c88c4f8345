"""Screen a training lever on a finished loop's own data (issue 11): retrain its adapters 1..N with changed
train fields on the very rounds it committed, and print them beside the loop's adapters and its controls.

A full loop run lets a lever change the data of later rounds too; this holds the data fixed, so it isolates
what the lever does to training, in a fraction of the time (one adapter's steps and its measurement per
round). A lever that wins here still needs the full `bench/loop.py` against the control before it becomes a
default. The store is copied (rounds, seed adapter, controls); the original is never touched.

    python research/retrain.py bench-loop-work-c/store-seed0 --set train.anchor_fraction=0.875 --out /tmp/af875
    python research/retrain.py STORE --out DIR --report-only      # reprint a finished retrain
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COLUMNS = (("psnr_object@unseen", "object unseen"), ("psnr_logo@unseen", "logo unseen"),
           ("iou_logo@unseen", "IoU unseen"), ("psnr_object@seen", "object seen"),
           ("psnr_logo@seen", "logo seen"))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", help="a store written by bench/loop.py with loop.control on (left untouched)")
    p.add_argument("--out", required=True, help="where the copy and its retrained adapters go (resumes)")
    p.add_argument("--set", action="append", default=[], metavar="train.FIELD=VALUE",
                   help="a train field to change (values parse as YAML); repeatable")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="write one row per (variant, adapter) here")
    p.add_argument("--report-only", action="store_true")
    return p.parse_args(argv)


def copy_store(src: Path, dst: Path) -> None:
    """Rounds, pool batches and the adapters the lever does not touch (seed adapter, controls)."""
    if (dst / "rounds").exists():
        return
    if not (src / "rounds").is_dir():
        raise SystemExit(f"{src}: not a store (no rounds/)")
    shutil.copytree(src / "rounds", dst / "rounds")
    if (src / "pool").is_dir():
        shutil.copytree(src / "pool", dst / "pool")
    for a in sorted((src / "adapters").iterdir()):
        if a.name == "round-0000" or a.name.startswith("control-"):
            shutil.copytree(a, dst / "adapters" / a.name)


def overrides(pairs: list[str]) -> dict:
    """--set train.FIELD=VALUE pairs as {"train": {...}}; anything but train fields is refused."""
    import yaml

    train = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        section, _, field = key.strip().partition(".")
        if not sep or section != "train" or not field:
            raise SystemExit(f"--set {pair!r}: expected train.FIELD=VALUE (only training levers hold data fixed)")
        train[field] = yaml.safe_load(raw)
    return {"train": train}


def retrain_config(dst: Path, pairs: list[str]):
    """The loop's own round-1 config (copied with the store), pointed at the copy, with the lever applied."""
    from layerloop.tasks.config import round_config

    return round_config(str(dst), 1, overrides(pairs))


def retrain(cfg, rounds: list[int]) -> None:
    from layerloop.tasks.stages import adapter

    for r in rounds:
        start = time.perf_counter()
        adapter.train_adapter(cfg, r)
        adapter.evaluate_adapter(cfg, r)
        print(f"  adapter {r} retrained and measured in {time.perf_counter() - start:.0f} s", flush=True)


def rows(src_store, copy_store_, rounds: list[int]) -> list[dict]:
    """Per adapter: the loop's original, the retrained variant and the control, as measured beside them."""
    from layerloop.tasks.stages import adapter_files
    from layerloop.tasks.stages.adapter import EVAL_FILE

    out = []
    for r in rounds:
        for variant, uri in (("loop", src_store.adapter_uri(r)), ("variant", copy_store_.adapter_uri(r)),
                             ("control", src_store.control_adapter_uri(r))):
            measured = adapter_files.read_json(adapter_files.join(uri, EVAL_FILE)) or {}
            row = {"variant": variant, "round": r, **(measured.get("heldout") or {})}
            row["validation_psnr_object"] = (measured.get("validation") or {}).get("psnr_object")
            out.append(row)
    return out


def print_table(table: list[dict]) -> None:
    cols = [c for c, _ in COLUMNS] + ["validation_psnr_object"]
    print("| adapter | variant | " + " | ".join(n for _, n in COLUMNS) + " | validation object |")
    print("|---|---|" + "---|" * len(cols))
    for row in table:
        cells = ["-" if row.get(c) is None else f"{row[c]:.3f}" if c.startswith("iou") else f"{row[c]:.2f}"
                 for c in cols]
        print(f"| {row['round']} | {row['variant']} | " + " | ".join(cells) + " |")


def main(argv=None) -> list[dict]:
    import torch

    from layerloop.storage.rounds import RoundStore

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    src, dst = Path(args.store).resolve(), Path(args.out).resolve()
    if not args.report_only:
        copy_store(src, dst)
    cfg = retrain_config(dst, args.set)
    rounds = list(range(1, cfg.loop.rounds + 1))
    if not args.report_only:
        print(f"retraining adapters {rounds} of {src} with {args.set or 'no change'}", flush=True)
        retrain(cfg, rounds)
    table = rows(RoundStore(str(src)), RoundStore(str(dst)), rounds)
    print_table(table)
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1))
    return table


if __name__ == "__main__":
    main()

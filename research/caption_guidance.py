"""Which caption-guidance scale makes tau_G follow its prompt best? (issue 26; chosen on the dev split)

Question: the tiny bases read their caption in the right direction but weakly (research/text_probe.py:
at t = 1 a colour word moves the object's mean colour by ~3 grey levels). Classifier-free guidance on the
caption (sample.caption_guidance, models/guidance.py) extrapolates away from the caption-free prediction.
Does it lift kind / colour / shape as read by bench/lab.py's truth classifiers, where does it saturate,
and does it make the two colour words bleed into each other's panel (object read as the logo's colour)?

    python research/caption_guidance.py --pair BASE ADAPTER [--pair BASE - ...] --scales 1,2,4,8 \
        --json research/results/caption_guidance.json        # ADAPTER "-": the base alone
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pair", nargs=2, action="append", required=True, metavar=("BASE", "ADAPTER"),
                   help="a base folder and a seed adapter folder ('-': none); repeatable")
    p.add_argument("--scales", default="1,2,4,6,8", help="comma-separated sample.caption_guidance values")
    p.add_argument("--n", type=int, default=64, help="dev items")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    try:
        args.scales = [float(s) for s in args.scales.split(",")]
    except ValueError:
        p.error(f"--scales must be comma-separated numbers, got {args.scales!r}")
    if any(s < 0 for s in args.scales) or args.n < 1:
        p.error("--scales must be >= 0 and --n >= 1")
    return args


def sweep(base: str, adapter: str | None, scales: list[float], n: int, classifiers) -> list[dict]:
    """bench/lab.py's text measurement at each scale for one (base, adapter)."""
    import lab

    from layerloop.models.config import ModelConfig, SampleConfig
    from layerloop.models.factory import build_backbone
    from layerloop.models.sampler import Sampler
    from layerloop.tasks.config import validate_config

    bb = build_backbone(ModelConfig(path=base))
    items = lab.dev_items(validate_config({}, source="research/caption_guidance.py"), n)  # bench/lab.py's items
    rows = []
    for scale in scales:
        started = time.perf_counter()
        text = lab.measure_text(Sampler(bb, adapter, SampleConfig(caption_guidance=scale)), items, classifiers)
        rows.append({"base": bb.base_id, "path": base, "adapter": adapter, "n": n, "caption_guidance": scale,
                     **{k: text["model"][k] for k in text["model"]},
                     "object_colour_reads_logo_colour": text["object_colour_reads_logo_colour"],
                     "seconds": round(time.perf_counter() - started, 1)})
        r = rows[-1]
        print(f"{base} + {adapter or 'no adapter'} guidance {scale:g}: kind {r['kind']:.3f} colour {r['colour']:.3f} "
              f"shape {r['shape']:.3f}; object in the logo's colour {r['object_colour_reads_logo_colour']:.3f} "
              f"({r['seconds']:.0f} s)", flush=True)
    return rows


def main(argv=None) -> list[dict]:
    import torch

    from layerloop.models.lab_metrics import build_classifiers

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    classifiers = build_classifiers()  # 32-px panels, as every tiny base has
    rows = []
    for base, adapter in args.pair:
        rows += sweep(base, None if adapter == "-" else adapter, args.scales, args.n, classifiers)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()

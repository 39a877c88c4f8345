"""The demo's numbers, read from its store, in the form the README quotes them: never typed by hand.

    python scripts/demo_numbers.py demo-store                   # print the sentence and the per-round table
    python scripts/demo_numbers.py demo-store --write README.md # refresh the block between the markers

`--write` replaces what lies between `<!-- demo-numbers -->` and `<!-- /demo-numbers -->` in the file;
a file without both markers is left untouched and the script exits with an error. Everything comes from
committed rounds: selection rates from the manifests, held-out PSNR of adapter r-1 from round r's
round.json, the final adapter's from its heldout.json (when the demo trained one), the identity baseline
recomputed on the same held-out split (numpy only).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BEGIN, END = "<!-- demo-numbers -->", "<!-- /demo-numbers -->"
LAYERS = ("logo", "object")


def collect(store_uri: str) -> dict:
    """Per-round rows (round >= 1), the final adapter's and the identity baseline's held-out PSNR."""
    from layerloop.storage.rounds import RoundStore
    from layerloop.tasks.reporting.summary import round_summary

    store = RoundStore(store_uri)
    rounds = [r for r in store.committed_rounds() if r >= 1]
    if not rounds:
        raise SystemExit(f"error: {store_uri} has no committed round after the seed round; run the demo first")
    rows = [round_summary(store, r) for r in rounds]
    return {"rows": rows, "final": _final(store.adapter_uri(rounds[-1])),
            "control": _final(store.control_adapter_uri(rounds[-1])), "identity": _identity(store, rounds[0])}


def _final(adapter_uri: str) -> dict:
    """Held-out means an adapter directory's heldout.json holds ({} when it was not measured)."""
    from layerloop.tasks.stages import adapter_files
    from layerloop.tasks.stages.adapter import EVAL_FILE

    data = adapter_files.read_json(adapter_files.join(adapter_uri, EVAL_FILE)) or {}
    return data.get("heldout") or data.get("metrics") or {}  # "metrics": stores of earlier versions


def _identity(store, round_: int) -> dict:
    from layerloop.models.evaluation import identity_baseline
    from layerloop.models.synthetic import make_split

    cfg = store.round_info(round_)["config"]
    n = cfg.get("loop", {}).get("eval_size", 0)
    if not n:
        return {}
    return identity_baseline(make_split("test", n, cfg["model"]["panel_size"], cfg["loop"]["eval_seed"]))


def _psnr(metrics: dict, prefix: str = "psnr_") -> str:
    values = [metrics.get(f"{prefix}{layer}") for layer in LAYERS]
    return " / ".join("-" if v is None else f"{v:.2f}" for v in values)


def sentence(data: dict) -> str:
    """One line: selection rate per round, held-out PSNR from the first measured adapter to the last."""
    rows = data["rows"]
    rates = " / ".join("-" if r["selection_rate"] is None else f"{100 * r['selection_rate']:.0f}" for r in rows)
    sizes = sorted({r["candidates"] for r in rows})
    text = (f"The demo accepts {rates} % of {' / '.join(map(str, sizes))} candidates in rounds "
            f"{rows[0]['round']}-{rows[-1]['round']}")
    last = data["final"] or {k.removeprefix("heldout_"): v for k, v in rows[-1].items() if k.startswith("heldout_")}
    first = {k.removeprefix("heldout_"): v for k, v in rows[0].items() if k.startswith("heldout_")}
    if first and last:
        text += f"; held-out PSNR goes from {_psnr(first)} to {_psnr(last)} dB (logo / object"
        text += f"; identity {_psnr(data['identity'])})" if data["identity"] else ")"
    text += _against_control(data["final"], data.get("control") or {})
    return text + "."


def _against_control(final: dict, control: dict) -> str:
    """The final adapter against its matched-compute control, per layer and slice, when the demo trained one."""
    layers = []
    for layer in ("object", "logo"):
        parts = [f"{where} {final[k]:.2f} vs {control[k]:.2f} dB" for where, k in
                 (("unseen kinds", f"psnr_{layer}@unseen"), ("seen kinds", f"psnr_{layer}@seen"))
                 if k in final and k in control]
        if parts:
            layers.append(f"{layer} " + ", ".join(parts))
    return "; final PSNR against its control (same steps, seeds only): " + "; ".join(layers) if layers else ""


def table(data: dict) -> str:
    """The per-round table in markdown (held-out PSNR of adapter r-1, as the demo prints it)."""
    lines = ["| round | candidates | accepted | selection rate | held-out PSNR logo / object (adapter r-1) |",
             "|---|---|---|---|---|"]
    for r in data["rows"]:
        rate = "-" if r["selection_rate"] is None else f"{100 * r['selection_rate']:.1f} %"
        lines.append(f"| {r['round']} | {r['candidates']} | {r['accepted']} | {rate} | "
                     f"{_psnr(r, 'heldout_psnr_')} dB |")
    if data["final"]:
        lines.append(f"| final adapter | | | | {_psnr(data['final'])} dB |")
    if data["identity"]:
        lines.append(f"| identity baseline | | | | {_psnr(data['identity'])} dB |")
    return "\n".join(lines)


def write_block(path: Path, text: str) -> None:
    """Replace the text between the markers in `path`; SystemExit when they are missing."""
    content = path.read_text()
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(content):
        raise SystemExit(f"error: {path} has no {BEGIN} ... {END} block to fill; add the two markers first")
    path.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}\n{END}", content, count=1))


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", help="the demo's store (default of `layerloop demo`: demo-store)")
    ap.add_argument("--write", type=Path, default=None, help="file whose marked block gets the sentence")
    args = ap.parse_args(argv)
    data = collect(args.store)
    text = sentence(data)
    if args.write is not None:
        write_block(args.write, text)
    print(text, table(data), sep="\n\n")
    return text


if __name__ == "__main__":
    main()

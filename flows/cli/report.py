"""User-facing commands: `report`, `eval`, `ablate`, `decompose`, `synthesize`.

`decompose` and `synthesize` accept images of any size: each input is fitted to the model's square
panel (letterboxed on white by default, or stretched with --fit resize), the model runs at panel size,
and its outputs are mapped back to the input's size; a JSON sidecar records exactly what was done.
An unreadable or unsupported file gets a clear error and the remaining files still run; the exit code
is non-zero when any file failed. Config and store come in the one precedence of flows/cli/config.py.

Heavy libraries (torch, diffusers, prefect) are imported inside the commands.
"""
from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Optional

import typer
from PIL import Image, ImageOps

from ...models.grid import LayerSchema, make_grid
from ...models.sampler import Sampler
from ...tasks.stages.handles import backbone
from .config import CONFIG_OPT, STORE_OPT, fail, given, load, open_store, prefect_env, user_errors

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
FIT_MODES = ("pad", "resize")
PAD_COLOR = (255, 255, 255)


class InputImageError(ValueError):
    """An input file that cannot be used; the message names the file and the reason."""


# ----------------------------------------------------------------------------- input images


def load_input(path: Path, *, max_pixels: int, max_bytes: int) -> tuple[Image.Image, list[str]]:
    """Decode one user image to RGB; returns (image, conversions done). InputImageError when unusable."""
    if not path.is_file():
        raise InputImageError(f"{path}: no such file")
    size = path.stat().st_size
    if size > max_bytes:
        raise InputImageError(f"{path}: file is {size} bytes, over the {max_bytes}-byte limit")
    data = path.read_bytes()
    try:
        img = Image.open(io.BytesIO(data))
        fmt = img.format
        if fmt not in ALLOWED_FORMATS:
            raise InputImageError(f"{path}: format {fmt} is not supported (use one of {', '.join(ALLOWED_FORMATS)})")
        if img.width * img.height > max_pixels:
            raise InputImageError(f"{path}: {img.width}x{img.height} is over the {max_pixels}-pixel limit")
        img.load()
    except InputImageError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputImageError(f"{path}: not a readable image ({exc})") from None
    return _normalise(img)


def _normalise(img: Image.Image) -> tuple[Image.Image, list[str]]:
    conversions: list[str] = []
    orientation = img.getexif().get(0x0112, 1)
    if orientation != 1:
        conversions.append(f"exif-orientation-{orientation}")
        img = ImageOps.exif_transpose(img)
    if img.mode != "RGB":
        conversions.append(f"{img.mode}->RGB")
        # Transparent pixels become white (the panels' background), not black.
        if img.mode in ("RGBA", "LA", "P"):
            rgba = img.convert("RGBA")
            img = Image.new("RGB", rgba.size, PAD_COLOR)
            img.paste(rgba, mask=rgba.getchannel("A"))
        else:
            img = img.convert("RGB")
    return img, conversions


def fit_to_panel(img: Image.Image, size: int, mode: str) -> tuple[Image.Image, dict]:
    """The image as a size x size panel plus a record of how to map results back to its geometry."""
    if mode not in FIT_MODES:
        raise ValueError(f"--fit must be one of {FIT_MODES}; got {mode!r}")
    w, h = img.size
    record = {"original_size": [w, h], "panel_size": size, "fit": mode}
    if (w, h) == (size, size):
        return img.copy(), {**record, "fit": "none", "box": [0, 0, size, size]}
    if mode == "resize":
        return img.resize((size, size), Image.LANCZOS), {**record, "box": [0, 0, size, size]}
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    ox, oy = (size - nw) // 2, (size - nh) // 2
    panel = Image.new("RGB", (size, size), PAD_COLOR)
    panel.paste(img.resize((nw, nh), Image.LANCZOS), (ox, oy))
    return panel, {**record, "scale": scale, "box": [ox, oy, ox + nw, oy + nh]}


def restore_from_panel(panel: Image.Image, record: dict) -> Image.Image:
    """Inverse of fit_to_panel: crop the content box and resize back to the original size."""
    w, h = record["original_size"]
    content = panel.convert("RGB").crop(tuple(record["box"]))
    return content if content.size == (w, h) else content.resize((w, h), Image.LANCZOS)


# ----------------------------------------------------------------------------- model


def _sampler(cfg, adapter: str):
    from ..evaluate import resolve_adapter

    label, adapter_dir = resolve_adapter(adapter, cfg)
    return label, Sampler(backbone(cfg), adapter_dir, cfg.sample)


def _latest_adapter(cfg) -> str:
    from ..evaluate import adapter_rounds

    rounds = adapter_rounds(cfg)
    if not rounds:
        fail(f"no trained adapter in store {cfg.store.uri}; pass --adapter ROUND|PATH or run `layerloop run`")
    return str(rounds[-1])


# ----------------------------------------------------------------------------- decompose / synthesize


def _unique_stems(paths: list[Path]) -> dict[Path, str]:
    """Output stem per input; inputs sharing a name (a/x.png, b/x.jpg) get -2, -3 ... suffixes."""
    seen: dict[str, int] = {}
    stems = {}
    for p in paths:
        n = seen[p.stem] = seen.get(p.stem, 0) + 1
        stems[p] = p.stem if n == 1 else f"{p.stem}-{n}"
    return stems


def decompose_files(sampler, paths: list[Path], out: Path, *, panel_size: int, schema, fit: str,
                    max_pixels: int, max_bytes: int, adapter_label: str) -> dict[str, str]:
    """Decompose each readable file; returns {input: error} for the ones that failed."""
    out.mkdir(parents=True, exist_ok=True)
    failed: dict[str, str] = {}
    seconds: list[float] = []
    stems = _unique_stems(paths)
    for path in paths:
        try:
            img, conversions = load_input(path, max_pixels=max_pixels, max_bytes=max_bytes)
        except InputImageError as exc:
            failed[str(path)] = str(exc)
            typer.secho(f"skipped: {exc}", fg=typer.colors.YELLOW, err=True)
            continue
        panel, record = fit_to_panel(img, panel_size, fit)
        start = time.perf_counter()
        layers = sampler.infer([panel])[0]
        seconds.append(time.perf_counter() - start)
        stem = stems[path]
        written = {}
        for layer in schema.layers:
            target = out / f"{stem}.{layer}.png"
            restore_from_panel(layers[layer], record).save(target)
            written[layer] = target.name
        grid_path = out / f"{stem}.grid.png"
        make_grid({"composite": panel, **layers}, schema).save(grid_path)
        sidecar = {"input": str(path), "conversions": conversions, **record, "adapter": adapter_label,
                   "inference": {"draws": sampler.cfg.draws, "anchor": sampler.cfg.anchor},
                   "outputs": {**written, "grid": grid_path.name},
                   "note": "layers were generated at panel size and mapped back to original_size; "
                           "the grid is at panel size"}
        (out / f"{stem}.json").write_text(json.dumps(sidecar, indent=2))
        typer.echo(f"{path} -> {', '.join(sorted(sidecar['outputs'].values()))}")
    if seconds:
        typer.echo(f"{len(seconds)} image(s), {sum(seconds) / len(seconds):.2f} s per image "
                   f"({sampler.cfg.draws} draw(s){', anchored' if sampler.cfg.anchor else ''})")
    return failed


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("report")(report_cmd)
    app.command("eval")(eval_cmd)
    app.command("decompose")(decompose_cmd)
    app.command("synthesize")(synthesize_cmd)
    app.command("ablate")(ablate_cmd)


_ADAPTER = typer.Option(None, "--adapter", "-a", help="round number or adapter directory (default: latest round)")
_DRAWS = typer.Option(None, "--draws", help="decompositions per image, averaged per pixel (sample.draws; "
                                            "N draws cost N times one)")
_ANCHOR = typer.Option(None, "--anchor/--no-anchor", help="keep the object equal to the input outside the "
                                                          "logo's footprint (sample.anchor)")


def report_cmd(round: int = typer.Argument(..., metavar="ROUND", help="committed round to report on"),
               store: Optional[str] = STORE_OPT, config: Optional[Path] = CONFIG_OPT) -> None:
    """Rebuild report.html / report.json / selection_rate.png of a committed round."""
    from ...tasks.reporting.report import build_report

    cfg = load(config, store=store)
    try:
        paths = build_report(open_store(cfg), round)
    except ValueError as exc:
        fail(str(exc))
    for kind, path in paths.items():
        typer.echo(f"{kind}: {path}")


def eval_cmd(adapter: Optional[list[str]] = typer.Option(None, "--adapter", "-a",
                                                          help="round number or adapter dir; repeatable; "
                                                               "default: every round's adapter"),
             out: Path = typer.Option(Path("eval"), "--out", "-o", help="directory for eval.md/.csv/.json"),
             n: Optional[int] = typer.Option(None, "--n", help="held-out items (default loop.eval_size)"),
             seed: Optional[int] = typer.Option(None, "--seed", help="held-out split seed (default loop.eval_seed)"),
             prefect: bool = typer.Option(True, "--prefect/--no-prefect", help="run as a Prefect flow (artifact)"),
             draws: Optional[int] = _DRAWS, anchor: Optional[bool] = _ANCHOR,
             store: Optional[str] = STORE_OPT, config: Optional[Path] = CONFIG_OPT) -> None:
    """Held-out table: identity baseline, round 0, each round, final (markdown, CSV, Prefect artifact)."""
    from .. import evaluate as ev

    cfg = load(config, store=store, flags=given("sample", draws=draws, anchor=anchor))
    prefect_env()  # offline, Prefect's telemetry service would log an ERROR on every run
    with user_errors():  # an unknown adapter (AdapterNotFound) included
        if prefect:
            result = ev.evaluate(cfg, adapters=adapter or None, out_dir=str(out), n=n, seed=seed)
            rows, paths = result["rows"], result["paths"]
        else:
            pairs = [ev.resolve_adapter(a, cfg) for a in adapter] if adapter else ev.default_rows(cfg)
            rows = ev.evaluation_table(cfg, pairs, n=n, seed=seed)
            paths = ev.write_outputs(rows, str(out))
            typer.echo(ev.to_markdown(rows))
    typer.echo(f"written: {', '.join(paths.values())}")


def _fit_and_config(fit: str, config: Optional[Path], store: Optional[str], flags: Optional[dict] = None):
    """The --fit mode checked before anything is loaded, then the pipeline config."""
    if fit not in FIT_MODES:
        fail(f"--fit must be one of {FIT_MODES}; got {fit!r}")
    return load(config, store=store, flags=flags)


def decompose_cmd(images: list[Path] = typer.Argument(..., metavar="IMAGE", help="composite images (any size)"),
                  out: Path = typer.Option(..., "--out", "-o", help="output directory"),
                  adapter: Optional[str] = _ADAPTER,
                  fit: str = typer.Option("pad", "--fit", help="pad (letterbox, keeps aspect) or resize (stretch)"),
                  draws: Optional[int] = _DRAWS, anchor: Optional[bool] = _ANCHOR,
                  store: Optional[str] = STORE_OPT, config: Optional[Path] = CONFIG_OPT) -> None:
    """Split composites into <name>.logo.png, <name>.object.png, <name>.grid.png (+ <name>.json sidecar)."""
    cfg = _fit_and_config(fit, config, store, given("sample", draws=draws, anchor=anchor))
    with user_errors():  # an unknown adapter, a bad model.path or base: one error line
        label, sampler = _sampler(cfg, adapter or _latest_adapter(cfg))
    failed = decompose_files(sampler, list(images), out, panel_size=cfg.model.panel_size,
                             schema=LayerSchema(tuple(cfg.model.layers)), fit=fit,
                             max_pixels=cfg.store.max_image_pixels, max_bytes=cfg.store.max_file_bytes,
                             adapter_label=label)
    if failed:
        typer.secho(f"{len(failed)} of {len(images)} file(s) failed", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


def synthesize_cmd(logo: Path = typer.Argument(..., metavar="LOGO", help="logo image"),
                   object_: Path = typer.Argument(..., metavar="OBJECT", help="clean object image"),
                   out: Path = typer.Option(..., "--out", "-o", help="output composite file (.png)"),
                   adapter: Optional[str] = _ADAPTER,
                   fit: str = typer.Option("pad", "--fit", help="pad (letterbox) or resize (stretch)"),
                   store: Optional[str] = STORE_OPT, config: Optional[Path] = CONFIG_OPT) -> None:
    """Print LOGO onto OBJECT: writes the composite at the object's size (+ FILE.json sidecar)."""
    cfg = _fit_and_config(fit, config, store)
    if list(cfg.model.layers) != ["logo", "object"]:
        fail(f"synthesize takes LOGO OBJECT; this config's layers are {cfg.model.layers}")
    limits = {"max_pixels": cfg.store.max_image_pixels, "max_bytes": cfg.store.max_file_bytes}
    try:
        (logo_img, logo_conv), (obj_img, obj_conv) = load_input(logo, **limits), load_input(object_, **limits)
    except InputImageError as exc:
        fail(str(exc))
    with user_errors():  # an unknown adapter, a bad model.path or base: one error line
        label, sampler = _sampler(cfg, adapter or _latest_adapter(cfg))
    size = cfg.model.panel_size
    logo_panel, logo_rec = fit_to_panel(logo_img, size, fit)
    obj_panel, obj_rec = fit_to_panel(obj_img, size, fit)
    composite = sampler.synthesize([{"logo": logo_panel, "object": obj_panel}])[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    # The composite shares the object's geometry, so it maps back the way the object was fitted.
    restore_from_panel(composite, obj_rec).save(out, format="PNG")
    sidecar = {"logo": {"input": str(logo), "conversions": logo_conv, **logo_rec},
               "object": {"input": str(object_), "conversions": obj_conv, **obj_rec},
               "adapter": label, "output": str(out)}
    Path(str(out) + ".json").write_text(json.dumps(sidecar, indent=2))
    typer.echo(f"{out}")


def ablate_cmd(seeds: list[int] = typer.Option([0, 1], "--seed", help="repeat with these seeds (>= 2 for spread)"),
               rounds: int = typer.Option(1, "--rounds", help="self-improving rounds of the iterative configs"),
               out: Path = typer.Option(Path("ablation"), "--out", "-o", help="work + result directory"),
               config: Optional[Path] = CONFIG_OPT) -> None:
    """The paper's four configurations on the same seeds, with the held-out comparison table.

    Its built-in defaults are a demo-sized tiny world (flows/ablate.py ABLATION_DEFAULTS).
    """
    from ..ablate import ABLATION_DEFAULTS, run_ablation

    cfg = load(config, defaults=ABLATION_DEFAULTS)
    prefect_env()
    with user_errors():
        result = run_ablation(cfg, seeds=list(seeds), rounds=rounds, work_dir=str(out))
    typer.echo(result["markdown"])
    typer.echo(f"written: {', '.join(result['paths'].values())}")

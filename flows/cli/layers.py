"""User-facing layer commands: `decompose` (images, folders, globs, rounds -> layers), `synthesize`, `rebrand`.

`decompose` writes per input, at the input's size: each layer as PNG (<name>.<layer>.png, the logo on white
as the model draws it), each non-background layer as RGBA with its alpha matte (<name>.<layer>.rgba.png,
models/matting.py), optionally a layered PSD and an OpenRaster file (--psd, --ora), the panel-size grid, and
the sidecar <name>.json, written last: an input whose sidecar and outputs exist is done, so a rerun skips it
(--overwrite redoes it). With --qa (default) the layers are re-synthesized and compared with the input: the
recomposition residual, a per-image score of how well the layers explain the image. Inputs run in batches
of sample.batch_size; a line after each batch says how far the run is. Failed inputs are listed with their
reasons at the end and the exit code is 1. Heavy libraries are imported inside the commands.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterable, Iterator, Optional

import typer
from PIL import Image

from ...models.grid import LayerSchema, make_grid
from ...models.layer_files import layer_stack, write_ora, write_psd
from ...models.matting import DEFAULT_METHOD, METHODS, matte
from ...models.metrics import cycle_error, psnr
from ...models.sampler import Sampler
from ...tasks.stages.handles import backbone
from .config import (ANCHOR_OPT, COMPOSE_ANCHOR_OPT, CONFIG_OPT, DRAWS_OPT, STORE_OPT, fail, given, load, open_store,
                     user_errors)
from .images import FIT_MODES, InputImageError, Source, expand, fit_to_panel, load_input, restore_from_panel

_ADAPTER = typer.Option(None, "--adapter", "-a", help="round number or adapter directory (default: latest round)")
_FIT = typer.Option("pad", "--fit", help="pad (letterbox, keeps aspect) or resize (stretch)")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("decompose")(decompose_cmd)
    app.command("synthesize")(synthesize_cmd)
    app.command("rebrand")(rebrand_cmd)


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


def _fit_and_config(fit: str, config: Optional[Path], store: Optional[str], flags: Optional[dict] = None):
    """The --fit mode checked before anything is loaded, then the pipeline config."""
    if fit not in FIT_MODES:
        fail(f"--fit must be one of {FIT_MODES}; got {fit!r}")
    return load(config, store=store, flags=flags)


def _two_layers(cfg, command: str) -> None:
    if list(cfg.model.layers) != ["logo", "object"]:
        fail(f"{command} takes a logo and an object; this config's layers are {cfg.model.layers}")


def recomposition(sampler, panels: list[Image.Image], layers: list[dict]) -> list[dict[str, float]]:
    """Per image, how well its layers explain it: re-synthesized from them, compared with the input panel."""
    again = sampler.synthesize(layers)
    return [{"recomposition_psnr_db": round(min(psnr(a, p), 100.0), 3), "recomposition_error": round(cycle_error(a, p), 5)}
            for a, p in zip(again, panels)]


# ----------------------------------------------------------------------------- decompose


class DecompositionWriter:
    """Writes one input's outputs under `out`; the sidecar goes last and marks the input done."""

    def __init__(self, out: Path, schema: LayerSchema, *, formats: tuple[str, ...], matting: str, header: dict):
        self.out, self.schema, self.formats, self.matting, self.header = out, schema, formats, matting, header
        out.mkdir(parents=True, exist_ok=True)

    def done(self, stem: str) -> bool:
        sidecar = self.out / f"{stem}.json"
        if not sidecar.is_file():
            return False
        try:
            outputs = json.loads(sidecar.read_text())["outputs"].values()
        except (ValueError, KeyError, AttributeError):
            return False  # a sidecar this writer did not finish or does not know: redo the input
        return all((self.out / name).is_file() for name in outputs)

    def write(self, src: Source, image: Image.Image, panel: Image.Image, record: dict, layers: dict,
              extra: dict) -> dict:
        stem, written = src.stem, {}
        full = {name: restore_from_panel(layers[name], record) for name in self.schema.layers}
        rgba = {name: restore_from_panel(matte(layers[name], self.matting), record) for name in self._mattes()}
        for name, img in full.items():
            written[name] = self._save(img, f"{stem}.{name}.png")
        for name, img in rgba.items():
            written[f"{name}_rgba"] = self._save(img, f"{stem}.{name}.rgba.png")
        written.update(self._layered(stem, image, {**full, **rgba}))
        written["grid"] = self._save(make_grid({"composite": panel, **layers}, self.schema), f"{stem}.grid.png")
        sidecar = {"input": src.label, **self.header, **extra, **record, "matting": self.matting, "outputs": written,
                   "note": "layers were generated at panel size and mapped back to original_size; the grid is at "
                           "panel size; <layer>.rgba.png is the layer's alpha matte off its white panel"}
        (self.out / f"{stem}.json").write_text(json.dumps(sidecar, indent=2))
        return sidecar

    def _mattes(self) -> list[str]:
        return [name for name in self.schema.layers if name != self.schema.layers[-1]]

    def _layered(self, stem: str, image: Image.Image, layers: dict) -> dict[str, str]:
        if not self.formats:
            return {}
        stack = layer_stack(image, layers, self.schema.layers)  # RGBA mattes over the opaque background
        writers = {"psd": write_psd, "ora": write_ora}
        return {fmt: writers[fmt](self.out / f"{stem}.{fmt}", stack).name for fmt in self.formats}

    def _save(self, img: Image.Image, name: str) -> str:
        img.save(self.out / name, format="PNG")
        return name


class _Progress:
    """One stderr line per batch: images done of all, rate, ETA; skipped and failed counted apart."""

    def __init__(self, total: int):
        self.total, self.done, self.skipped, self.failed = total, 0, 0, 0
        self.start, self.seconds = time.perf_counter(), 0.0

    def line(self) -> None:
        seen = self.done + self.skipped + self.failed
        elapsed = time.perf_counter() - self.start
        rate = self.done / self.seconds if self.seconds else 0.0
        left = (self.total - seen) / rate if rate else 0.0
        extra = "".join(f", {n} {what}" for n, what in ((self.skipped, "skipped (done before)"),
                                                         (self.failed, "failed")) if n)
        typer.echo(f"decompose {seen}/{self.total} ({100 * seen // max(self.total, 1)} %), {rate:.2f} images/s, "
                   f"{elapsed:.0f} s elapsed, ETA {left:.0f} s{extra}", err=True)


def _batches(sources: Iterable[Source], size: int) -> Iterator[list[Source]]:
    batch: list[Source] = []
    for src in sources:
        batch.append(src)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def decompose_sources(sampler, sources: Iterable[Source], total: int, writer: DecompositionWriter, *,
                      panel_size: int, fit: str, qa: bool, overwrite: bool) -> dict[str, str]:
    """Decompose every source in batches; returns {input: reason} for the ones that failed."""
    failed: dict[str, str] = {}
    progress = _Progress(total)
    for batch in _batches(sources, sampler.cfg.batch_size):
        ready = []
        for src in batch:
            if not overwrite and writer.done(src.stem):
                progress.skipped += 1
                continue
            try:
                image, conversions = src.load()
            except InputImageError as exc:
                failed[src.label] = str(exc)
                progress.failed += 1
                typer.secho(f"skipped: {exc}", fg=typer.colors.YELLOW, err=True)
                continue
            ready.append((src, image, conversions, *fit_to_panel(image, panel_size, fit)))
        if ready:
            _run_batch(sampler, ready, writer, qa, failed, progress)
        progress.line()
    if progress.done:
        typer.echo(f"{progress.done} image(s), {progress.seconds / progress.done:.2f} s per image "
                   f"({sampler.cfg.draws} draw(s){', anchored' if sampler.cfg.anchor else ''}"
                   f"{', + 1 re-synthesis for --qa' if qa else ''})")
    return failed


def _run_batch(sampler, ready: list, writer: DecompositionWriter, qa: bool, failed: dict, progress: _Progress) -> None:
    start = time.perf_counter()
    panels = [r[3] for r in ready]
    layers = sampler.infer(panels)
    scores = recomposition(sampler, panels, layers) if qa else [None] * len(ready)
    progress.seconds += time.perf_counter() - start
    for (src, image, conversions, panel, record), lay, score in zip(ready, layers, scores):
        extra = {"conversions": conversions, **({"qa": score} if score else {})}
        try:
            sidecar = writer.write(src, image, panel, record, lay, extra)
        except OSError as exc:  # a full disk or a read-only folder: this input failed, the others may not
            failed[src.label] = f"{src.label}: cannot write its outputs ({exc})"
            progress.failed += 1
            continue
        progress.done += 1
        qa_note = f" (recomposition {score['recomposition_psnr_db']:.2f} dB)" if score else ""
        typer.echo(f"{src.label} -> {', '.join(sorted(sidecar['outputs'].values()))}{qa_note}")


def _formats(psd: bool, ora: bool) -> tuple[str, ...]:
    return tuple(fmt for fmt, on in (("psd", psd), ("ora", ora)) if on)


def decompose_cmd(inputs: list[str] = typer.Argument(..., metavar="INPUT",
                                                     help="image files, folders, quoted glob patterns, or round:N "
                                                          "(the composites of committed round N)"),
                  out: Path = typer.Option(..., "--out", "-o", help="output directory"),
                  adapter: Optional[str] = _ADAPTER, fit: str = _FIT,
                  draws: Optional[int] = DRAWS_OPT, anchor: Optional[bool] = ANCHOR_OPT,
                  psd: bool = typer.Option(False, "--psd", help="also write <name>.psd (layered: object, logo with "
                                                                 "alpha, the input as a hidden reference)"),
                  ora: bool = typer.Option(False, "--ora", help="also write <name>.ora (OpenRaster, same layers)"),
                  matting: str = typer.Option(DEFAULT_METHOD, "--matting", help=f"alpha matte method: {', '.join(METHODS)}"),
                  qa: bool = typer.Option(True, "--qa/--no-qa", help="re-synthesize the layers and score them against "
                                                                      "the input (costs one sampler pass per image)"),
                  overwrite: bool = typer.Option(False, "--overwrite", help="redo inputs whose outputs exist"),
                  store: Optional[str] = STORE_OPT, config: Optional[Path] = CONFIG_OPT) -> None:
    """Split composites into layers: PNGs, RGBA mattes, optional PSD / ORA, a grid and a JSON sidecar each."""
    if matting not in METHODS:
        fail(f"--matting must be one of {METHODS}; got {matting!r}")
    cfg = _fit_and_config(fit, config, store, given("sample", draws=draws, anchor=anchor))
    rounds = any(arg.startswith("round:") for arg in inputs)
    with user_errors():  # a folder without images, an unknown round or adapter, a bad model.path: one line
        total, sources = expand(list(inputs), max_pixels=cfg.store.max_image_pixels,
                                max_bytes=cfg.store.max_file_bytes, store=open_store(cfg) if rounds else None)
        label, sampler = _sampler(cfg, adapter or _latest_adapter(cfg))
    header = {"adapter": label, "inference": {"draws": sampler.cfg.draws, "anchor": sampler.cfg.anchor}}
    writer = DecompositionWriter(out, LayerSchema(tuple(cfg.model.layers)), formats=_formats(psd, ora),
                                 matting=matting, header=header)
    failed = decompose_sources(sampler, sources, total, writer, panel_size=cfg.model.panel_size, fit=fit, qa=qa,
                               overwrite=overwrite)
    if failed:
        typer.secho(f"{len(failed)} of {total} input(s) failed:", fg=typer.colors.RED, err=True)
        for reason in failed.values():
            typer.secho(f"  {reason}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


# ----------------------------------------------------------------------------- synthesize / rebrand


def _load_two(first: Path, second: Path, cfg) -> tuple[tuple, tuple]:
    limits = {"max_pixels": cfg.store.max_image_pixels, "max_bytes": cfg.store.max_file_bytes}
    try:
        return load_input(first, **limits), load_input(second, **limits)
    except InputImageError as exc:
        fail(str(exc))


def _write_composite(out: Path, composite: Image.Image, record: dict, sidecar: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    restore_from_panel(composite, record).save(out, format="PNG")
    Path(str(out) + ".json").write_text(json.dumps({**sidecar, "output": str(out)}, indent=2))
    typer.echo(f"{out}")


def synthesize_cmd(logo: Path = typer.Argument(..., metavar="LOGO", help="logo image"),
                   object_: Path = typer.Argument(..., metavar="OBJECT", help="clean object image"),
                   out: Path = typer.Option(..., "--out", "-o", help="output composite file (.png)"),
                   adapter: Optional[str] = _ADAPTER, fit: str = _FIT, draws: Optional[int] = DRAWS_OPT,
                   anchor: Optional[bool] = COMPOSE_ANCHOR_OPT,
                   store: Optional[str] = STORE_OPT, config: Optional[Path] = CONFIG_OPT) -> None:
    """Print LOGO onto OBJECT: writes the composite at the object's size (+ FILE.json sidecar)."""
    cfg = _fit_and_config(fit, config, store, given("sample", draws=draws, anchor=anchor))
    _two_layers(cfg, "synthesize")
    (logo_img, logo_conv), (obj_img, obj_conv) = _load_two(logo, object_, cfg)
    with user_errors():  # an unknown adapter, a bad model.path or base: one error line
        label, sampler = _sampler(cfg, adapter or _latest_adapter(cfg))
    size = cfg.model.panel_size
    logo_panel, logo_rec = fit_to_panel(logo_img, size, fit)
    obj_panel, obj_rec = fit_to_panel(obj_img, size, fit)
    composite = sampler.compose([{"logo": logo_panel, "object": obj_panel}])[0]
    # The composite shares the object's geometry, so it maps back the way the object was fitted.
    _write_composite(out, composite, obj_rec, {"logo": {"input": str(logo), "conversions": logo_conv, **logo_rec},
                                               "object": {"input": str(object_), "conversions": obj_conv, **obj_rec},
                                               "adapter": label,
                                               "inference": {"draws": sampler.cfg.draws, "anchor": sampler.cfg.anchor}})


def rebrand_cmd(composite: Path = typer.Argument(..., metavar="COMPOSITE", help="a photo of a product with a logo"),
                logo: Path = typer.Argument(..., metavar="NEW_LOGO", help="the logo to put on it (on white)"),
                out: Path = typer.Option(..., "--out", "-o", help="output image file (.png)"),
                adapter: Optional[str] = _ADAPTER, fit: str = _FIT,
                draws: Optional[int] = DRAWS_OPT, anchor: Optional[bool] = ANCHOR_OPT,
                store: Optional[str] = STORE_OPT, config: Optional[Path] = CONFIG_OPT) -> None:
    """Replace the logo on COMPOSITE by NEW_LOGO: decompose, keep the clean object, synthesize the new logo onto it
    (--anchor: the object kept equal to the input outside the old logo, the new print kept to where it lands)."""
    cfg = _fit_and_config(fit, config, store, given("sample", draws=draws, anchor=anchor))
    _two_layers(cfg, "rebrand")
    (comp_img, comp_conv), (logo_img, logo_conv) = _load_two(composite, logo, cfg)
    with user_errors():
        label, sampler = _sampler(cfg, adapter or _latest_adapter(cfg))
    size = cfg.model.panel_size
    comp_panel, comp_rec = fit_to_panel(comp_img, size, fit)
    logo_panel, logo_rec = fit_to_panel(logo_img, size, "pad")  # a logo keeps its aspect on its white panel
    layers = sampler.infer([comp_panel])[0]
    old = recomposition(sampler, [comp_panel], [layers])[0]
    result = sampler.compose([{"logo": logo_panel, "object": layers["object"]}])[0]
    _write_composite(out, result, comp_rec, {
        "composite": {"input": str(composite), "conversions": comp_conv, **comp_rec},
        "logo": {"input": str(logo), "conversions": logo_conv, **logo_rec}, "adapter": label,
        "inference": {"draws": sampler.cfg.draws, "anchor": sampler.cfg.anchor},
        "qa": {"old_logo_" + k: v for k, v in old.items()},
        "note": "qa: the input's own layers re-synthesized against the input; low values mean the decomposition "
                "behind the re-branding is poor"})

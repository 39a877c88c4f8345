"""Held-out evaluation of layer decomposition: per-layer PSNR / SSIM against ground truth.

The synthetic world gives every test composite its true logo and object panels, so decomposition
quality is measured directly (the paper can only use VLM proxies). When a VQAScore model or a judge
is handed in, the paper's proxies are added: VQAScore per layer and the judge's mean (VLMScore).

Items are `(id, triplet)` or `(id, triplet, meta)` tuples, as `models.synthetic.make_split("test", ...)`
yields them; the composite is the input, every other panel is a ground-truth layer.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

from PIL import Image

from .judges.base import JudgeItem
from .matting import matte
from .metrics import alpha_iou, layer_edit_distance, psnr, rgb_l1, shape_iou, ssim
from .synthetic import render_logo_rgba

# Texts VQAScore asks about when an item's meta has no caption for the layer.
DEFAULT_VQA_TEXTS = {
    "logo": "a logo alone on a plain white background",
    "object": "a product without any logo or printed text",
}


def _layers_of(triplet: dict[str, Image.Image]) -> list[str]:
    return [name for name in triplet if name != "composite"]


def _unpack(item: Sequence) -> tuple[str, dict[str, Image.Image], dict]:
    if len(item) not in (2, 3):
        raise ValueError(f"evaluation items are (id, triplet) or (id, triplet, meta); got {len(item)} fields")
    sample_id, triplet = item[0], item[1]
    meta = item[2] if len(item) == 3 else {}
    if "composite" not in triplet or not _layers_of(triplet):
        raise ValueError(f"item {sample_id!r} needs a 'composite' panel and at least one layer panel")
    return str(sample_id), triplet, dict(meta or {})


# The layer that is the composite minus the others: its silhouette IoU says nothing, so it gets none.
BACKGROUND_LAYER = "object"


def score_layers(truth: dict[str, Image.Image], predicted: dict[str, Image.Image]) -> dict[str, float]:
    """PSNR and SSIM of each predicted layer against its ground truth, keyed psnr_<layer> / ssim_<layer>,
    and for every layer but the background one the shape IoU of its drawn pixels (iou_<layer>)."""
    scores: dict[str, float] = {}
    for layer in _layers_of(truth):
        if layer not in predicted:
            raise ValueError(f"prediction lacks layer {layer!r} (has {sorted(predicted)})")
        pred = _match_size(predicted[layer], truth[layer])
        scores[f"psnr_{layer}"] = float(psnr(pred, truth[layer]))
        scores[f"ssim_{layer}"] = float(ssim(pred, truth[layer]))
        if layer != BACKGROUND_LAYER:
            scores[f"iou_{layer}"] = float(shape_iou(pred, truth[layer]))
    return scores


def score_rgba_layers(meta: dict, truth: dict[str, Image.Image], predicted: dict[str, Image.Image]) -> dict:
    """The field's layer metrics (LayerD, Qwen-Image-Layered) on RGBA layers, where the truth has alpha.

    Predicted layers are what `decompose` writes: the logo matted off its white panel (models.matting),
    the background layer opaque. The true logo's alpha comes from the renderer (items with a render seed);
    other items get None (shown as n/a), never a number made up from the panel. Keys: l1_<layer>
    (premultiplied RGB L1), alpha_iou_<layer> (not for the opaque background), layer_edit (bottom-to-top).
    """
    layers = _layers_of(truth)
    true_rgba = _true_rgba(meta, truth, layers)
    if true_rgba is None:
        return {**{f"l1_{k}": None for k in layers}, "layer_edit": None,
                **{f"alpha_iou_{k}": None for k in layers if k != BACKGROUND_LAYER}}
    pred_rgba = {k: (_match_size(predicted[k], truth[k]) if k == BACKGROUND_LAYER
                     else matte(_match_size(predicted[k], truth[k]))) for k in layers}
    scores: dict[str, float | None] = {f"l1_{k}": rgb_l1(pred_rgba[k], true_rgba[k]) for k in layers}
    scores.update({f"alpha_iou_{k}": alpha_iou(pred_rgba[k], true_rgba[k]) for k in layers if k != BACKGROUND_LAYER})
    order = list(reversed(layers))  # bottom to top: the background first
    scores["layer_edit"] = layer_edit_distance([pred_rgba[k] for k in order], [true_rgba[k] for k in order])
    return scores


_RENDERED_LOGOS = {("logo", BACKGROUND_LAYER): ("logo",), ("logo_1", "logo_2", BACKGROUND_LAYER): ("logo_1", "logo_2")}


def _true_rgba(meta: dict, truth: dict[str, Image.Image], layers: list[str]) -> dict[str, Image.Image] | None:
    """The renderer's RGBA truth of an item of the synthetic world (one logo or two), or None when the item
    has no render seed or another layer schema."""
    logos = _RENDERED_LOGOS.get(tuple(layers))
    if logos is None or "seed" not in meta:
        return None
    side = truth[logos[0]].size[0]
    out = {name: render_logo_rgba(meta["seed"], side, index=i) for i, name in enumerate(logos, start=1)}
    return {**out, BACKGROUND_LAYER: truth[BACKGROUND_LAYER].convert("RGB")}


def _match_size(pred: Image.Image, truth: Image.Image) -> Image.Image:
    pred = pred.convert("RGB")
    if pred.size != truth.size:
        pred = pred.resize(truth.size, Image.BICUBIC)
    return pred


def aggregate(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of every numeric metric over rows (None values skipped), plus n = number of rows.

    PSNR can be +inf for a perfect layer; the mean then stays finite by capping each value at 100 dB,
    so one exact match does not make the whole table unreadable.
    """
    if not rows:
        raise ValueError("nothing to aggregate: the evaluation set is empty")
    keys = [k for k in rows[0] if k not in ("sample_id",) and not isinstance(rows[0][k], str)]
    out: dict[str, float] = {}
    for key in keys:
        values = [_finite(r[key]) for r in rows if r.get(key) is not None]
        if values:
            out[key] = sum(values) / len(values)
    out["n"] = len(rows)
    return out


def _finite(value: float) -> float:
    return 100.0 if math.isinf(value) and value > 0 else float(value)


def predict_layers(sampler, composites: list[Image.Image], batch_size: int = 16) -> list[dict[str, Image.Image]]:
    """Decompose composites in the sampler's inference mode (draws, anchor), in bounded batches (memory stays
    flat however big the test set is)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    out: list[dict[str, Image.Image]] = []
    for start in range(0, len(composites), batch_size):
        out.extend(sampler.infer(composites[start:start + batch_size]))
    if len(out) != len(composites):
        raise RuntimeError(f"sampler returned {len(out)} decompositions for {len(composites)} composites")
    return out


def per_item_scores(items: Iterable[Sequence], predict: Callable[[list[Image.Image]], list[dict]],
                    *, vqa=None, judge=None) -> list[dict[str, Any]]:
    """One row per item: sample_id + psnr/ssim per layer (+ vqa_<layer>, vlm_score when given)."""
    unpacked = [_unpack(item) for item in items]
    if not unpacked:
        raise ValueError("the evaluation set is empty")
    predictions = predict([t["composite"] for _, t, _ in unpacked])
    rows = [{"sample_id": sid, **score_layers(t, p), **score_rgba_layers(meta, t, p)}
            for (sid, t, meta), p in zip(unpacked, predictions)]
    if vqa is not None:
        _add_vqa(rows, unpacked, predictions, vqa)
    if judge is not None:
        _add_judge(rows, unpacked, predictions, judge)
    return rows


def evaluate_decomposition(sampler, items: Iterable[Sequence], *, vqa=None, judge=None,
                           batch_size: int = 16, return_rows: bool = False,
                           slices: dict[str, Callable[[dict], bool]] | None = None) -> dict:
    """Decompose every held-out composite and return mean per-layer metrics.

    Returns e.g. {psnr_logo, psnr_object, ssim_logo, ssim_object, iou_logo, n} (+ vqa_logo, vqa_object,
    vlm_score with a VQAScore model / judge). `slices` (name -> predicate on an item's meta) adds the
    same means per slice under "slices" (e.g. items whose kind the seeds showed vs the others). With
    return_rows=True the per-item rows come back under "rows" as well, for CSV export.
    """
    items = list(items)
    rows = per_item_scores(items, lambda c: predict_layers(sampler, c, batch_size), vqa=vqa, judge=judge)
    return summarise_rows(rows, [_unpack(i)[2] for i in items], slices, return_rows)


def summarise_rows(rows: list[dict[str, Any]], metas: list[dict], slices: dict[str, Callable[[dict], bool]] | None,
                   return_rows: bool) -> dict:
    """Overall and per-slice means of per-item rows; `metas` are the items' meta, parallel to rows."""
    result: dict[str, Any] = aggregate(rows)
    if slices:
        result["slices"] = {name: aggregate(picked) if (picked := [r for r, m in zip(rows, metas) if keep(m)])
                            else {"n": 0} for name, keep in slices.items()}
    if return_rows:
        result["rows"] = rows
    return result


def identity_predictions(composites: list[Image.Image], layers: Sequence[str]) -> list[dict[str, Image.Image]]:
    """The do-nothing decomposition: the object is the composite, every other layer a blank white panel."""
    preds = []
    for comp in composites:
        comp = comp.convert("RGB")
        white = Image.new("RGB", comp.size, (255, 255, 255))
        preds.append({layer: (comp.copy() if layer == BACKGROUND_LAYER else white.copy()) for layer in layers})
    return preds


def identity_baseline(items: Iterable[Sequence], *, vqa=None, judge=None, return_rows: bool = False,
                      slices: dict[str, Callable[[dict], bool]] | None = None) -> dict:
    """Scores of the identity decomposition, the floor any trained adapter must beat."""
    items = list(items)
    if not items:
        raise ValueError("the evaluation set is empty")
    layers = _layers_of(_unpack(items[0])[1])
    rows = per_item_scores(items, lambda c: identity_predictions(c, layers), vqa=vqa, judge=judge)
    return summarise_rows(rows, [_unpack(i)[2] for i in items], slices, return_rows)


def _vqa_text(layer: str, meta: dict) -> str:
    # A description of this very layer (from the synthetic meta) is a sharper question than the generic one.
    if layer == "logo" and {"logo_colour", "logo_shape", "text"} <= set(meta):
        return f"a {meta['logo_colour']} {meta['logo_shape']} logo reading '{meta['text']}' on a plain white background"
    if layer == "object" and {"object_colour", "kind"} <= set(meta):
        return f"a {meta['object_colour']} {meta['kind']} without any logo"
    return DEFAULT_VQA_TEXTS.get(layer, f"the {layer} layer alone")


def _add_vqa(rows, unpacked, predictions, vqa) -> None:
    """VQAScore per layer: P("Yes") that the predicted layer shows what it should."""
    for layer in _layers_of(unpacked[0][1]):
        images = [p[layer] for p in predictions]
        texts = [_vqa_text(layer, meta) for _, _, meta in unpacked]
        scores = _call_vqa(vqa, images, texts)
        for row, score in zip(rows, scores):
            row[f"vqa_{layer}"] = None if score is None else float(score)


def _call_vqa(vqa, images: list[Image.Image], texts: list[str]) -> list[float | None]:
    # Accept a scorer object (score(images, texts)) or a plain callable with the same signature.
    fn = getattr(vqa, "score", vqa)
    if not callable(fn):
        raise TypeError(f"vqa must be callable or have .score(images, texts); got {type(vqa).__name__}")
    scores = list(fn(images, texts))
    if len(scores) != len(images):
        raise RuntimeError(f"VQAScore returned {len(scores)} scores for {len(images)} images")
    return scores


def _add_judge(rows, unpacked, predictions, judge) -> None:
    """VLMScore: the judge's overall score of [input composite | predicted layers]."""
    judge_items = [
        JudgeItem(sample_id=sid, triplet={"composite": t["composite"], **pred}, prompt=str(meta.get("caption", "")))
        for (sid, t, meta), pred in zip(unpacked, predictions)
    ]
    by_id = {r.sample_id: r for r in judge.score(judge_items)}
    for row in rows:
        result = by_id.get(row["sample_id"])
        row["vlm_score"] = None if result is None or result.error else result.overall

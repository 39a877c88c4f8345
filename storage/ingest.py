"""Ingestion of labeled seed triplets (round 0000) and unlabeled pool composites into the round store.

Accepted input layouts (local path or fsspec URL):
  * per-sample folders   `<root>/<id>/{composite,logo,object}.<ext>` (+ optional meta.json with caption/kind),
                         which is what the synthetic renderer writes;
  * flat files           `<root>/<id>_composite.<ext>`, `<root>/<id>_logo.<ext>`, ... (pool: also `<root>/<id>.<ext>`);
  * a CSV                columns `id` (or `sample_id`), one column per panel (paths relative to the CSV),
                         optional `caption` / `prompt` / `kind`.
Every item is validated (storage/validate.py); a bad one goes to quarantine with its reason and the
run goes on. Work is done in units of UNIT_SIZE items so an interrupted ingestion resumes per unit.
Hidden entries (names starting with ".") are skipped: they are other writers' temp files.
"""
from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from . import schema as S
from . import validate as V
from .errors import InvalidImage

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif")
SEED_PANELS = ("composite", "logo", "object")
POOL_PANELS = ("composite",)
UNIT_SIZE = 32
Progress = Callable[[int, int], None]
Derive = Callable[[dict[str, bytes]], dict[str, bytes]]


class IngestError(ValueError):
    """The input as a whole is unusable (missing path, bad CSV header, nothing valid)."""


@dataclass
class InputItem:
    item_id: str
    files: dict[str, str] = field(default_factory=dict)  # panel -> path
    meta: dict = field(default_factory=dict)             # caption/prompt/kind from meta.json or the CSV
    meta_path: str | None = None
    problem: tuple[str, str] | None = None               # (reason, detail) found while listing


@dataclass
class IngestReport:
    kind: str                   # "seeds" | "pool"
    round: int                  # round number (seeds) or pool batch number
    layout: str                 # "folders" | "flat" | "csv"
    found: int
    accepted: int
    quarantined: list[dict]     # {item, reason, detail}
    conversions: int            # accepted panels that validation converted (mode, alpha, EXIF, 16-bit)
    uri: str

    @property
    def reasons(self) -> dict[str, int]:
        return dict(Counter(q["reason"] for q in self.quarantined))


def _fs(path: str):
    import fsspec

    return fsspec.core.url_to_fs(path)


def _name(p: str) -> str:
    return p.rstrip("/").rsplit("/", 1)[-1]


def _split_ext(fname: str) -> tuple[str, str]:
    stem, dot, ext = fname.rpartition(".")
    return (stem, ext.lower()) if dot else (fname, "")


def _is_link(entry: dict) -> bool:
    return bool(entry.get("islink")) or entry.get("type") == "link"


# -- discovery -------------------------------------------------------------------------------
def _folder_item(fs: Any, entry: dict, panels: tuple[str, ...]) -> InputItem:
    item = InputItem(_name(entry["name"]))
    if _is_link(entry):
        item.problem = (V.UNSAFE_LINK, f"{entry['name']} is a symbolic link")
        return item
    for sub in sorted(fs.ls(entry["name"], detail=True), key=lambda e: e["name"]):
        fname = _name(sub["name"])
        stem, ext = _split_ext(fname)
        if fname == "meta.json":
            item.meta_path = sub["name"]
        elif stem.lower() in panels and ext in IMAGE_EXTS:
            _add_file(item, stem.lower(), sub)
    return item


def _add_file(item: InputItem, panel: str, entry: dict) -> None:
    if item.problem:
        return
    if _is_link(entry):
        item.problem = (V.UNSAFE_LINK, f"{entry['name']} is a symbolic link")
    elif panel in item.files:
        item.problem = (V.AMBIGUOUS_PANEL, f"two files for panel {panel!r}: {item.files[panel]}, {entry['name']}")
    else:
        item.files[panel] = entry["name"]


def _flat_items(entries: list[dict], panels: tuple[str, ...]) -> dict[str, InputItem]:
    pat = re.compile(rf"^(?P<id>.+)_(?P<panel>{'|'.join(panels)})\.(?P<ext>[A-Za-z0-9]+)$", re.IGNORECASE)
    items: dict[str, InputItem] = {}
    for e in entries:
        fname = _name(e["name"])
        m = pat.match(fname)
        stem, ext = _split_ext(fname)
        if m and m["ext"].lower() in IMAGE_EXTS:
            item_id, panel = m["id"], m["panel"].lower()
        elif panels == POOL_PANELS and ext in IMAGE_EXTS:
            item_id, panel = stem, "composite"  # the pool also takes bare <id>.<ext>
        else:
            continue
        _add_file(items.setdefault(item_id, InputItem(item_id)), panel, e)
    return items


def _csv_items(fs: Any, path: str, panels: tuple[str, ...]) -> list[InputItem]:
    text = fs.cat_file(path).decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text))
    cols = set(reader.fieldnames or ())
    id_col = "id" if "id" in cols else "sample_id" if "sample_id" in cols else None
    missing = [p for p in panels if p not in cols]
    if id_col is None or missing:
        raise IngestError(f"CSV {path} needs columns 'id' (or 'sample_id') and {list(panels)}; missing "
                          f"{(['id'] if id_col is None else []) + missing}; found {sorted(cols)}")
    base = path.rsplit("/", 1)[0]
    items = []
    for rec in reader:
        item = InputItem(str(rec.get(id_col) or "").strip())
        item.meta = {k: rec[k] for k in ("caption", "prompt", "kind") if rec.get(k)}
        for p in panels:
            ref = (rec.get(p) or "").strip()
            if ref:
                item.files[p] = ref if ref.startswith("/") or "://" in ref else f"{base}/{ref}"
        items.append(item)
    return items


def discover(path: str, panels: tuple[str, ...]) -> tuple[str, list[InputItem]]:
    """(layout, items) of an input path; IngestError when the path itself is unusable."""
    fs, root = _fs(path)
    if not fs.exists(root):
        raise IngestError(f"input path {path} does not exist")
    if fs.isfile(root):
        if not root.lower().endswith(".csv"):
            raise IngestError(f"input {path} is a file but not a .csv; give a folder or a CSV of paths")
        return "csv", _csv_items(fs, root, panels)
    entries = [e for e in fs.ls(root, detail=True) if not _name(e["name"]).startswith(".")]
    entries.sort(key=lambda e: e["name"])
    folders = [_folder_item(fs, e, panels) for e in entries if e.get("type") == "directory"]
    flat = _flat_items([e for e in entries if e.get("type") != "directory"], panels)
    items = folders + list(flat.values())
    if not items:
        raise IngestError(f"no items found in {path}: expected <id>/{{{','.join(panels)}}}.png folders, "
                          f"flat <id>_<panel>.<ext> files, or a CSV")
    return ("folders" if folders else "flat"), items


# -- validation ------------------------------------------------------------------------------
def _read(fs: Any, path: str, limits: Any) -> bytes:
    try:
        size = fs.size(path)
        if size is not None and size > limits.max_file_bytes:
            raise InvalidImage(V.FILE_TOO_LARGE, f"{path} is {size} bytes (limit {limits.max_file_bytes})")
        return fs.cat_file(path)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise InvalidImage(V.UNREADABLE, f"{path}: {exc}") from exc


def _read_meta(fs: Any, item: InputItem) -> dict:
    if item.meta_path is None:
        return dict(item.meta)
    try:
        meta = json.loads(fs.cat_file(item.meta_path))
    except ValueError as exc:
        raise InvalidImage(V.BAD_META, f"{item.meta_path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise InvalidImage(V.BAD_META, f"{item.meta_path} must hold a JSON object")
    return {**meta, **item.meta}


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # ~3x faster than the default level, ~10 % larger
    return buf.getvalue()


def _prepare(item: InputItem, panels: tuple[str, ...], limits: Any, raw: dict[str, bytes]) -> tuple[dict, dict]:
    """Validate one item; fills `raw` with the bytes read (for quarantine); returns (fields, png panels)."""
    if item.problem:
        raise InvalidImage(*item.problem)
    V.check_id(item.item_id)
    missing = [p for p in panels if p not in item.files]
    if missing:
        raise InvalidImage(V.MISSING_PANEL, f"{item.item_id} lacks panel(s) {missing}")
    fs, _ = _fs(item.files[panels[0]])
    checked, notes = {}, []
    for p in panels:
        raw[item.files[p]] = _read(fs, item.files[p], limits)
        v = V.check_image(raw[item.files[p]], name=item.files[p], limits=limits)
        checked[p] = v.image
        notes += [f"{p}:{c}" for c in v.conversions]
    V.check_same_size(checked, item.item_id)
    meta = _read_meta(fs, item)
    fields = {S.SAMPLE_ID: item.item_id, S.CONVERSIONS: notes, S.CAPTION: meta.get("caption"),
              S.PROMPT: meta.get("prompt") or meta.get("caption"), S.KIND: meta.get("kind"),
              S.EXTRA_JSON: {"origin": {p: item.files[p] for p in panels}, "meta": meta}}
    return fields, {p: _png(checked[p]) for p in panels}


# -- ingestion -------------------------------------------------------------------------------
def _mark_duplicates(items: list[InputItem]) -> None:
    seen: set[str] = set()
    for item in items:
        if item.item_id in seen and not item.problem:
            item.problem = (V.DUPLICATE_ID, f"id {item.item_id!r} appears more than once; the first one is kept")
        seen.add(item.item_id)


# The validation split never takes more than this share of the labeled items: a handful of seeds must
# still train something (with 100 seeds the default 10 are held out; with 6, one).
MAX_VALIDATION_SHARE = 0.2


def validation_ids(items: list[InputItem], n: int) -> set[str]:
    """Up to n item ids (at most MAX_VALIDATION_SHARE of them) held out as the labeled validation split:
    lowest sha256 of the id first, so the choice is stable, independent of listing order, and spread over
    the set rather than its first folder."""
    import hashlib

    ids = sorted({i.item_id for i in items if not i.problem}, key=lambda x: hashlib.sha256(x.encode()).hexdigest())
    return set(ids[:min(n, int(len(ids) * MAX_VALIDATION_SHARE))])


def _unit(store: Any, writer: Any, unit: str, items: list[InputItem], panels: tuple[str, ...], limits: Any,
          base: dict, held_out: set[str] = frozenset(), derive: Derive | None = None) -> tuple[Any, list[dict]]:
    import pandas as pd

    if writer.unit_done(unit):
        q = writer.get_part("quarantine", unit)
        return writer.write_unit(unit, []), ([] if q is None else q.to_dict("records"))
    good, bad = [], []
    for item in items:
        raw: dict[str, bytes] = {}
        try:
            fields, pngs = _prepare(item, panels, limits, raw)
            if derive is not None:  # derived members (e.g. RGBA mattes) from the validated panels
                pngs.update(derive(pngs))
            split = {S.SPLIT: "validation"} if item.item_id in held_out else {}
            good.append(({**base, **fields, **split}, pngs))
        except InvalidImage as exc:
            store.quarantine(item.item_id or "unnamed", raw, str(exc))
            bad.append({"item": item.item_id, "reason": exc.reason, "detail": exc.detail})
    writer.put_part("quarantine", unit, pd.DataFrame(bad, columns=["item", "reason", "detail"]))
    return writer.write_unit(unit, good), bad


def _ingest(path: str, store: Any, cfg: Any, *, kind: str, progress: Progress | None,
            validation_size: int = 0, derive: Derive | None = None,
            layers: tuple[str, ...] = SEED_PANELS[1:]) -> IngestReport:
    import pandas as pd

    panels = ("composite", *layers) if kind == "seeds" else POOL_PANELS
    layout, items = discover(path, panels)
    _mark_duplicates(items)
    held_out = validation_ids(items, validation_size) if kind == "seeds" else set()
    opts = cfg.writer_options()
    config = {"ingest": kind, "source_path": path, "store": cfg.model_dump(mode="json")}
    if kind == "seeds":
        writer = store.begin(0, parent_round=None, adapter_id=None, config=config, **opts)
        base = {S.SOURCE: "seed", S.SPLIT: "train", S.ACCEPTED: True}
    else:
        writer = store.begin_pool(config, **opts)
        base = {S.SOURCE: "imported", S.SPLIT: "pool", S.ACCEPTED: True}
    frames, quarantined = [], []
    for start in range(0, len(items), UNIT_SIZE):
        df, bad = _unit(store, writer, f"{kind}-{start // UNIT_SIZE:04d}", items[start:start + UNIT_SIZE],
                        panels, cfg, base, held_out, derive)
        frames.append(df)
        quarantined += bad
        if progress is not None:
            progress(min(start + UNIT_SIZE, len(items)), len(items))
    rows = pd.concat(frames, ignore_index=True)
    if not len(rows):
        reasons = dict(Counter(q["reason"] for q in quarantined))
        raise IngestError(f"no valid items in {path}: {len(quarantined)} quarantined {reasons}; "
                          f"see {store.uri}/quarantine")
    conv = int(sum(len(c) for c in rows[S.CONVERSIONS]))
    n_val = int((rows[S.SPLIT] == "validation").sum())
    if n_val and n_val == len(rows):  # every training item was quarantined: none left beside the held-out ones
        raise IngestError(f"nothing to train on: all {len(rows)} valid labeled items are in the validation split "
                          f"({len(quarantined)} quarantined, see {store.uri}/quarantine)")
    writer.commit(rows, {"ingest": {"kind": kind, "layout": layout, "found": len(items),
                                    "quarantined": len(quarantined), "conversions": conv, "validation": n_val}})
    return IngestReport(kind, writer.round, layout, len(items), len(rows), quarantined, conv, writer.dir)


def ingest_seeds(path: str, store: Any, cfg: Any, *, progress: Progress | None = None,
                 validation_size: int = 0, derive: Derive | None = None,
                 layers: tuple[str, ...] = SEED_PANELS[1:]) -> IngestReport:
    """Validate labeled triplets at `path` and commit the good ones as round 0000 (source=seed).

    `layers` are the layer schema's panels each item must have besides its composite (`model.layers`;
    e.g. logo_1, logo_2, object for two logos).

    `derive`, when given, maps an item's validated PNG panels to extra members stored beside them
    (the pipeline's RGBA mattes); an exception from it is a bug, not a bad item.

    `validation_size` of them (chosen by id hash, at most a fifth of them) get split "validation": the
    store's training view never returns them, so every adapter can be measured on labeled data it was not
    trained on.
    """
    return _ingest(path, store, cfg, kind="seeds", progress=progress, validation_size=validation_size, derive=derive,
                   layers=tuple(layers))


def ingest_pool(path: str, store: Any, cfg: Any, *, progress: Progress | None = None) -> IngestReport:
    """Validate unlabeled composites at `path` and commit them as the next pool batch (store.read_pool())."""
    return _ingest(path, store, cfg, kind="pool", progress=progress)

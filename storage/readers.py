"""Reading committed rounds with standard tools: shard lists for `webdataset` / Hugging Face `datasets`.

The shards are plain WebDataset tars (`<key>.<panel>.png` ... `<key>.json`); each sample's sidecar JSON
has one flat schema (storage/schema.py `sidecar`) that carries the commit's decision. A committed round
keeps accepted and rejected samples in separate shards (`shards/accepted-*.tar`, `shards/rejected-*.tar`),
so a reader that wants only training data lists only the accepted ones. docs/storage.md has the recipes;
these helpers only name files and types, they read nothing. `datasets` is imported when asked for.
"""
from __future__ import annotations

from typing import Any

from . import schema as S


def shard_urls(store: Any, rows: Any) -> list[str]:
    """Full paths/URLs of the shards `rows` (a manifest DataFrame: a round, the training view) live in,
    in the rows' order. Reading whole shards yields every sample in them: filter on the sidecar's
    (round, sample_id) when the rows are a subset (e.g. the training view's dedup)."""
    return [store.url(s) for s in dict.fromkeys(rows[S.SHARD])]


def panel_names(rows: Any) -> list[str]:
    """Every panel name the rows use, first-seen order (the layer schema's, plus extras like masks)."""
    names: dict[str, None] = {}
    for panels in rows[S.PANELS]:
        names.update(dict.fromkeys(str(p) for p in panels))
    return list(names)


def hf_features(rows: Any) -> Any:
    """`datasets.Features` of these rows' shards, for `load_dataset("webdataset", ..., features=...)`.

    Needed only when samples differ in their panels (the builder infers types from the first shard's
    first samples and refuses members it did not see there); every panel a sample lacks comes back None.
    """
    import datasets

    text, integer = datasets.Value("string"), datasets.Value("int64")
    sidecar = {"sidecar_version": integer, **{k: text for k in S.SIDECAR_STR},
               **{k: integer for k in S.SIDECAR_INT}, S.PANELS: datasets.List(text),
               S.ACCEPTED: datasets.Value("bool")}
    members = {f"{p}.png": datasets.Image() for p in panel_names(rows)}
    return datasets.Features({**members, "json": sidecar, "__key__": text, "__url__": text})

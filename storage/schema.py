"""The one manifest schema of the round store (versioned), its column names, and table validation.

A manifest row describes one sample: where its panels live (shard + member key), a sha256 and size
per panel, its lineage and, for generated/cycle samples, the judge scores and cycle error. The schema
is K-layer generic: `panels` lists the panel names ("composite", *layers) and `sha256`/`sizes` are
parallel lists, so a different layer schema needs no new columns.

Writers build rows with `empty_row(**fields)` and call `validate_table` before anything is written;
readers can rely on every committed manifest matching MANIFEST_SCHEMA.

Each sample's `<key>.json` shard member (the sidecar, `sidecar(row)`) has one flat schema of its own for
every source, so standard readers (Hugging Face `datasets`, `webdataset`) infer one type per field: no
null strings, integers within int64, free-form data as JSON text, the commit's decision included.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .errors import SchemaError

# 1: panels are the composite and the layers (pseudo-labels add trust_<layer> masks).
# 2: samples also carry rgba_<layer>, each non-background layer with its alpha matte. Same columns: a
#    reader of version 2 reads version 1 rounds as they are; a manifest newer than this code is refused.
SCHEMA_VERSION = 2
SCHEMA_METADATA_KEY = b"layerloop.schema_version"

SAMPLE_ID = "sample_id"
ROUND = "round"
SOURCE = "source"
SPLIT = "split"
PROMPT = "prompt"
CAPTION = "caption"
KIND = "kind"
UNIT = "unit"
SHARD = "shard"            # shard path relative to the store root, e.g. "rounds/round-0000/shards/u0-ab12-0000.tar"
KEY = "key"                # WebDataset key: members are <key>.<panel>.png and <key>.json
PANELS = "panels"          # list of panel names, e.g. ["composite", "logo", "object"]
SHA256 = "sha256"          # list, parallel to PANELS
SIZES = "sizes"            # list of byte sizes, parallel to PANELS
META_SHA256 = "meta_sha256"  # sha256 of the <key>.json member
CONTENT_HASH = "content_hash"  # sha256 over (panel name, panel sha256) pairs: the dedup key
WIDTH = "width"            # panel width in pixels (all panels of a sample share it)
HEIGHT = "height"
CONVERSIONS = "conversions"  # what validation changed, e.g. "logo:CMYK->RGB", "composite:exif-orientation-6"
JUDGE_BACKEND = "judge_backend"
SCORE_LOGO_CLEAN = "score_logo_clean"
SCORE_OBJECT_CLEAN = "score_object_clean"
SCORE_COMPOSITE_CONSISTENT = "score_composite_consistent"
SCORE_REALISM = "score_realism"
SCORE_OVERALL = "score_overall"
CYCLE_ERROR = "cycle_error"
ACCEPTED = "accepted"
REASON = "reason"
PARENT_ROUND = "parent_round"
ADAPTER_ID = "adapter_id"
CREATED_AT = "created_at"
EXTRA_JSON = "extra_json"  # free-form JSON text (never pickle)

SOURCES = ("seed", "generated", "cycle", "imported")
SPLITS = ("train", "validation", "pool", "test")  # validation: labeled, held out, never trained on
SCORE_COLUMNS = (SCORE_LOGO_CLEAN, SCORE_OBJECT_CLEAN, SCORE_COMPOSITE_CONSISTENT, SCORE_REALISM, SCORE_OVERALL)
DEFAULT_PANELS = ("composite", "logo", "object")

_STR = pa.string()
_FIELDS = [
    pa.field(SAMPLE_ID, _STR, nullable=False),
    pa.field(ROUND, pa.int32(), nullable=False),
    pa.field(SOURCE, _STR, nullable=False),
    pa.field(SPLIT, _STR, nullable=False),
    pa.field(PROMPT, _STR),
    pa.field(CAPTION, _STR),
    pa.field(KIND, _STR),
    pa.field(UNIT, _STR, nullable=False),
    pa.field(SHARD, _STR, nullable=False),
    pa.field(KEY, _STR, nullable=False),
    pa.field(PANELS, pa.list_(_STR), nullable=False),
    pa.field(SHA256, pa.list_(_STR), nullable=False),
    pa.field(SIZES, pa.list_(pa.int64()), nullable=False),
    pa.field(META_SHA256, _STR, nullable=False),
    pa.field(CONTENT_HASH, _STR, nullable=False),
    pa.field(WIDTH, pa.int32(), nullable=False),
    pa.field(HEIGHT, pa.int32(), nullable=False),
    pa.field(CONVERSIONS, pa.list_(_STR), nullable=False),
    pa.field(JUDGE_BACKEND, _STR),
    *[pa.field(c, pa.float64()) for c in SCORE_COLUMNS],
    pa.field(CYCLE_ERROR, pa.float64()),
    pa.field(ACCEPTED, pa.bool_(), nullable=False),
    pa.field(REASON, _STR),
    pa.field(PARENT_ROUND, pa.int32()),
    pa.field(ADAPTER_ID, _STR),
    pa.field(CREATED_AT, pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field(EXTRA_JSON, _STR, nullable=False),
]
MANIFEST_SCHEMA = pa.schema(_FIELDS, metadata={SCHEMA_METADATA_KEY: str(SCHEMA_VERSION).encode()})
COLUMNS = tuple(MANIFEST_SCHEMA.names)

# Columns a writer fills from the shard it wrote; callers of empty_row() may leave them blank.
STORAGE_FILLED = (UNIT, SHARD, KEY, PANELS, SHA256, SIZES, META_SHA256, CONTENT_HASH)

# The sidecar: these fields, always present, always of one type (str fields are "" when unknown).
SIDECAR_VERSION = 2
SIDECAR_STR = (SAMPLE_ID, SOURCE, SPLIT, PROMPT, CAPTION, KIND, CONTENT_HASH, REASON, EXTRA_JSON)
SIDECAR_INT = (ROUND, WIDTH, HEIGHT)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def content_hash(panels: list[str], sha256s: list[str]) -> str:
    """Dedup key of a sample: independent of shard, round and panel order."""
    h = hashlib.sha256()
    for name, digest in sorted(zip(panels, sha256s)):
        h.update(f"{name}={digest}\n".encode())
    return h.hexdigest()


def json_safe(value: Any) -> Any:
    """`value` with every integer outside int64 turned into its decimal string, recursively.

    JSON has no integer limit, but Arrow-based readers (datasets, DuckDB, pandas via pyarrow) do: one
    64-bit unsigned seed in a sidecar made `datasets` fail with "Python int too large to convert to C long".
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if INT64_MIN <= value <= INT64_MAX else str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _text(value: Any) -> str:
    """A string field of the sidecar: never null (pandas gives NaN or None for a missing string)."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)


def sidecar(row: dict[str, Any]) -> dict[str, Any]:
    """The `<key>.json` member of a manifest row: the same flat fields, of the same types, for every sample.

    Deterministic (no timestamps), so a rerun writes byte-identical members. `accepted`/`reason` are the
    commit's decision (the store writes the final sidecar when it commits a round); `extra_json` is the
    row's free-form JSON as text, so its keys may differ between sources without changing the schema.
    """
    out: dict[str, Any] = {"sidecar_version": SIDECAR_VERSION}
    out.update({k: _text(row.get(k)) for k in SIDECAR_STR})
    out.update({k: int(row[k]) for k in SIDECAR_INT})
    out[PANELS] = [str(p) for p in row[PANELS]]
    out[ACCEPTED] = bool(row[ACCEPTED])
    out[EXTRA_JSON] = out[EXTRA_JSON] or "{}"
    return out


def sidecar_bytes(row: dict[str, Any]) -> bytes:
    return json.dumps(sidecar(row), sort_keys=True).encode()


def _defaults() -> dict[str, Any]:
    return {
        SAMPLE_ID: None, ROUND: None, SOURCE: None, SPLIT: "train", PROMPT: None, CAPTION: None,
        KIND: None, UNIT: "", SHARD: "", KEY: "", PANELS: [], SHA256: [], SIZES: [], META_SHA256: "",
        CONTENT_HASH: "", WIDTH: 0, HEIGHT: 0, CONVERSIONS: [], JUDGE_BACKEND: None,
        **{c: None for c in SCORE_COLUMNS}, CYCLE_ERROR: None, ACCEPTED: False, REASON: None,
        PARENT_ROUND: None, ADAPTER_ID: None, CREATED_AT: _dt.datetime.now(_dt.timezone.utc), EXTRA_JSON: "{}",
    }


def empty_row(**fields: Any) -> dict[str, Any]:
    """A full manifest row with defaults; unknown field names are an error (typos must not vanish)."""
    unknown = sorted(set(fields) - set(COLUMNS))
    if unknown:
        raise SchemaError(f"unknown manifest column(s) {unknown}; known: {list(COLUMNS)}")
    row = _defaults()
    row.update(fields)
    if isinstance(row[EXTRA_JSON], dict):
        row[EXTRA_JSON] = json.dumps(json_safe(row[EXTRA_JSON]), sort_keys=True)
    return row


def _to_table(df_or_table: Any) -> pa.Table:
    if isinstance(df_or_table, pa.Table):
        return df_or_table
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - pandas is a dependency
        raise SchemaError("validate_table needs a pyarrow.Table or pandas.DataFrame") from exc
    if not isinstance(df_or_table, pd.DataFrame):
        raise SchemaError(f"validate_table needs a pyarrow.Table or pandas.DataFrame, got {type(df_or_table).__name__}")
    return pa.Table.from_pandas(df_or_table, preserve_index=False)


def _cast_columns(table: pa.Table) -> pa.Table:
    missing = [c for c in COLUMNS if c not in table.column_names]
    extra = [c for c in table.column_names if c not in COLUMNS]
    if missing:
        raise SchemaError(f"manifest is missing column(s) {missing}")
    if extra:
        raise SchemaError(f"manifest has unknown column(s) {extra}; put free-form data in '{EXTRA_JSON}'")
    arrays = []
    for field in MANIFEST_SCHEMA:
        col = table.column(field.name)
        try:
            arrays.append(col.cast(field.type) if col.type != field.type else col)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise SchemaError(f"column '{field.name}' has type {col.type}, expected {field.type}: {exc}") from exc
        if not field.nullable and arrays[-1].null_count:
            raise SchemaError(f"column '{field.name}' has {arrays[-1].null_count} null value(s); it is required")
    return pa.Table.from_arrays(arrays, schema=MANIFEST_SCHEMA)


def _fail_where(table: pa.Table, bad: pa.Array, column: str, what: str) -> None:
    """Raise naming `column` and the first offending sample when any entry of `bad` is true."""
    bad = pc.fill_null(bad, True)
    if pc.any(bad).as_py():
        idx = pc.index(bad, True).as_py()
        sid = table.column(SAMPLE_ID)[idx].as_py()
        raise SchemaError(f"column '{column}' of {sid!r}: {what}")


def _check_values(table: pa.Table) -> None:
    _fail_where(table, pc.invert(pc.is_in(table[SOURCE], pa.array(SOURCES))), SOURCE, f"expected one of {SOURCES}")
    _fail_where(table, pc.invert(pc.is_in(table[SPLIT], pa.array(SPLITS))), SPLIT, f"expected one of {SPLITS}")
    _fail_where(table, pc.less(table[ROUND], 0), ROUND, "round numbers are >= 0")
    _fail_where(table, pc.invert(pc.match_substring_regex(table[KEY], _KEY_RE.pattern)), KEY,
                "keys are 1-128 chars of [A-Za-z0-9_-] (WebDataset splits keys at the first dot)")
    n = pc.list_value_length(table[PANELS])
    _fail_where(table, pc.equal(n, 0), PANELS, "at least one panel is required")
    for col in (SHA256, SIZES):
        _fail_where(table, pc.not_equal(pc.list_value_length(table[col]), n), col, f"must be as long as '{PANELS}'")
    digests = pc.list_flatten(table[SHA256])
    if len(digests) and not pc.all(pc.match_substring_regex(digests, _HEX64.pattern)).as_py():
        raise SchemaError(f"column '{SHA256}' holds a value that is not a lowercase sha256 hex digest")
    _fail_where(table, pc.invert(pc.match_substring_regex(table[CONTENT_HASH], _HEX64.pattern)), CONTENT_HASH,
                "not a lowercase sha256 hex digest")
    for col in SCORE_COLUMNS:
        out = pc.or_(pc.less(table[col], 0.0), pc.greater(table[col], 1.0))
        _fail_where(table, pc.fill_null(out, False), col, "scores lie in [0, 1] or are null")
    _check_json(table)


def _check_json(table: pa.Table) -> None:
    # Mostly "{}": only parse the distinct values.
    for text in pc.unique(table[EXTRA_JSON]).to_pylist():
        try:
            json.loads(text)
        except ValueError as exc:
            raise SchemaError(f"column '{EXTRA_JSON}' holds invalid JSON {text[:60]!r}: {exc}") from exc


def validate_table(df_or_table: Any) -> pa.Table:
    """Return the data as a pyarrow Table in MANIFEST_SCHEMA order/types; SchemaError names the bad column."""
    table = _cast_columns(_to_table(df_or_table))
    _check_values(table)
    counts = pc.value_counts(table[SAMPLE_ID])
    dup = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    if len(dup):
        raise SchemaError(f"column '{SAMPLE_ID}' has duplicate ids, e.g. {dup[:5].to_pylist()}")
    return table


def check_version(table: pa.Table, where: str) -> pa.Table:
    """The table as read, or SchemaError when a newer layerloop wrote it (older versions read as they are)."""
    raw = (table.schema.metadata or {}).get(SCHEMA_METADATA_KEY)
    version = int(raw) if raw is not None and raw.isdigit() else 1
    if version > SCHEMA_VERSION:
        raise SchemaError(f"{where} has manifest schema version {version}; this layerloop reads up to "
                          f"{SCHEMA_VERSION}: upgrade layerloop to read it")
    return table


def empty_table() -> pa.Table:
    """A zero-row manifest (a round may accept or reject nothing)."""
    return MANIFEST_SCHEMA.empty_table()

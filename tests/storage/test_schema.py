"""Manifest schema: full rows validate, each kind of bad value is refused naming its column."""
from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pytest

from layerloop.storage import schema as S
from layerloop.storage.errors import SchemaError


def _row(**kw):
    return S.empty_row(**{S.SAMPLE_ID: "a", S.ROUND: 0, S.SOURCE: "seed", S.UNIT: "u", S.KEY: "a",
                          S.SHARD: "rounds/round-0000/shards/x.tar", S.PANELS: ["composite", "logo"],
                          S.SHA256: ["0" * 64, "1" * 64], S.SIZES: [3, 4], S.META_SHA256: "2" * 64,
                          S.CONTENT_HASH: S.content_hash(["composite", "logo"], ["0" * 64, "1" * 64]),
                          S.WIDTH: 16, S.HEIGHT: 16, **kw})


def test_valid_rows_round_trip_with_schema_and_version():
    table = S.validate_table(pd.DataFrame([_row(), _row(**{S.SAMPLE_ID: "b", S.KEY: "b", S.SCORE_REALISM: 0.5})]))
    assert table.schema.equals(S.MANIFEST_SCHEMA)
    assert table.schema.metadata[S.SCHEMA_METADATA_KEY] == str(S.SCHEMA_VERSION).encode()
    assert table.column(S.SCORE_REALISM).to_pylist() == [None, 0.5]
    assert S.validate_table(S.empty_table()).num_rows == 0


def test_content_hash_ignores_panel_order():
    assert S.content_hash(["a", "b"], ["1" * 64, "2" * 64]) == S.content_hash(["b", "a"], ["2" * 64, "1" * 64])
    assert S.content_hash(["a", "b"], ["1" * 64, "2" * 64]) != S.content_hash(["a", "b"], ["2" * 64, "1" * 64])


@pytest.mark.parametrize("bad, column", [
    ({S.SOURCE: "scraped"}, S.SOURCE),
    ({S.SPLIT: "dev"}, S.SPLIT),
    ({S.KEY: "a.b"}, S.KEY),
    ({S.KEY: "../a"}, S.KEY),
    ({S.SIZES: [3]}, S.SIZES),
    ({S.SHA256: ["zz", "1" * 64]}, S.SHA256),
    ({S.CONTENT_HASH: "nothex"}, S.CONTENT_HASH),
    ({S.SCORE_OVERALL: 1.5}, S.SCORE_OVERALL),
    ({S.EXTRA_JSON: "{not json"}, S.EXTRA_JSON),
    ({S.ROUND: -1}, S.ROUND),
    ({S.WIDTH: "wide"}, S.WIDTH),
    ({S.SAMPLE_ID: None}, S.SAMPLE_ID),
])
def test_bad_values_name_their_column(bad, column):
    with pytest.raises(SchemaError, match=f"'{column}'"):
        S.validate_table(pd.DataFrame([_row(**bad)]))


def test_missing_extra_and_duplicate_columns_are_refused():
    df = pd.DataFrame([_row()])
    with pytest.raises(SchemaError, match="missing column.*accepted"):
        S.validate_table(df.drop(columns=[S.ACCEPTED]))
    with pytest.raises(SchemaError, match="unknown column.*colour"):
        S.validate_table(df.assign(colour="red"))
    with pytest.raises(SchemaError, match="duplicate ids"):
        S.validate_table(pd.concat([df, df]))
    with pytest.raises(SchemaError, match="unknown manifest column"):
        S.empty_row(scroe_overall=0.5)
    with pytest.raises(SchemaError, match="pyarrow.Table or pandas.DataFrame"):
        S.validate_table([1, 2])


def test_extra_json_accepts_dict_and_arrow_tables():
    row = _row(**{S.EXTRA_JSON: {"pool_id": "p1"}})
    assert row[S.EXTRA_JSON] == '{"pool_id": "p1"}'
    table = pa.Table.from_pylist([row], schema=S.MANIFEST_SCHEMA)
    assert S.validate_table(table).num_rows == 1


def test_extra_json_keeps_integers_within_int64_and_turns_bigger_ones_into_strings():
    row = _row(**{S.EXTRA_JSON: {"meta": {"seed": 2**64 - 1, "size": 32, "box": [2**63, -(2**63), True]}}})
    assert json.loads(row[S.EXTRA_JSON]) == {"meta": {"seed": str(2**64 - 1), "size": 32,
                                                      "box": [str(2**63), -(2**63), True]}}


def test_sidecar_has_the_same_fields_and_types_for_missing_values():
    full = S.sidecar(_row(**{S.CAPTION: "a mug", S.PROMPT: "p", S.KIND: "mug", S.REASON: "judge: low",
                             S.ACCEPTED: False}))
    sparse = S.sidecar({**_row(), S.CAPTION: float("nan"), S.REASON: None, S.EXTRA_JSON: ""})
    assert {k: type(v) for k, v in full.items()} == {k: type(v) for k, v in sparse.items()}
    assert (sparse[S.CAPTION], sparse[S.REASON], sparse[S.EXTRA_JSON], sparse[S.ACCEPTED]) == ("", "", "{}", False)
    assert (full[S.REASON], full[S.ACCEPTED], full[S.PANELS]) == ("judge: low", False, ["composite", "logo"])

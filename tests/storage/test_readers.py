"""Committed rounds read by standard tools as they are: Hugging Face `datasets` and `webdataset`.

The recipes here are the ones docs/storage.md shows ("Reading rounds with datasets or webdataset"):
plain `load_dataset("webdataset", data_files=...)` and `wds.WebDataset(urls)` calls over the shards.
"""
from __future__ import annotations

import json

import datasets
import pytest
import webdataset as wds

from layerloop.storage import schema as S
from layerloop.storage.errors import CorruptShardError
from layerloop.storage.readers import hf_features, shard_urls
from layerloop.storage.rounds import RoundStore
from layerloop.storage.shards import ShardReader

from .helpers import samples

BIG_SEED = 11387796792141489166  # a synthetic item seed beyond int64, as round 0 of the demo had 58 of


def _seed_round(store: RoundStore) -> None:
    """Round 0 as ingestion makes it: captions, kinds and synthetic meta with a 64-bit seed."""
    w = store.begin(0, parent_round=None, adapter_id=None, config={}, shard_max_samples=3)
    w.write_unit("seeds-0000", ((dict(f, **{S.SOURCE: "seed", S.CAPTION: f"a mug {i}", S.KIND: "mug",
                                           S.ACCEPTED: True, S.REASON: None,
                                           S.EXTRA_JSON: {"meta": {"seed": BIG_SEED, "size": 16}}}), p)
                                for i, (f, p) in enumerate(samples("seed", 5))))
    w.commit(w.rows())


def _candidate_round(store: RoundStore, round_: int = 1, *, trust: bool = False) -> None:
    """A round of generated candidates (no caption) and cycle samples (a caption), some rejected;
    with `trust`, the cycle samples carry an extra greyscale-mask panel, as pool samples may."""
    w = store.begin(round_, parent_round=round_ - 1, adapter_id=f"a{round_ - 1}", config={}, shard_max_samples=3)
    w.write_unit("gen-0000", samples(f"g{round_}", 4, accepted=lambda i: i % 2 == 0))
    pool = []
    for f, p in samples(f"c{round_}", 4, accepted=lambda i: i != 1):
        f = dict(f, **{S.SOURCE: "cycle", S.CAPTION: "a cap", S.EXTRA_JSON: {"pool_id": f[S.SAMPLE_ID]}})
        pool.append((f, {**p, "trust_logo": p["logo"]} if trust else p))
    w.write_unit("pool-0000", pool)
    w.commit(w.rows())


@pytest.fixture
def store(tmp_path):
    st = RoundStore(str(tmp_path / "store"))
    _seed_round(st)
    _candidate_round(st)
    return st


def _load(files, tmp_path, **kw):
    return datasets.load_dataset("webdataset", data_files=files, split="train",
                                 cache_dir=str(tmp_path / "hf-cache"), **kw)


def _sidecars(store: RoundStore) -> list[dict]:
    out = []
    for r in store.committed_rounds():
        for path in sorted(store.fs.glob(f"{store.round_dir(r)}/shards/*.tar")):
            with ShardReader(store.fs, path) as reader:
                out += [json.loads(data) for name, data in reader.members() if name.endswith(".json")]
    return out


def _reason(row: dict) -> str:
    return row[S.REASON] if isinstance(row[S.REASON], str) else ""


def test_every_sidecar_has_one_flat_schema_with_the_decision(store):
    cars = _sidecars(store)
    assert len(cars) == 5 + 8
    types = {json.dumps({k: type(v).__name__ for k, v in c.items()}, sort_keys=True) for c in cars}
    assert len(types) == 1  # same keys, same types, whatever the source
    assert all(v is not None for c in cars for v in c.values())
    rows = {(r[S.ROUND], r[S.SAMPLE_ID]): r for r in pd_records(store)}
    for car in cars:
        row = rows[(car["round"], car["sample_id"])]
        assert car["accepted"] == bool(row[S.ACCEPTED]) and car["reason"] == _reason(row)
    seed = json.loads(next(c for c in cars if c["source"] == "seed")["extra_json"])["meta"]["seed"]
    assert seed == str(BIG_SEED)  # beyond int64: stored as its decimal string


def pd_records(store: RoundStore) -> list[dict]:
    return [row for r in store.committed_rounds() for row in store.read(r, "all").to_dict("records")]


def test_accepted_and_rejected_samples_live_in_separate_shards(store):
    for r in store.committed_rounds():
        rows = store.read(r, "all")
        names = rows[S.SHARD].str.rsplit("/", n=1).str[1]
        assert (names.str.startswith("accepted-") == rows[S.ACCEPTED]).all()
        assert (names.str.startswith("rejected-") == ~rows[S.ACCEPTED]).all()
        assert store.verify(r) == []


def test_datasets_loads_a_whole_round_and_its_accepted_shards_as_they_are(store, tmp_path):
    rows = store.read(1, "all")
    whole = _load(shard_urls(store, rows), tmp_path)  # no features=: inferred from the shards
    assert len(whole) == len(rows) and whole[0]["composite.png"].size == (16, 16)
    decided = {j["sample_id"]: (j["accepted"], j["reason"]) for j in whole["json"]}
    assert decided == {r[S.SAMPLE_ID]: (bool(r[S.ACCEPTED]), _reason(r)) for r in rows.to_dict("records")}
    # only what the round kept: its accepted shards (a glob works once the round is committed)
    kept = _load(f"{store.round_uri(1)}/shards/accepted-*.tar", tmp_path)
    assert sorted(kept["__key__"]) == sorted(store.read(1)[S.KEY])
    # the seed round, whose meta carried a seed beyond int64, loads too
    assert len(_load(shard_urls(store, store.read(0)), tmp_path)) == 5


def test_datasets_loads_the_training_view(store, tmp_path):
    # round 2 repeats accepted g1-000 of round 1 pixel for pixel (the view keeps the first copy) + a new one
    w = store.begin(2, parent_round=1, adapter_id="a1", config={}, shard_max_samples=3)
    again = [(dict(f, **{S.SAMPLE_ID: "again-" + f[S.SAMPLE_ID]}), p) for f, p in samples("g1", 1)]
    w.write_unit("gen-0000", [*again, *samples("new2", 1)])
    w.commit(w.rows())
    view = store.training_view(2)
    assert len(view) == len(pd_records(store)) - 3 - 1  # minus 3 rejected, minus 1 duplicate
    assert "again-g1-000" not in set(view[S.SAMPLE_ID])

    ds = _load(shard_urls(store, view), tmp_path)
    keep = set(zip(view[S.ROUND], view[S.SAMPLE_ID]))
    ds = ds.filter(lambda j: (j["round"], j["sample_id"]) in keep, input_columns="json")
    assert sorted((j["round"], j["sample_id"]) for j in ds["json"]) == sorted(keep)
    assert all(j["accepted"] for j in ds["json"])


def test_hf_features_keep_panels_some_samples_lack(tmp_path):
    st = RoundStore(str(tmp_path / "store"))
    _seed_round(st)
    _candidate_round(st, trust=True)
    rows = st.read(1, "all")
    ds = _load(shard_urls(st, rows), tmp_path, features=hf_features(rows))
    masks = {j["sample_id"]: m is not None for j, m in zip(ds["json"], ds["trust_logo.png"])}
    assert masks == {r[S.SAMPLE_ID]: "trust_logo" in list(r[S.PANELS]) for r in rows.to_dict("records")}
    assert sum(masks.values()) == 4


def test_webdataset_yields_only_accepted_samples(store):
    urls = shard_urls(store, store.read(1, "all"))
    kept = wds.WebDataset(urls, shardshuffle=False).decode("pil").select(lambda s: s["json"]["accepted"])
    got = {s["__key__"]: s for s in kept}
    assert sorted(got) == sorted(store.read(1)[S.KEY])
    assert all(s["composite.png"].size == (16, 16) and s["json"]["reason"] == "" for s in got.values())


def test_commit_checks_unit_members_and_a_retry_clears_the_failed_attempts_shards(tmp_path):
    store = RoundStore(str(tmp_path / "store"))
    w = store.begin(0, parent_round=None, adapter_id=None, config={}, shard_max_samples=1)
    rows = w.write_unit("u0", samples("a", 4, accepted=lambda i: i != 2))
    last = tmp_path / "store" / rows[S.SHARD].iloc[-1]
    good = last.read_bytes()
    bad = bytearray(good)
    bad[512 + 40] ^= 0xFF  # inside the first member's data
    last.write_bytes(bytes(bad))
    with pytest.raises(CorruptShardError, match="does not match"):
        w.commit(w.rows())
    assert store.committed_rounds() == []
    shards = tmp_path / "store/rounds/round-0000/shards"
    # the failed re-pack had closed one accepted shard (a-000, one sample per shard) before the damage
    assert [p.name.split("-")[0] for p in shards.iterdir()] == ["accepted"]
    last.write_bytes(good)  # the cause is gone: the same writer commits on retry
    w.commit(w.rows())
    committed = store.read(0, "all")
    assert sorted(p.name for p in shards.iterdir()) == sorted(committed[S.SHARD].str.rsplit("/", n=1).str[1])
    assert store.verify() == [] and len(list(store.load_panels(committed))) == 4
    assert not (tmp_path / "store/rounds/round-0000/_work/shards").exists()


def test_rgba_mattes_are_shard_members_datasets_reads_and_older_rounds_still_read(tmp_path):
    """Schema version 2: samples carry rgba_<layer> (tasks/stages/panels.encode); version-1 rounds lack them."""
    from layerloop.models.synthetic import make_split
    from layerloop.tasks.stages.panels import decode, decode_rgba, encode

    st = RoundStore(str(tmp_path / "store"))
    _seed_round(st)  # written without mattes, as every round before version 2
    w = st.begin(1, parent_round=0, adapter_id="a0", config={}, shard_max_samples=3)
    w.write_unit("gen-0000", [({S.SAMPLE_ID: sid, S.SOURCE: "generated", S.ACCEPTED: True}, encode(t))
                              for sid, t, _ in make_split("pool", 4, 32, 0)])
    w.commit(w.rows())
    rows = st.read(1)
    assert all(list(p) == ["composite", "logo", "object", "rgba_logo"] for p in rows[S.PANELS])
    for _, panels in st.load_panels(rows):  # verified against the manifest's sha256 like every panel
        assert set(decode(panels)) == {"composite", "logo", "object"} and decode_rgba(panels)["logo"].mode == "RGBA"
    ds = _load(shard_urls(st, rows), tmp_path)
    assert ds[0]["rgba_logo.png"].mode == "RGBA" and ds[0]["logo.png"].size == (32, 32)
    old = _load(shard_urls(st, st.read(0)), tmp_path)  # the version-1 round loads as it did
    assert "rgba_logo.png" not in old.column_names and len(old) == 5
    assert all(decode_rgba(p) == {} for _, p in st.load_panels(st.read(0)))


def test_a_manifest_from_a_newer_layerloop_is_refused_and_an_older_one_read(tmp_path):
    import pyarrow.parquet as pq

    from layerloop.storage.errors import SchemaError

    st = RoundStore(str(tmp_path / "store"))
    _seed_round(st)
    path = f"{st.round_dir(0)}/manifest.parquet"
    table = pq.read_table(path)
    assert table.schema.metadata[S.SCHEMA_METADATA_KEY] == str(S.SCHEMA_VERSION).encode()
    for version, readable in ((b"1", True), (b"99", False)):
        meta = {**table.schema.metadata, S.SCHEMA_METADATA_KEY: version}
        pq.write_table(table.replace_schema_metadata(meta), path)
        if readable:
            assert len(st.read(0)) == 5 and st.read_table(0).num_rows == 5
        else:
            with pytest.raises(SchemaError, match="schema version 99; this layerloop reads up to 2"):
                st.read(0)

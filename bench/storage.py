"""Benchmark of the round store's data plane; prints numbers and ratios (never asserts on time).

  python bench/storage.py [--samples 200] [--size 256] [--rows 1000000]

1. shard write: encode PNG panels + RoundWriter.write_unit (sha256, temp->rename, fsync, part table)
   + commit (which re-packs the unit shards into accepted/rejected shards with the decision in each
   sidecar), as a ratio to a bare encode + tarfile loop on the same samples (goal >= 0.8), and the
   commit's share of it;
2. load of a 1M-row manifest (goal <= 1 s), as a pyarrow table and as the DataFrame RoundStore.read returns;
3. read + verify throughput of RoundStore.load_panels (every member re-hashed) and RoundStore.verify.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _images(n: int, size: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for i in range(n):
        base = ((xx * (i % 7 + 1) + yy * 3) % 256).astype(np.uint8)
        noise = rng.integers(0, 24, (size, size), dtype=np.uint8)
        arrs = [np.stack([base, base + noise, base[::-1]], -1) for _ in range(3)]  # uint8 wraps around
        out.append({p: Image.fromarray(a, "RGB") for p, a in zip(("composite", "logo", "object"), arrs)})
    return out


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def bare_loop(images, path: str) -> float:
    """What a hand-written exporter would do: encode, tar, nothing else."""
    start = time.perf_counter()
    with tarfile.open(path, "w") as tar:
        for i, trip in enumerate(images):
            members = {f"{p}.png": _png(im) for p, im in trip.items()}
            members["json"] = json.dumps({"sample_id": f"s{i:06d}"}).encode()
            for ext, data in members.items():
                info = tarfile.TarInfo(f"s{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return time.perf_counter() - start


def store_write(images, root: str, unit_size: int = 64):
    from layerloop.storage import schema as S
    from layerloop.storage.rounds import RoundStore

    store = RoundStore(root)
    start = time.perf_counter()
    w = store.begin(0, parent_round=None, adapter_id=None, config={})
    for u in range(0, len(images), unit_size):
        batch = images[u:u + unit_size]
        # a third rejected, as a round of candidates has: both shard kinds get written at commit
        w.write_unit(f"u{u // unit_size:04d}", (({S.SAMPLE_ID: f"s{u + i:06d}", S.SOURCE: "seed",
                                                  S.ACCEPTED: (u + i) % 3 != 0},
                                                 {p: _png(im) for p, im in trip.items()}) for i, trip in enumerate(batch)))
    before_commit = time.perf_counter()
    w.commit(w.rows())
    end = time.perf_counter()
    return end - start, end - before_commit, store


def big_manifest(rows: int, path: str) -> float:
    """Write a realistic-width manifest of `rows` rows; returns its size in MB."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from layerloop.storage import schema as S

    rng = np.random.default_rng(0)

    def hexes(n: int) -> pa.Array:
        raw = rng.integers(0, 2**63, (n, 4), dtype=np.int64).astype(">i8").tobytes()
        return pa.array([raw[i * 32:(i + 1) * 32].hex() for i in range(n)])

    n = rows
    offsets = pa.array(np.arange(0, 3 * n + 1, 3, dtype=np.int32))
    cols = {c: pa.nulls(n, f.type) for c, f in zip(S.MANIFEST_SCHEMA.names, S.MANIFEST_SCHEMA)}
    cols.update({
        S.SAMPLE_ID: pa.array([f"r0001-u{i // 64:05d}-{i:07d}" for i in range(n)]),
        S.ROUND: pa.array(np.ones(n, np.int32)), S.SOURCE: pa.array(["generated"] * n),
        S.SPLIT: pa.array(["train"] * n), S.PROMPT: pa.array([f"a mug with logo {i % 97}" for i in range(n)]),
        S.UNIT: pa.array([f"u{i // 64:05d}" for i in range(n)]),
        S.SHARD: pa.array([f"rounds/round-0001/shards/u{i // 64:05d}-abc-0000.tar" for i in range(n)]),
        S.KEY: pa.array([f"k{i:07d}" for i in range(n)]),
        S.PANELS: pa.ListArray.from_arrays(offsets, pa.array(["composite", "logo", "object"] * n)),
        S.SHA256: pa.ListArray.from_arrays(offsets, hexes(3 * n)),
        S.SIZES: pa.ListArray.from_arrays(offsets, pa.array(rng.integers(1000, 400000, 3 * n))),
        S.META_SHA256: hexes(n), S.CONTENT_HASH: hexes(n),
        S.WIDTH: pa.array(np.full(n, 512, np.int32)), S.HEIGHT: pa.array(np.full(n, 512, np.int32)),
        S.CONVERSIONS: pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.string())),
        S.SCORE_OVERALL: pa.array(rng.random(n)), S.ACCEPTED: pa.array(rng.random(n) > 0.5),
        S.CREATED_AT: pa.array(np.full(n, 1_700_000_000_000_000, "datetime64[us]")).cast(pa.timestamp("us", tz="UTC")),
        S.EXTRA_JSON: pa.array(["{}"] * n),
    })
    table = pa.Table.from_arrays([cols[c].cast(f.type) for c, f in zip(S.MANIFEST_SCHEMA.names, S.MANIFEST_SCHEMA)],
                                 schema=S.MANIFEST_SCHEMA)
    pq.write_table(table, path, compression="zstd")
    return os.path.getsize(path) / 2**20


def best_of(k: int, fn) -> float:
    times = []
    for _ in range(k):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    images = _images(args.samples, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        bare = min(bare_loop(images, f"{tmp}/bare{i}.tar") for i in range(2))
        ours, commit, store = min((store_write(images, f"{tmp}/store{i}") for i in range(2)), key=lambda t: t[0])
        mb = sum(os.path.getsize(f"{store.root}/{s}") for s in set(store.read(0, "all")["shard"])) / 2**20
        print(f"shard write  {args.samples} triplets of {args.size}px ({mb:.1f} MB of shards)")
        print(f"  bare encode+tar : {bare:6.2f} s  {args.samples / bare:7.1f} samples/s")
        print(f"  RoundWriter     : {ours:6.2f} s  {args.samples / ours:7.1f} samples/s")
        print(f"  throughput ratio (store / bare) = {bare / ours:.2f}   goal >= 0.8")
        print(f"  of which commit : {commit:6.2f} s  ({100 * commit / ours:.0f} % of the store's time: "
              f"re-pack into accepted/rejected shards, {mb / commit:.0f} MB/s)")

        rows = store.read(0, "all")
        t_load = best_of(2, lambda: sum(1 for _ in store.load_panels(rows)))
        t_verify = best_of(2, store.verify)
        print(f"read+verify  load_panels {args.samples / t_load:7.0f} samples/s {mb / t_load:7.1f} MB/s;  "
              f"verify {mb / t_verify:7.1f} MB/s")

        manifest_bench(store, args.rows)


def manifest_bench(store, rows: int) -> None:
    """Commit-shaped 1M-row manifest written by the store's own Parquet writer, then loaded back."""
    from layerloop.storage.fsutil import table_bytes, write_bytes

    import pyarrow.parquet as pq

    d = store.round_dir(0)
    path = f"{d}/manifest.parquet"
    big_manifest(rows, path)
    write_bytes(store.fs, path, table_bytes(pq.read_table(path)))  # re-encode with the store's settings
    size = os.path.getsize(path) / 2**20
    t_arrow = best_of(3, lambda: store.read_table(0, "accepted"))
    light = ["sample_id", "round", "source", "accepted", "score_overall", "shard", "key"]
    t_cols = best_of(3, lambda: store.read_table(0, "accepted", columns=light))
    t_pandas = best_of(2, lambda: store.read(0, "accepted"))
    print(f"manifest     {rows} rows, {size:.0f} MB parquet (store writer settings)")
    print(f"  RoundStore.read_table (pyarrow, all columns) : {t_arrow:5.2f} s   goal <= 1 s")
    print(f"  RoundStore.read_table (7 columns)            : {t_cols:5.2f} s")
    print(f"  RoundStore.read (pandas DataFrame)           : {t_pandas:5.2f} s")


if __name__ == "__main__":
    main()

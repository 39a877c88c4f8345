"""The round store: immutable, versioned rounds of samples (Parquet manifests + image shards) over fsspec.

Layout under the store root (local path or fsspec URL):

    rounds/round-NNNN/shards/{accepted,rejected}-*.tar  the committed round's WebDataset shards: written at
                                           commit (temp name -> rename, or whole PUT), each sample's
                                           sidecar JSON carrying the decision
    rounds/round-NNNN/_work/shards/U-*.tar  a unit's shards as written before judging (removed at commit)
    rounds/round-NNNN/_work/units/U.parquet  a unit's rows: written after its shards, marks it done
    rounds/round-NNNN/_work/parts/S/U.parquet  stage results (scores, cycle errors) per unit
    rounds/round-NNNN/_work/claims/G.json  the commit claim, generation G: put-if-absent, with a lease
                                           (storage/lease.py: who may commit, when a silent claim ends)
    _locks/run.json                        the store's run lock: one run at a time (storage/locks.py)
    rounds/round-NNNN/manifest.parquet, rejected.parquet, config.json, round.json
    rounds/round-NNNN/COMMITTED            written last, put-if-absent; no COMMITTED = no round
    pool/batch-NNNN/...                    unlabeled composites, same machinery
    adapters/round-NNNN/                   LoRA weights + model card + metrics (written by training)
    quarantine/<item>-<id>/                rejected inputs with reason.json

Readers only ever look at directories that hold COMMITTED, so a crashed writer's work area is
invisible; rerunning the same round skips every unit whose part table exists, and `gc` removes the
debris (temp files, shards no finished unit or manifest references). A full disk while writing a unit,
a part or the commit raises StoreFullError after removing what that step wrote, so freeing space and
rerunning resumes. Every member read back is checked against its sha256; a mismatch names the round,
the shard and the member.

Units are written before anything is judged, so their shards cannot say whether a sample was kept.
The commit, holding the round's claim, re-packs them once into `shards/accepted-*` and
`shards/rejected-*` with the final sidecar (member bytes copied after their sha256 is checked, PNGs
never re-encoded), then writes the manifests that point at those shards, then COMMITTED. A crash in
between leaves an uncommitted round whose units are intact; the next commit starts the re-pack over.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import socket
import uuid
from typing import Any, Callable, Iterable, Iterator

from . import schema as S
from .errors import CommitConflictError, CorruptShardError, RoundExistsError, RoundNotFoundError
from .fsutil import (TMP_PREFIX, age_s, is_local, is_unreachable, open_store_fs, put_if_absent, read_json,
                     read_table, store_step, table_bytes, write_bytes, write_json)
from .lease import CLAIMS, DEFAULT_LEASE_S, CommitClaim, is_takeable, newest_claim
from .locks import RUN_LOCK, RunLock
from .shards import ShardReader, ShardWriter, sha256_hex, verify_group

COMMITTED = "COMMITTED"
MANIFEST = "manifest.parquet"
REJECTED = "rejected.parquet"
CONFIG = "config.json"
ROUND_JSON = "round.json"
WORK = "_work"
SHARDS = "shards"
ROUNDS_AREA = ("rounds", "round")
POOL_AREA = ("pool", "batch")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
_ARTIFACT = re.compile(r"^(report\.(html|json|md)|[A-Za-z0-9_-]{1,100}\.(png|svg))$")
_WHICH = ("accepted", "rejected", "all")
_AREA_DIR = re.compile(r"(?:^|/)(rounds/round|pool/batch)-(\d{4})/")


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{kind} {name!r} must be 1-100 chars of [A-Za-z0-9_-]")
    return name


def _check_round(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 9999:
        raise ValueError(f"round must be an integer in 0..9999, got {n!r}")
    return n


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG header, without decoding; ValueError if not a PNG."""
    if data[:8] != PNG_MAGIC or len(data) < 24 or data[12:16] != b"IHDR":
        raise ValueError("panel bytes are not a PNG (the store holds PNG panels only)")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _to_frame(table: Any):
    return table.to_pandas()


def _located(shard: str, problem: Any) -> str:
    """`round 3: <shard>: member k.logo.png ...`: which round (or pool batch) a shard problem is in."""
    m = _AREA_DIR.search(shard)
    where = (f"{'round' if m.group(1).startswith('rounds') else 'pool batch'} {int(m.group(2))}" if m
             else "store")
    text = str(problem)
    return f"{where}: {text}" if shard in text else f"{where}: {shard}: {text}"


class RoundStore:
    """Entry point of the store; see the module docstring for the layout and protocol."""

    def __init__(self, uri: str, storage_options: dict | None = None):
        if not isinstance(uri, str) or not uri.strip():
            raise ValueError("store uri must be a local path or fsspec URL, e.g. ./layerloop-store")
        self.uri = uri
        self.fs, self.root = open_store_fs(uri, storage_options)

    # -- paths ---------------------------------------------------------------------------
    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def _url(self, path: str) -> str:
        return path if is_local(self.fs) else self.fs.unstrip_protocol(path)

    def _area_dir(self, area: tuple[str, str], n: int) -> str:
        return self._path(f"{area[0]}/{area[1]}-{_check_round(n):04d}")

    def round_dir(self, round: int) -> str:
        return self._area_dir(ROUNDS_AREA, round)

    def url(self, rel: str) -> str:
        """Full local path or fsspec URL of a store-relative path, e.g. a manifest row's `shard`."""
        return self._url(self._path(rel))

    def round_uri(self, round: int) -> str:
        return self._url(self.round_dir(round))

    def adapter_uri(self, round: int) -> str:
        return self._url(self._path(f"adapters/round-{_check_round(round):04d}"))

    def control_adapter_uri(self, round: int) -> str:
        """The matched-compute control of adapter `round`: the same training on the labeled seeds alone."""
        return self._url(self._path(f"adapters/control-{_check_round(round):04d}"))

    def run_lock(self) -> RunLock:
        """The store's run lock (storage/locks.py): `store.run_lock().acquire(wait_s=...)`, then release()."""
        path = self._path(RUN_LOCK)
        return RunLock(self.fs, path, self._url(path), self._url(self.root))

    # -- writing -------------------------------------------------------------------------
    def init(self) -> str:
        """Create the store's top-level folders (idempotent); returns the root."""
        for sub in ("rounds", "pool", "adapters", "quarantine"):
            self.fs.makedirs(self._path(sub), exist_ok=True)
        return self._url(self.root)

    def begin(self, round: int, *, parent_round: int | None, adapter_id: str | None, config: dict,
              shard_max_bytes: int = 64 * 2**20, shard_max_samples: int = 1000,
              claim_lease_s: float = DEFAULT_LEASE_S) -> "RoundWriter":
        """Open (or resume) the work area of an uncommitted round; RoundExistsError if it is committed."""
        d = self.round_dir(round)
        if self.fs.exists(f"{d}/{COMMITTED}"):
            raise RoundExistsError(f"round {round} is already committed at {self._url(d)}; rounds are immutable")
        if parent_round is not None and parent_round not in self.committed_rounds():
            raise ValueError(f"parent_round {parent_round} is not a committed round")
        json.dumps(config)  # a config that cannot be saved as JSON must fail now, not at commit
        return RoundWriter(self, d, round, parent_round=parent_round, adapter_id=adapter_id, config=config,
                           shard_max_bytes=shard_max_bytes, shard_max_samples=shard_max_samples,
                           claim_lease_s=claim_lease_s)

    def begin_pool(self, config: dict, **kw: Any) -> "RoundWriter":
        """A writer for the next batch of the unlabeled pool."""
        done = self._committed(POOL_AREA)
        n = (max(done) + 1) if done else 0
        return RoundWriter(self, self._area_dir(POOL_AREA, n), n, parent_round=None, adapter_id=None,
                           config=config, **kw)

    def write_artifact(self, round: int, name: str, data: bytes) -> str:
        """Write a derived report file (report.html/json/md, *.png, *.svg) into a committed round."""
        if not _ARTIFACT.match(name):
            raise ValueError(f"artifact name {name!r} is not allowed: use report.html/json/md or <name>.png/.svg")
        d = self._committed_dir(round)
        write_bytes(self.fs, f"{d}/{name}", data)
        return self._url(f"{d}/{name}")

    def quarantine(self, item: str, files: dict[str, bytes], reason: str) -> str:
        """Keep a bad input with its reason; returns the quarantine folder."""
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", str(item))[:80] or "item"
        d = self._path(f"quarantine/{safe}-{uuid.uuid4().hex[:8]}")
        for i, (name, data) in enumerate(files.items()):
            fname = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(str(name)))[:100].lstrip(".") or f"file{i}"
            write_bytes(self.fs, f"{d}/{i:02d}-{fname}", data)
        write_json(self.fs, f"{d}/reason.json", {"item": str(item), "reason": reason, "at": _now().isoformat(),
                                                 "files": [str(n) for n in files]})
        return self._url(d)

    def quarantined(self) -> list[dict]:
        """Every quarantine entry's reason.json (item, reason, at, files)."""
        return [read_json(self.fs, p) for p in sorted(self.fs.glob(self._path("quarantine/*/reason.json")))]

    # -- reading -------------------------------------------------------------------------
    def _committed(self, area: tuple[str, str]) -> list[int]:
        pat = self._path(f"{area[0]}/{area[1]}-*/{COMMITTED}")
        out = []
        for p in self.fs.glob(pat):
            m = re.search(rf"{area[1]}-(\d{{4}})/{COMMITTED}$", p)
            if m:
                out.append(int(m.group(1)))
        return sorted(out)

    def committed_rounds(self) -> list[int]:
        return self._committed(ROUNDS_AREA)

    def latest_round(self) -> int | None:
        rounds = self.committed_rounds()
        return rounds[-1] if rounds else None

    def _committed_dir(self, round: int, area: tuple[str, str] = ROUNDS_AREA) -> str:
        d = self._area_dir(area, round)
        if not self.fs.exists(f"{d}/{COMMITTED}"):
            raise RoundNotFoundError(f"{area[1]} {round} is not committed in {self.uri}")
        return d

    def _read_area(self, d: str, which: str):
        import pandas as pd

        if which not in _WHICH:
            raise ValueError(f"which must be one of {_WHICH}, got {which!r}")
        names = {"accepted": [MANIFEST], "rejected": [REJECTED], "all": [MANIFEST, REJECTED]}[which]
        frames = [_to_frame(S.check_version(read_table(self.fs, f"{d}/{n}"), self._url(f"{d}/{n}"))) for n in names]
        return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)

    def read_table(self, round: int, which: str = "accepted", columns: list[str] | None = None):
        """A committed round's rows as a pyarrow Table (the fast path for million-row manifests)."""
        import pyarrow as pa

        if which not in _WHICH:
            raise ValueError(f"which must be one of {_WHICH}, got {which!r}")
        d = self._committed_dir(round)
        names = {"accepted": [MANIFEST], "rejected": [REJECTED], "all": [MANIFEST, REJECTED]}[which]
        tables = [S.check_version(read_table(self.fs, f"{d}/{n}", columns=columns), self._url(f"{d}/{n}"))
                  for n in names]
        return pa.concat_tables(tables)

    def read(self, round: int, which: str = "accepted"):
        """A committed round's rows as a DataFrame: accepted (manifest), rejected, or all."""
        return self._read_area(self._committed_dir(round), which)

    def read_pool(self):
        """All committed pool batches (unlabeled composites) as one DataFrame."""
        import pandas as pd

        frames = [self._read_area(self._area_dir(POOL_AREA, n), "accepted") for n in self._committed(POOL_AREA)]
        return pd.concat(frames, ignore_index=True) if frames else _to_frame(S.empty_table())

    def training_view(self, up_to: int, decide: Callable | None = None):
        """Accepted rows of every committed round <= up_to, first occurrence per CONTENT_HASH kept.

        Rows of the labeled validation split are never part of it. `decide`, when given, re-decides each
        round's rows (accepted and rejected alike, a DataFrame in, one out) before the accepted ones are
        kept: the human review decisions recorded after the round was committed (tasks/stages/review.py).
        """
        import pandas as pd

        rounds = [r for r in self.committed_rounds() if r <= _check_round(up_to)]
        if not rounds:
            return _to_frame(S.empty_table())
        if decide is None:
            frames = [self.read(r) for r in rounds]
        else:
            frames = [df[df[S.ACCEPTED].astype(bool)] for df in (decide(self.read(r, "all")) for r in rounds)]
        df = pd.concat(frames, ignore_index=True)
        df = df[df[S.SPLIT] != "validation"].sort_values([S.ROUND], kind="stable")
        return df.drop_duplicates(S.CONTENT_HASH, keep="first").reset_index(drop=True)

    def validation_view(self):
        """The labeled validation split: round 0's accepted rows held out from training (empty when none)."""
        try:
            rows = self.read(0)
        except RoundNotFoundError:
            return _to_frame(S.empty_table())
        return rows[rows[S.SPLIT] == "validation"].reset_index(drop=True)

    def round_info(self, round: int) -> dict:
        """round.json of a committed round (lineage, counts, info) plus its config."""
        d = self._committed_dir(round)
        info = read_json(self.fs, f"{d}/{ROUND_JSON}")
        info["config"] = read_json(self.fs, f"{d}/{CONFIG}")
        info["uri"] = self._url(d)
        return info

    def load_panels(self, rows) -> Iterator[tuple[dict, dict[str, bytes]]]:
        """Yield (row, {panel: png bytes}) for the given rows, every member checked against its sha256.

        Rows are grouped by shard (each shard is streamed once); within a shard, tar order.
        """
        by_shard: dict[str, dict[str, dict]] = {}
        for row in rows.to_dict("records"):
            by_shard.setdefault(row[S.SHARD], {})[row[S.KEY]] = row
        for shard, wanted in by_shard.items():
            expected = {k: _expected(r, with_meta=False) for k, r in wanted.items()}
            try:
                with ShardReader(self.fs, self._path(shard)) as reader:
                    for key, group in reader.verified(expected):
                        yield wanted[key], {ext[:-len(".png")]: data for ext, data in group.items()}
            except CorruptShardError as exc:
                raise CorruptShardError(
                    f"{_located(shard, exc)}. The shard changed on disk after it was written, so it is not "
                    "used: restore it from a backup; `layerloop verify` lists every damaged member") from exc

    # -- maintenance ---------------------------------------------------------------------
    def verify(self, round: int | None = None) -> list[str]:
        """Re-hash every member of committed rounds (one, or all and the pool); problems found, [] if clean."""
        if round is None:
            dirs = [self.round_dir(r) for r in self.committed_rounds()]
            dirs += [self._area_dir(POOL_AREA, n) for n in self._committed(POOL_AREA)]
        else:
            dirs = [self._committed_dir(round)]
        problems: list[str] = []
        for d in dirs:
            problems += self._verify_dir(d)
        return problems

    def _verify_dir(self, d: str) -> list[str]:
        problems = _verify_commit_record(self.fs, d)
        if problems:
            return problems
        rows = self._read_area(d, "all")
        by_shard: dict[str, dict[str, dict]] = {}
        for row in rows.to_dict("records"):
            by_shard.setdefault(row[S.SHARD], {})[row[S.KEY]] = _expected(row, with_meta=True)
        for shard, expected in by_shard.items():
            problems += self._verify_shard(shard, expected)
        return problems

    def _verify_shard(self, shard: str, expected: dict) -> list[str]:
        """Every damaged member of one shard (a broken tar stream ends the list)."""
        path, pending, problems = self._path(shard), dict(expected), []
        try:
            with ShardReader(self.fs, path) as reader:
                for key, group in reader.samples():
                    want = pending.pop(key, None)
                    try:
                        if want is not None:
                            verify_group(path, key, group, want)
                    except CorruptShardError as exc:
                        problems.append(_located(shard, exc))
        except (CorruptShardError, ValueError) as exc:
            return problems + [_located(shard, exc)]
        if pending:
            problems.append(_located(shard, f"lacks key(s) {sorted(pending)[:5]}"))
        return problems

    def gc(self, *, grace_s: float = 0.0) -> list[str]:
        """Remove orphans: temp files, shards no finished unit/manifest references, committed work areas,
        and commit claims whose lease ran out (storage/lease.py). Files younger than `grace_s` are kept, so
        a positive grace makes gc safe beside a running writer; with 0, run it when no writer is active."""
        removed: list[str] = []
        for area in (ROUNDS_AREA, POOL_AREA):
            for d in sorted(self.fs.glob(self._path(f"{area[0]}/{area[1]}-*"))):
                removed += _gc_dir(self, d, grace_s)
        return removed


def _expected(row: dict, *, with_meta: bool) -> dict[str, tuple[str, int]]:
    want = {f"{p}.png": (h, int(n)) for p, h, n in zip(row[S.PANELS], row[S.SHA256], row[S.SIZES])}
    if with_meta:
        want["json"] = (row[S.META_SHA256], None)
    return want


def _verify_commit_record(fs: Any, d: str) -> list[str]:
    record = read_json(fs, f"{d}/{COMMITTED}")
    problems = []
    for name, digest in record.get("files", {}).items():
        if not fs.exists(f"{d}/{name}"):
            problems.append(f"{d}/{name}: missing")
        elif sha256_hex(fs.cat_file(f"{d}/{name}")) != digest:
            problems.append(f"{d}/{name}: does not match the sha256 recorded in {COMMITTED}")
    return problems


class RoundWriter:
    """The resumable work area of one uncommitted round (or pool batch); see RoundStore.begin."""

    def __init__(self, store: RoundStore, directory: str, round: int, *, parent_round: int | None,
                 adapter_id: str | None, config: dict, shard_max_bytes: int = 64 * 2**20,
                 shard_max_samples: int = 1000, claim_lease_s: float = DEFAULT_LEASE_S):
        self.store, self.fs, self.dir, self.round = store, store.fs, directory, round
        self.parent_round, self.adapter_id, self.config = parent_round, adapter_id, config
        self.shard_max_bytes, self.shard_max_samples = shard_max_bytes, shard_max_samples
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        self.started_at = _now()
        self.claim = CommitClaim(self.fs, f"{directory}/{WORK}", f"round {round}", writer=self.token,
                                 lease_s=claim_lease_s)

    @property
    def uri(self) -> str:
        """Where this round (or pool batch) lives, as a local path or fsspec URL."""
        return self.store._url(self.dir)

    def _rel(self, path: str) -> str:
        return path[len(self.store.root) + 1:]

    def _unit_path(self, unit: str) -> str:
        return f"{self.dir}/{WORK}/units/{_check_name('unit', unit)}.parquet"

    def _part_path(self, stage: str, unit: str) -> str:
        return f"{self.dir}/{WORK}/parts/{_check_name('stage', stage)}/{_check_name('unit', unit)}.parquet"

    def unit_done(self, unit: str) -> bool:
        return self.fs.exists(self._unit_path(unit))

    def write_unit(self, unit: str, samples: Iterable[tuple[dict, dict[str, bytes]]]):
        """Write one unit's samples into shards, then its part table (the completion marker).

        A finished unit is not rewritten: its stored rows are returned and `samples` is not consumed.
        """
        if self.unit_done(unit):
            return _to_frame(read_table(self.fs, self._unit_path(unit)))
        rows: list[dict] = []
        writer = self._shard_writer(f"{WORK}/{SHARDS}", unit)
        # an S3 shard is one whole PUT: one that found no server left nothing; earlier ones are orphans for gc
        with store_step(self.store.uri, f"writing unit {unit} of {self._what()}",
                        cleanup=lambda: self._drop_shards(writer)):
            with writer:
                for fields, panels in samples:
                    row = self._row(unit, fields, panels)
                    rec = writer.write(row[S.KEY], {**{f"{p}.png": b for p, b in panels.items()},
                                                    "json": S.sidecar_bytes(row)})
                    row[S.META_SHA256] = rec.sha256["json"]
                    row[S.SHARD] = self._rel(f"{writer.directory}/{rec.shard}")
                    rows.append(row)
            table = S.validate_table(_rows_table(rows))
            write_bytes(self.fs, self._unit_path(unit), table_bytes(table))
        return _to_frame(table)

    def _shard_writer(self, sub: str, prefix: str) -> ShardWriter:
        return ShardWriter(self.fs, f"{self.dir}/{sub}", prefix=prefix, max_bytes=self.shard_max_bytes,
                           max_samples=self.shard_max_samples)

    def _what(self) -> str:
        return f"{'round' if self._rel(self.dir).startswith('rounds/') else 'pool batch'} {self.round}"

    def _drop_shards(self, writer: ShardWriter) -> None:
        """Remove an unfinished unit's closed shards: no unit table names them, and they hold space."""
        for name in writer.closed_shards:
            path = f"{writer.directory}/{name}"
            if self.fs.exists(path):
                self.fs.rm(path)

    def _row(self, unit: str, fields: dict, panels: dict[str, bytes]) -> dict:
        if not panels:
            raise ValueError(f"sample {fields.get(S.SAMPLE_ID)!r} has no panels")
        sizes = {png_size(b) for b in panels.values()}
        if len(sizes) != 1:
            raise ValueError(f"sample {fields.get(S.SAMPLE_ID)!r} has panels of different sizes {sorted(sizes)}")
        (w, h), = sizes
        row = S.empty_row(**{S.ROUND: self.round, S.PARENT_ROUND: self.parent_round,
                             S.ADAPTER_ID: self.adapter_id, **fields})
        sid = _check_name("sample_id", row[S.SAMPLE_ID])
        names = list(panels)
        digests = [sha256_hex(b) for b in panels.values()]
        row.update({S.UNIT: unit, S.KEY: sid, S.PANELS: names, S.SHA256: digests, S.WIDTH: w, S.HEIGHT: h,
                    S.SIZES: [len(b) for b in panels.values()], S.CONTENT_HASH: S.content_hash(names, digests)})
        return row

    def put_part(self, stage: str, unit: str, df) -> None:
        """Store a stage's results for a unit (any columns; JSON-safe types)."""
        import pyarrow as pa

        data = table_bytes(pa.Table.from_pandas(df, preserve_index=False))
        with store_step(self.store.uri, f"writing the {stage} results of unit {unit} of {self._what()}"):
            write_bytes(self.fs, self._part_path(stage, unit), data)

    def get_part(self, stage: str, unit: str):
        path = self._part_path(stage, unit)
        return _to_frame(read_table(self.fs, path)) if self.fs.exists(path) else None

    def units(self) -> list[str]:
        paths = self.fs.glob(f"{self.dir}/{WORK}/units/*.parquet")
        return sorted(p.rsplit("/", 1)[1][: -len(".parquet")] for p in paths)

    def rows(self):
        """All finished units' rows, in unit-name order."""
        import pandas as pd

        frames = [_to_frame(read_table(self.fs, self._unit_path(u))) for u in self.units()]
        return pd.concat(frames, ignore_index=True) if frames else _to_frame(S.empty_table())

    def unit_rows(self, unit: str):
        """The rows of one finished unit (empty when it has not finished)."""
        if not self.unit_done(unit):
            return _to_frame(S.empty_table())
        return _to_frame(read_table(self.fs, self._unit_path(unit)))

    def load_panels(self, rows) -> Iterator[tuple[dict, dict[str, bytes]]]:
        return self.store.load_panels(rows)

    def commit(self, rows, info: dict | None = None) -> dict:
        """Publish the round: manifest/rejected/config/round.json, then COMMITTED (put-if-absent).

        CommitConflictError when another writer holds the claim or already committed this round.
        """
        import pandas as pd

        self._refuse_if_committed()  # first: a committed round's unit shards are gone, which is no input error
        rows = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
        table = S.validate_table(rows) if len(rows) else S.empty_table()
        self._check_rows(table)
        self._claim_files: dict = {}  # what this commit wrote so far: a full disk removes it again
        # The store gone mid-commit: what was written stays unpublished (no COMMITTED) and the next commit
        # rewrites it; the claim cannot be removed, so it is given up (abandon) for this process's retry.
        with store_step(self.store.uri, f"committing {self._what()}", cleanup=self._unclaim,
                        on_unreachable=self.claim.abandon):
            self.claim.acquire()
            table = self._repack(table)
            accepted = table.filter(table.column(S.ACCEPTED))
            rejected = table.filter(_invert(table.column(S.ACCEPTED)))
            files = self._claim_files
            files.update({MANIFEST: table_bytes(accepted), REJECTED: table_bytes(rejected),
                          CONFIG: json.dumps(self.config, indent=2, sort_keys=True, default=str).encode()})
            record = self._round_record(accepted.num_rows, rejected.num_rows, info)
            files[ROUND_JSON] = json.dumps(record, indent=2, sort_keys=True, default=str).encode()
            self.claim.check()  # a writer that stalled past its lease publishes nothing
            for name, data in files.items():
                write_bytes(self.fs, f"{self.dir}/{name}", data)
            marker = {"writer": self.token, "committed_at": record["committed_at"],
                      "files": {n: sha256_hex(b) for n, b in files.items()}}
            self.claim.check()
            if not put_if_absent(self.fs, f"{self.dir}/{COMMITTED}", json.dumps(marker, indent=2).encode()):
                raise CommitConflictError(f"round {self.round} was committed by another writer first")
        self._drop_unit_shards()
        return record

    def _unclaim(self) -> None:
        """Undo a commit of ours that stopped before COMMITTED: its files and re-packed shards (space), then
        its claim (so a retry claims anew). Without our claim the files may be another writer's: left alone."""
        if not self.claim.holds():
            return
        for name in self._claim_files:
            if self.fs.exists(f"{self.dir}/{name}"):
                self.fs.rm(f"{self.dir}/{name}")
        self._clear_debris()
        self.claim.release()

    def _repack(self, table):
        """Copy every row's members into `shards/{accepted,rejected}-*.tar` with its final sidecar.

        Runs under the claim, before any manifest exists. Members are checked against their sha256 on
        the way (a damaged unit shard fails the commit instead of being published); the rows come back
        pointing at the new shards, with the new sidecar's sha256.
        """
        import pandas as pd

        self._clear_debris()
        df = table.to_pandas()
        moved: dict[str, tuple[str, str]] = {}
        with self._shard_writer(SHARDS, "accepted") as acc, self._shard_writer(SHARDS, "rejected") as rej:
            for row, panels in self.store.load_panels(df):
                self.claim.renew_if_due()
                writer = acc if row[S.ACCEPTED] else rej
                members = {f"{p}.png": panels[p] for p in row[S.PANELS]}
                rec = writer.write(row[S.KEY], {**members, "json": S.sidecar_bytes(row)})
                moved[row[S.SAMPLE_ID]] = (self._rel(f"{writer.directory}/{rec.shard}"), rec.sha256["json"])
        new = pd.DataFrame(moved.values(), index=list(moved), columns=[S.SHARD, S.META_SHA256])
        df[S.SHARD] = df[S.SAMPLE_ID].map(new[S.SHARD])
        df[S.META_SHA256] = df[S.SAMPLE_ID].map(new[S.META_SHA256])
        return S.validate_table(df) if len(df) else table

    def _clear_debris(self) -> None:
        """Remove `shards/` files an earlier, crashed commit of this round left (no unit points at them)."""
        keep = _referenced_shards(self.store, self.dir, committed=False)
        for path in self.fs.glob(f"{self.dir}/{SHARDS}/*"):
            if path not in keep:
                self.fs.rm(path)

    def _drop_unit_shards(self) -> None:
        # The committed shards hold every member now; the unit copies only cost space (gc would take them too).
        # The round is committed by now: a failure here (the store just went away) must not fail the commit.
        try:
            if self.fs.exists(f"{self.dir}/{WORK}/{SHARDS}"):
                self.fs.rm(f"{self.dir}/{WORK}/{SHARDS}", recursive=True)
        except Exception as exc:  # noqa: BLE001 - only I/O and "no answer" are expected here
            if not (isinstance(exc, OSError) or is_unreachable(exc)):
                raise

    def _check_rows(self, table) -> None:
        rounds = set(table.column(S.ROUND).to_pylist())
        if rounds - {self.round}:
            raise ValueError(f"rows belong to round(s) {sorted(rounds)}, not to round {self.round}")
        for shard in set(table.column(S.SHARD).to_pylist()):
            if not self.fs.exists(f"{self.store.root}/{shard}"):
                raise ValueError(f"rows reference shard {shard}, which does not exist (was the unit written?)")

    def _refuse_if_committed(self) -> None:
        committed = f"{self.dir}/{COMMITTED}"
        if self.fs.exists(committed):
            raise CommitConflictError(f"round {self.round} is already committed (by {read_json(self.fs, committed)['writer']})")

    def _round_record(self, n_acc: int, n_rej: int, info: dict | None) -> dict:
        return {"round": self.round, "parent_round": self.parent_round, "adapter_id": self.adapter_id,
                "schema_version": S.SCHEMA_VERSION, "accepted": n_acc, "rejected": n_rej, "total": n_acc + n_rej,
                "selection_rate": (n_acc / (n_acc + n_rej)) if n_acc + n_rej else None,
                "started_at": self.started_at.isoformat(), "committed_at": _now().isoformat(),
                "writer": self.token, "info": info or {}}


def _invert(col):
    import pyarrow.compute as pc

    return pc.invert(col)


def _rows_table(rows: list[dict]):
    import pyarrow as pa

    if not rows:
        return S.empty_table()
    return pa.Table.from_pylist(rows, schema=S.MANIFEST_SCHEMA)


def _referenced_shards(store: RoundStore, d: str, committed: bool) -> set[str]:
    fs = store.fs
    if committed:
        paths = [f"{d}/{MANIFEST}", f"{d}/{REJECTED}"]
    else:
        paths = fs.glob(f"{d}/{WORK}/units/*.parquet")
    out: set[str] = set()
    for p in paths:
        out.update(read_table(fs, p, columns=[S.SHARD]).column(S.SHARD).to_pylist())
    return {f"{store.root}/{s}" for s in out}


def _old_enough(fs: Any, path: str, grace_s: float) -> bool:
    age = age_s(fs, path)
    return age is None or age >= grace_s


def _gc_dir(store: RoundStore, d: str, grace_s: float) -> list[str]:
    fs = store.fs
    committed = fs.exists(f"{d}/{COMMITTED}")
    keep = _referenced_shards(store, d, committed)
    shards = fs.glob(f"{d}/{SHARDS}/*") + fs.glob(f"{d}/{WORK}/{SHARDS}/*")
    doomed = [p for p in shards if p not in keep and _old_enough(fs, p, grace_s)]
    doomed += [p for p in fs.find(d) if p.rsplit("/", 1)[1].startswith(TMP_PREFIX) and _old_enough(fs, p, grace_s)]
    if committed and fs.exists(f"{d}/{WORK}"):
        doomed.append(f"{d}/{WORK}")
    holder = newest_claim(fs, f"{d}/{WORK}")[1]
    if not committed and holder is not None and is_takeable(holder):
        doomed.append(f"{d}/{WORK}/{CLAIMS}")
    removed = []
    for p in dict.fromkeys(doomed):
        if fs.exists(p):
            fs.rm(p, recursive=True)
            removed.append(store._url(p))
    return removed

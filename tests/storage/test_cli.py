"""The data commands through typer's runner: init, ingest-seeds, rounds, verify, gc, and exit code 2."""
from __future__ import annotations

import typer
import yaml
from typer.testing import CliRunner

from layerloop.flows.cli import data as cli_data

from .helpers import triplet, write_item


def _app() -> typer.Typer:
    app = typer.Typer()
    cli_data.register(app)
    return app


def test_init_ingest_show_verify_gc(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = str(tmp_path / "store")
    for i in range(3):
        write_item(tmp_path / "seeds", f"s{i}", triplet(i), meta={"caption": f"thing {i}", "kind": "mug"})
    write_item(tmp_path / "seeds", "broken", {**triplet(9), "logo": b"not a png"})
    run = CliRunner().invoke
    app = _app()
    r = run(app, ["init", "--store", store])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "layerloop.yaml").read_text().lstrip().startswith("#")
    r = run(app, ["ingest-seeds", str(tmp_path / "seeds")], env={"LAYERLOOP_STORE": store})
    assert r.exit_code == 0, r.output
    assert "3 accepted of 4" in r.output and "1 x not_an_image" in r.output
    r = run(app, ["rounds", "show", "0", "--store", store])
    assert r.exit_code == 0 and "3 accepted, 0 rejected" in r.output and "kinds (accepted): mug=3" in r.output
    r = run(app, ["rounds", "list", "--store", store])
    assert r.exit_code == 0 and "0000" in r.output
    r = run(app, ["verify", "--store", store])
    assert r.exit_code == 0 and "ok" in r.output
    r = run(app, ["gc", "--grace", "0", "--store", store])
    assert r.exit_code == 0 and "_work" in r.output


def test_init_store_becomes_the_files_store_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(_app(), ["init", "--store", "my-store"])
    assert r.exit_code == 0 and "store.uri: my-store" in r.output, r.output
    assert yaml.safe_load((tmp_path / "layerloop.yaml").read_text())["store"]["uri"] == "my-store"
    write_item(tmp_path / "seeds", "s0", triplet(1))
    r = CliRunner().invoke(_app(), ["ingest-seeds", "seeds"])  # no --store: the file's store.uri
    assert r.exit_code == 0 and (tmp_path / "my-store/rounds/round-0000/COMMITTED").is_file(), r.output


def test_bad_input_exits_2_with_what_to_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run, app, store = CliRunner().invoke, _app(), str(tmp_path / "store")
    r = run(app, ["ingest-seeds", str(tmp_path / "missing"), "--store", store])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = run(app, ["rounds", "show", "4", "--store", store])
    assert r.exit_code == 2 and "round 4 is not committed" in r.output
    r = run(app, ["synth", "train", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "seeds, pool, test" in r.output
    (tmp_path / "layerloop.yaml").write_text("store:\n  urii: typo\n")
    r = run(app, ["rounds", "list"])
    assert r.exit_code == 2 and "urii" in r.output


def test_verify_exits_1_on_tampering(tmp_path):
    store = tmp_path / "store"
    write_item(tmp_path / "seeds", "s0", triplet(1))
    app = _app()
    assert CliRunner().invoke(app, ["ingest-seeds", str(tmp_path / "seeds"), "--store", str(store)]).exit_code == 0
    shard = next((store / "rounds/round-0000/shards").iterdir())
    data = bytearray(shard.read_bytes())
    data[512 + 30] ^= 0xFF
    shard.write_bytes(bytes(data))
    r = CliRunner().invoke(app, ["verify", "--store", str(store)])
    assert r.exit_code == 1 and "does not match" in r.output


def test_rounds_show_counts_rejections_by_cause_and_cuts_info_visibly(tmp_path):
    from layerloop.storage import schema as S
    from layerloop.storage.rounds import RoundStore

    from .helpers import samples

    reasons = ["below threshold: overall 0.412 < 0.500", "below threshold: overall 0.300 < 0.500",
               "cycle_error 0.2000 > 0.1000", "below threshold: logo_clean 0.100 < 0.400; overall 0.200 < 0.500",
               None]
    store = RoundStore(str(tmp_path / "store"))
    w = store.begin(0, parent_round=None, adapter_id=None, config={})
    w.write_unit("u0", ((dict(f, **{S.ACCEPTED: r is None, S.REASON: r}), p)
                        for (f, p), r in zip(samples("x", 5), reasons)))
    info = {"timings": {f"stage_{i}": i * 1.5 for i in range(30)}, "candidates": 4}
    w.commit(w.rows(), info)
    r = CliRunner().invoke(_app(), ["rounds", "show", "0", "--store", str(store.uri)])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    counted = [line.strip() for line in lines if "rejected" in line and " x " in line]
    assert counted[0] == "rejected 2 x below threshold: overall < 0.500"  # most frequent first
    assert sorted(counted[1:]) == ["rejected 1 x below threshold: logo_clean < 0.400; overall < 0.500",
                                   "rejected 1 x cycle_error > 0.1000"]
    timings = next(line for line in lines if line.strip().startswith("timings:"))
    assert timings.endswith(" …") and len(timings) < 120
    assert "candidates: 4" in r.output and "all of it: --json" in r.output

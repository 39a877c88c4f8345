"""The store fails loudly and never feeds bad data on: a full disk mid-round (`layerloop run` on a real tmpfs)
and a committed shard altered on disk (never trained on; `layerloop verify` names it)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from layerloop.tasks.stages.demo import smoke_overrides

from test_flows import REPO, _api_env  # same folder (tests/flows is not a package)


def test_full_disk_mid_round_fails_clearly_and_the_rerun_finishes(prefect_harness, tiny_cfg, tiny_inputs, tmpfs,
                                                                   tmp_path):
    from layerloop.flows.seed import seed
    from layerloop.tasks.stages.handles import open_store

    disk = tmpfs("16m")
    data = smoke_overrides(disk.uri, tiny_inputs, rounds=1)
    data["loop"]["gpu_lock_dir"] = str(tmp_path / "locks")
    cfg_file = tmp_path / "layerloop.yaml"
    cfg_file.write_text(yaml.safe_dump(data))
    cfg = tiny_cfg.model_validate(data)
    seed(cfg)  # round 0, adapter 0 and its held-out metrics: round 1's first write is its first generated unit
    disk.fill(leave=8192)  # room for the run lock (one page), not for a shard (a tar record is 10 KB)
    cmd = [sys.executable, "-m", "layerloop.flows", "run", "--config", str(cfg_file)]
    full = subprocess.run(cmd, cwd=REPO, env=_api_env(), capture_output=True, text=True, timeout=300)
    assert full.returncode == 1, full.stderr[-3000:]
    assert "error: no space left on the store's disk" in full.stderr
    assert "while writing unit gen-0000 of round 1" in full.stderr and "Free space" in full.stderr
    store = open_store(cfg)
    assert store.committed_rounds() == [0] and disk.debris() == []
    assert not list((Path(disk.uri) / "rounds" / "round-0001").rglob("*.tar"))  # nothing half-written stays
    disk.free()
    rerun = subprocess.run(cmd, cwd=REPO, env=_api_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert store.committed_rounds() == [0, 1] and store.verify() == []


def test_a_corrupted_shard_is_never_trained_on_and_verify_names_it(tiny_cfg, bit_rot):
    from typer.testing import CliRunner

    from layerloop.flows.cli.main import app
    from layerloop.storage import schema as S
    from layerloop.storage.errors import CorruptShardError
    from layerloop.tasks.stages.adapter import adapter_exists, train_adapter
    from layerloop.tasks.stages.handles import open_store
    from layerloop.tasks.stages.ingest import ingest_seeds

    ingest_seeds(tiny_cfg)
    store = open_store(tiny_cfg)
    row = store.training_view(up_to=0).sort_values(S.SAMPLE_ID).iloc[1]  # one the adapter trains on
    bit_rot(Path(store.root) / row[S.SHARD], f"{row[S.KEY]}.object.png")
    with pytest.raises(CorruptShardError) as caught:
        train_adapter(tiny_cfg, 0)
    message = str(caught.value)
    assert message.startswith("round 0: ") and row[S.SHARD] in message
    assert f"member {row[S.KEY]}.object.png does not match its recorded sha256" in message
    assert not adapter_exists(tiny_cfg, 0)  # no adapter was trained on the altered data
    verified = CliRunner().invoke(app, ["verify", "--store", tiny_cfg.store.uri])
    assert verified.exit_code == 1
    assert f"round 0: {store.root}/{row[S.SHARD]}: member {row[S.KEY]}.object.png" in verified.output

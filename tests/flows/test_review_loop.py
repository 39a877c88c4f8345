"""Human review in a real loop run: decisions imported after round 1 is committed decide what adapter 1
trains on (a rejected pseudo-label leaves its training data, an accepted reject enters it), and the
committed round stays as it was."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

from layerloop.tasks.stages.demo import smoke_overrides


def _digest(folder: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())).hexdigest()


def _fill(sheet: Path, decisions: dict[str, str]) -> None:
    rows = list(csv.DictReader(open(sheet)))
    for row in rows:
        if row["sample_id"] in decisions:
            row["decision"], row["note"] = decisions[row["sample_id"]], "spot check"
    with open(sheet, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _trained_on(store, round_: int) -> dict:
    return json.loads((Path(store.adapter_uri(round_)) / "training_set.json").read_text())


def test_review_decisions_reach_the_next_adapters_training_data(prefect_harness, tiny_cfg, tiny_inputs, tmp_path):
    from typer.testing import CliRunner

    from layerloop.flows.cli.main import app
    from layerloop.flows.seed import seed
    from layerloop.flows.self_improve import improve_round
    from layerloop.storage import schema as S
    from layerloop.tasks.stages.handles import open_store

    data = smoke_overrides(str(tmp_path / "store"), tiny_inputs, rounds=2)
    # thresholds that split this smoke round: its pool rows are accepted (object_clean ~0.35), its
    # generated ones rejected (~0.2), so a review has one of each to overturn
    data["thresholds"] = {"logo_clean": 0, "object_clean": 0.3, "composite_consistent": 0, "realism": 0,
                          "overall": 0, "max_cycle_error": None}
    cfg = tiny_cfg.model_validate(data)
    seed(cfg)
    improve_round(cfg, 1)
    store = open_store(cfg)
    rows = store.read(1, "all").set_index(S.SAMPLE_ID)[S.ACCEPTED]
    accepted, rejected = sorted(rows.index[rows]), sorted(rows.index[~rows])
    assert accepted and rejected, rows
    pseudo_label, candidate = accepted[0], rejected[0]
    before = _digest(Path(store.round_dir(1)))

    runner = CliRunner()
    sheet_dir = tmp_path / "review"
    exported = runner.invoke(app, ["review", "export", "1", "--out", str(sheet_dir), "--store", cfg.store.uri,
                                   "--borderline", str(len(rows)), "--random", "0"])
    assert exported.exit_code == 0, exported.output
    _fill(sheet_dir / "review.csv", {pseudo_label: "reject", candidate: "accept"})
    imported = runner.invoke(app, ["review", "import", str(sheet_dir / "review.csv"), "--store", cfg.store.uri,
                                   "--reviewer", "ana"])
    assert imported.exit_code == 0, imported.output

    improve_round(cfg, 2)  # adapter 1 is trained first, on rounds 0-1 as reviewed
    trained = _trained_on(store, 1)
    assert pseudo_label not in trained["sample_ids"] and candidate in trained["sample_ids"]
    assert trained["review_changed"] == sorted([pseudo_label, candidate])
    assert set(accepted[1:]) <= set(trained["sample_ids"])  # the unreviewed accepted rows still train
    assert _trained_on(store, 0)["review_changed"] == []  # the seed adapter came before any review
    assert _digest(Path(store.round_dir(1))) == before and store.committed_rounds() == [0, 1, 2]
    assert store.verify() == []

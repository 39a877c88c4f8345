"""The judge commands through the real typer app: prompts, calibrate, review export/import."""
from __future__ import annotations

import csv
import json

from typer.testing import CliRunner

from layerloop.flows.cli.main import app
from tests.judges.test_review import _fill, store  # noqa: F401 - the committed-round fixture

runner = CliRunner()


def test_prompts_builtin(tmp_path):
    out = tmp_path / "p.json"
    res = runner.invoke(app, ["prompts", "--n", "12", "--out", str(out), "--seed", "2"])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert len(data["prompts"]) == 12 and json.loads(res.output)["version"] == data["version"]
    bad = runner.invoke(app, ["prompts", "--n", "3", "--out", str(out), "--backend", "gpt"])
    assert bad.exit_code == 2 and "builtin or openai" in bad.output


def test_calibrate_oracle_on_synthetic_truth(tmp_path):
    out = tmp_path / "cal.json"
    res = runner.invoke(app, ["calibrate", "--judge", "oracle", "--labels", "synthetic", "--n", "12",
                              "--json-out", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["roc_auc"] == 1.0 and report["n"] == 12  # the oracle agrees with itself
    assert "roc_auc" in res.output


def test_calibrate_stored_scores_against_csv_labels(store, tmp_path):  # noqa: F811
    labels = tmp_path / "labels.csv"
    labels.write_text("sample_id,label\n" + "".join(f"r0-{i:03d},{int(i >= 4)}\n" for i in range(11)))
    res = runner.invoke(app, ["calibrate", "--judge", "stored", "--labels", str(labels), "--round", "0",
                              "--store", store.uri, "--target-precision", "1.0", "--json-out",
                              str(tmp_path / "c.json")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["roc_auc"] == 1.0 and report["proposed_threshold"] == 0.4
    missing_round = runner.invoke(app, ["calibrate", "--judge", "stored", "--labels", str(labels)])
    assert missing_round.exit_code == 2 and "--round" in missing_round.output


def test_review_export_then_import(store, tmp_path):  # noqa: F811
    res = runner.invoke(app, ["review", "export", "0", "--out", str(tmp_path / "rev"), "--store", store.uri,
                              "--borderline", "2", "--random", "2"])
    assert res.exit_code == 0, res.output
    sheet = tmp_path / "rev" / "review.csv"
    first = next(csv.DictReader(open(sheet)))["sample_id"]
    _fill(sheet, {first: ("reject", "")})
    res = runner.invoke(app, ["review", "import", str(sheet), "--store", store.uri, "--reviewer", "dee"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["n"] == 1
    missing = runner.invoke(app, ["review", "export", "7", "--out", str(tmp_path / "x"), "--store", store.uri])
    assert missing.exit_code == 2

"""bench/lab.py runs end to end on the shipped base (its --quick size) and writes every metric beside its goal."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _lab_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("lab_bench", ROOT / "bench" / "lab.py")
    lab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lab)
    return lab


def test_lab_bench_quick_base_only_writes_each_goal_metric_and_the_colour_binding_read(tmp_path):
    out = tmp_path / "lab.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "lab.py"), "--base-only", "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    metrics = result["metrics"]
    for name in ("text_kind_acc", "text_colour_acc", "text_shape_acc", "synth_gain_db", "synth_gain_logo_box_db"):
        assert metrics[name]["goal"] > 0 and math.isfinite(metrics[name]["value"]), (name, metrics[name])
    # the base alone decomposes nothing: those rows say "not measured", never a made-up number
    assert metrics["object_psnr_unseen"]["value"] is None and metrics["object_psnr_unseen"]["met"] is None
    text = result["classifiers"]
    assert text["truth"]["kind"] == 1.0 and text["truth"]["shape"] == 1.0  # the readers read real renders
    assert 0.0 <= text["object_colour_reads_logo_colour"] <= 1.0
    assert "object colour read as the caption's LOGO colour" in proc.stdout
    # the guided text rows: measured apart, at the recorded scale, shown against the plain goal
    assert result["caption_guidance"] == 4.0 and result["classifiers_caption_guidance"]["truth"] == text["truth"]
    for name in ("kind", "colour", "shape"):
        row = metrics[f"text_{name}_acc_caption_guidance"]
        assert row["reference_only"] and row["goal"] == metrics[f"text_{name}_acc"]["goal"]
        assert row["value"] == result["classifiers_caption_guidance"]["model"][name]
    synthesis = result["synthesis"]
    assert math.isclose(synthesis["gain"], synthesis["psnr_synth"] - synthesis["psnr_object"], abs_tol=1e-6)
    # the anchored synthesis: its own measurement beside the plain goal; outside the footprint it IS the object
    # panel, so it can only move the whole-panel score where the model printed something
    anchored = synthesis["inference_mode"]
    assert metrics["synth_gain_db_inference_mode"]["value"] == anchored["gain"]
    assert metrics["synth_gain_db_inference_mode"]["reference_only"]
    assert math.isclose(anchored["gain"], anchored["psnr_synth"] - anchored["psnr_object"], abs_tol=1e-6)
    assert anchored["psnr_object"] == synthesis["psnr_object"]


def test_a_plain_lab_run_measures_the_default_recipes_seed_adapter():
    lab = _lab_module()
    assert lab.parse_args([]).train_seed == lab.DEFAULT_WORK  # `python bench/lab.py --json lab.json`
    assert lab.parse_args(["--set", "train.seed=1"]).train_seed == lab.DEFAULT_WORK
    assert lab.parse_args(["--base-only"]).train_seed is None
    assert lab.parse_args(["--adapter", "somewhere"]).train_seed is None


def test_a_reused_lab_work_folder_must_hold_an_adapter_of_the_same_base(tmp_path):
    import pytest

    lab = _lab_module()
    shipped = lab.base_stamp(None)
    lab.check_seeded_base(tmp_path / "work", shipped)  # a new WORK is stamped
    lab.check_seeded_base(tmp_path / "work", shipped)  # and reused with the same base
    with pytest.raises(SystemExit, match="trained on another base"):
        lab.check_seeded_base(tmp_path / "work", "0" * 64)

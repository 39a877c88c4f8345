"""Ablation plumbing: the config switches of each run, the summary over seeds and the noise verdict."""
from __future__ import annotations

from pathlib import Path

import pytest

from layerloop.flows.ablate import default_base, run_config, summarise, to_markdown, verdict
from layerloop.tasks.config import ConfigError

INPUTS = {"seeds": "/data/seeds", "pool": "/data/pool"}


def test_run_configs_switch_exactly_the_ablated_parts(tmp_path):
    base = default_base()
    b, c, d = (run_config(base, n, 3, 2, tmp_path, INPUTS) for n in "BCD")
    assert (b.train.cycle_weight, c.train.cycle_weight, d.train.cycle_weight) == (0.0, base.train.cycle_weight,
                                                                                 base.train.cycle_weight)
    assert b.loop.pool_per_round == c.loop.pool_per_round == 0
    assert b.thresholds.max_cycle_error is c.thresholds.max_cycle_error is None  # no cycle rule
    assert d.loop.pool_per_round == base.loop.pool_per_round > 0
    assert d.thresholds.max_cycle_error == base.thresholds.max_cycle_error == 0.05
    for cfg in (b, c, d):
        assert cfg.train.seed == cfg.sample.seed == 3 and cfg.loop.rounds == 2 and cfg.loop.train_final
        assert cfg.loop.seeds_path == "/data/seeds"
        # Everything not ablated is the same in every run.
        assert cfg.train.steps == base.train.steps and cfg.loop.eval_size == base.loop.eval_size
    assert len({b.store.uri, c.store.uri, d.store.uri}) == 3
    assert Path(b.store.uri).is_relative_to(tmp_path)


def test_base_without_cycle_loss_is_refused(tmp_path):
    base = default_base().model_copy(update={"train": default_base().train.model_copy(update={"cycle_weight": 0})})
    with pytest.raises(ValueError, match="cycle_weight must be > 0"):
        run_config(base, "C", 0, 2, tmp_path, INPUTS)


def test_default_base_reads_user_file_and_rejects_typos(tmp_path):
    good = tmp_path / "a.yaml"
    good.write_text("train:\n  steps: 7\n")
    assert default_base(str(good)).train.steps == 7
    assert default_base(str(good)).sample.steps == 6  # ablation default kept where the file is silent
    bad = tmp_path / "b.yaml"
    bad.write_text("train:\n  stepz: 7\n")
    with pytest.raises(ConfigError, match="train.stepz"):
        default_base(str(bad))


def _row(config, seed, logo, obj):
    return {"config": config, "seed": seed, "psnr_logo": logo, "psnr_object": obj, "ssim_logo": 0.5,
            "ssim_object": 0.5, "n": 8, "psnr_mean": (logo + obj) / 2}


def test_summary_and_verdict():
    rows = [_row("A", 0, 10, 20), _row("A", 1, 11, 21),   # mean 15.5, spread 0.5
            _row("B", 0, 12, 22), _row("B", 1, 12, 22),   # 17.0, gain 1.5 > 0.5
            _row("C", 0, 12, 22.4), _row("C", 1, 12.2, 22.2),  # 17.2 +- 0.0: gain 0.2 > noise 0
            _row("D", 0, 9, 19), _row("D", 1, 13, 23)]    # 16.0 +- 2.0: within noise
    summary = summarise(rows)
    assert [s["config"] for s in summary] == ["A", "B", "C", "D"]
    assert summary[0]["psnr_mean"] == pytest.approx(15.5) and summary[0]["psnr_mean_spread"] == pytest.approx(0.5)
    steps = verdict(summary)
    assert [s["status"] for s in steps] == ["improves", "improves", "within noise"]
    assert steps[0]["gain_db"] == pytest.approx(1.5) and steps[0]["ratio"] == pytest.approx(3.0)
    md = to_markdown(summary, steps, {"psnr_logo": 8.0, "psnr_object": 18.0, "ssim_logo": 0.1, "ssim_object": 0.9})
    assert "| A: round-0 IC-LoRA only | 10.500 ± 0.500" in md
    assert "reproduced beyond noise: no" in md
    worse = verdict(summarise([_row("A", 0, 12, 22), _row("A", 1, 12, 22), _row("B", 0, 10, 20), _row("B", 1, 10, 20)]))
    assert worse[0]["status"] == "worse" and worse[0]["ratio"] is None

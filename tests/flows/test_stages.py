"""The plain stage functions, without Prefect: one round by hand, its lineage, and idempotent reruns."""
from __future__ import annotations

import pytest

from layerloop.tasks import stages


def _run_round(cfg, r):
    gen = stages.unit_names("gen", cfg.loop.candidates_per_round, cfg.loop.batch_size)
    pool = stages.unit_names("pool", len(stages.round_pool(cfg, r)), cfg.loop.batch_size)
    for unit in gen:
        stages.generate(cfg, r, unit)
        stages.judge(cfg, r, unit)
        stages.cycle_generated(cfg, r, unit)
    for unit in pool:
        stages.cycle_pool(cfg, r, unit)
        stages.judge(cfg, r, unit)
    return stages.commit(cfg, r, {"timings": {"generate": 1.0}})


def test_one_round_by_hand_has_exact_lineage(tiny_cfg):
    from layerloop.models.prompts import PromptSet
    from layerloop.storage import schema as S

    assert stages.ingest_seeds(tiny_cfg)["pool"]["pool_size"] == 6
    trained = stages.train_adapter(tiny_cfg, 0)
    assert trained["skipped"] is False and stages.adapter_exists(tiny_cfg, 0)
    committed = _run_round(tiny_cfg, 1)
    assert committed["skipped"] is False
    store = stages.open_store(tiny_cfg)
    assert store.committed_rounds() == [0, 1]
    info = store.round_info(1)
    assert (info["parent_round"], info["adapter_id"]) == (0, "round-0000")
    assert info["config"]["loop"]["candidates_per_round"] == 4
    # the round records its prompt set by the same version a prompt-set file carries
    version = PromptSet(tiny_cfg.loop.prompt_set(), "loop", {}).version
    assert info["info"]["prompt_set_sha256"] == version
    rows = store.read(1, "all")
    assert sorted(rows[S.SOURCE].value_counts().items()) == [("cycle", 2), ("generated", 4)]
    assert rows[S.SCORE_OVERALL].notna().all() and rows[S.CYCLE_ERROR].notna().all()
    assert (rows[~rows[S.ACCEPTED]][S.REASON].str.len() > 0).all()  # every rejection says why
    summary = stages.round_summary(tiny_cfg, 1)
    assert summary["candidates"] == 6 and summary["accepted"] == int(rows[S.ACCEPTED].sum())


def test_rerun_of_committed_round_changes_nothing(tiny_cfg):
    stages.ingest_seeds(tiny_cfg)
    stages.train_adapter(tiny_cfg, 0)
    _run_round(tiny_cfg, 1)
    store = stages.open_store(tiny_cfg)
    before = (store.round_info(1)["committed_at"], store.read(1, "all").to_json())
    again = [stages.ingest_seeds(tiny_cfg), stages.train_adapter(tiny_cfg, 0), stages.commit(tiny_cfg, 1, {})]
    assert all(step["skipped"] for step in again)
    assert (store.round_info(1)["committed_at"], store.read(1, "all").to_json()) == before


def test_commit_rejects_on_the_cycle_threshold_with_its_reason(tiny_cfg):
    from layerloop.storage import schema as S

    cfg = tiny_cfg.model_copy(update={"thresholds": tiny_cfg.thresholds.model_copy(update={
        "max_cycle_error": 0.0, "logo_clean": 0.0, "object_clean": 0.0, "composite_consistent": 0.0,
        "realism": 0.0, "overall": 0.0})})
    stages.ingest_seeds(cfg)
    stages.train_adapter(cfg, 0)
    _run_round(cfg, 1)
    rows = stages.open_store(cfg).read(1, "all")
    cycled = rows[rows[S.CYCLE_ERROR] > 0]
    assert len(cycled) and not cycled[S.ACCEPTED].any()  # every score passes: only the cycle rule rejects
    assert all(r.startswith("cycle_error ") and r.endswith(" > 0.0000") for r in cycled[S.REASON])


def test_missing_seeds_path_is_a_clear_error(tiny_cfg):
    cfg = tiny_cfg.model_copy(update={"loop": tiny_cfg.loop.model_copy(update={"seeds_path": None})})
    with pytest.raises(ValueError, match="loop.seeds_path is not set"):
        stages.ingest_seeds(cfg)


def test_units_and_prompts_are_stable():
    assert stages.unit_names("gen", 5, 2) == ["gen-0000", "gen-0001", "gen-0002"]
    assert list(stages.batch_slice("gen-0002", 5, 2)) == [4]


def test_adapters_that_continue_train_round_train_steps(tiny_cfg):
    cfg = tiny_cfg.model_copy(update={"loop": tiny_cfg.loop.model_copy(update={"round_train_steps": 7})})
    assert stages.train_config(cfg, continues=False).steps == tiny_cfg.train.steps
    assert stages.train_config(cfg, continues=True).steps == 7
    assert stages.train_config(tiny_cfg, continues=True).steps == tiny_cfg.train.steps
    assert cfg.train.steps == tiny_cfg.train.steps, "the run's own config is not changed"

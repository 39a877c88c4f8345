"""The plain stage functions, without Prefect: a round of tasks/recipe.py in this process, its lineage, idempotent
reruns, and a stage added to the recipe by one entry."""
from __future__ import annotations

import pytest

from layerloop.tasks.stages.adapter import adapter_exists, train_adapter, train_config
from layerloop.tasks.stages.commit import commit_round
from layerloop.tasks.runtime.driver import run_round
from layerloop.tasks.stages.handles import Unit, open_store, units
from layerloop.tasks.stages.ingest import ingest_seeds
from layerloop.tasks.reporting.summary import round_summary


def test_one_round_by_hand_has_exact_lineage(tiny_cfg):
    from layerloop.models.prompts import PromptSet
    from layerloop.storage import schema as S

    assert ingest_seeds(tiny_cfg)["pool"]["pool_size"] == 6
    trained = train_adapter(tiny_cfg, 0)
    assert trained["skipped"] is False and adapter_exists(tiny_cfg, 0)
    committed = run_round(tiny_cfg, 1)
    assert committed["skipped"] is False
    store = open_store(tiny_cfg)
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
    summary = round_summary(open_store(tiny_cfg), 1)
    assert summary["candidates"] == 6 and summary["accepted"] == int(rows[S.ACCEPTED].sum())
    # every sample carries its logo's RGBA matte (manifest schema version 2): seeds, candidates, pool samples
    import numpy as np

    from layerloop.models.matting import matte
    from layerloop.tasks.stages.panels import decode, decode_rgba

    for r in (0, 1):
        assert all("rgba_logo" in list(p) for p in store.read(r, "all")[S.PANELS])
    _, panels = next(store.load_panels(store.read(0).iloc[:1]))
    assert np.array_equal(np.asarray(decode_rgba(panels)["logo"]), np.asarray(matte(decode(panels)["logo"])))


def test_rerun_of_committed_round_changes_nothing(tiny_cfg):
    ingest_seeds(tiny_cfg)
    train_adapter(tiny_cfg, 0)
    run_round(tiny_cfg, 1)
    store = open_store(tiny_cfg)
    before = (store.round_info(1)["committed_at"], store.read(1, "all").to_json())
    again = [ingest_seeds(tiny_cfg), train_adapter(tiny_cfg, 0), commit_round(tiny_cfg, 1, {})]
    assert all(step["skipped"] for step in again)
    assert (store.round_info(1)["committed_at"], store.read(1, "all").to_json()) == before


def test_commit_rejects_on_the_cycle_threshold_with_its_reason(tiny_cfg):
    from layerloop.storage import schema as S

    cfg = tiny_cfg.model_copy(update={"thresholds": tiny_cfg.thresholds.model_copy(update={
        "max_cycle_error": 0.0, "logo_clean": 0.0, "object_clean": 0.0, "composite_consistent": 0.0,
        "realism": 0.0, "overall": 0.0})})
    ingest_seeds(cfg)
    train_adapter(cfg, 0)
    run_round(cfg, 1)
    rows = open_store(cfg).read(1, "all")
    cycled = rows[rows[S.CYCLE_ERROR] > 0]
    assert len(cycled) and not cycled[S.ACCEPTED].any()  # every score passes: only the cycle rule rejects
    assert all(r.startswith("cycle_error ") and r.endswith(" > 0.0000") for r in cycled[S.REASON])


def test_a_stage_added_to_the_recipe_runs_once_per_unit_in_order(tiny_cfg, monkeypatch):
    from layerloop.tasks import recipe

    calls = []

    def probe(cfg, round_, unit):
        calls.append((round_, str(unit)))
        return {"seconds": 0.25}

    extra = recipe.Stage("probe", probe, recipe.OVER_GEN, gpu=False, timing="probe")
    monkeypatch.setattr(recipe, "UNITS", (*recipe.UNITS[:1], extra, *recipe.UNITS[1:]))
    ingest_seeds(tiny_cfg)
    train_adapter(tiny_cfg, 0)
    run_round(tiny_cfg, 1)
    gen = [str(u) for u in units("gen", tiny_cfg.loop.candidates_per_round, tiny_cfg.loop.batch_size)]
    assert len(gen) >= 2 and calls == [(1, u) for u in gen]
    timings = open_store(tiny_cfg).round_info(1)["info"]["timings"]
    assert set(timings) == {"train", "evaluate", "generate", "probe", "judge", "cycle"}
    assert timings["probe"] == 0.25 * len(gen)


def test_missing_seeds_path_is_a_clear_error(tiny_cfg):
    cfg = tiny_cfg.model_copy(update={"loop": tiny_cfg.loop.model_copy(update={"seeds_path": None})})
    with pytest.raises(ValueError, match="loop.seeds_path is not set"):
        ingest_seeds(cfg)


def test_units_split_items_into_batches_with_readable_names():
    assert units("gen", 5, 2) == [Unit("gen", 0), Unit("gen", 1), Unit("gen", 2)]
    assert [str(u) for u in units("gen", 5, 2)] == ["gen-0000", "gen-0001", "gen-0002"]  # task-run names
    assert list(Unit("gen", 2).items(5, 2)) == [4] and list(Unit("pool", 0).items(5, 2)) == [0, 1]
    assert units("pool", 0, 2) == []


def test_adapters_that_continue_train_round_train_steps(tiny_cfg):
    cfg = tiny_cfg.model_copy(update={"loop": tiny_cfg.loop.model_copy(update={"round_train_steps": 7})})
    assert train_config(cfg, continues=False).steps == tiny_cfg.train.steps
    assert train_config(cfg, continues=True).steps == 7
    assert train_config(tiny_cfg, continues=True).steps == tiny_cfg.train.steps
    assert cfg.train.steps == tiny_cfg.train.steps, "the run's own config is not changed"


def test_panels_for_display_enlarge_small_panels_by_whole_factors_and_shrink_large_ones():
    import io

    import numpy as np
    from PIL import Image

    from layerloop.tasks.stages.panels import for_display

    def png(img) -> bytes:
        buf = io.BytesIO()
        img.save(buf, "PNG")
        return buf.getvalue()

    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    shown = for_display(png(small), 128)
    assert shown.size == (128, 128)
    assert np.array_equal(np.asarray(shown)[::4, ::4], np.asarray(small))  # each pixel a 4x4 block
    assert np.array_equal(np.asarray(shown)[3::4, 3::4], np.asarray(small))
    assert for_display(png(small.resize((48, 48))), 128).size == (96, 96)  # whole factors only
    assert for_display(png(small.resize((512, 512))), 128).size == (128, 128)
    mask = Image.new("L", (32, 32), 200)  # a greyscale mask panel (trust_<layer>) shows too
    assert for_display(png(mask), 128).mode == "RGB"

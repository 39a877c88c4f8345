"""The loop's recipe on the plain stages: anchored pool targets with trust panels, the labeled validation split,
promotion of adapters, the matched-compute control and the loop-health block of a round."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from layerloop.tasks.stages.adapter import promotion_decision, seen_slices, training_set
from layerloop.tasks.runtime.driver import run_loop
from layerloop.tasks.stages.handles import PROMOTION_FILE, generator_round, open_store


@pytest.fixture
def recipe_cfg(tiny_cfg, tmp_path):
    from layerloop.models.synthetic import WorldSlice, write_split

    seeds = tmp_path / "sliced-seeds"
    write_split("seeds", 10, 32, 5, str(seeds), WorldSlice(kinds=("mug", "bottle")))
    loop = tiny_cfg.loop.model_copy(update={
        "seeds_path": str(seeds), "candidates_per_round": 0, "pool_per_round": 2, "eval_size": 4,
        "validation_size": 2, "control": True, "rounds": 1, "train_final": True, "report": False})
    return tiny_cfg.model_copy(update={"loop": loop})


def test_one_round_of_the_recipe_records_what_it_measured(recipe_cfg):
    from layerloop.storage import schema as S

    rows = run_loop(recipe_cfg, log=lambda m: None)
    store = open_store(recipe_cfg)
    # the validation split is labeled, held out, and never in a training view
    val = store.validation_view()
    assert len(val) == 2 and not set(val[S.SAMPLE_ID]) & set(store.training_view(up_to=1)[S.SAMPLE_ID])
    # pool candidates: the real composite, an anchored object, and trust panels for every layer
    cand = store.read(1, "all")
    assert set(cand[S.SOURCE]) == {"cycle"} and len(cand) == 2
    for row, panels in store.load_panels(cand):
        assert set(panels) == {"composite", "logo", "object", "rgba_logo", "trust_logo", "trust_object"}
    info = store.round_info(1)["info"]
    assert set(info["validation"]) >= {"psnr_logo", "psnr_object", "iou_logo"}
    assert info["promotion"]["promoted"] and info["generator"] == "round-0000"
    assert "psnr_object@unseen" in info["heldout"] or "psnr_object@seen" in info["heldout"]
    assert info["control"]["validation"] == info["validation"]  # control 0 is the seed adapter itself
    assert info["health"]["n"] == 2 and "rank_corr" in info["health"] and "precision_at_k" in info["health"]
    # adapter 1 and its control were trained and measured beside each other
    for uri in (store.adapter_uri(1), store.control_adapter_uri(1)):
        measured = json.loads(open(f"{uri}/heldout.json").read())
        assert measured["validation"]["psnr_object"] > 0
    assert rows[-1]["round"] == 1 and "validation_psnr_object" in rows[-1]


def _one_round(recipe_cfg, **loop):
    """Round 1 of the recipe without control or final adapter, `loop` fields overridden: (cfg, store)."""
    cfg = recipe_cfg.model_copy(update={"loop": recipe_cfg.loop.model_copy(
        update={"train_final": False, "control": False, **loop})})
    run_loop(cfg, log=lambda m: None)
    return cfg, open_store(cfg)


def test_pseudo_labels_train_decomposition_only_with_their_trust(recipe_cfg):
    from layerloop.storage import schema as S

    _, store = _one_round(recipe_cfg)
    every = store.read(1, "all")
    data = training_set(store, every)
    assert data["tasks"] == [("decompose",)] * 2 and data["labeled"] == [False, False]
    for trust, trip in zip(data["trust"], data["triplets"]):
        # the default: the logo is a consensus of several draws, trusted loop.consensus_trust everywhere
        assert set(trust) == {"logo", "object"}
        assert np.abs(trust["logo"] - recipe_cfg.loop.consensus_trust).max() <= 1 / 255
        comp, obj = np.asarray(trip["composite"]), np.asarray(trip["object"])
        real = trust["object"] == 1.0
        assert real.any() and np.array_equal(comp[real], obj[real])  # trusted pixels are the real composite
    seeds = training_set(store, store.training_view(up_to=0).head(2))
    assert seeds["tasks"] == [None, None] and seeds["labeled"] == [True, True] and seeds["trust"] == [None, None]
    assert set(store.read(0)[S.SPLIT]) == {"train", "validation"}


def test_consensus_pool_targets_are_the_mean_of_the_draws_with_a_trusted_logo(recipe_cfg):
    from layerloop.models.anchoring import anchor, consensus
    from layerloop.storage import schema as S
    from layerloop.tasks.stages.consistency import round_pool
    from layerloop.tasks.stages.handles import sampler
    from layerloop.tasks.stages.panels import decode

    cfg, store = _one_round(recipe_cfg, consensus_draws=3, consensus_trust=0.5)
    rows = store.read(1, "all")
    data = training_set(store, rows)
    assert data["tasks"] == [("decompose",)] * 2
    assert all(np.abs(t["logo"] - 0.5).max() <= 1 / 255 for t in data["trust"])
    # the stored layers are the anchored mean of the three draws the seed adapter makes
    pool = round_pool(store, cfg, 1)
    composite = decode(next(iter(store.load_panels(pool.head(1))))[1])["composite"]
    smp = sampler(cfg, 0, store)
    by_hand = anchor(composite, consensus([smp.decompose([composite], draw=d)[0] for d in range(3)]))[0]
    pool_ids = [json.loads(r[S.EXTRA_JSON])["pool_id"] for r in rows.to_dict("records")]
    stored = data["triplets"][pool_ids.index(pool.iloc[0][S.SAMPLE_ID])]
    for layer in ("logo", "object"):
        assert np.abs(np.asarray(stored[layer], float) - np.asarray(by_hand[layer], float)).max() <= 3.0


def test_a_single_draw_logo_is_never_trusted(recipe_cfg):
    _, store = _one_round(recipe_cfg, consensus_draws=1, consensus_trust=0.5)
    assert all(t["logo"].max() == 0.0 for t in training_set(store, store.read(1, "all"))["trust"])


def test_seen_slice_comes_from_the_seeds_recorded_slice(recipe_cfg):
    from layerloop.tasks.stages.ingest import ingest_seeds

    ingest_seeds(recipe_cfg)
    parts = seen_slices(open_store(recipe_cfg))
    assert parts["seen"]({"kind": "mug", "logo_shape": "star", "text": "ZAP"})
    assert parts["unseen"]({"kind": "bag", "logo_shape": "star", "text": "ZAP"})


def test_promotion_keeps_the_current_adapter_when_validation_drops():
    old = {"psnr_logo": 11.0, "psnr_object": 25.0}
    kept = promotion_decision(3, 2, {"psnr_logo": 11.1, "psnr_object": 24.5}, old, 0.3)
    assert not kept["promoted"] and "psnr_object 24.50 < 25.00" in kept["reason"]
    assert promotion_decision(3, 2, {"psnr_logo": 10.8, "psnr_object": 24.9}, old, 0.3)["promoted"]
    assert promotion_decision(3, 2, {"psnr_logo": 1.0, "psnr_object": 1.0}, old, None)["promoted"]
    assert promotion_decision(3, 2, {}, old, 0.3)["reason"] == "no validation split to compare on"
    assert not promotion_decision(3, 2, {"psnr_logo": float("nan"), "psnr_object": 25.0}, old, 0.3)["promoted"]


def test_promotion_with_per_item_scores_refuses_only_a_drop_the_split_resolves():
    """10 validation items: a 0.5 dB mean drop made of item noise (sd 2 dB) is not resolved and promotes; a
    drop on every item is resolved and refuses; a diverged adapter (NaN) still refuses."""
    rng = np.random.default_rng(0)
    old_obj = rng.normal(25, 2, 10)
    noisy = old_obj - 0.5 + rng.normal(0, 2, 10)
    noisy += (old_obj.mean() - 0.5) - noisy.mean()  # exactly 0.5 dB below on average
    steady = old_obj - 0.5 + rng.normal(0, 0.05, 10)

    def items(obj):
        return {f"v{i}": {"psnr_object": float(v), "psnr_logo": 11.0} for i, v in enumerate(obj)}

    def means(obj):
        return {"psnr_object": float(np.mean(obj)), "psnr_logo": 11.0}

    old = means(old_obj)
    noise = promotion_decision(3, 2, means(noisy), old, 0.3, items=(items(noisy), items(old_obj)))
    assert noise["promoted"] and "not resolved" in noise["reason"]
    assert noise["intervals_db"]["psnr_object"][0] < 0 < noise["intervals_db"]["psnr_object"][1]
    real = promotion_decision(3, 2, means(steady), old, 0.3, items=(items(steady), items(old_obj)))
    assert not real["promoted"] and real["intervals_db"]["psnr_object"][1] < 0 and "95 % interval" in real["reason"]
    nan = {k: {"psnr_object": float("nan"), "psnr_logo": 11.0} for k in items(old_obj)}
    assert not promotion_decision(3, 2, {"psnr_object": float("nan"), "psnr_logo": 11.0}, old, 0.3,
                                  items=(nan, items(old_obj)))["promoted"]


def test_a_real_round_refuses_an_adapter_trained_worse_and_keeps_the_generator(tiny_cfg):
    """The gate in a loop run: round 2 trains adapter 1 at a learning rate that wrecks it (on purpose), its
    validation falls, it is not promoted, and round 2 is made by adapter 0."""
    from layerloop.tasks.runtime.driver import run_loop, run_round
    from layerloop.tasks.stages.handles import open_store

    cfg = tiny_cfg.model_copy(update={"loop": tiny_cfg.loop.model_copy(update={"rounds": 1})})
    run_loop(cfg, log=lambda _: None)
    wrecked = cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": 50.0})})
    run_round(wrecked, 2)
    decision = json.loads((Path(cfg.store.uri) / "adapters" / "round-0001" / PROMOTION_FILE).read_text())
    assert not decision["promoted"] and decision["reason"].startswith("validation worse than round-0000")
    info = open_store(cfg).round_info(2)["info"]
    assert info["generator"] == "round-0000" and info["promotion"]["promoted"] is False


def test_generator_is_the_newest_promoted_adapter(tmp_path):
    from layerloop.storage.rounds import RoundStore

    store = RoundStore(str(tmp_path / "store"))
    for k, promoted in ((0, True), (1, True), (2, False), (3, None)):
        d = tmp_path / "store" / "adapters" / f"round-{k:04d}"
        d.mkdir(parents=True)
        (d / "pytorch_lora_weights.safetensors").write_bytes(b"x")
        if promoted is not None:
            (d / PROMOTION_FILE).write_text(json.dumps({"promoted": promoted}))
    assert generator_round(store, 2) == 1
    assert generator_round(store, 3) == 1  # adapter 2 was not promoted: adapter 1 stays current
    assert generator_round(store, 4) == 3  # not judged yet counts as promoted


def test_precision_at_k_counts_the_kept_among_the_truly_best():
    from layerloop.tasks.stages.health import precision_at_k

    assert precision_at_k([True, False, True, False], [30.0, 20.0, 10.0, 25.0]) == 0.5
    assert precision_at_k([False] * 3, [1.0, 2.0, 3.0]) is None

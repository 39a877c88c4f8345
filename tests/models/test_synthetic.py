"""The synthetic world: deterministic, well-formed, non-linear, visible logos, disjoint splits."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from layerloop.models.synthetic import (COLOURS, KINDS, item_seed, make_split, render_triplet, seed_value,
                                        split_caption, write_split)

PANELS = ("composite", "logo", "object")


def _arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img, np.float64)


def test_same_seed_gives_identical_bytes_and_meta():
    t1, m1 = render_triplet(7)
    t2, m2 = render_triplet(7)
    assert all(t1[p].tobytes() == t2[p].tobytes() for p in PANELS)
    assert m1 == m2
    t3, _ = render_triplet(8)
    assert t3["composite"].tobytes() != t1["composite"].tobytes()


def test_meta_keeps_the_64_bit_item_seed_as_a_string_and_re_renders_from_either_form(tmp_path):
    sid, triplet, meta = next(make_split("seeds", 1, 32, seed=0))
    assert isinstance(meta["seed"], str) and int(meta["seed"]) == item_seed("seeds", 0, 0)
    write_split("seeds", 1, 32, 0, str(tmp_path))
    on_disk = json.loads((tmp_path / sid / "meta.json").read_text())
    assert all(isinstance(v, str) or abs(v) < 2**63 for v in on_disk.values() if isinstance(v, int))
    for stored in (on_disk["seed"], int(on_disk["seed"])):  # new meta (str) and old stores (int)
        again, _ = render_triplet(stored, on_disk["size"])
        assert again["composite"].tobytes() == triplet["composite"].tobytes()
    assert seed_value("18446744073709551615") == 2**64 - 1
    for bad in ("-1", "0x10", 1.5, None, True):
        with pytest.raises(ValueError, match="seed must be"):
            seed_value(bad)


@pytest.mark.parametrize("size", [32, 512])
def test_panels_are_rgb_and_sized(size):
    triplet, meta = render_triplet(3, size)
    assert set(triplet) == set(PANELS)
    for img in triplet.values():
        assert img.mode == "RGB" and img.size == (size, size)
    assert meta["size"] == size
    x0, y0, x1, y1 = meta["logo_box"]
    assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size


def test_meta_describes_the_item():
    kinds = set()
    for seed in range(60):
        _, meta = render_triplet(seed)
        kinds.add(meta["kind"])
        cap = meta["caption"]
        for key in ("kind", "object_colour", "logo_colour", "logo_shape"):
            assert meta[key] in cap
        assert f"'{meta['text']}'" in cap
        json.dumps(meta)  # must be storable as-is
    assert kinds == set(KINDS)


def test_a_caption_splits_into_an_object_clause_and_a_logo_clause_naming_one_colour_each():
    for seed in range(40):
        _, meta = render_triplet(seed, logos=1 + seed % 2)
        obj, logo = split_caption(meta["caption"])
        assert f"{obj} with {logo}" == meta["caption"]
        assert meta["kind"] in obj and meta["object_colour"] in obj.split()
        assert meta["logo_colour"] in logo.split() and meta["logo_shape"] in logo
        assert [w for w in obj.split() if w in COLOURS] == [meta["object_colour"]]
    with pytest.raises(ValueError, match="not a rendered caption"):
        split_caption("a red mug")


def _best_alpha_residual(comp, obj, logo) -> np.ndarray:
    """Per-pixel residual of the best clipped alpha blend comp ~ (1-a) obj + a logo."""
    d, e = logo - obj, comp - obj
    a = np.clip((d * e).sum(-1) / np.maximum((d * d).sum(-1), 1e-9), 0, 1)
    return np.sqrt(((e - a[..., None] * d) ** 2).mean(-1))


def test_composite_is_not_a_linear_blend_of_its_layers():
    residuals, elsewhere = [], []
    for seed in range(20):
        t, meta = render_triplet(seed, 64)
        comp, logo, obj = (_arr(t[p]) for p in PANELS)
        printed = np.abs(comp - obj).max(-1) > 40  # where the logo visibly changed the photo
        res = _best_alpha_residual(comp, obj, logo)
        residuals.append(np.median(res[printed]))
        elsewhere.append(np.median(res[~printed]))  # only blur + sensor noise there
        # Control: a real alpha blend of the same panels is fitted almost exactly, so the
        # residual above measures the renderer, not the fitting.
        linear = 0.6 * obj + 0.4 * logo
        assert _best_alpha_residual(linear, obj, logo).max() < 1e-6
    assert np.median(residuals) > 15, residuals
    assert np.median(residuals) > 5 * np.median(elsewhere), (residuals, elsewhere)


def test_logo_is_visible_on_the_object_at_32px():
    for seed in range(30):
        t, meta = render_triplet(seed, 32)
        diff = np.abs(_arr(t["composite"]) - _arr(t["object"])).mean(-1)
        x0, y0, x1, y1 = meta["logo_box"]
        box = np.zeros_like(diff, bool)
        box[y0:y1, x0:x1] = True
        assert (x1 - x0) >= 5 and (y1 - y0) >= 5, meta["logo_box"]
        assert diff[box].mean() > 15, (seed, meta["caption"])
        assert diff[box].mean() > 3 * diff[~box].mean(), (seed, meta["caption"])


def test_logo_panel_is_bold_on_white():
    for seed in range(20):
        t, meta = render_triplet(seed, 32)
        logo = _arr(t["logo"])
        assert (logo[0] == 255).all() and (logo[:, 0] == 255).all()  # white margin
        near = np.linalg.norm(logo - np.array(COLOURS[meta["logo_colour"]]), axis=-1) < 60
        assert near.mean() > 0.12, (seed, meta["caption"], near.mean())


def _digest(img: Image.Image) -> str:
    return hashlib.sha256(img.tobytes()).hexdigest()


def test_splits_have_disjoint_ids_seeds_and_content():
    items = {s: list(make_split(s, 25, 32, seed=0)) for s in ("seeds", "pool", "test")}
    ids = {s: {i for i, _, _ in v} for s, v in items.items()}
    assert all(i.startswith("seed-") for i in ids["seeds"])
    assert all(i.startswith("pool-") for i in ids["pool"]) and all(i.startswith("test-") for i in ids["test"])
    train_seeds = {item_seed(s, i, b) for s in ("seeds", "pool") for i in range(200) for b in range(3)}
    test_seeds = {item_seed("test", i, b) for i in range(200) for b in range(3)}
    assert not train_seeds & test_seeds
    train_px = {_digest(t["composite"]) for s in ("seeds", "pool") for _, t, _ in items[s]}
    assert not train_px & {_digest(t["composite"]) for _, t, _ in items["test"]}
    assert len(ids["seeds"]) == 25 and items["test"][0][2]["split"] == "test"


def test_make_split_is_reproducible():
    a = [(i, _digest(t["object"])) for i, t, _ in make_split("test", 5, 32, seed=9)]
    b = [(i, _digest(t["object"])) for i, t, _ in make_split("test", 5, 32, seed=9)]
    assert a == b


def test_write_split_layout(tmp_path):
    ids = write_split("seeds", 3, 32, 1, str(tmp_path / "s"))
    pool = write_split("pool", 2, 32, 1, str(tmp_path / "p"))
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(ids)
    for sid in ids:
        files = sorted(p.name for p in (tmp_path / "s" / sid).iterdir())
        assert files == ["composite.png", "logo.png", "meta.json", "object.png"]
        with Image.open(tmp_path / "s" / sid / "logo.png") as im:
            assert im.mode == "RGB" and im.size == (32, 32)
        assert json.loads((tmp_path / "s" / sid / "meta.json").read_text())["split"] == "seeds"
    for pid in pool:
        assert sorted(p.name for p in (tmp_path / "p" / pid).iterdir()) == ["composite.png", "meta.json"]
    before = (tmp_path / "s" / ids[0] / "composite.png").read_bytes()
    write_split("seeds", 3, 32, 1, str(tmp_path / "s"))  # rerun overwrites identically
    assert (tmp_path / "s" / ids[0] / "composite.png").read_bytes() == before
    assert len(list((tmp_path / "s").iterdir())) == 3  # no temp folders left behind


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: list(make_split("train", 1, 32, 0)), "split must be one of"),
        (lambda: list(make_split("seeds", -1, 32, 0)), "non-negative"),
        (lambda: render_triplet(0, 8), "panel size"),
        (lambda: render_triplet(0, 4096), "panel size"),
    ],
)
def test_bad_arguments_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_a_slice_keeps_only_its_items_and_they_are_the_unsliced_stream_s():
    from layerloop.models.synthetic import WorldSlice, make_split

    where = WorldSlice(kinds=("mug", "bottle"), shapes=("circle", "star", "ring", "square"))
    sliced = list(make_split("seeds", 6, 32, 3, where))
    assert all(m["kind"] in ("mug", "bottle") and m["logo_shape"] in where.shapes for _, _, m in sliced)
    everything = {sid: t for sid, t, _ in make_split("seeds", sliced[-1][2]["index"] + 1, 32, 3)}
    for sid, t, _ in sliced:  # same ids, same pixels: a sliced split is a subset of the whole stream
        assert np.array_equal(np.asarray(t["composite"]), np.asarray(everything[sid]["composite"]))


def test_peek_identity_matches_the_render_and_bad_slices_are_refused():
    from layerloop.models.synthetic import WorldSlice, item_seed, peek_identity, render_triplet

    for i in range(5):
        s = item_seed("pool", i, 0)
        _, meta = render_triplet(s, 32)
        assert peek_identity(s) == {"kind": meta["kind"], "logo_shape": meta["logo_shape"], "text": meta["text"]}
    with pytest.raises(ValueError, match="kinds must be a non-empty subset"):
        WorldSlice(kinds=("mug", "teapot"))
    with pytest.raises(ValueError, match="shapes must be a non-empty subset"):
        WorldSlice(shapes=())
    assert WorldSlice(kinds=("mug",)).contains({"kind": "mug", "logo_shape": "star", "text": "ZAP"})
    assert not WorldSlice(words=("ZAP",)).contains({"kind": "mug", "logo_shape": "star", "text": "SOL"})


def test_two_logos_keep_the_one_logo_scene_and_add_a_second_logo_with_its_truth():
    import numpy as np

    from layerloop.models.matting import over_white
    from layerloop.models.synthetic import render_logo_rgba, render_triplet

    one, meta1 = render_triplet(21, 64)
    two, meta2 = render_triplet(21, 64, logos=2)
    assert list(two) == ["composite", "logo_1", "logo_2", "object"] and list(one) == ["composite", "logo", "object"]
    assert np.array_equal(np.asarray(one["object"]), np.asarray(two["object"]))  # same scene, same object
    assert (meta2["kind"], meta2["logo_shape"], meta2["text"]) == (meta1["kind"], meta1["logo_shape"], meta1["text"])
    assert meta2["logos"] == 2 and meta2["text_2"] in meta2["caption"] and meta2["logo_2_colour"] != meta2["logo_colour"]
    assert not np.array_equal(np.asarray(one["composite"]), np.asarray(two["composite"]))
    for index, name in ((1, "logo_1"), (2, "logo_2")):
        layer = render_logo_rgba(21, 64, index=index)
        assert np.abs(np.asarray(over_white(layer), int) - np.asarray(two[name], int)).max() <= 2
    with pytest.raises(ValueError, match="logos must be 1 or 2"):
        render_triplet(21, 32, logos=3)


def test_world_logos_names_the_schemas_the_renderer_draws():
    from layerloop.models.synthetic import world_logos

    assert world_logos(["logo", "object"]) == 1 and world_logos(("logo_1", "logo_2", "object")) == 2
    with pytest.raises(ValueError, match="renders layers"):
        world_logos(["mask", "object"])

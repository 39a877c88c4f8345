"""Validation and ingestion: a corrupt-input corpus built here, each item refused with its own reason."""
from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from layerloop.storage import schema as S
from layerloop.storage import validate as V
from layerloop.storage.config import StoreConfig
from layerloop.storage.errors import InvalidImage
from layerloop.storage.ingest import IngestError, ingest_pool, ingest_seeds
from layerloop.storage.rounds import RoundStore

from . import helpers as H

GOOD = H.png((120, 60, 30))


def _good_triplet(size=(16, 16)):
    return {"composite": H.png((120, 60, 30), size), "logo": H.png((0, 0, 200), size),
            "object": H.png((120, 60, 31), size)}


def _reason(data: bytes, **limits) -> str:
    with pytest.raises(InvalidImage) as info:
        V.check_image(data, name="x", limits=StoreConfig(**limits) if limits else StoreConfig())
    return info.value.reason


def test_each_bad_image_has_its_own_reason():
    noisy = H.png(size=(32, 32), noise_seed=1)
    gif = H.encode(Image.new("RGB", (16, 16), (255, 0, 0)), "GIF", save_all=True,
                   append_images=[Image.new("RGB", (16, 16), (0, 0, 255))])
    cases = {
        V.EMPTY_FILE: _reason(b""),
        V.NOT_AN_IMAGE: _reason(b"this is not an image at all"),
        V.TRUNCATED: _reason(noisy[: len(noisy) // 2]),
        V.BOMB: _reason(H.bomb_png()),
        V.TOO_LARGE: _reason(H.png(size=(64, 16)), max_panel_side=32),
        V.TOO_SMALL: _reason(H.png(size=(4, 16))),
        V.MULTI_FRAME: _reason(gif),
        V.FILE_TOO_LARGE: _reason(noisy, max_file_bytes=1024),
    }
    assert cases == {k: k for k in cases}
    assert _reason(H.png(size=(40, 40)), max_image_pixels=1000) == V.BOMB  # our limit, not only PIL's
    assert _reason(noisy[:-12]) == V.TRUNCATED  # cut after the pixels: PIL alone would accept it


@pytest.mark.parametrize("data, note, pixel", [
    (H.encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"), "CMYK->RGB", None),
    (H.sixteen_bit_png(), "I;16->8bit->RGB", (156, 156, 156)),
    (H.encode(Image.new("RGBA", (16, 16), (0, 0, 0, 0)), "PNG"), "RGBA->RGB(on white)", (255, 255, 255)),
    (H.encode(Image.new("P", (16, 16), 7), "PNG"), "P->RGB", None),
    (H.encode(Image.new("L", (16, 16), 9), "PNG"), "L->RGB", (9, 9, 9)),
], ids=["cmyk", "16bit", "rgba", "palette", "gray"])
def test_convertible_modes_become_rgb_and_are_recorded(data, note, pixel):
    v = V.check_image(data, name="x", limits=StoreConfig())
    assert v.image.mode == "RGB" and v.conversions == [note]
    if pixel is not None:
        assert v.image.getpixel((0, 0)) == pixel


def test_exif_orientation_is_applied_and_recorded():
    v = V.check_image(H.exif_rotated_jpeg((16, 8), 6), name="x", limits=StoreConfig())
    assert v.image.size == (8, 16) and v.conversions == ["exif-orientation-6"]


def _corpus(root):
    """Good items plus one item per failure mode of a seed folder; returns {item: expected reason}."""
    H.write_item(root, "good-1", _good_triplet(), meta={"caption": "a red mug", "kind": "mug"})
    H.write_item(root, "good-cmyk", {**_good_triplet(),
                                     "logo": H.encode(Image.new("CMYK", (16, 16)), "JPEG")}, exts={"logo": "jpg"})
    H.write_item(root, "good-rot", {**_good_triplet(), "object": H.exif_rotated_jpeg((16, 16), 3)},
                 exts={"object": "jpg"})
    bad = {
        "zero": ({"composite": b""}, V.EMPTY_FILE),
        "notimg": ({"logo": b"hello"}, V.NOT_AN_IMAGE),
        "trunc": ({"composite": H.png(size=(16, 16), noise_seed=2)[:200]}, V.TRUNCATED),
        "bomb": ({"object": H.bomb_png()}, V.BOMB),
        "sizes": ({"logo": H.png(size=(16, 24))}, V.SIZE_MISMATCH),
    }
    for item, (override, _) in bad.items():
        H.write_item(root, item, {**_good_triplet(), **override})
    H.write_item(root, "missing", {k: v for k, v in _good_triplet().items() if k != "object"})
    H.write_item(root, "bad name!", _good_triplet())
    H.write_item(root, "badmeta", _good_triplet(), meta="{nope")
    d = H.write_item(root, "twice", _good_triplet())
    (d / "logo.jpg").write_bytes(H.encode(Image.new("RGB", (16, 16)), "JPEG"))
    d = H.write_item(root, "linked", {k: v for k, v in _good_triplet().items() if k != "logo"})
    os.symlink(root / "good-1" / "logo.png", d / "logo.png")
    for panel, data in _good_triplet().items():  # flat file with an id already used by a folder
        (root / f"good-1_{panel}.png").write_bytes(data)
    (root / ".half-written.tmp").mkdir()  # another writer's temp folder: skipped
    expected = {k: r for k, (_, r) in bad.items()}
    expected.update({"missing": V.MISSING_PANEL, "bad name!": V.UNSAFE_NAME, "badmeta": V.BAD_META,
                     "twice": V.AMBIGUOUS_PANEL, "linked": V.UNSAFE_LINK, "good-1": V.DUPLICATE_ID})
    return expected


def test_corpus_ingestion_quarantines_each_bad_item_with_its_reason(tmp_path):
    expected = _corpus(tmp_path / "in")
    store = RoundStore(str(tmp_path / "store"))
    report = ingest_seeds(str(tmp_path / "in"), store, StoreConfig())
    got = {q["item"]: q["reason"] for q in report.quarantined}
    assert got == expected
    assert len(set(got.values())) == len(got)  # every failure mode has its own reason
    rows = store.read(0)
    assert sorted(rows[S.SAMPLE_ID]) == ["good-1", "good-cmyk", "good-rot"]
    assert set(rows[S.SOURCE]) == {"seed"} and rows[S.ACCEPTED].all()
    conv = dict(zip(rows[S.SAMPLE_ID], rows[S.CONVERSIONS].map(list)))
    assert conv == {"good-1": [], "good-cmyk": ["logo:CMYK->RGB"], "good-rot": ["object:exif-orientation-3"]}
    first = rows.set_index(S.SAMPLE_ID).loc["good-1"]
    assert (first[S.CAPTION], first[S.KIND]) == ("a red mug", "mug")
    reasons = [q["reason"] for q in store.quarantined()]
    assert len(reasons) == len(expected) and all(r.split(":")[0] in expected.values() for r in reasons)
    assert store.verify() == []


def test_flat_and_csv_layouts(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(2):
        for panel, data in _good_triplet().items():
            (flat / f"item{i}_{panel}.png").write_bytes(data)
    store = RoundStore(str(tmp_path / "s1"))
    r = ingest_seeds(str(flat), store, StoreConfig())
    assert (r.layout, r.accepted, sorted(store.read(0)[S.SAMPLE_ID])) == ("flat", 2, ["item0", "item1"])

    csv = tmp_path / "list.csv"
    csv.write_text("id,composite,logo,object,caption\n"
                   "c1,flat/item0_composite.png,flat/item0_logo.png,flat/item0_object.png,a cap\n"
                   "c1,flat/item1_composite.png,flat/item1_logo.png,flat/item1_object.png,\n"
                   "../up,flat/item1_composite.png,flat/item1_logo.png,flat/item1_object.png,\n"
                   "c2,flat/item1_composite.png,,flat/nope.png,\n")
    store = RoundStore(str(tmp_path / "s2"))
    r = ingest_seeds(str(csv), store, StoreConfig())
    assert r.layout == "csv" and r.accepted == 1
    assert r.reasons == {V.DUPLICATE_ID: 1, V.UNSAFE_NAME: 1, V.MISSING_PANEL: 1}
    assert store.read(0)[S.CAPTION].tolist() == ["a cap"]
    (tmp_path / "bad.csv").write_text("name,composite\nx,y\n")
    with pytest.raises(IngestError, match="needs columns 'id'"):
        ingest_seeds(str(tmp_path / "bad.csv"), RoundStore(str(tmp_path / "s3")), StoreConfig())


def test_unusable_inputs_stop_with_a_clear_error(tmp_path):
    store = RoundStore(str(tmp_path / "s"))
    with pytest.raises(IngestError, match="does not exist"):
        ingest_seeds(str(tmp_path / "nope"), store, StoreConfig())
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="no items found"):
        ingest_seeds(str(tmp_path / "empty"), store, StoreConfig())
    H.write_item(tmp_path / "allbad", "x", {"composite": b"", "logo": b"", "object": b""})
    with pytest.raises(IngestError, match="no valid items.*empty_file"):
        ingest_seeds(str(tmp_path / "allbad"), store, StoreConfig())
    assert store.committed_rounds() == []


def test_renderer_layout_with_meta_and_pool(tmp_path):
    from layerloop.models.synthetic import write_split

    write_split("seeds", 5, 32, 0, str(tmp_path / "seeds"))
    write_split("pool", 4, 32, 0, str(tmp_path / "pool"))
    store = RoundStore(str(tmp_path / "store"))
    r = ingest_seeds(str(tmp_path / "seeds"), store, StoreConfig())
    assert r.accepted == 5 and not r.quarantined
    rows = store.read(0)
    metas = {p.name: json.loads((p / "meta.json").read_text()) for p in (tmp_path / "seeds").iterdir()}
    for _, row in rows.iterrows():
        assert row[S.CAPTION] == metas[row[S.SAMPLE_ID]]["caption"] and row[S.KIND] == metas[row[S.SAMPLE_ID]]["kind"]
    p = ingest_pool(str(tmp_path / "pool"), store, StoreConfig())
    pool = store.read_pool()
    assert p.accepted == 4 and set(pool[S.SPLIT]) == {"pool"} and set(pool[S.SOURCE]) == {"imported"}
    assert store.committed_rounds() == [0]


def test_a_validation_split_is_held_out_of_every_training_view(tmp_path):
    from layerloop.models.synthetic import write_split

    write_split("seeds", 20, 32, 0, str(tmp_path / "seeds"))
    store = RoundStore(str(tmp_path / "store"))
    ingest_seeds(str(tmp_path / "seeds"), store, StoreConfig(), validation_size=3)
    val = store.validation_view()
    assert len(val) == 3 and set(val[S.SPLIT]) == {"validation"}
    train = store.training_view(up_to=0)
    assert len(train) == 17 and not set(train[S.SAMPLE_ID]) & set(val[S.SAMPLE_ID])
    assert store.round_info(0)["info"]["ingest"]["validation"] == 3
    again = RoundStore(str(tmp_path / "again"))  # same items -> the same held-out ids, whatever the listing order
    ingest_seeds(str(tmp_path / "seeds"), again, StoreConfig(), validation_size=3)
    assert set(again.validation_view()[S.SAMPLE_ID]) == set(val[S.SAMPLE_ID])
    few = RoundStore(str(tmp_path / "third"))  # never more than a fifth of the labeled items
    ingest_seeds(str(tmp_path / "seeds"), few, StoreConfig(), validation_size=15)
    assert len(few.validation_view()) == 4 and len(few.training_view(up_to=0)) == 16
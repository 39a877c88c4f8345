"""Human review: export a committed round's sheet, import decisions, and override the judge next commit."""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from layerloop.storage import schema as S
from layerloop.storage.rounds import RoundStore
from layerloop.models.judges.acceptance import apply_overrides
from layerloop.tasks.stages.review import export_review, import_review, load_overrides, read_review_csv


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, "PNG")
    return buf.getvalue()


def _samples(n):
    for i in range(n):
        score = i / (n - 1)
        yield ({S.SAMPLE_ID: f"r0-{i:03d}", S.SOURCE: "generated", S.PROMPT: f"prompt {i}",
                S.ACCEPTED: score >= 0.6, S.REASON: None if score >= 0.6 else "below threshold",
                S.SCORE_OVERALL: score, S.SCORE_LOGO_CLEAN: score},
               {"composite": _png((i * 20, 0, 0)), "logo": _png((0, i * 20, 0)), "object": _png((0, 0, i * 20))})


@pytest.fixture
def store(tmp_path):
    st = RoundStore(str(tmp_path / "store"))
    st.init()
    w = st.begin(0, parent_round=None, adapter_id=None, config={})
    w.write_unit("u0", _samples(11))
    w.commit(w.rows())
    return st


def _round_digest(store) -> str:
    root = Path(store.round_dir(0))
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())).hexdigest()


def _fill(path: Path, decisions: dict[str, tuple[str, str]]) -> None:
    rows = list(csv.DictReader(open(path)))
    for row in rows:
        if row["sample_id"] in decisions:
            row["decision"], row["reviewer"] = decisions[row["sample_id"]]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_export_writes_borderline_and_random_with_thumbnails(store, tmp_path):
    out = export_review(store, 0, tmp_path / "rev", overall_threshold=0.6, n_borderline=3, n_random=4)
    assert out["n"] == 7
    rows = list(csv.DictReader(open(out["csv"])))
    borderline = {r["sample_id"] for r in rows if r["selection"] == "borderline"}
    assert borderline == {"r0-005", "r0-006", "r0-007"}  # scores 0.5, 0.6, 0.7: nearest to 0.6
    assert sum(r["selection"] == "random" for r in rows) == 4 and len({r["sample_id"] for r in rows}) == 7
    page = Path(out["html"]).read_text()
    assert page.count('src="data:image/png;base64,') == 21
    # the 16 px panels are shown 8x (thumb_side 128), nearest-neighbour: one flat colour per panel here
    first = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    thumb = Image.open(io.BytesIO(base64.b64decode(first)))
    assert thumb.size == (128, 128) and len(thumb.convert("RGB").getcolors()) == 1
    assert all(r["decision"] == "" and len(r["content_hash"]) == 64 for r in rows)


def test_import_records_decisions_outside_the_round_and_overrides_next_commit(store, tmp_path):
    before = _round_digest(store)
    out = export_review(store, 0, tmp_path / "rev", overall_threshold=0.6, n_borderline=3, n_random=0)
    path = Path(out["csv"])
    _fill(path, {"r0-005": ("accept", "ana"), "r0-007": ("reject", "")})
    imported = import_review(store, path, reviewer="bob")
    assert imported["n"] == 2 and "/reviews/" in imported["path"]
    assert _round_digest(store) == before  # the committed round is never edited

    _fill(path, {"r0-005": ("reject", "carl"), "r0-007": ("", "")})
    import_review(store, path)
    overrides = load_overrides(store).set_index("sample_id")
    assert not overrides.loc["r0-005", "accepted"] and overrides.loc["r0-005", "reviewer"] == "carl"
    assert overrides.loc["r0-007", "reviewer"] == "bob"

    committed = store.read(0, "all")
    chash = committed.set_index(S.SAMPLE_ID).loc["r0-005", S.CONTENT_HASH]
    nxt = pd.DataFrame({S.SAMPLE_ID: ["r0-007", "r1-new", "r1-same-pixels"], S.CONTENT_HASH: ["x", "y", chash],
                        S.ACCEPTED: [True, True, True], S.REASON: ["", "", ""]})
    decided = apply_overrides(nxt, load_overrides(store))
    assert list(decided[S.ACCEPTED]) == [False, True, False]
    assert decided[S.REASON].iloc[0].startswith("human review (reject) by bob at ")
    assert decided[S.REASON].iloc[2].startswith("human review (reject) by carl")
    assert list(nxt[S.ACCEPTED]) == [True, True, True]  # input untouched


def test_bad_review_files(tmp_path, store):
    bad = tmp_path / "bad.csv"
    bad.write_text("sample_id,decision,reviewer\na,maybe,ana\n")
    with pytest.raises(ValueError, match="accept or reject"):
        read_review_csv(bad)
    bad.write_text("sample_id,decision,reviewer\na,accept,\n")
    with pytest.raises(ValueError, match="no reviewer"):
        read_review_csv(bad)
    bad.write_text("sample_id,decision,reviewer\na,,\n")
    with pytest.raises(ValueError, match="no filled decision"):
        import_review(store, bad, reviewer="x")
    bad.write_text("id,verdict\n")
    with pytest.raises(ValueError, match="sample_id and decision"):
        read_review_csv(bad)


def test_no_reviews_means_no_change(store):
    rows = store.read(0, "all")
    assert load_overrides(store).empty
    pd.testing.assert_frame_equal(apply_overrides(rows, load_overrides(store)), rows)


def test_reviewed_training_view_moves_rows_in_and_out(store, tmp_path):
    from layerloop.tasks.stages.review import reviewed_training_view

    plain = set(store.training_view(up_to=0)[S.SAMPLE_ID])
    assert reviewed_training_view(store, 0)[1] == []  # no review yet: the committed view, nothing moved
    assert set(reviewed_training_view(store, 0)[0][S.SAMPLE_ID]) == plain
    out = export_review(store, 0, tmp_path / "rev", overall_threshold=0.6, n_borderline=11, n_random=0)
    _fill(Path(out["csv"]), {"r0-006": ("reject", "ana"), "r0-002": ("accept", "ana")})  # accepted / rejected
    import_review(store, Path(out["csv"]))
    rows, changed = reviewed_training_view(store, 0)
    assert set(rows[S.SAMPLE_ID]) == plain - {"r0-006"} | {"r0-002"} and changed == ["r0-002", "r0-006"]
    assert set(store.training_view(up_to=0)[S.SAMPLE_ID]) == plain  # the round itself is unchanged

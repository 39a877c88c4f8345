"""Per-round report built from a real two-round store: numbers, plots, thumbnails, escaping, self-containment."""
from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layerloop.tasks.reporting.report import build_report, round_thresholds

DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture
def built(two_round_store):
    paths = build_report(two_round_store, 1)
    html = Path(paths["html"]).read_text()
    data = json.loads(Path(paths["json"]).read_text())
    return two_round_store, paths, html, data


def test_files_land_in_the_round(built):
    store, paths, _, _ = built
    round_dir = Path(store.round_uri(1))
    assert {Path(p).name for p in paths.values()} == {"report.html", "report.json", "selection_rate.png"}
    assert all(Path(p).parent == round_dir for p in paths.values())
    assert Image.open(paths["selection_rate_png"]).format == "PNG"


def test_json_numbers(built):
    _, _, _, data = built
    r0, r1 = data["rounds"]
    assert r0["selection_rate"] is None and r0["accepted_by_source"] == {"seed": 4}
    assert r0["heldout"] == {"psnr_logo": 11.5, "psnr_object": 20.25}
    assert (r1["n_candidates"], r1["n_accepted"], r1["n_rejected"]) == (6, 3, 3)
    assert r1["selection_rate"] == pytest.approx(0.5)
    assert r1["selection_rate_by_source"] == {"cycle": 1.0, "generated": pytest.approx(0.4)}
    assert r1["accepted_by_source"] == {"generated": 2, "cycle": 1}
    assert data["thresholds"]["logo_clean"] == 0.5 and data["thresholds"]["cycle_error"] == 0.04
    # read from the rows' reasons, not from the config: 3 passed, 2 below threshold, 1 rejected by a person
    assert data["decisions"] == {"passed": {"accepted": 3, "rejected": 0},
                                 "thresholds": {"accepted": 0, "rejected": 2},
                                 "review": {"accepted": 0, "rejected": 1}}
    logo = data["scores"]["logo_clean"]
    assert logo["n"] == 6 and logo["pass_rate"] == pytest.approx(0.5) and sum(logo["hist_counts"]) == 6
    cyc = data["scores"]["cycle_error"]
    assert sum(cyc["hist_counts"]) == 6 and cyc["pass_rate"] == pytest.approx(0.5)  # 0.01, 0.03, 0.02 <= 0.04
    assert data["timings"] == {"train": 30.0, "generate": 4.0, "judge": 2.5, "cycle": 3.0, "commit": 0.2}
    assert [p["loss"] for p in data["loss_curves"]["0"]] == [1.0, 0.7, 0.5, 0.45]
    assert len(data["loss_curves"]["1"]) == 3
    assert len(data["samples_shown"]["accepted"]) == 3 and len(data["samples_shown"]["rejected"]) == 3


def test_html_is_self_contained_and_complete(built):
    _, _, html, data = built
    assert not re.search(r"(src|href)=[\"'](?!data:)", html), "every image must be inline"
    assert "http://" not in html and "https://" not in html and "<script" not in html
    images = DATA_URI.findall(html)
    # plots: selection, growth, loss, timings + 6 histograms (5 criteria + cycle error); 6 thumbnails
    assert len(images) == 16
    for b64 in images:
        assert Image.open(io.BytesIO(base64.b64decode(b64))).size[0] > 0
    for heading in ("Selection rate per round", "Decisions by rule", "Scores and cycle error", "Dataset growth", "Accepted samples",
                    "Rejected samples", "Training loss", "Per-stage timings"):
        assert heading in html
    for sid in data["samples_shown"]["rejected"]:
        assert sid in html
    assert "50.0 %" in html and "20.250" in html


def test_reasons_are_escaped(built):
    _, _, html, _ = built
    assert "below threshold: logo_clean 0.200 &lt; 0.500 &lt;script&gt;" in html
    assert ">nan<" not in DATA_URI.sub("", html)  # accepted rows have no reason: shown as accepted, not NaN


def test_thumbnail_shows_the_sample(built):
    store, _, html, data = built
    from layerloop.storage import schema as S

    rows = store.read(1, "all")
    first = data["samples_shown"]["accepted"][0]
    row = rows[rows[S.SAMPLE_ID] == first]
    (_, panels), = list(store.load_panels(row))
    composite = Image.open(io.BytesIO(panels["composite"])).convert("RGB")
    k = 128 // composite.width  # 32 px panels are shown 4x: large enough to judge
    alt = f'alt="{first}"'
    tag = html[html.rfind("<img", 0, html.index(alt)):html.index(alt)]
    thumb = Image.open(io.BytesIO(base64.b64decode(DATA_URI.search(tag).group(1)))).convert("RGB")
    side = composite.width * k
    assert k >= 4 and thumb.size == (3 * side, side)
    # nearest-neighbour: every model pixel a k x k block of exactly its colour, nothing smoothed
    enlarged = composite.resize((side, side), Image.NEAREST)
    assert np.array_equal(np.asarray(thumb.crop((0, 0, side, side))), np.asarray(enlarged))


def test_uncommitted_round_is_refused(two_round_store):
    with pytest.raises(ValueError, match="round 5 is not committed"):
        build_report(two_round_store, 5)


def test_thresholds_drawn_are_the_config_fields_by_their_one_name():
    cfg = {"thresholds": {"logo_clean": 0.6, "overall": 0.7, "max_cycle_error": None}}
    assert round_thresholds(cfg) == {"logo_clean": 0.6, "overall": 0.7}  # null = no cycle rule, no line
    cfg["thresholds"]["max_cycle_error"] = 0.02
    assert round_thresholds(cfg)["cycle_error"] == 0.02
    # other spellings are not guessed at
    assert round_thresholds({"thresholds": {"min_logo_clean": 0.6}, "loop": {"cycle_error_threshold": 0.05}}) == {}


def test_report_command_rebuilds_and_refuses_unknown_rounds(two_round_store):
    from typer.testing import CliRunner

    from layerloop.flows.cli.main import app

    html = Path(two_round_store.round_uri(0)) / "report.html"
    assert not html.exists()
    result = CliRunner().invoke(app, ["report", "0", "--store", two_round_store.uri])
    assert result.exit_code == 0, result.output
    assert f"html: {html}" in result.output and "layerloop — round 0" in html.read_text()
    bad = CliRunner().invoke(app, ["report", "9", "--store", two_round_store.uri])
    assert bad.exit_code == 2 and "round 9 is not committed" in bad.output


def test_disabled_cycle_rule_keeps_the_histogram_readable():
    import pandas as pd

    from layerloop.tasks.reporting.report import score_summary

    rows = pd.DataFrame({"cycle_error": [0.1, 0.2, 0.15]})
    s = score_summary(rows, {"cycle_error": 1e9})["cycle_error"]
    assert s["hist_edges"][-1] == pytest.approx(0.4) and s["pass_rate"] == 1.0
    assert sum(c > 0 for c in s["hist_counts"]) >= 2  # not all in one bin
    tight = score_summary(rows, {"cycle_error": 0.12})["cycle_error"]
    assert tight["hist_edges"][-1] == pytest.approx(0.2) and tight["pass_rate"] == pytest.approx(1 / 3)

"""The README's demo numbers are generated from a demo store by scripts/demo_numbers.py, not typed."""
from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from layerloop.storage import schema as S
from layerloop.storage.rounds import RoundStore

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "demo_numbers.py"
CONFIG = {"loop": {"eval_size": 2, "eval_seed": 1}, "model": {"panel_size": 32}}


def _script():
    spec = importlib.util.spec_from_file_location("demo_numbers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (value, 0, 0)).save(buf, "PNG")
    return buf.getvalue()


def _round(store: RoundStore, r: int, decisions: list[bool], heldout: dict | None) -> None:
    w = store.begin(r, parent_round=r - 1 if r else None, adapter_id=None, config=CONFIG)
    source = "seed" if r == 0 else "generated"
    w.write_unit("u0", [({S.SAMPLE_ID: f"r{r}-{i}", S.SOURCE: source, S.ACCEPTED: ok, S.REASON: None if ok else "no"},
                         {p: _png(10 * r + i + k) for k, p in enumerate(("composite", "logo", "object"))})
                        for i, ok in enumerate(decisions)])
    w.commit(w.rows(), {"heldout": heldout} if heldout else None)


@pytest.fixture
def demo_store(tmp_path):
    store = RoundStore(str(tmp_path / "demo-store"))
    _round(store, 0, [True] * 3, None)
    _round(store, 1, [True, False, False, False], {"psnr_logo": 12.07, "psnr_object": 23.98})
    _round(store, 2, [True, True, False, False], {"psnr_logo": 12.29, "psnr_object": 24.14})
    final = Path(store.adapter_uri(2))
    final.mkdir(parents=True)
    (final / "heldout.json").write_text(json.dumps({"metrics": {"psnr_logo": 12.51, "psnr_object": 24.33}}))
    return store


def test_the_sentence_and_table_come_from_the_store(demo_store, capsys):
    text = _script().main([demo_store.uri])
    assert text.startswith("The demo accepts 25 / 50 % of 4 candidates in rounds 1-2; held-out PSNR goes "
                           "from 12.07 / 23.98 to 12.51 / 24.33 dB (logo / object; identity ")
    printed = capsys.readouterr().out
    assert "| 2 | 4 | 2 | 50.0 % | 12.29 / 24.14 dB |" in printed and "| final adapter |" in printed


def test_write_fills_only_the_marked_block(demo_store, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- demo-numbers -->\nold claim: 99 %\n<!-- /demo-numbers -->\nafter\n")
    text = _script().main([demo_store.uri, "--write", str(readme)])
    assert readme.read_text() == f"before\n<!-- demo-numbers -->\n{text}\n<!-- /demo-numbers -->\nafter\n"
    unmarked = tmp_path / "other.md"
    unmarked.write_text("no markers\n")
    with pytest.raises(SystemExit, match="no <!-- demo-numbers -->"):
        _script().main([demo_store.uri, "--write", str(unmarked)])
    assert unmarked.read_text() == "no markers\n"


def test_the_final_adapter_is_quoted_against_its_control_per_layer_and_slice():
    final = {"psnr_object@unseen": 24.79, "psnr_object@seen": 24.44, "psnr_logo@unseen": 12.06}
    control = {"psnr_object@unseen": 23.34, "psnr_object@seen": 23.70, "psnr_logo@unseen": 11.25}
    text = _script()._against_control(final, control)
    assert "object unseen kinds 24.79 vs 23.34 dB, seen kinds 24.44 vs 23.70 dB" in text
    assert "logo unseen kinds 12.06 vs 11.25 dB" in text and "logo seen" not in text
    assert _script()._against_control(final, {}) == ""

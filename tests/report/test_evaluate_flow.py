"""The evaluate flow's table output and adapter resolution (the full flow runs in test_evaluate_e2e)."""
from __future__ import annotations

import csv
import io

import pytest

from layerloop.flows.evaluate import AdapterNotFound, resolve_adapter, to_csv, to_markdown, write_outputs
from layerloop.tasks.config import PipelineConfig

ROWS = [
    {"method": "identity baseline", "adapter": "", "psnr_logo": 9.51234, "psnr_object": 21.0, "ssim_logo": 0.3,
     "ssim_object": 0.8, "n": 4},
    {"method": "final (round 2)", "adapter": "/a/round-0002", "psnr_logo": 14.0, "psnr_object": 24.5,
     "ssim_logo": 0.6, "ssim_object": 0.9, "vqa_logo": None, "n": 4},
]


def test_markdown_and_csv(tmp_path):
    md = to_markdown(ROWS)
    lines = md.splitlines()
    assert lines[0] == "| method | psnr_logo | psnr_object | ssim_logo | ssim_object | vqa_logo | n |"
    assert lines[2] == "| identity baseline | 9.5123 | 21.0000 | 0.3000 | 0.8000 | – | 4 |"
    parsed = list(csv.DictReader(io.StringIO(to_csv(ROWS))))
    assert [r["method"] for r in parsed] == ["identity baseline", "final (round 2)"]
    assert float(parsed[1]["psnr_object"]) == 24.5 and parsed[1]["adapter"] == "/a/round-0002"
    paths = write_outputs(ROWS, str(tmp_path / "out"))
    assert open(paths["markdown"]).read() == md and "final (round 2)" in open(paths["json"]).read()


def test_resolve_adapter_errors(tmp_path):
    cfg = PipelineConfig.model_validate({"store": {"uri": str(tmp_path / "store")}})
    with pytest.raises(AdapterNotFound, match="neither a round number nor a directory"):
        resolve_adapter(str(tmp_path), cfg)
    with pytest.raises(AdapterNotFound, match="round 3 has no trained adapter"):
        resolve_adapter("3", cfg)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "pytorch_lora_weights.safetensors").write_bytes(b"x")
    assert resolve_adapter(str(tmp_path / "mine"), cfg) == ("mine", str(tmp_path / "mine"))


def test_vlm_backend_adds_vqascore_and_vlmscore(tmp_path):
    import torch

    from layerloop.flows.evaluate import vlm_scorers
    from layerloop.models.evaluation import identity_baseline, identity_predictions
    from layerloop.models.synthetic import make_split
    from tests.judges.tiny_qwen import build_tiny_qwen

    torch.set_num_threads(1)
    path = build_tiny_qwen(str(tmp_path / "qwen"))
    cfg = PipelineConfig.model_validate({"judge": {"backend": "qwen", "qwen": {"path": path, "max_pixels": 112 * 112}}})
    vqa, judge = vlm_scorers(cfg)
    assert vlm_scorers(cfg) == (vqa, judge)  # loaded once per process
    assert vqa.runtime is judge.runtime  # one VLM serves both
    items = list(make_split("test", 2, 32, 3))
    result = identity_baseline(items, vqa=vqa, judge=judge, return_rows=True)
    for key in ("vqa_logo", "vqa_object", "vlm_score"):
        assert 0.0 <= result[key] <= 1.0
    # The row's VQAScore is the scorer's answer for that very panel and the item's own description.
    _, triplet, meta = items[0]
    white = identity_predictions([triplet["composite"]], ["logo"])[0]["logo"]
    text = f"a {meta['logo_colour']} {meta['logo_shape']} logo reading '{meta['text']}' on a plain white background"
    assert result["rows"][0]["vqa_logo"] == pytest.approx(vqa.score([white], [text])[0], abs=1e-5)
    assert vlm_scorers(PipelineConfig()) == (None, None)

"""The evaluate flow's table output and adapter resolution (the full flow runs in test_evaluate_e2e)."""
from __future__ import annotations

import csv
import io

import pytest

from flows.config import PipelineConfig
from flows.evaluate import AdapterNotFound, resolve_adapter, to_csv, to_markdown, write_outputs

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

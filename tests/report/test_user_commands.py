"""`layerloop decompose / synthesize / eval` end to end on a tiny real backbone and a trained LoRA."""
from __future__ import annotations

import json

import numpy as np
from prefect import flow  # noqa: F401 - sets up Prefect logging on the real stderr, not on CliRunner's temporary one
import pytest
from PIL import Image
from typer.testing import CliRunner

from layerloop.flows.cli.main import app


def test_decompose_any_size_and_bad_files(tmp_path, tiny_adapter, config_file):
    from layerloop.models.synthetic import render_triplet

    wide = render_triplet(5, 64)[0]["composite"].resize((90, 40))
    wide.save(tmp_path / "wide.jpg")
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(tmp_path / "square.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "out"
    args = ["decompose", str(tmp_path / "wide.jpg"), str(tmp_path / "broken.png"), str(tmp_path / "missing.png"),
            str(tmp_path / "square.png"), "--out", str(out), "--adapter", tiny_adapter["adapter_dir"],
            "--config", str(config_file)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "broken.png: not a readable image" in result.output and "missing.png: no such file" in result.output
    assert "2 of 4 input(s) failed" in result.output
    assert Image.open(out / "wide.logo.png").size == (90, 40)
    assert Image.open(out / "wide.object.png").size == (90, 40)
    assert Image.open(out / "wide.grid.png").size == (96, 32)
    side = json.loads((out / "wide.json").read_text())
    assert side["original_size"] == [90, 40] and side["fit"] == "pad" and side["panel_size"] == 32
    assert side["box"] == [0, 9, 32, 23] and side["adapter"] == "adapter"
    square = json.loads((out / "square.json").read_text())
    assert square["fit"] == "none" and square["conversions"] == ["RGBA->RGB"]
    # The grid's composite panel is the fitted input: white letterbox rows above and below the picture.
    grid = np.asarray(Image.open(out / "wide.grid.png"))
    assert (grid[:9, :32] == 255).all() and not (grid[9:23, :32] == 255).all()
    assert not (out / "broken.logo.png").exists()


def test_decompose_in_the_inference_mode_on_a_photo(tmp_path, tiny_adapter, config_file):
    from layerloop.models.synthetic import render_triplet

    photo = render_triplet(7, 64)[0]["composite"].resize((80, 60))
    photo.save(tmp_path / "photo.jpg", quality=90)
    out = tmp_path / "out"
    args = ["decompose", str(tmp_path / "photo.jpg"), "--out", str(out), "--adapter", tiny_adapter["adapter_dir"],
            "--config", str(config_file), "--draws", "3", "--anchor"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "1 image(s)" in result.output and "s per image (3 draw(s), anchored, + 1 re-synthesis" in result.output
    side = json.loads((out / "photo.json").read_text())
    assert side["inference"] == {"draws": 3, "anchor": True}
    assert Image.open(out / "photo.object.png").size == (80, 60)
    bad = CliRunner().invoke(app, args[:-3] + ["--draws", "0"])
    assert bad.exit_code == 2 and "sample.draws" in bad.output  # a bad value names the field


def test_synthesize_maps_back_to_the_object_size(tmp_path, tiny_adapter, config_file):
    from layerloop.models.synthetic import render_triplet

    triplet = render_triplet(3, 32)[0]
    triplet["logo"].save(tmp_path / "logo.png")
    triplet["object"].resize((48, 64)).save(tmp_path / "object.png")
    out = tmp_path / "made" / "composite.png"
    result = CliRunner().invoke(app, ["synthesize", str(tmp_path / "logo.png"), str(tmp_path / "object.png"),
                                      "--out", str(out), "--adapter", tiny_adapter["adapter_dir"],
                                      "--config", str(config_file)])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (48, 64)
    side = json.loads((tmp_path / "made" / "composite.png.json").read_text())
    assert side["object"]["original_size"] == [48, 64] and side["logo"]["fit"] == "none"
    assert side["inference"] == {"draws": 1, "anchor": True}  # sample's defaults reach synthesis (Sampler.compose)
    plain = tmp_path / "made" / "plain.png"
    again = CliRunner().invoke(app, ["synthesize", str(tmp_path / "logo.png"), str(tmp_path / "object.png"),
                                     "--out", str(plain), "--adapter", tiny_adapter["adapter_dir"], "--no-anchor", "--draws", "2",
                                     "--config", str(config_file)])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "made" / "plain.png.json").read_text())["inference"] == {"draws": 2, "anchor": False}


def test_unknown_adapter_is_a_clear_error(tmp_path, config_file):
    (tmp_path / "x.png").write_bytes(b"")
    result = CliRunner().invoke(app, ["decompose", str(tmp_path / "x.png"), "--out", str(tmp_path / "o"),
                                      "--adapter", "7", "--config", str(config_file)])
    assert result.exit_code == 2 and "round 7 has no trained adapter" in result.output


def test_eval_without_prefect_writes_the_table(tmp_path, tiny_adapter, config_file):
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", "--adapter", tiny_adapter["adapter_dir"], "--no-prefect",
                                      "--out", str(out), "--config", str(config_file)])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "eval.json").read_text())
    assert [r["method"] for r in rows] == ["identity baseline", "adapter"]
    assert all(r["n"] == 3 for r in rows)
    assert "| identity baseline |" in (out / "eval.md").read_text()
    assert (out / "eval.csv").read_text().splitlines()[0].startswith("method,psnr_logo,psnr_object")
    # the field's RGBA metrics (models.metrics) beside PSNR: the identity's blank logo has no alpha at all
    assert rows[0]["alpha_iou_logo"] == 0.0 and 0 < rows[1]["alpha_iou_logo"] <= 1
    assert all(r["l1_logo"] > 0 and r["l1_object"] > 0 and r["layer_edit"] > 0 for r in rows)
    assert "layer_edit" in (out / "eval.md").read_text()


def test_evaluate_flow_publishes_a_table_artifact(tmp_path, tiny_adapter, config_file, prefect_harness):
    from prefect.client.orchestration import get_client

    from layerloop.flows.evaluate import ARTIFACT_KEY, evaluate
    from layerloop.tasks.config import load_config

    cfg = load_config(config_file)
    result = evaluate(cfg, adapters=[tiny_adapter["adapter_dir"]], out_dir=str(tmp_path / "ev"), n=2)
    assert [r["method"] for r in result["rows"]] == ["identity baseline", "adapter"]
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[ARTIFACT_KEY])))
    assert found and found[-1].type == "table"
    assert "identity baseline" in json.dumps(found[-1].data)


def test_a_base_that_cannot_load_is_one_error_line(tmp_path, tiny_adapter, config_file):
    (tmp_path / "x.png").write_bytes(b"")
    result = CliRunner().invoke(app, ["decompose", str(tmp_path / "x.png"), "--out", str(tmp_path / "o"),
                                      "--adapter", tiny_adapter["adapter_dir"], "--config", str(config_file)],
                                env={"LAYERLOOP__MODEL__PATH": str(tmp_path / "no-base")})
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: tiny base not found in") and "--debug" in lines[0]

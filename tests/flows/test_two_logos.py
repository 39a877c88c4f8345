"""The K=3 layer schema end to end (composite | logo_1 | logo_2 | object): two-logo seeds and pool, a seed
adapter, one loop round committed and evaluated, and a decomposition written as a PSD with both logos."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner


@pytest.fixture(scope="module")
def two_logo_inputs(tmp_path_factory):
    from layerloop.tasks.stages.demo import make_inputs

    return make_inputs(str(tmp_path_factory.mktemp("inputs-k3")), n_seeds=6, n_pool=6, panel_size=32, seed=3, logos=2)


@pytest.fixture
def k3_cfg(tmp_path, two_logo_inputs):
    import torch

    from layerloop.tasks.config import deep_merge, load_config
    from layerloop.tasks.stages.demo import smoke_overrides, two_logo_overrides

    torch.set_num_threads(1)
    return load_config(None, overrides=deep_merge(smoke_overrides(str(tmp_path / "store"), two_logo_inputs),
                                                  two_logo_overrides()))


def test_a_two_logo_round_is_committed_evaluated_and_decomposed_into_a_psd(k3_cfg, tmp_path):
    from psd_tools import PSDImage

    from layerloop.flows.cli.main import app
    from layerloop.storage import schema as S
    from layerloop.tasks.runtime.driver import run_round
    from layerloop.tasks.stages.adapter import evaluate_adapter, train_adapter
    from layerloop.tasks.stages.handles import open_store
    from layerloop.tasks.stages.ingest import ingest_seeds

    ingest_seeds(k3_cfg)
    train_adapter(k3_cfg, 0)
    assert run_round(k3_cfg, 1)["skipped"] is False
    store = open_store(k3_cfg)
    for r in (0, 1):
        rows = store.read(r, "all")
        assert len(rows) and all({"composite", "logo_1", "logo_2", "object", "rgba_logo_1", "rgba_logo_2"}
                                 <= set(p) for p in rows[S.PANELS])
    assert set(store.read(1, "all")[S.SOURCE]) == {"generated", "cycle"}
    train_adapter(k3_cfg, 1)  # the round's data trains the next adapter, measured as the loop measures it
    evaluate_adapter(k3_cfg, 1)
    heldout = json.loads((tmp_path / "store" / "adapters" / "round-0001" / "heldout.json").read_text())["heldout"]
    assert {"psnr_logo_1", "psnr_logo_2", "psnr_object", "alpha_iou_logo_1", "alpha_iou_logo_2", "layer_edit"} <= set(heldout)

    config = tmp_path / "k3.yaml"
    config.write_text(json.dumps(k3_cfg.model_dump(mode="json")))  # JSON is YAML
    table = CliRunner().invoke(app, ["eval", "--no-prefect", "--out", str(tmp_path / "eval"), "--config", str(config)])
    assert table.exit_code == 0, table.output
    rows = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert [r["method"] for r in rows][:2] == ["identity baseline", "round 0"] and len(rows) == 3
    assert all(0 <= r["alpha_iou_logo_1"] <= 1 and 0 <= r["alpha_iou_logo_2"] <= 1 and r["layer_edit"] > 0
               for r in rows)
    photo = tmp_path / "photo.png"
    photo.write_bytes(next(iter(store.load_panels(store.read(0).iloc[:1])))[1]["composite"])
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["decompose", str(photo), "--out", str(out), "--psd", "--config", str(config)])
    assert result.exit_code == 0, result.output
    psd = PSDImage.open(out / "photo.psd")
    assert [layer.name for layer in psd] == ["input (reference)", "object", "logo_2", "logo_1"]
    assert (out / "photo.logo_1.rgba.png").is_file() and (out / "photo.logo_2.rgba.png").is_file()


def test_a_vlm_judge_with_another_layer_schema_is_refused_at_load():
    from layerloop.tasks.config import ConfigError, load_config
    from layerloop.tasks.stages.demo import two_logo_overrides

    judges = {"openai": {"backend": "openai"}, "qwen": {"backend": "qwen", "qwen": {"path": "/models/qwen"}}}
    for backend, judge in judges.items():
        with pytest.raises(ConfigError, match=f"judge.backend '{backend}' reads three-panel triplets"):
            load_config(None, overrides={**two_logo_overrides(), "judge": judge})

"""Factory: the tiny backbone builds from real classes, runs a full FluxFillPipeline call, round-trips its
weights through safetensors, and bad configs stop with a message that says what to fix."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from layerloop.models import tiny
from layerloop.models.config import ModelConfig
from layerloop.models.factory import BackboneConfigError, build_backbone
from layerloop.models.grid import fill_missing, make_grid, task_mask


def _call(backbone, seed: int = 0) -> np.ndarray:
    comp = Image.new("RGB", (backbone.panel_size,) * 2, (200, 30, 30))
    grid = make_grid(fill_missing({"composite": comp}, backbone.schema, backbone.panel_size), backbone.schema)
    pe, pooled, _ = backbone.task_embeddings("decompose")
    w, h = backbone.grid_size
    out = backbone.pipeline()(
        prompt_embeds=pe, pooled_prompt_embeds=pooled, image=grid, height=h, width=w,
        mask_image=task_mask("decompose", backbone.schema, backbone.panel_size), num_inference_steps=2,
        generator=torch.Generator().manual_seed(seed), output_type="np",
    )
    return out.images[0]


def test_tiny_backbone_runs_a_full_fill_pipeline_call(tiny_backbone):
    from diffusers import AutoencoderKL, FluxFillPipeline, FluxTransformer2DModel

    assert isinstance(tiny_backbone.transformer, FluxTransformer2DModel)
    assert isinstance(tiny_backbone.vae, AutoencoderKL)
    pipe = tiny_backbone.pipeline()
    assert isinstance(pipe, FluxFillPipeline) and pipe is tiny_backbone.pipeline()
    assert pipe.transformer is tiny_backbone.transformer  # shared, not copied
    # in_channels = packed latent + packed masked latent + packed mask, exactly FluxFillPipeline's layout
    lat = tiny_backbone.vae.config.latent_channels
    assert tiny_backbone.transformer.config.in_channels == 2 * 4 * lat + 4 * pipe.vae_scale_factor ** 2
    image = _call(tiny_backbone)
    assert image.shape == (32, 96, 3) and np.isfinite(image).all()


def test_task_embeddings_are_cached_and_differ_per_task(tiny_backbone):
    a = tiny_backbone.task_embeddings("decompose")
    assert tiny_backbone.task_embeddings("decompose") is a
    b = tiny_backbone.task_embeddings("synthesize")
    c = tiny_backbone.task_embeddings("decompose", "a red mug with a star logo")
    assert a[0].shape == (1, tiny_backbone.max_sequence_length, tiny_backbone.transformer.config.joint_attention_dim)
    assert not torch.allclose(a[0], b[0]) and not torch.allclose(a[0], c[0])


def test_tokenizer_knows_the_template_words(tiny_backbone):
    ids = tiny_backbone.tokenizer_2(tiny_backbone.prompt_templates["synthesize"].format(caption="")).input_ids
    unk = tiny_backbone.tokenizer_2.unk_token_id
    assert ids[-1] == tiny_backbone.tokenizer_2.eos_token_id and unk not in ids


def test_base_weights_round_trip_through_a_diffusers_folder(tmp_path, tiny_backbone):
    meta = {"vocab": tiny.build_vocab(tiny_backbone.prompt_templates.values()),
            "vae_factors": {"shift_factor": 0.1, "scaling_factor": 0.9}, "record": {"note": "test"}}
    modules = tiny.build_modules(meta)
    tiny.save_base(modules, tmp_path, meta)
    assert tiny.assets_present(tmp_path) and (tmp_path / "model_index.json").is_file()
    loaded = build_backbone(ModelConfig(path=str(tmp_path)))
    assert loaded.vae.config.scaling_factor == pytest.approx(0.9)  # the VAE config carries its factors
    for name in tiny.COMPONENTS:
        saved = load_file(str(tiny.weights_path(tmp_path, name)))
        for k, v in getattr(loaded, name).state_dict().items():
            assert torch.equal(v, saved[k]) and torch.equal(v, modules[name].state_dict()[k]), (name, k)
    assert tiny.vocab_of(loaded.tokenizer_2) == meta["vocab"]
    assert loaded.base_id.startswith("tiny-base@") and loaded.base_path == str(tmp_path.resolve())
    assert json.loads((tmp_path / tiny.BASE_META).read_text()) == {"record": {"note": "test"}}


def test_a_base_continued_from_a_folder_ships_no_trace_of_where_it_was_loaded(tmp_path, tiny_backbone):
    from diffusers import FluxFillPipeline

    meta = {"vocab": tiny.build_vocab(tiny_backbone.prompt_templates.values()), "record": {}}
    tiny.save_base(tiny.build_modules(meta), tmp_path / "first", meta)
    loaded = FluxFillPipeline.from_pretrained(str(tmp_path / "first"))
    loaded.tokenizer("a red mug", padding="longest")  # a call that leaves padding set on the backend
    tiny.save_base(loaded.components, tmp_path / "again", meta)
    for path in (tmp_path / "again").rglob("*.json"):
        text = path.read_text()
        assert not any(key in text for key in tiny.LOAD_STATE_KEYS) and str(tmp_path) not in text, path.name
    for name in tiny.TOKENIZERS:
        assert json.loads((tmp_path / "again" / name / "tokenizer.json").read_text())["padding"] is None


def test_an_old_flat_layout_base_is_named_with_its_conversion(tmp_path):
    (tmp_path / "transformer.safetensors").write_bytes(b"")
    with pytest.raises(BackboneConfigError, match="old flat layout.*--convert-from"):
        build_backbone(ModelConfig(path=str(tmp_path)))


def test_missing_tiny_assets_need_the_explicit_flag(tmp_path):
    with pytest.raises(BackboneConfigError, match="pretrain_tiny_base.py"):
        build_backbone(ModelConfig(path=str(tmp_path)))
    assert build_backbone(ModelConfig(path=str(tmp_path)), allow_random_init=True).base_id == "tiny-random"


@pytest.mark.parametrize("kwargs, match", [
    (dict(panel_size=40), "multiple of 16"),
    (dict(backbone="flux"), "model.path is required"),
    (dict(layers=["logo", "logo"]), "unique"),
    (dict(nonsense=1), "Extra inputs"),
])
def test_bad_model_config_is_rejected_by_the_schema(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(backbone="flux", path="/nonexistent/flux-fill"), "does not exist"),
    (dict(prompt_templates={"decompose": "x"}), "missing for tasks"),
    (dict(device="tpu-ish"), "not a torch device"),
])
def test_bad_model_config_stops_the_factory(kwargs, match):
    with pytest.raises(BackboneConfigError, match=match):
        build_backbone(ModelConfig(**kwargs), allow_random_init=True)


def test_flux_dir_without_model_index_is_named(tmp_path):
    with pytest.raises(BackboneConfigError, match="without model_index.json"):
        build_backbone(ModelConfig(backbone="flux", path=str(tmp_path)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_device_without_cuda_is_a_config_error():
    with pytest.raises(BackboneConfigError, match="CUDA is not available"):
        build_backbone(ModelConfig(device="cuda"), allow_random_init=True)


def _pretrain_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "pretrain_tiny_base.py"
    spec = importlib.util.spec_from_file_location("pretrain_tiny_base", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pretraining_masks_are_binary_nonempty_and_varied():
    pre = _pretrain_module()
    rng = np.random.default_rng(0)
    masks = [pre.random_mask(rng, 3) for _ in range(60)]
    assert all(m.shape == (32, 96) and set(np.unique(m)) <= {0.0, 1.0} and m.sum() > 0 for m in masks)
    coverage = sorted(m.mean() for m in masks)
    assert coverage[0] < 0.2 and coverage[-1] > 0.6  # small holes and whole panels both occur


def test_pretraining_refuses_bad_arguments_saying_which(tmp_path, capsys):
    pre = _pretrain_module()
    cases = {("--init-from", str(tmp_path)): "is not a tiny base", ("--mask-mix", "0.5", "0.5", "0.5"): "sum",
             ("--related", "1.5"): "share in [0, 1]"}
    for argv, message in cases.items():
        with pytest.raises(SystemExit):
            pre.parse_args(list(argv))
        assert message in capsys.readouterr().err


def test_related_grids_copy_one_panel_and_keep_one_visible():
    import torch

    pre = _pretrain_module()
    source = torch.rand(64, 3, 32, 32) * 2 - 1
    grids, masks = pre.related_grids(source, np.random.default_rng(0), 3)
    panels = grids.view(64, 3, 32, 3, 32).permute(0, 3, 1, 2, 4)  # (batch, panel, C, H, W)
    exact = (panels == source[:, None]).flatten(2).all(-1)
    assert exact.float().mean() > 0.5  # copies dominate (70 % of panels)
    hidden = masks.view(64, 1, 32, 3, 32).amax(dim=(1, 2, 4))
    assert bool((hidden.sum(1) >= 1).all()) and bool((hidden.sum(1) <= 2).all())


def test_shipped_tiny_base_is_small_and_documents_its_metrics():
    assert tiny.assets_present(tiny.ASSET_DIR)
    files = [p for p in tiny.ASSET_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 20 * 2**20
    assert {p.suffix for p in files} == {".json", ".safetensors"}  # no pickles (.bin, .pt) anywhere
    meta = json.loads((tiny.ASSET_DIR / tiny.BASE_META).read_text())
    assert {"vae_psnr_heldout", "inpaint_psnr_masked"} <= set(meta["metrics"])


@pytest.mark.slow
def test_pretrain_smoke_run_writes_a_base_the_factory_loads(tmp_path):
    metrics = _pretrain_module().main(["--smoke", "--threads", "1", "--out", str(tmp_path)])
    assert np.isfinite(metrics["vae_psnr_heldout"]) and np.isfinite(metrics["inpaint_psnr_masked"])
    backbone = build_backbone(ModelConfig(path=str(tmp_path)))
    assert backbone.base_id.startswith("tiny-base@")
    assert backbone.vae.config.scaling_factor != 1.0  # set from the trained VAE's latent statistics


def test_loading_the_base_draws_no_progress_bars_and_leaves_them_switched_on(capfd):
    from diffusers.utils import logging as diffusers_logging

    build_backbone(ModelConfig())  # every stage process does this: its output stays clean
    assert "Loading" not in capfd.readouterr().err
    assert diffusers_logging.is_progress_bar_enabled()  # the user's own pipelines still show theirs


def test_triplet_grids_carry_their_own_items_caption():
    import torch
    from types import SimpleNamespace

    pre = _pretrain_module()
    panels = torch.arange(6 * 3, dtype=torch.float32).view(18, 1, 1, 1).expand(18, 3, 32, 32).contiguous()
    captions = [f"item {i // 3}" for i in range(18)]
    args = SimpleNamespace(related=0.0, triplet_share=1.0, caption_p=1.0)
    data = pre.TrainData(panels, captions, np.random.default_rng(0), "cpu", bank_size=8, args=args)
    grids, masks, prompts = data.batch(16, 3)
    firsts = grids[:, 0, 0, ::32]  # each panel's value = its row in `panels`
    assert bool((firsts[:, 1] == firsts[:, 0] + 1).all()) and bool((firsts[:, 2] == firsts[:, 0] + 2).all())
    assert bool((firsts[:, 0] % 3 == 0).all())  # composite | logo | object of one item, in that order
    for row, prompt in zip(firsts[:, 0].long().tolist(), prompts):
        assert f"item {row // 3}" in prompt
    assert bool((masks.flatten(1).sum(1) > 0).all())
    unrelated = pre.TrainData(panels, captions, np.random.default_rng(0), "cpu", bank_size=8,
                              args=SimpleNamespace(related=0.0, triplet_share=0.0, caption_p=1.0))
    assert set(unrelated.batch(8, 3)[2]) == {""}  # no caption describes panels of different items


def test_clause_prompts_name_one_clause_of_their_items_caption():
    import torch
    from types import SimpleNamespace

    from layerloop.models.synthetic import render_triplet

    pre = _pretrain_module()
    caption = render_triplet(3)[1]["caption"]
    obj, logo = caption.split(" with ", 1)
    panels = torch.zeros(6, 3, 32, 32)
    args = SimpleNamespace(related=0.0, triplet_share=1.0, caption_p=1.0, clause_p=1.0)
    prompts = pre.TrainData(panels, [caption] * 6, np.random.default_rng(0), "cpu", bank_size=8, args=args).batch(64, 3)[2]
    named = [(obj in p) + 2 * (logo in p) for p in prompts]
    assert set(named) == {1, 2}  # each prompt one clause, never both, both clauses drawn
    full = pre.TrainData(panels, [caption] * 6, np.random.default_rng(0), "cpu", bank_size=8,
                         args=SimpleNamespace(related=0.0, triplet_share=1.0, caption_p=1.0, clause_p=0.0))
    assert all(caption in p for p in full.batch(16, 3)[2])


def test_high_t_moves_captioned_rows_only_and_share_zero_leaves_times_alone():
    import torch

    pre = _pretrain_module()
    t = torch.full((6,), 0.5)
    prompts = ["a red mug", "", "a blue can", "", "a teal bag", ""]
    moved = pre.caption_times(t, prompts, torch.Generator().manual_seed(0), share=1.0)
    assert bool(((moved[0::2] >= pre.HIGH_T) & (moved[0::2] <= 1.0)).all())
    assert bool((moved[1::2] == 0.5).all())  # unrelated grids: no caption to learn from
    assert pre.caption_times(t, prompts, torch.Generator().manual_seed(0), share=0.0) is t
    noisier = pre.caption_times(t, prompts, torch.Generator().manual_seed(0), share=1.0, low=0.97)
    assert bool((noisier[0::2] >= 0.97).all()) and bool((noisier[1::2] == 0.5).all())


def test_triplet_mask_mix_decides_how_many_triplet_grids_hide_every_panel():
    import numpy as np
    import torch

    pre = _pretrain_module()
    bank = torch.zeros(4, 1, pre.PANEL, 3 * pre.PANEL)
    every = pre.triplet_masks(np.random.default_rng(0), 8, bank, "cpu", mix=(1.0, 0.0, 0.0))
    assert bool((every == 1.0).all())  # generation from the caption alone
    whole = pre.triplet_masks(np.random.default_rng(0), 8, bank, "cpu", mix=(0.0, 1.0, 0.0))
    hidden = whole.reshape(8, pre.PANEL, 3, pre.PANEL).amax(dim=(1, 3))  # (grid, panel): 1 where masked
    assert bool((hidden.sum(dim=1) >= 1).all() and (hidden.sum(dim=1) <= 2).all())  # one panel always shows
    with pytest.raises(SystemExit):
        pre.parse_args(["--triplet-mask-mix", "0.7", "0.2", "0.2"])


def test_pretraining_resumed_from_a_checkpoint_ends_with_the_uninterrupted_weights(tmp_path):
    from safetensors.torch import load_file

    pre = _pretrain_module()
    run = ["--n-triplets", "8", "--vae-steps", "2", "--vae-batch", "4", "--steps", "4", "--batch", "2",
           "--eval-n", "1", "--eval-steps", "1", "--threads", "1", "--log-every", "100"]
    pre.main([*run, "--out", str(tmp_path / "whole")])
    split = [*run, "--out", str(tmp_path / "split"), "--checkpoint-every", "2"]
    assert pre.main([*split, "--stop-at", "2"]) == {"stopped_at": 2}
    assert not (tmp_path / "split").exists()  # a stopped run writes its checkpoint only
    pre.main([*split, "--resume"])
    for name in ("transformer", "text_encoder", "text_encoder_2"):
        a = load_file(str(tiny.weights_path(tmp_path / "whole", name)))
        b = load_file(str(tiny.weights_path(tmp_path / "split", name)))
        assert all(bool((a[k] == b[k]).all()) for k in a), name
    meta = json.loads((tmp_path / "split" / tiny.BASE_META).read_text())
    assert meta["record"]["transformer_steps_done"] == 4 and meta["record"]["vae_steps_done"] == 2


def test_pretraining_resume_without_a_checkpoint_says_how_to_make_one(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _pretrain_module().parse_args(["--out", str(tmp_path / "b"), "--resume"])
    assert "--checkpoint-every" in capsys.readouterr().err

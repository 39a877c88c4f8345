"""Trainer on the tiny real backbone: LoRA files, cycle term, gradient flow, resume, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from layerloop.models.config import LoraConfig, TrainConfig
from layerloop.models.lora_io import read_adapter_state
from layerloop.models.trainer import (
    ADAPTER_NAME, CycleTrainer, FillCodec, TrainError, attach_lora, build_cache, detach_lora,
    load_init_adapter, train_lora,
)
from layerloop.models import losses

PANELS = ("composite", "logo", "object")


@pytest.fixture(scope="module")
def backbone(random_tiny_backbone):
    """A module's own randomly initialised tiny backbone (the tests attach and detach LoRAs on it)."""
    return random_tiny_backbone


def _triplets(n: int, size: int = 32, seed: int = 0) -> list[dict]:
    """Structured little triplets: a coloured object, a logo square, the logo pasted on the object."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        obj = np.full((size, size, 3), rng.integers(0, 255, 3), dtype=np.uint8)
        logo = np.full((size, size, 3), 255, dtype=np.uint8)
        lo, hi = sorted(rng.integers(4, size - 4, 2))
        hi = max(hi, lo + 4)
        logo[lo:hi, lo:hi] = rng.integers(0, 255, 3)
        comp = obj.copy()
        comp[lo:hi, lo:hi] = logo[lo:hi, lo:hi]
        out.append({k: Image.fromarray(a) for k, a in zip(PANELS, (comp, logo, obj))})
    return out


def _cfg(**kw) -> TrainConfig:
    base = dict(steps=2, batch_size=2, cycle_weight=0.5, cycle_warmup_steps=1, checkpoint_every=100, lr=1e-2)
    return TrainConfig(**{**base, **kw})


def test_two_step_run_writes_a_diffusers_lora_with_expected_keys(backbone, tmp_path):
    lora = LoraConfig(rank=4)
    res = train_lora(backbone, _triplets(4), _cfg(), lora, str(tmp_path), card={"data_rounds": [0, 1]})
    state = read_adapter_state(res.adapter_dir)
    raw_keys = [f"transformer.{k}" for k in state]
    assert raw_keys and all(".lora_A.weight" in k or ".lora_B.weight" in k for k in raw_keys)
    assert not any("base_model.model" in k for k in raw_keys)
    a_keys = {k for k in state if k.endswith("lora_A.weight")}
    assert {k.replace("lora_A", "lora_B") for k in a_keys} == set(state) - a_keys
    # every configured target family got a LoRA (double-stream and single-stream blocks)
    for target in ("attn.to_q", "attn.add_q_proj", "ff.net.2", "ff_context.net.2", "proj_mlp"):
        assert any(f".{target}.lora_A" in k for k in state), target
    assert all(v.shape[0] == 4 for k, v in state.items() if k.endswith("lora_A.weight"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["step"] for r in metrics["loss_curve"]] == [1, 2]
    assert all({"step", "loss", "loss_fm", "loss_cyc"} <= set(r) for r in metrics["loss_curve"])
    assert metrics["loss_curve"][0]["loss_cyc"] is None and metrics["loss_curve"][1]["loss_cyc"] > 0
    card = (tmp_path / "README.md").read_text()
    assert "rank | 4" in card and "data rounds | [0, 1]" in card and "n triplets | 4" in card
    assert not getattr(backbone.transformer, "peft_config", None), "trainer must leave the backbone clean"


@pytest.fixture()
def trainer(backbone):
    """A CycleTrainer with a non-trivial LoRA (lora_B randomised so the model depends on it)."""
    cfg = _cfg(cycle_warmup_steps=0, text_dropout=0.0)
    codec = FillCodec(backbone)
    params = attach_lora(backbone.transformer, LoraConfig(rank=4), seed=0)
    with torch.no_grad():
        for name, p in params.items():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    cache = build_cache(codec, _triplets(4), None, seed=0, with_generate=False)
    yield CycleTrainer(backbone, cache, codec, cfg, params)
    backbone.transformer.zero_grad(set_to_none=True)
    detach_lora(backbone.transformer)


def test_cycle_term_is_zero_for_equal_inputs_and_positive_for_cycled_ones(trainer):
    idx, tasks = [0, 1], ["decompose", "synthesize"]
    gen = torch.Generator().manual_seed(5)
    x0 = trainer.cache.x0[idx]
    cond = torch.stack([trainer.cache.cond[t][i] for i, t in zip(idx, tasks)])
    emb = trainer.embeddings(idx, tasks, gen, dropout=False)
    t = torch.tensor([0.3, 0.7])
    noise = torch.randn(x0.shape, generator=gen)
    with torch.no_grad():
        v_real = trainer.codec.velocity(losses.noisy_sample(x0, noise, t), cond, t, emb, 1.0)
        v_same = trainer.codec.velocity(losses.noisy_sample(x0, noise, t), cond, t, emb, 1.0)
        cyc_x0, cyc_cond = trainer.cycled_inputs(idx, tasks, gen)
        v_cyc = trainer.codec.velocity(losses.noisy_sample(cyc_x0, noise, t), cyc_cond, t, emb, 1.0)
    assert losses.cycle_loss(v_real, v_same).item() < 1e-10
    assert losses.cycle_loss(v_real, v_cyc).item() > 1e-6
    # tau_D sample: only the composite panel is re-synthesized; tau_C sample: only the layers
    real_px = trainer.codec.pixels([trainer.cache.grids[i] for i in idx])
    cycled_px = trainer.cycled_pixels(idx, tasks, torch.Generator().manual_seed(6))
    w = trainer.codec.panel
    assert torch.equal(cycled_px[0, ..., w:], real_px[0, ..., w:])
    assert not torch.equal(cycled_px[0, ..., :w], real_px[0, ..., :w])
    assert torch.equal(cycled_px[1, ..., :w], real_px[1, ..., :w])
    assert not torch.equal(cycled_px[1, ..., w:], real_px[1, ..., w:])


def test_gradients_reach_only_lora_parameters_and_not_the_intermediate(trainer, backbone):
    out = trainer.losses(0)
    assert out["loss_cyc"] is not None and out["loss_cyc"].item() > 0
    out["loss_cyc"].backward()  # the cycle term alone must train the LoRA
    lora_names = {id(p) for p in trainer.params.values()}
    with_grad = [(n, p) for n, p in backbone.transformer.named_parameters() if p.grad is not None]
    assert with_grad and all(id(p) in lora_names for _, p in with_grad)
    assert any(p.grad.abs().sum() > 0 for _, p in with_grad)
    for module in (backbone.vae, backbone.text_encoder, backbone.text_encoder_2):
        assert all(p.grad is None and not p.requires_grad for p in module.parameters())
    cyc_x0, cyc_cond = trainer.cycled_inputs([0, 1], ["decompose", "synthesize"], torch.Generator().manual_seed(0))
    assert not cyc_x0.requires_grad and not cyc_cond.requires_grad


def test_sampler_intermediate_runs_several_euler_steps(trainer):
    trainer.cfg = _cfg(cycle_warmup_steps=0, cycle_intermediate="sampler", cycle_sampler_steps=3)
    calls = []
    original = trainer.codec.velocity

    def counting(*a, **k):
        calls.append(1)
        return original(*a, **k)

    trainer.codec.velocity = counting
    with torch.no_grad():
        trainer.cycled_inputs([0, 1], ["decompose", "synthesize"], torch.Generator().manual_seed(0))
    assert len(calls) == 3


def test_resume_from_checkpoint_matches_an_uninterrupted_run(backbone, tmp_path):
    data = _triplets(5)
    cfg = _cfg(steps=4, checkpoint_every=2, cycle_warmup_steps=2, text_dropout=0.5)
    full = train_lora(backbone, data, cfg, LoraConfig(rank=4), str(tmp_path / "full"))

    class Crash(RuntimeError):
        pass

    def crash_after_3(step, total, row):
        if step == 3:
            raise Crash

    with pytest.raises(Crash):
        train_lora(backbone, data, cfg, LoraConfig(rank=4), str(tmp_path / "resumed"), progress=crash_after_3)
    assert (tmp_path / "resumed" / "ckpt-0000002" / "state.json").is_file()
    assert not getattr(backbone.transformer, "peft_config", None)
    resumed = train_lora(backbone, data, cfg, LoraConfig(rank=4), str(tmp_path / "resumed"))
    assert resumed.metrics["resumed_from_step"] == 2
    assert [r["step"] for r in resumed.loss_curve] == [1, 2, 3, 4]
    for a, b in zip(full.loss_curve, resumed.loss_curve):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3, abs=1e-5)
    wa, wb = read_adapter_state(full.adapter_dir), read_adapter_state(resumed.adapter_dir)
    assert set(wa) == set(wb)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-4), k
    assert not list((tmp_path / "resumed").glob("ckpt-*")), "checkpoints are dropped after a finished run"


def test_checkpoint_of_another_config_is_refused(backbone, tmp_path):
    data = _triplets(3)
    cfg = _cfg(steps=3, checkpoint_every=1)

    def crash(step, total, row):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_lora(backbone, data, cfg, LoraConfig(rank=4), str(tmp_path), progress=crash)
    with pytest.raises(TrainError, match="another training config"):
        train_lora(backbone, data, _cfg(steps=3, lr=5e-3), LoraConfig(rank=4), str(tmp_path))
    assert not getattr(backbone.transformer, "peft_config", None)


def test_init_adapter_continues_from_previous_weights(backbone, tmp_path):
    first = train_lora(backbone, _triplets(3), _cfg(), LoraConfig(rank=4), str(tmp_path / "a"))
    params = attach_lora(backbone.transformer, LoraConfig(rank=4), seed=123)
    try:
        load_init_adapter(backbone.transformer, first.adapter_dir, params)
        saved = read_adapter_state(first.adapter_dir)
        for name, p in params.items():
            key = name.replace(f".{ADAPTER_NAME}", "")
            assert torch.allclose(p.detach(), saved[key]), name
            assert p.dtype == torch.float32 and p.requires_grad
    finally:
        detach_lora(backbone.transformer)
    with pytest.raises(TrainError, match="rank/targets"):
        train_lora(backbone, _triplets(3), _cfg(), LoraConfig(rank=8), str(tmp_path / "b"),
                   init_adapter=first.adapter_dir)
    with pytest.raises(TrainError, match="lora_alpha"):
        train_lora(backbone, _triplets(3), _cfg(), LoraConfig(rank=4, alpha=16), str(tmp_path / "c"),
                   init_adapter=first.adapter_dir)
    assert not getattr(backbone.transformer, "peft_config", None)


def test_bad_config_and_input_fail_with_clear_errors(backbone, tmp_path):
    with pytest.raises(ValidationError):
        TrainConfig(steps=0)
    with pytest.raises(ValidationError, match="extra"):
        TrainConfig(learning_rate=1e-3)
    with pytest.raises(ValidationError):
        TrainConfig(cycle_intermediate="full_chain")
    with pytest.raises(TrainError, match="empty"):
        train_lora(backbone, [], _cfg(), LoraConfig(), str(tmp_path))
    with pytest.raises(TrainError, match="captions"):
        train_lora(backbone, _triplets(2), _cfg(), LoraConfig(), str(tmp_path), captions=["x"])
    with pytest.raises(TrainError, match="panel_size"):
        train_lora(backbone, _triplets(2, size=16), _cfg(), LoraConfig(), str(tmp_path))
    with pytest.raises(TrainError, match="lacks panels"):
        train_lora(backbone, [{"composite": _triplets(1)[0]["composite"]}], _cfg(), LoraConfig(), str(tmp_path))
    with pytest.raises(TrainError, match="targets"):
        train_lora(backbone, _triplets(2), _cfg(), LoraConfig(targets=["no_such_layer"]), str(tmp_path))
    with pytest.raises(TrainError, match="init_adapter"):
        train_lora(backbone, _triplets(2), _cfg(), LoraConfig(), str(tmp_path), init_adapter=str(tmp_path / "nope"))
    assert not getattr(backbone.transformer, "peft_config", None)


def test_generation_samples_use_their_captions(backbone, tmp_path):
    caps = ["red mug with a blue star logo", "green bottle with a yellow circle logo"]
    res = train_lora(backbone, _triplets(2), _cfg(generate_fraction=1.0, steps=1), LoraConfig(rank=2),
                     str(tmp_path), captions=caps)
    assert res.loss_curve[0]["loss_cyc"] is None  # tau_G samples have no cycle counterpart
    assert res.loss_curve[0]["loss_fm"] > 0


def test_training_unloads_an_adapter_a_sampler_left_loaded(backbone, tmp_path):
    from layerloop.models.lora_io import load_adapter

    first = train_lora(backbone, _triplets(2), _cfg(steps=1), LoraConfig(rank=2), str(tmp_path / "a"))
    load_adapter(backbone, first.adapter_dir)
    assert backbone.transformer.peft_config
    second = train_lora(backbone, _triplets(2), _cfg(steps=1), LoraConfig(rank=2), str(tmp_path / "b"))
    assert read_adapter_state(second.adapter_dir)
    assert not getattr(backbone.transformer, "peft_config", None)


def test_gradient_checkpointing_gives_the_same_lora_gradients(trainer, backbone):
    """The GPU path trains with checkpointing on: LoRA gradients must not change (non-reentrant)."""
    def grads():
        backbone.transformer.zero_grad(set_to_none=True)
        trainer.losses(0)["loss"].backward()
        return {n: p.grad.detach().clone() for n, p in trainer.params.items() if p.grad is not None}

    plain = grads()
    backbone.transformer.enable_gradient_checkpointing()
    try:
        backbone.transformer.train()
        checkpointed = grads()
    finally:
        backbone.transformer.disable_gradient_checkpointing()
        backbone.transformer.eval()
    assert plain and set(plain) == set(checkpointed)
    for n in plain:
        assert torch.allclose(plain[n], checkpointed[n], atol=1e-5, rtol=1e-3), n


def test_generated_tokens_mark_the_panels_each_task_generates(backbone):
    codec = FillCodec(backbone)
    w = codec.generated_tokens(["decompose", "synthesize"]).cpu()
    rows, cols = codec.lat_h // 2, codec.lat_w // 2
    per_panel = cols // 3
    grid = w.view(2, rows, cols)
    assert grid[0, :, :per_panel].sum() == 0 and bool((grid[0, :, per_panel:] == 1).all())
    assert bool((grid[1, :, :per_panel] == 1).all()) and grid[1, :, per_panel:].sum() == 0


def test_loss_region_generated_ignores_the_given_panels(trainer, backbone):
    """With loss on generated panels only, the loss is the mean over those tokens of the same forward."""
    from layerloop.models.trainer import _mix

    trainer.cfg = trainer.cfg.model_copy(update={"loss_region": "generated", "cycle_weight": 0.0})
    b = trainer.batch(0, torch.Generator().manual_seed(_mix(trainer.cfg.seed, 0)))  # step 0's own draws
    with torch.no_grad():
        v = trainer.codec.velocity(b.x_t, b.cond, b.t, b.embeds, trainer.cfg.guidance)
        w = trainer.codec.generated_tokens(b.tasks)
        per_token = (v - (b.noise - b.x0)).pow(2).mean(-1)
        expected = ((per_token * w).sum(1) / w.sum(1)).mean()
        got = trainer.losses(0)["loss_fm"]
    assert got.item() == pytest.approx(expected.item(), rel=1e-4)
    assert got.item() != pytest.approx(per_token.mean().item(), rel=1e-3)


def test_cosine_schedule_is_applied_and_recorded(backbone, tmp_path):
    res = train_lora(backbone, _triplets(3), _cfg(steps=4, lr_schedule="cosine", lr_warmup_steps=2, cycle_weight=0.0),
                     LoraConfig(rank=2), str(tmp_path))
    lrs = [r["lr"] for r in res.loss_curve]
    assert lrs == pytest.approx([1e-2 * losses.lr_factor(s, 4, "cosine", 2) for s in range(4)], abs=1e-6)  # curve keeps 6 decimals
    assert lrs[1] > lrs[3] > 0.0
    with pytest.raises(ValidationError):
        TrainConfig(loss_region="composite")


def test_compiled_blocks_give_the_eager_loss_and_are_removed_afterwards(trainer, backbone):
    """Regional compilation (dynamo with the eager backend here: no C++ toolchain needed) keeps the maths."""
    from layerloop.models.acceleration import compiled_blocks, repeated_blocks

    eager = trainer.losses(0)["loss"].item()
    with compiled_blocks(backbone.transformer, True, backend="eager"):
        blocks = repeated_blocks(backbone.transformer)
        assert len(blocks) == 6 and all(b._compiled_call_impl is not None for b in blocks)
        compiled = trainer.losses(0)["loss"].item()
    assert compiled == pytest.approx(eager, rel=1e-4)
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in backbone.transformer.modules())


def test_compiled_blocks_restore_eager_blocks_on_error_and_refuse_models_without_blocks(backbone):
    from layerloop.models.acceleration import compiled_blocks, repeated_blocks

    with pytest.raises(RuntimeError, match="boom"):
        with compiled_blocks(backbone.transformer, True, backend="eager"):
            raise RuntimeError("boom")
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in backbone.transformer.modules())
    with pytest.raises(ValueError, match="_repeated_blocks"):
        repeated_blocks(backbone.vae)


def test_trust_zero_pixels_drop_out_of_the_loss(trainer, backbone):
    """A pseudo-label's untrusted pixels weigh nothing: the loss is the trusted tokens' mean of the same forward."""
    from layerloop.models.trainer import _mix, add_item_options

    trust = np.ones((32, 32), np.float32)
    trust[:, :16] = 0.0  # the left half of the object panel is model-made
    maps = [{"object": trust, "logo": np.zeros((32, 32), np.float32)}] * trainer.n
    add_item_options(trainer.cache, trainer.codec, trust=maps, tasks=[("decompose",)] * trainer.n)
    trainer.cfg = trainer.cfg.model_copy(update={"loss_region": "generated", "cycle_weight": 0.0})
    b = trainer.batch(0, torch.Generator().manual_seed(_mix(trainer.cfg.seed, 0)))
    assert b.tasks == ["decompose"] * len(b.tasks)  # synthesis is not allowed for these triplets
    with torch.no_grad():
        v = trainer.codec.velocity(b.x_t, b.cond, b.t, b.embeds, trainer.cfg.guidance)
        w = trainer.codec.generated_tokens(b.tasks) * trainer.cache.trust[b.idx]
        per_token = (v - (b.noise - b.x0)).pow(2).mean(-1)
        expected = ((per_token * w).sum(1) / w.sum(1)).mean()
        got = trainer.losses(0)["loss_fm"]
    cols = trainer.codec.lat_w // 2
    grid = w[0].view(-1, cols)
    assert grid[:, : cols // 3 * 2].sum() == 0 and grid[:, cols // 3 * 2: cols // 3 * 2 + 4].sum() == 0
    assert float(grid[:, -4:].min()) == 1.0  # right half of the object panel: real pixels, full weight
    assert got.item() == pytest.approx(expected.item(), rel=1e-4)


def test_anchor_fraction_keeps_labeled_triplets_in_every_batch(trainer):
    from layerloop.models.trainer import add_item_options

    labeled = [True, False, False, False]
    add_item_options(trainer.cache, trainer.codec, labeled=labeled)
    trainer.cfg = trainer.cfg.model_copy(update={"batch_size": 4, "anchor_fraction": 0.5})
    batches = [trainer.batch_indices(step) for step in range(6)]
    assert all(sum(labeled[i] for i in b) == 2 for b in batches)  # half of each batch, however few labeled
    unlabeled = [i for b in batches[:3] for i in b if not labeled[i]]
    assert sorted(unlabeled) == [1, 1, 2, 2, 3, 3]  # the others go round in epochs, none repeated early
    trainer.cfg = trainer.cfg.model_copy(update={"anchor_fraction": 0.0})
    assert sorted(trainer.batch_indices(0)) == [0, 1, 2, 3]  # plain epochs over everything


def test_a_fractional_anchor_share_is_honoured_over_the_run(trainer):
    from layerloop.models.trainer import add_item_options, labeled_positions

    labeled = [True, True, False, False]
    add_item_options(trainer.cache, trainer.codec, labeled=labeled)
    trainer.cfg = trainer.cfg.model_copy(update={"batch_size": 4, "anchor_fraction": 0.875})
    batches = [trainer.batch_indices(step) for step in range(8)]
    assert [sum(labeled[i] for i in b) for b in batches] == [3, 4] * 4  # 3.5 labeled per batch on average
    assert all(len(b) == 4 for b in batches)
    labeled_seen = [i for b in batches for i in b if labeled[i]]
    assert [labeled_seen[:14].count(i) for i in (0, 1)] == [7, 7]  # one epoch stream, nothing skipped
    # whole shares are exact every step; below one sample per batch, one is kept
    assert [labeled_positions(0.75, 4, k) for k in range(3)] == [(0, 3), (3, 6), (6, 9)]
    assert [labeled_positions(0.05, 4, k) for k in range(2)] == [(0, 1), (1, 2)]


def test_per_triplet_options_are_checked(backbone, tmp_path):
    trips = _triplets(2)
    with pytest.raises(TrainError, match="trust has 1 entries for 2"):
        train_lora(backbone, trips, _cfg(), LoraConfig(rank=2), str(tmp_path), trust=[None])
    with pytest.raises(TrainError, match="tasks of triplet #1"):
        train_lora(backbone, trips, _cfg(), LoraConfig(rank=2), str(tmp_path), tasks=[None, ("generate",)])
    with pytest.raises(TrainError, match="must be a 32x32 array"):
        train_lora(backbone, trips, _cfg(), LoraConfig(rank=2), str(tmp_path),
                   trust=[{"object": np.ones((8, 8), np.float32)}, None])


def test_labeled_triplets_keep_their_decomposition_slots_beside_pseudo_labels(trainer):
    from layerloop.models.trainer import _mix, add_item_options

    add_item_options(trainer.cache, trainer.codec, tasks=[None, None, None, ("decompose",)],
                     labeled=[True, True, True, False])
    trainer.cfg = trainer.cfg.model_copy(update={"batch_size": 4, "anchor_fraction": 0.75})
    for step in range(4):
        b = trainer.batch(step, torch.Generator().manual_seed(_mix(trainer.cfg.seed, step)))
        by_item = dict(zip(b.idx, b.tasks))
        assert by_item[3] == "decompose"  # the pseudo-label: decomposition only
        labeled = [t for i, t in zip(b.idx, b.tasks) if i != 3]
        # as many labeled decompositions as a batch of labeled triplets alone would have
        assert labeled.count("decompose") == 2 and labeled.count("synthesize") == 1


def test_training_says_where_it_is_every_30_s_when_stderr_is_no_terminal(capsys):
    from layerloop.models.trainer import _ProgressSink, progress_line

    now = [0.0]
    with _ProgressSink(None, total=10, start=2, clock=lambda: now[0]) as sink:
        for step, t in zip(range(3, 11), (5, 20, 31, 40, 50, 62, 70, 80)):
            now[0] = t
            sink.update(step, {"loss": 0.5 / step})
    lines = capsys.readouterr().err.splitlines()
    # at 31 s (step 5), at 62 s (step 8), and the last step (10): never 30 s without a line
    assert [line.split()[1] for line in lines] == ["5/10", "8/10", "10/10"]
    assert lines[0] == "train 5/10 (50 %) loss 0.1000, 0.1 steps/s, ETA 0m51s"  # 3 steps in 31 s, 5 to go
    now[0] = 0.0
    with _ProgressSink(None, total=3, start=0, clock=lambda: now[0]) as sink:
        for step in (1, 2, 3):
            now[0] = step  # 3 s in all: nothing to say
            sink.update(step, {"loss": 0.1})
    assert capsys.readouterr().err == ""
    assert progress_line(340, 1500, 0.1234, 340, 100.0) == "train 340/1500 (22 %) loss 0.1234, 3.4 steps/s, ETA 5m41s\n"

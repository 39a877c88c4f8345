"""The tiny world's backbone: FLUX-Fill's own classes at CPU sizes, local tokenizers, shipped weights.

Shapes (panel 32 px, three panels => grid 96x32):
  AutoencoderKL with 2 blocks      -> vae_scale_factor 2, 4 latent channels, latent 48x16
  packed latent 4*4 = 16 ch, masked-image latent 16 ch, packed mask (2*2)*4 = 16 ch
  FluxTransformer2DModel            -> in_channels 48, out_channels 16, 8x8 tokens per panel
  CLIP (pooled 64) + T5 (d_model 64) text towers over a word-level vocabulary.
The shipped base (assets/tiny-base/) is a diffusers pipeline folder: model_index.json, one subfolder per
component (config + safetensors, tokenizers saved by transformers), so plain
`FluxFillPipeline.from_pretrained(folder)` loads it offline, and the factory loads it exactly that way.
Only models/factory.py (and the pretraining script) should import this module; everything else sees a `Backbone`.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable

ASSET_DIR = Path(__file__).resolve().parent / "assets" / "tiny-base"
COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2")
TOKENIZERS = ("tokenizer", "tokenizer_2")
# diffusers' and transformers' own file names, so from_pretrained finds them
WEIGHT_FILES = {"transformer": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
                "text_encoder": "model.safetensors", "text_encoder_2": "model.safetensors"}
MODEL_INDEX = "model_index.json"
TOKENIZER_CLASS = "PreTrainedTokenizerFast"
BASE_META = "base.json"  # how the base was made: the pretraining run's record and metrics

# Special ids: T5 wants pad=0 / eos=1; CLIP pools at the first eos, so eos must not be 2 (legacy argmax path).
PAD, EOS, UNK, BOS = "<pad>", "</s>", "<unk>", "<s>"
SPECIALS = (PAD, EOS, UNK, BOS)
VOCAB_SIZE = 1024
CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 64  # templates ~40 tokens + caption ~15; FLUX uses 512, which would triple tiny attention cost
_WORD = re.compile(r"\w+|[^\w\s]+")  # what pre_tokenizers.Whitespace splits on

# Words the synthetic captions and prompt files are likely to use, so that they do not all map to <unk>.
BASE_WORDS = """
a an the of on with without and or in at to by for from its it is this that same alone plain printed
logo logos text letter letters word brand branded badge emblem icon symbol sticker label decal mark
product photo image picture panel panels three left middle right white black background shape lighting
object objects clean mug cup bottle can box bag shirt tshirt cap hat phone laptop sphere ball cylinder
cube card book shoe jar tube pillow vase plate bowl sign board tile wall poster flag banner car
red green blue yellow orange purple pink brown gray grey cyan magenta teal navy gold silver beige
light dark bright pale deep matte glossy shiny metallic wooden plastic glass paper fabric ceramic
circle square triangle star heart ring stripe stripes dot dots cross diamond hexagon wave waves
curved flat round tilted rotated small large big tiny wide tall thin thick centered corner
shading shadow highlight highlights specular perspective warped surface texture pattern gradient
inpaint inpainting fill missing region regions masked mask grid scene
""".split()


def tokenize_words(text: str) -> list[str]:
    """Lowercased words and punctuation marks, the same split the tokenizer's pre-tokenizer makes."""
    return _WORD.findall(text.lower())


def build_vocab(texts: Iterable[str]) -> list[str]:
    """Deterministic word list: specials, base words, then new words of `texts` in first-seen order."""
    vocab: dict[str, None] = dict.fromkeys(SPECIALS)
    vocab.update(dict.fromkeys(BASE_WORDS))
    for text in texts:
        vocab.update(dict.fromkeys(tokenize_words(text)))
    words = list(vocab)
    if len(words) > VOCAB_SIZE:
        raise ValueError(f"tiny vocabulary has {len(words)} words, more than VOCAB_SIZE={VOCAB_SIZE}")
    return words


def build_tokenizer(words: list[str], *, clip: bool) -> Any:
    """A word-level PreTrainedTokenizerFast: CLIP style `<s> ... </s>` or T5 style `... </s>`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if list(words[: len(SPECIALS)]) != list(SPECIALS):
        raise ValueError(f"vocabulary must start with the special tokens {SPECIALS}")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    template = f"{BOS} $A {EOS}" if clip else f"$A {EOS}"
    ids = [(BOS, words.index(BOS)), (EOS, words.index(EOS))]
    tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=ids)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, bos_token=BOS,
        model_max_length=CLIP_MAX_LENGTH if clip else T5_MAX_LENGTH,
    )


def transformer_config(latent_channels: int = 4, vae_scale_factor: int = 2) -> dict:
    """FluxTransformer2DModel kwargs; channel counts follow FluxFillPipeline's packing."""
    packed = latent_channels * 4
    packed_mask = vae_scale_factor * vae_scale_factor * 4
    return dict(
        patch_size=1, in_channels=packed * 2 + packed_mask, out_channels=packed,
        num_layers=2, num_single_layers=4, attention_head_dim=32, num_attention_heads=4,
        joint_attention_dim=64, pooled_projection_dim=64, guidance_embeds=True, axes_dims_rope=[8, 12, 12],
    )


def vae_config() -> dict:
    """AutoencoderKL kwargs: 2 blocks (scale factor 2), no quant convs like FLUX's VAE."""
    return dict(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=[32, 64], layers_per_block=1, norm_num_groups=8, sample_size=32,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0, scaling_factor=1.0,
    )


def clip_config() -> dict:
    return dict(
        vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=CLIP_MAX_LENGTH, projection_dim=64,
        pad_token_id=SPECIALS.index(PAD), eos_token_id=SPECIALS.index(EOS), bos_token_id=SPECIALS.index(BOS),
    )


def t5_config() -> dict:
    return dict(
        vocab_size=VOCAB_SIZE, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=SPECIALS.index(PAD), eos_token_id=SPECIALS.index(EOS),
        decoder_start_token_id=SPECIALS.index(PAD),
    )


def scheduler_config() -> dict:
    """FLUX.1's own scheduler settings (dynamic shift from the image sequence length)."""
    return dict(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )


def build_modules(meta: dict) -> dict[str, Any]:
    """Randomly initialised components from the configs (weights are loaded afterwards)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    vae = AutoencoderKL(**{**vae_config(), **meta.get("vae_factors", {})})
    words = meta["vocab"]
    return dict(
        transformer=FluxTransformer2DModel(**transformer_config()),
        vae=vae,
        text_encoder=CLIPTextModel(CLIPTextConfig(**clip_config())),
        tokenizer=build_tokenizer(words, clip=True),
        text_encoder_2=T5EncoderModel(T5Config(**t5_config())),
        tokenizer_2=build_tokenizer(words, clip=False),
        scheduler=FlowMatchEulerDiscreteScheduler(**scheduler_config()),
    )


def default_meta(templates: dict[str, str]) -> dict:
    """What a base without assets starts from: vocabulary from the templates, neutral VAE factors."""
    return {"vocab": build_vocab(templates.values()), "vae_factors": {"shift_factor": 0.0, "scaling_factor": 1.0}}


def weights_path(asset_dir: Path, component: str) -> Path:
    return Path(asset_dir) / component / WEIGHT_FILES[component]


def assets_present(asset_dir: Path) -> bool:
    """Whether `asset_dir` is a complete tiny base folder (what `save_base` writes)."""
    asset_dir = Path(asset_dir)
    return (asset_dir / MODEL_INDEX).is_file() and all(weights_path(asset_dir, c).is_file() for c in COMPONENTS) \
        and all((asset_dir / t / "tokenizer.json").is_file() for t in TOKENIZERS)


def legacy_layout(asset_dir: Path) -> bool:
    """The flat layout of older bases (<component>.safetensors + base.json with the vocabulary)."""
    return not (Path(asset_dir) / MODEL_INDEX).exists() and (Path(asset_dir) / "transformer.safetensors").is_file()


def vocab_of(tokenizer: Any) -> list[str]:
    """The word list a tiny tokenizer was built from, in id order (to rebuild or extend it)."""
    ids = tokenizer.get_vocab()
    return sorted(ids, key=ids.__getitem__)


def _portable_tokenizer_class(asset_dir: Path) -> None:
    """Name the tokenizers PreTrainedTokenizerFast: transformers 5 saves its alias TokenizersBackend,
    a name transformers 4 (which the project still allows) does not have."""
    index = json.loads((asset_dir / MODEL_INDEX).read_text())
    for name in TOKENIZERS:
        index[name] = ["transformers", TOKENIZER_CLASS]
        config_path = asset_dir / name / "tokenizer_config.json"
        config = {k: v for k, v in json.loads(config_path.read_text()).items() if k not in LOAD_STATE_KEYS}
        config["tokenizer_class"] = TOKENIZER_CLASS
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (asset_dir / MODEL_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


# what loading a base leaves in its configs: where it was read from, and the padding of the last call
LOAD_STATE_KEYS = ("_name_or_path", "is_local", "local_files_only")


def _drop_load_state(asset_dir: Path) -> None:
    """A base continued from another (--init-from) would otherwise ship the path it was loaded from and
    the tokenizers' last padding setting; the folder must not depend on where or how it was made."""
    for path in [asset_dir / n / "config.json" for n in COMPONENTS]:  # tokenizer configs: _portable_tokenizer_class
        config = json.loads(path.read_text())
        path.write_text(json.dumps({k: v for k, v in config.items() if k not in LOAD_STATE_KEYS},
                                   indent=2, sort_keys=True) + "\n")
    for name in TOKENIZERS:
        path = asset_dir / name / "tokenizer.json"
        spec = json.loads(path.read_text())
        spec["padding"] = None  # callers pad explicitly (padding="max_length")
        path.write_text(json.dumps(spec, indent=2, ensure_ascii=False) + "\n")


def save_base(modules: dict[str, Any], asset_dir: Path, meta: dict) -> None:
    """Write a diffusers FluxFillPipeline folder: model_index.json, each component's config and fp32
    safetensors (the same bytes whichever way the modules were loaded), the tokenizers, and base.json
    (`meta` without the vocabulary and VAE factors, which the tokenizers and the VAE config now hold)."""
    from diffusers import FluxFillPipeline
    from safetensors.torch import save_file

    asset_dir = Path(asset_dir)
    asset_dir.mkdir(parents=True, exist_ok=True)
    FluxFillPipeline(**{k: modules[k] for k in (*COMPONENTS, *TOKENIZERS, "scheduler")}).save_config(asset_dir)
    for name in COMPONENTS:
        module = modules[name]
        (asset_dir / name).mkdir(exist_ok=True)
        # config only: save_pretrained would also write the weights, with other header metadata
        module.save_config(asset_dir / name) if hasattr(module, "save_config") else \
            module.config.save_pretrained(asset_dir / name)
        # clone: T5 ties shared/embed_tokens and safetensors refuses tensors that share memory
        state = {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
        save_file(state, str(weights_path(asset_dir, name)), metadata={"format": "pt", "component": name})
    for name in TOKENIZERS:
        modules[name].save_pretrained(asset_dir / name)
    modules["scheduler"].save_pretrained(asset_dir / "scheduler")
    _portable_tokenizer_class(asset_dir)
    _drop_load_state(asset_dir)
    record = {k: v for k, v in meta.items() if k not in ("vocab", "vae_factors", "configs")}
    (asset_dir / BASE_META).write_text(json.dumps(record, indent=1))

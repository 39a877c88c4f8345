"""Builds a tiny RANDOM Qwen2.5-VL (real transformers classes) plus a word-level tokenizer, saved to a dir."""
from __future__ import annotations

import re

from layerloop.models.judges.qwen import ANSWER_HINT, DEFAULT_QUESTIONS
from layerloop.models.judges.qwen_runtime import SYSTEM
from layerloop.models.judges.vqascore import QUESTION

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|image_pad|>", "<|video_pad|>"]


def _words() -> list[str]:
    text = " ".join([SYSTEM, QUESTION, ANSWER_HINT, "system user assistant Yes No red mug blue logo",
                     *DEFAULT_QUESTIONS.values()])
    return sorted(set(re.findall(r"\w+|[^\w\s]+", text)))


def build_tiny_qwen(out_dir: str, seed: int = 0) -> str:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    vocab = {tok: i for i, tok in enumerate([*SPECIALS, "[UNK]", *_words()])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="<|endoftext|>",
                                   eos_token="<|im_end|>")
    fast.save_pretrained(out_dir)
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]},
                         bos_token_id=0, eos_token_id=vocab["<|im_end|>"], pad_token_id=0),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[1]),
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"])
    torch.manual_seed(seed)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(out_dir)
    Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112).save_pretrained(out_dir)
    return out_dir

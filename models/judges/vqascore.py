"""VQAScore with Qwen2.5-VL: P("Yes") for `Does this figure show "{text}"? Please answer Yes or No.`.

The probability is read at the first generated position over the whole vocabulary (one forward pass,
no generation), as in the VQAScore paper; used by the evaluation on logo and object panels.
"""
from __future__ import annotations

from .qwen_runtime import QwenVL

QUESTION = 'Does this figure show "{text}"? Please answer Yes or No.'


def vqa_question(text: str) -> str:
    if not text or not text.strip():
        raise ValueError("VQAScore needs a non-empty text")
    return QUESTION.format(text=text.strip())


class VQAScorer:
    """Batched VQAScore over (image, text) pairs with a local Qwen2.5-VL."""

    def __init__(self, path: str | None = None, *, runtime=None, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 8, min_pixels: int = 56 * 56, max_pixels: int = 1024 * 28 * 28):
        if runtime is None:
            if path is None:
                raise ValueError("VQAScorer needs a local Qwen2.5-VL model directory (path)")

            runtime = QwenVL(path, device=device, dtype=dtype, batch_size=batch_size, min_pixels=min_pixels,
                             max_pixels=max_pixels)
        self.runtime = runtime

    def score(self, images: list, texts: list[str]) -> list[float]:
        """One VQAScore in [0, 1] per (image, text) pair."""
        import torch

        if len(images) != len(texts):
            raise ValueError(f"VQAScore: {len(images)} images but {len(texts)} texts")
        if not images:
            return []
        _, logp_yes = self.runtime.answer_logits(list(images), [vqa_question(t) for t in texts])
        return torch.exp(logp_yes).clamp(0.0, 1.0).tolist()

"""Local Qwen2.5-VL judge: one yes/no question per criterion about the three-panel grid.

Score of a criterion = P(Yes) / (P(Yes) + P(No)) at the first answer position = sigmoid(logit_Yes -
logit_No). Chosen over asking for JSON because it needs one forward pass (no generation), cannot be
malformed, is continuous (so thresholds can be calibrated) and ignores probability mass the model puts
on other tokens. All items x criteria are batched through `QwenVL.answer_logits`.
"""
from __future__ import annotations

import time

from .base import PANELS, Judge, JudgeItem, JudgeResult
from .config import CRITERIA, JudgeConfig
from .qwen_runtime import QwenVL

LAYOUT = ("The image has three panels side by side: left, a product with a printed logo; middle, the logo "
          "alone; right, the same product without the logo. ")
DEFAULT_QUESTIONS = {
    "logo_clean": LAYOUT + "Does the middle panel show only the complete logo on a clean white background?",
    "object_clean": LAYOUT + "Is the right panel free of any trace of the logo?",
    "composite_consistent": LAYOUT + ("Does the left panel show exactly the right panel's product wearing the "
                                      "middle panel's logo, with plausible lighting and perspective?"),
    "realism": LAYOUT + "Does the left panel look like a real photograph?",
}
ANSWER_HINT = " Please answer Yes or No."


def grid_image(triplet: dict):
    """The panels side by side in the order composite | logo | object."""
    from PIL import Image

    w, h = triplet["composite"].size
    grid = Image.new("RGB", (w * len(PANELS), h), "white")
    for i, panel in enumerate(PANELS):
        grid.paste(triplet[panel].convert("RGB"), (i * w, 0))
    return grid


class QwenJudge(Judge):
    """Scores with a local Qwen2.5-VL (bf16 on GPU, float32 on CPU)."""

    backend = "qwen"

    def __init__(self, cfg: JudgeConfig, *, runtime=None):
        super().__init__(cfg)
        q = cfg.qwen
        if runtime is None:
            runtime = QwenVL(q.path, device=q.device, dtype=q.dtype, min_pixels=q.min_pixels,
                             max_pixels=q.max_pixels, batch_size=q.batch_size)
        self.runtime = runtime
        self.questions = {c: (q.questions or DEFAULT_QUESTIONS)[c] + ANSWER_HINT for c in CRITERIA}

    def close(self) -> None:
        """Drop the model so its (GPU) memory is free for the next training round."""
        import torch

        self.runtime = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _score_valid(self, items: list[JudgeItem]) -> list[JudgeResult]:
        import torch

        if self.runtime is None:
            raise ValueError("qwen judge is closed; build a new one")

        start = time.perf_counter()
        grids = [grid_image(it.triplet) for it in items]
        images = [g for g in grids for _ in CRITERIA]
        questions = [self.questions[c] for _ in items for c in CRITERIA]
        margins, _ = self.runtime.answer_logits(images, questions)
        probs = torch.sigmoid(margins).view(len(items), len(CRITERIA)).tolist()
        latency = (time.perf_counter() - start) / len(items)
        return [self.result(it.sample_id, dict(zip(CRITERIA, row)), latency_s=latency,
                            raw=" ".join(f"{c}={p:.4f}" for c, p in zip(CRITERIA, row)))
                for it, row in zip(items, probs)]

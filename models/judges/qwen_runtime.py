"""Qwen2.5-VL from a local directory, asked yes/no questions about images in batched single forward passes.

Shared by the `qwen` judge and VQAScore. The prompt is built here, not by the Qwen processor: the
processor (and `qwen_vl_utils`) import torchvision, which does not load beside the CPU torch build
(checked on the CPU machines: PyPI's torchvision fails beside torch 2.13 CPU). So: images are resized with
`qwen_vl_utils.process_vision_info` when it imports (GPU machines), else with the same smart-resize rule
by the torchvision-free `Qwen2VLImageProcessorPil`; the Qwen2.5-VL chat format is written out and
`<|image_pad|>` is expanded to one token per merged
28x28 patch (grid_t * grid_h * grid_w / merge_size**2). Sequences are right-padded and read at their
own last position, so a batch gives the same numbers as one-by-one runs.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger("layerloop.judges.qwen")

SYSTEM = "You are a helpful assistant."
IMAGE_PAD, VISION_START, VISION_END = "<|image_pad|>", "<|vision_start|>", "<|vision_end|>"


def chat_prompt(question: str, n_image_tokens: int) -> str:
    """The Qwen2.5-VL chat format for one image + one question, ending where the answer starts."""
    image = VISION_START + IMAGE_PAD * n_image_tokens + VISION_END
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{image}{question}<|im_end|>\n"
            "<|im_start|>assistant\n")


def _vision_resizer():
    """qwen_vl_utils.process_vision_info when it imports (needs torchvision), else None."""
    try:
        from qwen_vl_utils import process_vision_info
    except (ImportError, OSError, RuntimeError) as exc:
        log.debug("qwen_vl_utils unavailable (%s); using the PIL image processor's resize", type(exc).__name__)
        return None
    return process_vision_info


def _pick_device(device: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def _pick_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


class QwenVL:
    """A loaded model + tokenizer + image processor; `answer_logits` scores yes/no questions."""

    def __init__(self, path: str, *, device: str = "auto", dtype: str = "auto", min_pixels: int = 56 * 56,
                 max_pixels: int = 1024 * 28 * 28, batch_size: int = 8):
        if not os.path.isdir(path):
            raise ValueError(f"Qwen2.5-VL model directory not found: {path!r} (set judge.qwen.path)")
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        self.device = _pick_device(device)
        self.batch_size = batch_size
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            path, dtype=_pick_dtype(dtype, self.device), use_safetensors=True).to(self.device).eval()
        has_config = os.path.exists(os.path.join(path, "preprocessor_config.json"))
        self.processor = (Qwen2VLImageProcessorPil.from_pretrained(path) if has_config
                          else Qwen2VLImageProcessorPil())
        self.resizer = _vision_resizer()
        self.image_token_id = self._single_token(IMAGE_PAD)
        if self.image_token_id != self.model.config.image_token_id:
            raise ValueError(f"tokenizer {IMAGE_PAD} id {self.image_token_id} != model image_token_id "
                             f"{self.model.config.image_token_id}: tokenizer and model do not belong together")
        self.yes_id, self.no_id = self._single_token("Yes"), self._single_token("No")
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def _single_token(self, text: str) -> int:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"the tokenizer splits {text!r} into {len(ids)} tokens; expected one")
        return ids[0]

    def _resize(self, images: list) -> list:
        if self.resizer is None:
            return [im.convert("RGB") for im in images]
        msgs = [{"role": "user", "content": [{"type": "image", "image": im.convert("RGB"),
                                              "min_pixels": self.min_pixels, "max_pixels": self.max_pixels}
                                             for im in images]}]
        return self.resizer(msgs)[0]

    def _vision(self, images: list) -> tuple:
        size = {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}
        feats = self.processor(images=self._resize(images), size=size, return_tensors="pt")
        merge = self.processor.merge_size ** 2
        counts = [int(g.prod()) // merge for g in feats["image_grid_thw"]]
        return feats["pixel_values"], feats["image_grid_thw"], counts

    def _encode(self, prompts: list[str]):
        import torch

        ids = [self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        return input_ids, mask, torch.tensor([len(x) - 1 for x in ids])

    def answer_logits(self, images: list, questions: list[str]):
        """Per (image, question) pair: (logit Yes - logit No, log P(Yes) over the vocabulary), float32 CPU."""
        import torch

        if len(images) != len(questions):
            raise ValueError("answer_logits: one question per image")
        margins, logp = [], []
        for start in range(0, len(images), self.batch_size):
            m, lp = self._batch(images[start:start + self.batch_size], questions[start:start + self.batch_size])
            margins.append(m)
            logp.append(lp)
        return torch.cat(margins), torch.cat(logp)

    def _batch(self, images: list, questions: list[str]):
        import torch

        with torch.inference_mode():
            return self._forward(images, questions)

    def _forward(self, images: list, questions: list[str]):
        import torch

        pixels, grid, counts = self._vision(images)
        input_ids, mask, last = self._encode([chat_prompt(q, n) for q, n in zip(questions, counts)])
        mm_types = (input_ids == self.image_token_id).long()
        out = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                         pixel_values=pixels.to(self.device, self.model.dtype), image_grid_thw=grid.to(self.device),
                         mm_token_type_ids=mm_types.to(self.device), use_cache=False)
        logits = out.logits[torch.arange(len(questions), device=self.device), last.to(self.device)].float().cpu()
        margin = logits[:, self.yes_id] - logits[:, self.no_id]
        return margin, torch.log_softmax(logits, dim=-1)[:, self.yes_id]

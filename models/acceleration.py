"""Opt-in speed-ups of the Fill transformer: regional compilation (same maths) and FP8 linears (not).

Regional compilation: every repeated transformer block (FLUX's double- and single-stream blocks) is
compiled with torch.compile, so one graph per block kind serves all 57 FLUX blocks and compiling takes
seconds, not minutes. LoRA layers attached before compiling are compiled with the block; attaching or
removing adapters afterwards makes torch recompile the blocks (guards), so the trainer and the sampler
compile inside a context and restore eager blocks when they are done.

Measured on one H200 (bench/train_gpu.py, FLUX.1-Fill-dev shapes, 3x512, rank 32, checkpointing): the
batch-2 LoRA step goes from 1.51 s (27.9 % MFU) to 1.07 s (39.1 %), inference from 4.41 s to 3.49 s.
On a CPU the compile time dominates any gain at tiny sizes: keep it off there.

FP8 (`SampleConfig.fp8`, sampling only): torchao's dynamic-activation / FP8-weight quantisation of the
transformer's Linear layers (e4m3, per-row scales), in place and irreversible; torchao is imported only
when asked for. It needs a CUDA GPU of compute capability >= 8.9 (Ada, Hopper) and bf16 weights (torchao's
per-row FP8 quantises bf16 only). Inductor's global settings are left alone (torchao would change them
for the whole process), so FP8 and bf16 compile alike. Speed and PSNR against bf16: bench/gpu_path.py.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator


def repeated_blocks(transformer: Any) -> list:
    """The modules regional compilation targets (the model's `_repeated_blocks` classes)."""
    names = set(getattr(transformer, "_repeated_blocks", None) or ())
    if not names:
        raise ValueError(f"{type(transformer).__name__} declares no _repeated_blocks; it cannot be compiled by region")
    return [m for m in transformer.modules() if type(m).__name__ in names]


def compile_blocks(transformer: Any, **compile_kwargs: Any) -> int:
    """Compile every repeated block in place (lazily: the first forward compiles); returns how many."""
    blocks = repeated_blocks(transformer)
    kwargs = {"fullgraph": False, "dynamic": False, **compile_kwargs}
    for block in blocks:
        block.compile(**kwargs)
    return len(blocks)


def uncompile_blocks(transformer: Any) -> None:
    """Back to eager blocks (nn.Module.compile keeps the compiled callable in `_compiled_call_impl`)."""
    for module in transformer.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None


@contextmanager
def compiled_blocks(transformer: Any, enabled: bool, **compile_kwargs: Any) -> Iterator[None]:
    """Run the body with compiled blocks when `enabled`; eager blocks again afterwards, even on errors."""
    if not enabled:
        yield
        return
    compile_blocks(transformer, **compile_kwargs)
    try:
        yield
    finally:
        uncompile_blocks(transformer)


FP8_MARK = "_layerloop_fp8"  # set on a quantised transformer: the adapter directory fused into it ("" = none)
FP8_MIN_CAPABILITY = (8, 9)


class AccelerationError(ValueError):
    """An acceleration this machine or model cannot run; the message says what is missing."""


def fp8_tag(transformer: Any) -> str | None:
    """The adapter fused into an FP8-quantised transformer ("" for the bare base), None if not quantised."""
    return getattr(transformer, FP8_MARK, None)


def fp8_problems(device: Any, dtype: Any) -> list[str]:
    """Why FP8 linears cannot run on `device` / `dtype` here (empty: they can)."""
    import importlib.util

    import torch

    problems = []
    if getattr(device, "type", str(device)) != "cuda" or not torch.cuda.is_available():
        problems.append(f"no CUDA device (the model is on {device})")
    elif torch.cuda.get_device_capability(device) < FP8_MIN_CAPABILITY:
        cap = ".".join(map(str, torch.cuda.get_device_capability(device)))
        problems.append(f"{torch.cuda.get_device_name(device)} has compute capability {cap}, FP8 needs >= 8.9")
    if dtype != torch.bfloat16:
        problems.append(f"the model is {str(dtype).replace('torch.', '')}, FP8 needs model.dtype bfloat16")
    if importlib.util.find_spec("torchao") is None:
        problems.append("torchao is not installed (pip install torchao)")
    return problems


def check_fp8(device: Any, dtype: Any) -> None:
    """Raise AccelerationError naming everything FP8 linears lack here."""
    problems = fp8_problems(device, dtype)
    if problems:
        raise AccelerationError("sample.fp8 cannot run here: " + "; ".join(problems) + ". Set sample.fp8: false")


def quantize_fp8(transformer: Any, device: Any, dtype: Any, tag: str) -> int:
    """FP8 weights + dynamic per-row FP8 activations in every Linear of `transformer` except LoRA factors
    (torchao), in place; marks it with `tag` (the fused adapter). Returns how many Linear layers were
    quantised (torchao leaves those whose sizes are not multiples of 16 as they are)."""
    check_fp8(device, dtype)
    import torch
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    def wanted(module: Any, name: str) -> bool:
        return isinstance(module, torch.nn.Linear) and "lora_" not in name

    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
    quantize_(transformer, config, filter_fn=wanted)
    setattr(transformer, FP8_MARK, tag)
    return sum(1 for name, m in transformer.named_modules()
               if wanted(m, name) and type(m.weight) is not torch.nn.Parameter)

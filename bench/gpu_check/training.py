"""The LLaVA-like training step of the ``timings`` section: packed (OG-Fusion, varlen batch,
``ogkernels_varlen`` attention) vs padded (the reference connector, merge and padded batch,
``sdpa``), in tokens per second.

The models and batches are ``bench.bench_training``'s (``setup``): the same weights for both
paths, 8 synthetic image–caption samples with SAM2-like masks. On a GPU the config is a
mid-size random LLaVA (336² images: 576 patches; a 4-layer, 1024-wide Llama with grouped
heads) in bf16; under ``--smoke`` its ``tiny`` config in fp32 on the CPU, one step each (no
warm-up) through the PyTorch ops (under the interpreter a step takes tens of seconds). Tokens per second
count the real (unpadded) tokens of the batch in both paths; ``llm_rows`` is what each path's
language model attends over.
"""

from __future__ import annotations

from typing import Any

import torch

import contextlib
import os
import time

from .core import Context, measure, op_backend

GPU_CONFIG = "gpu-check-mid"
GPU_SPEC = dict(
    model=dict(image_size=336, vision_hidden=256, text_hidden=1024, text_layers=4, heads=16, kv_heads=8),
    masks=(20, 60),
    sizes=(336, 480),
)
MIN_SECONDS = 20.0


def to_device(value: Any, device: str, dtype: torch.dtype) -> Any:
    """Tensors of a (nested) batch on ``device``; floating ones in ``dtype``."""
    if isinstance(value, torch.Tensor):
        return value.to(device, dtype) if value.is_floating_point() else value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device, dtype) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device, dtype) for v in value)
    return value


def training_rows(ctx: Context) -> list[dict]:
    """Both paths' step time and tokens/s (one note row when time is short)."""
    if ctx.time_left() < MIN_SECONDS:
        return [{"path": "both", "note": "skipped: no time left"}]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bench import bench_training as bt
    from ogkernels.tools.reference_llava import reference_llava_forward

    name = "tiny" if ctx.smoke else GPU_CONFIG
    bt.CONFIGS.setdefault(GPU_CONFIG, GPU_SPEC)
    dtype = torch.float32 if ctx.smoke else torch.bfloat16
    model, _, packed, _ = bt.setup(name, "ogkernels_varlen")
    ref_model, twin, _, ref = bt.setup(name, "sdpa")
    model.to(ctx.device, dtype)
    ref_model.to(ctx.device, dtype)
    twin.to(ctx.device, dtype)
    packed, ref = to_device(packed, ctx.device, dtype), to_device(ref, ctx.device, dtype)

    def packed_step():
        model.zero_grad(set_to_none=True)
        model(**packed).loss.backward()

    def padded_step():
        ref_model.zero_grad(set_to_none=True)
        twin.zero_grad(set_to_none=True)
        out = reference_llava_forward(ref_model, twin, ref["pixel_values"], ref["masks"], ref["input_ids"], ref["labels"])
        out.loss.backward()
        return out

    tokens = int(packed["input_ids"].shape[1])
    with op_backend("torch") if ctx.smoke else contextlib.nullcontext():
        return _time_steps(ctx, model, packed_step, padded_step, tokens, name, dtype)


def _time_steps(ctx: Context, model, packed_step, padded_step, tokens: int, name: str, dtype) -> list[dict]:
    from ogkernels.attention import attention_backend

    heads_dim = model.config.text_config.hidden_size // model.config.text_config.num_attention_heads
    backend = attention_backend(torch.empty(1, 1, heads_dim, dtype=dtype, device=ctx.device))
    rows = []
    for path, step, attention in (
        ("packed (OGFusion varlen)", packed_step, f"ogkernels_varlen → {backend}"),
        ("padded (reference)", padded_step, "sdpa"),
    ):
        start = time.perf_counter()
        out = step()  # the warm-up on a GPU, the one timed step on the CPU
        seconds = measure(step, ctx.device, warmup_ms=50, rep_ms=300) if ctx.cuda else time.perf_counter() - start
        rows_attended = tokens if out is None else int(out.logits.shape[0] * out.logits.shape[1])
        rows.append({
            "path": path, "config": name, "ms": seconds * 1e3, "tokens": tokens, "llm_rows": rows_attended,
            "tokens_per_s": tokens / seconds, "attention": attention, "dtype": str(dtype).removeprefix("torch."),
        })  # fmt: skip
    return rows

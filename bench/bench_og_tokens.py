"""og_tokens vs the reference embedder (per image, per mask loops), side by side.

Workloads: LLaVA-1.5 (V = 576, F = 1024, fp32), SAM2-like masks, 20–60 per image.
Paths: ``reference`` (ogkernels.reference.og_fusion_embed: Φ per mask on the CPU, boolean
gathers, cat, zero padding), ``torch`` (og_tokens from raw masks), ``torch-bitmaps`` (from
already-downsampled bitmaps: the token construction alone), ``triton`` on CUDA.
extra_info: tokens T, host syncs per batch (HostSyncCounter; on CPU it counts the call sites
that sync on a GPU), bytes that must move (masks + features read once, T·F written once) and
the roofline fraction (those bytes at the measured memcpy speed / measured time).
"""

from __future__ import annotations

import pytest
import torch

from ogkernels import downsample_masks, og_tokens
from ogkernels import reference as R
from ogkernels.tools.profiling import HostSyncCounter

from .workloads import features, mask_batch, mask_bytes

CONFIGS = [(8, 480, 640), (16, 336, 336), (32, 336, 336)]
PATHS = ["reference", "torch", "torch-bitmaps"] + (["triton"] if torch.cuda.is_available() else [])
V, F = 576, 1024


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"B{c[0]}-{c[1]}x{c[2]}")
def test_og_tokens(benchmark, bandwidth, config, path):
    batch, height, width = config
    masks = list(mask_batch(batch, height, width))
    x = features(batch, V, F)
    bom = torch.randn(1, F)
    benchmark.group = f"og_tokens B={batch} masks {height}x{width} V={V} F={F} fp32"
    if path == "torch-bitmaps":
        flat = downsample_masks(masks, V)
        masks = list(torch.split(flat, [m.shape[0] for m in masks]))
    if path == "triton":
        masks, x, bom = [m.cuda() for m in masks], x.cuda(), bom.cuda()
    if path == "reference":
        run = lambda: R.og_fusion_embed(x, masks, bom)  # noqa: E731
        rounds = 2
    elif path == "triton":
        run = lambda: (og_tokens(x, masks, bom), torch.cuda.synchronize())  # noqa: E731
        rounds = 10
    else:
        run = lambda: og_tokens(x, masks, bom)  # noqa: E731
        rounds = 5
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    with HostSyncCounter() as counter:
        out = run()
    total = sum(out.lengths) if path == "reference" else int(out[0].cu_seqlens[-1]) if path == "triton" else int(out.cu_seqlens[-1])
    moved = mask_bytes(masks) + x.numel() * x.element_size() + total * F * x.element_size()
    seconds = benchmark.stats.stats.mean
    benchmark.extra_info.update(
        {
            "tokens": total,
            "host_syncs": counter.syncs,
            "device_ops": counter.ops,
            "bytes_MB": moved / 1e6,
            "roofline_fraction": moved / (bandwidth * 1e9) / seconds,
        }
    )

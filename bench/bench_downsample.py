"""downsample_masks vs the reference Φ (one CPU call per mask), side by side.

Paths: ``reference`` (ogkernels.reference, the reference's loop), ``torch`` (our PyTorch path
on bool masks), ``torch-packed`` (bit-packed masks, 8 px/byte), and ``triton`` on CUDA only.
extra_info: mask bytes read, mask GB/s achieved, the machine's memcpy GB/s, and the fraction
of a read-once-at-memcpy-speed bound (mask bytes / (memcpy GB/s / 2)).
"""

from __future__ import annotations

import pytest
import torch

from ogkernels import downsample_masks
from ogkernels import reference as R

from .workloads import mask_batch, mask_bytes, packed_batch

CONFIGS = [
    (8, 480, 640, 576),
    (8, 336, 336, 576),
    (8, 480, 640, 729),
]
PATHS = ["reference", "torch", "torch-packed"] + (["triton", "triton-packed"] if torch.cuda.is_available() else [])


def run_reference(masks, v):
    return [R.downsample_mask_to_1d_counts(m[j], v) for m in masks for j in range(m.shape[0])]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"B{c[0]}-{c[1]}x{c[2]}-V{c[3]}")
def test_downsample(benchmark, bandwidth, config, path):
    batch, height, width, v = config
    dense = list(mask_batch(batch, height, width))
    benchmark.group = f"downsample B={batch} {height}x{width} V={v} ({sum(m.shape[0] for m in dense)} masks)"
    masks = list(packed_batch(batch, height, width)) if path.endswith("packed") else dense
    if path.startswith("triton"):
        masks = [m.to("cuda") for m in masks]
        torch.cuda.synchronize()
    if path == "reference":
        benchmark.pedantic(run_reference, args=(masks, v), rounds=3, iterations=1)
    else:
        run = lambda: downsample_masks(masks, v)  # noqa: E731
        if path.startswith("triton"):
            run = lambda: (downsample_masks(masks, v), torch.cuda.synchronize())  # noqa: E731
        benchmark.pedantic(run, rounds=10, iterations=1, warmup_rounds=2)
        expected = torch.cat([torch.stack(run_reference([m], v)) for m in dense])
        assert torch.equal(downsample_masks(masks, v).cpu(), expected)
    read = mask_bytes(masks)
    seconds = benchmark.stats.stats.mean
    benchmark.extra_info.update(
        {
            "mask_MB": read / 1e6,
            "mask_GBps": read / seconds / 1e9,
            "memcpy_GBps": bandwidth,
            "read_once_bound_fraction": (read / (bandwidth / 2 * 1e9)) / seconds,
        }
    )

"""The reference downsampling operators, written plainly (the oracle of the tests).

``downsample_mask_to_1d_counts`` follows §2 of the reference specification step by step:
float32 flatten, 1-D adaptive average pooling to ``V`` bins, scale by ``N / V``, threshold
(inclusive). It runs on the CPU, one mask per call, like the reference connector.

``downsample_mask_2d_counts`` is the oracle of ogkernels' spatial operator
(``mode="patch"``): true 2-D adaptive bins on a ``gh × gw`` grid, optionally laid over the
pad-to-square or centre-crop frame of LLaVA's preprocessing; a bin is kept iff it holds at
least ``alpha`` mask pixels. It is written as an explicit loop over bins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops.frames import frame_window


def downsample_mask_to_1d_counts(
    mask: torch.Tensor, output_size: int, threshold_count: float = 0.5
) -> torch.Tensor:
    """Reference Φ: one mask of any shape → bool vector of length ``output_size``.

    Args:
        mask: any-shaped mask (bool, integer or float; float values are kept as they are).
        output_size: number of bins ``V``.
        threshold_count: keep a bin iff its estimated count ``≥`` this (0.5 in the reference).
    """
    flat = mask.detach().to("cpu", torch.float32).reshape(-1)
    n = flat.numel()
    pooled = F.adaptive_avg_pool1d(flat.view(1, 1, n), output_size).view(output_size)
    counts = pooled * (n / output_size)
    return counts >= threshold_count


def adaptive_bin(index: int, size: int, bins: int) -> tuple[int, int]:
    """PyTorch's adaptive pooling bin ``[floor(i·size/bins), ceil((i+1)·size/bins))``."""
    return (index * size) // bins, -((-(index + 1) * size) // bins)


def downsample_mask_2d_counts(
    mask: torch.Tensor, grid: tuple[int, int], alpha: float = 0.5, frame: str = "none"
) -> torch.Tensor:
    """Oracle of ``mode="patch"``: one ``(H, W)`` mask → bool ``(gh·gw,)``, row-major cells."""
    mask = mask.detach().to("cpu").bool()
    height, width = mask.shape
    gh, gw = grid
    top, left, window_h, window_w = frame_window(height, width, frame)
    out = torch.zeros(gh * gw, dtype=torch.bool)
    for r in range(gh):
        r0, r1 = adaptive_bin(r, window_h, gh)
        y0, y1 = max(top + r0, 0), min(top + r1, height)
        for c in range(gw):
            c0, c1 = adaptive_bin(c, window_w, gw)
            x0, x1 = max(left + c0, 0), min(left + c1, width)
            count = int(mask[y0:y1, x0:x1].sum()) if y1 > y0 and x1 > x0 else 0
            out[r * gw + c] = count >= alpha
    return out

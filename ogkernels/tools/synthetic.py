"""SAM2-like synthetic masks and features for demos, tests and benchmarks.

SAM 2's automatic masks on photos are tens per image, overlapping and nested (an object and
its parts), with areas spread over orders of magnitude (a few pixels to most of the frame).
``sam2_like_masks`` draws rotated ellipses whose areas are log-uniform between ``min_area``
and ``max_area`` of the image, a fraction of them nested inside an earlier mask, plus a few
with holes. Deterministic for a given ``torch.Generator``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch


def sam2_like_masks(
    num_masks: int,
    height: int,
    width: int,
    *,
    generator: torch.Generator | None = None,
    min_area: float = 5e-4,
    max_area: float = 0.6,
    nested_fraction: float = 0.3,
) -> torch.Tensor:
    """``(num_masks, height, width)`` bool masks shaped like SAM 2 automatic masks."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    ys = torch.arange(height, dtype=torch.float32)[:, None]
    xs = torch.arange(width, dtype=torch.float32)[None, :]
    masks = torch.zeros(num_masks, height, width, dtype=torch.bool)
    centres: list[tuple[float, float, float]] = []
    for i in range(num_masks):
        u = torch.rand(8, generator=g).tolist()
        area = math.exp(math.log(min_area) + u[0] * (math.log(max_area) - math.log(min_area)))
        area *= height * width
        aspect = math.exp((u[1] - 0.5) * 2.0)
        a = max(math.sqrt(area * aspect / math.pi), 0.7)
        b = max(math.sqrt(area / (aspect * math.pi)), 0.7)
        if centres and u[2] < nested_fraction:
            cy, cx, radius = centres[int(u[3] * len(centres))]
            scale = 0.5 * u[4]
            a, b = max(a * scale, 0.7), max(b * scale, 0.7)
            cy += (u[5] - 0.5) * radius
            cx += (u[6] - 0.5) * radius
        else:
            cy, cx = u[3] * height, u[4] * width
        theta = u[7] * math.pi
        c, s = math.cos(theta), math.sin(theta)
        dy, dx = ys - cy, xs - cx
        r = ((dx * c + dy * s) / a) ** 2 + ((-dx * s + dy * c) / b) ** 2
        mask = r <= 1.0
        if u[5] > 0.85:  # a hole, like an object seen through a gap
            mask &= r > 0.15
        masks[i] = mask
        centres.append((cy, cx, min(a, b)))
    return masks


def sam2_like_batch(
    batch: int,
    masks_per_image: tuple[int, int],
    size: tuple[int, int] | list[tuple[int, int]],
    *,
    seed: int = 0,
) -> list[torch.Tensor]:
    """``batch`` images' masks: a count drawn from ``masks_per_image`` (inclusive range) per
    image, each image ``size = (H, W)`` (or one size per image)."""
    g = torch.Generator().manual_seed(seed)
    sizes = size if isinstance(size, list) else [size] * batch
    out = []
    for b in range(batch):
        n = int(torch.randint(masks_per_image[0], masks_per_image[1] + 1, (1,), generator=g))
        out.append(sam2_like_masks(n, sizes[b][0], sizes[b][1], generator=g))
    return out


SAV_FILE = "sav_000001_auto.json"  # SA-V (Meta), CC BY 4.0: see tests/data/README.md


def sav_file() -> Path:
    """The SA-V annotation file shipped with the repository (``tests/data``), or the one in
    the folder ``OGKERNELS_SHARED_DATA`` names."""
    folder = os.environ.get("OGKERNELS_SHARED_DATA")
    root = Path(folder) if folder else Path(__file__).resolve().parents[2] / "tests" / "data"
    return root / SAV_FILE


def sav_masklets(path: str | os.PathLike, frames: slice = slice(None)) -> tuple[list[np.ndarray], list[list[dict]]]:
    """Real SAM 2 masks from an SA-V annotation file (Segment Anything Video, Meta, CC BY 4.0):
    per selected frame, its masklets as ``bool (K, H, W)`` and their COCO RLEs (``None``
    masklets skipped). Needs pycocotools."""
    from pycocotools import mask as mask_utils

    with open(path) as handle:
        selected = json.load(handle)["masklet"][frames]
    rles = [[rle for rle in frame if rle is not None] for frame in selected]
    dense = [
        np.ascontiguousarray(mask_utils.decode(frame).transpose(2, 0, 1)).astype(bool) for frame in rles
    ]
    return dense, rles

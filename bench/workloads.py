"""Named benchmark workloads (cached per session).

LLaVA-1.5: CLIP ViT-L/14 at 336², V = 576 (24×24), F = 1024, Llama-3.1-8B D = 4096.
SigLIP at 384²: V = 729 (27×27), F = 1152. Masks: SAM2-like (``ogkernels.tools.synthetic``), 20–60
per image, at original photo resolution (480×640) or at the processed 336×336.
"""

from __future__ import annotations

import functools

import torch

from ogkernels import PackedMasks
from ogkernels.tools.synthetic import sam2_like_batch

ENCODERS = {"llava-1.5": (576, 1024), "siglip-384": (729, 1152)}


@functools.lru_cache(maxsize=None)
def mask_batch(batch: int, height: int, width: int, low: int = 20, high: int = 60, seed: int = 0):
    return tuple(sam2_like_batch(batch, (low, high), (height, width), seed=seed))


@functools.lru_cache(maxsize=None)
def packed_batch(batch: int, height: int, width: int, low: int = 20, high: int = 60, seed: int = 0):
    return tuple(PackedMasks.from_dense(m) for m in mask_batch(batch, height, width, low, high, seed))


@functools.lru_cache(maxsize=None)
def features(batch: int, tokens: int, width: int, dtype: torch.dtype = torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, tokens, width, generator=g).to(dtype)


def mask_bytes(masks) -> int:
    return sum(m.bits.numel() if isinstance(m, PackedMasks) else m.numel() for m in masks)

"""Inputs of the check: the benchmark configurations (GPU) and their tiny twins (``--smoke``).

GPU: B = 8 / 16 / 32 images, LLaVA-1.5 (V = 576, F = 1024) and SigLIP-384 (V = 729,
F = 1152), D = 4096, bf16, SAM2-like masks (20–60 per image at 336×336,
``ogkernels.tools.synthetic``), as in ``bench/``. Smoke: B = 2, V = 16, F = 32, D = 64,
1–2 masks of 24×24 per image (the Triton interpreter runs ≈ 40 Φ programs/s).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Config:
    batch: int
    tokens: int  # V
    width: int  # F
    llm_dim: int  # D
    mask_size: tuple[int, int] = (336, 336)
    masks_per_image: tuple[int, int] = (20, 60)
    dtype: torch.dtype = torch.bfloat16

    @property
    def name(self) -> str:
        return f"B={self.batch} V={self.tokens} F={self.width}"


GPU_CONFIGS = tuple(
    Config(batch, tokens, width, 4096)
    for tokens, width in ((576, 1024), (729, 1152))
    for batch in (8, 16, 32)
)
SMOKE_CONFIGS = (Config(2, 16, 32, 64, (24, 24), (1, 2)),)


def configs(smoke: bool) -> tuple[Config, ...]:
    return SMOKE_CONFIGS if smoke else GPU_CONFIGS


def middle(smoke: bool) -> Config:
    """The one configuration of the single-case checks (syncs, determinism, tuning):
    B = 16, V = 576 on a GPU."""
    return SMOKE_CONFIGS[0] if smoke else GPU_CONFIGS[1]


@dataclass
class Batch:
    """One configuration's inputs on a device: per-image bool masks (and bit-packed),
    features ``(B, V, F)`` and the BOM row ``(1, F)`` in the config's dtype."""

    config: Config
    masks: list[torch.Tensor]
    packed: list
    features: torch.Tensor
    bom: torch.Tensor

    @property
    def num_masks(self) -> int:
        return sum(m.shape[0] for m in self.masks)

    @property
    def mask_bytes(self) -> int:
        return sum(m.numel() for m in self.masks)

    @property
    def packed_bytes(self) -> int:
        return sum(p.bits.numel() for p in self.packed)


@functools.lru_cache(maxsize=2)
def _host_masks(batch: int, size: tuple[int, int], per_image: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    from ogkernels.tools.synthetic import sam2_like_batch

    return tuple(sam2_like_batch(batch, per_image, size, seed=0))


def make_batch(config: Config, device: str, seed: int = 0) -> Batch:
    """The inputs of ``config`` on ``device`` (deterministic for a ``seed``)."""
    from ogkernels import PackedMasks

    host = _host_masks(config.batch, config.mask_size, config.masks_per_image)
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(config.batch, config.tokens, config.width, generator=g).to(device, config.dtype)
    bom = torch.randn(1, config.width, generator=g).to(device, config.dtype)
    masks = [m.to(device) for m in host]
    packed = [PackedMasks.from_dense(m).to(device) for m in host]
    return Batch(config, masks, packed, features, bom)


def patch_gather_indices(out) -> tuple[torch.Tensor, torch.Tensor]:
    """``(table_index, row_index)`` that gather an ``og_tokens`` output's patch rows from the
    flat ``(B·V, F)`` features (its BOM and global rows become zero rows): a realistic
    ``gather_rows`` workload built from the public ``VarlenBatch.source_index``."""
    source = out.source_index
    return torch.where(source >= 0, 0, -1).to(torch.int32), source.clamp(min=0)

"""Phi_alpha launchers: the Triton kernel and the vectorised PyTorch path (``phi_torch``).

Both take a list of :class:`MaskImage` (already validated) and return the ``(M, V)`` bool
bitmaps. Bin rule (exact integers, no floats):

* ``flat``: bin ``j`` of the row-major flattened mask covers ``[floor(jN/V), ceil((j+1)N/V))``
  (length ``L_j``); keep iff ``S_j · N >= alpha · L_j · V``, i.e. ``S_j >= ceil(alpha·L_j·V/N)``,
  computed once per image with exact rationals. ``L_j`` takes two values at most.
* ``patch``: 2-D adaptive bins over the frame window; keep iff ``count >= alpha``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch

from .._host import upload
from ..packed_masks import PackedMasks
from .frames import frame_window
from .phi_torch import flat_counts, flat_thresholds, patch_counts

# Thresholds above any possible count (alpha large) are capped to stay int64.
NEVER = 2**62


@dataclass(frozen=True)
class MaskImage:
    """The masks of one image, validated: a dense 0/1 byte tensor ``(N, H, W)`` (bool or
    uint8) or a :class:`PackedMasks`."""

    data: torch.Tensor  # dense: (N, H, W) bool/uint8 contiguous; packed: (N, nbytes) uint8
    num_masks: int
    height: int
    width: int
    packed: bool

    @classmethod
    def of(cls, masks: torch.Tensor | PackedMasks) -> "MaskImage":
        if isinstance(masks, PackedMasks):
            return cls(masks.bits.contiguous(), masks.num_masks, masks.height, masks.width, True)
        n, h, w = masks.shape
        return cls(masks.contiguous(), n, h, w, False)

    def byte_view(self) -> torch.Tensor:
        """All mask bytes of the image, flattened (a view, no copy)."""
        return self.data.reshape(-1).view(torch.uint8)


@dataclass(frozen=True)
class BinGeometry:
    """Pixel geometry of one image as the bin counter sees it."""

    rows: int
    pitch: int
    top: int
    left: int
    window_h: int
    window_w: int
    area_lo: int
    threshold_lo: int
    threshold_hi: int


def ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def bin_geometry(
    image: MaskImage, grid: tuple[int, int], alpha: float, mode: str, frame: str
) -> BinGeometry:
    """Rows, window and exact integer thresholds of one image's bins."""
    gh, gw = grid
    if mode == "flat":
        n_pixels, bins = image.height * image.width, gh * gw
        ratio = Fraction(alpha)
        area_lo = ceil_div(n_pixels, bins)
        thresholds = [min(math.ceil(ratio * area * bins / n_pixels), NEVER) for area in (area_lo, area_lo + 1)]
        return BinGeometry(1, n_pixels, 0, 0, 1, n_pixels, area_lo, *thresholds)
    top, left, window_h, window_w = frame_window(image.height, image.width, frame)
    threshold = min(math.ceil(Fraction(alpha)), NEVER)
    return BinGeometry(
        image.height, image.width, top, left, window_h, window_w, 0, threshold, threshold
    )


# ----------------------------------------------------------------------------------------------
# PyTorch path
# ----------------------------------------------------------------------------------------------


def downsample_torch(
    images: list[MaskImage], grid: tuple[int, int], alpha: float, mode: str, frame: str
) -> torch.Tensor:
    """The PyTorch path: one vectorised pass per image, no loop over masks."""
    device = images[0].data.device
    bins = grid[0] * grid[1]
    outputs = []
    for image in images:
        if image.num_masks == 0:
            outputs.append(torch.zeros(0, bins, dtype=torch.bool, device=device))
            continue
        geometry = bin_geometry(image, grid, alpha, mode, frame)
        if mode == "flat":
            n_pixels = image.height * image.width
            slots = 8 * image.data.shape[1] if image.packed else n_pixels
            counts = flat_counts(image.byte_view(), image.packed, image.num_masks, slots, n_pixels, bins)
            thresholds = flat_thresholds(n_pixels, bins, geometry.area_lo, geometry.threshold_lo, geometry.threshold_hi)
            outputs.append(counts >= upload(thresholds, torch.int64, device))
        else:
            window = (geometry.top, geometry.left, geometry.window_h, geometry.window_w)
            counts = patch_counts(image.data, image.packed, image.height, image.width, grid, window)
            outputs.append(counts >= geometry.threshold_lo)
    if len(outputs) == 1:
        return outputs[0]
    return torch.cat(outputs, dim=0)


# ----------------------------------------------------------------------------------------------
# Triton path
# ----------------------------------------------------------------------------------------------


def _word_aligned(image: MaskImage) -> torch.Tensor:
    """The image's bytes, 4-byte aligned (a padded copy only for a misaligned view). A last,
    partial word is read whole: an aligned 4-byte load never crosses a page or allocation."""
    stream = image.byte_view()
    if stream.data_ptr() % 4 == 0:
        return stream
    padded = torch.zeros(ceil_div(stream.numel(), 4) * 4, dtype=torch.uint8, device=stream.device)
    padded[: stream.numel()] = stream
    return padded


def _tile_sizes(bin_pixels: int, grid_w: int, packed: bool) -> tuple[int, int]:
    words_per_bin = max(1, ceil_div(bin_pixels, 32 if packed else 4))
    block_w = min(64, max(8, 1 << (words_per_bin - 1).bit_length()))
    block_c = min(max(1 << (grid_w - 1).bit_length(), 1), max(1, 1024 // block_w), 64)
    return block_c, block_w


def downsample_triton(
    images: list[MaskImage], grid: tuple[int, int], alpha: float, mode: str, frame: str
) -> torch.Tensor:
    """One launch of :func:`phi_bins_kernel` over every mask of every image (two when the
    batch mixes bit-packed and dense images)."""
    kinds = {image.packed for image in images}
    if len(kinds) == 1:
        return _launch_phi(images, grid, alpha, mode, frame)
    device = images[0].data.device
    parts = {
        packed: _launch_phi([im for im in images if im.packed == packed], grid, alpha, mode, frame)
        for packed in kinds
    }
    taken = {packed: 0 for packed in kinds}
    pieces = []
    for image in images:
        start = taken[image.packed]
        pieces.append(parts[image.packed][start : start + image.num_masks])
        taken[image.packed] = start + image.num_masks
    return torch.cat(pieces, dim=0) if pieces else torch.zeros(0, grid[0] * grid[1], dtype=torch.bool, device=device)


def _launch_phi(
    images: list[MaskImage], grid: tuple[int, int], alpha: float, mode: str, frame: str
) -> torch.Tensor:
    from ..kernels import downsample as kernel

    device = images[0].data.device
    gh, gw = grid
    kept_alive, params, mask_image, mask_local = [], [], [], []
    packed = images[0].packed
    for i, image in enumerate(images):
        stream = _word_aligned(image)
        kept_alive.append(stream)
        geometry = bin_geometry(image, grid, alpha, mode, frame)
        slots = 8 * image.data.shape[1] if image.packed else image.height * image.width
        row = [0] * kernel.NUM_FIELDS
        row[kernel.FIELD_BASE] = stream.data_ptr()
        row[kernel.FIELD_ROWS] = geometry.rows
        row[kernel.FIELD_PITCH] = geometry.pitch
        row[kernel.FIELD_TOP] = geometry.top
        row[kernel.FIELD_LEFT] = geometry.left
        row[kernel.FIELD_WIN_H] = geometry.window_h
        row[kernel.FIELD_WIN_W] = geometry.window_w
        row[kernel.FIELD_SLOTS_PER_MASK] = slots
        row[kernel.FIELD_AREA_LO] = geometry.area_lo
        row[kernel.FIELD_THR_LO] = geometry.threshold_lo
        row[kernel.FIELD_THR_HI] = geometry.threshold_hi
        params.append(row)
        mask_image += [i] * image.num_masks
        mask_local += list(range(image.num_masks))
    total = len(mask_image)
    out = torch.empty(total, gh * gw, dtype=torch.bool, device=device)
    if total == 0:
        return out
    tables = [
        upload(params, torch.int64, device),
        upload(mask_image, torch.int32, device),
        upload(mask_local, torch.int32, device),
    ]
    first = images[0]
    if mode == "flat":
        bin_pixels = ceil_div(first.height * first.width, gh * gw) + 1
    else:
        bin_pixels = ceil_div(frame_window(first.height, first.width, frame)[3], gw) + 1
    block_c, block_w = _tile_sizes(bin_pixels, gw, packed)
    launch_grid = (total, gh, ceil_div(gw, block_c))
    kernel.phi_bins_kernel[launch_grid](
        tables[0],
        tables[1],
        tables[2],
        out.view(torch.uint8),
        gh,
        gw,
        PACKED=packed,
        BLOCK_C=block_c,
        BLOCK_W=block_w,
        num_warps=4,
    )
    del kept_alive
    return out

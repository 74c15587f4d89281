"""Phi_alpha as the custom op ``ogkernels::phi``: its Triton launcher and its PyTorch path.

``phi(masks, heights, widths, packed, grid_h, grid_w, alpha, mode, frame) -> (M, V) bool``:
every mask of every image (images concatenated in order) downsampled to the token grid. The
op is opaque to ``torch.compile`` (a fake gives its shape), so images of any size and count
trace into one graph; its body runs eagerly on concrete tensors.

Bin rule (exact integers, no floats):

* ``flat``: bin ``j`` of the row-major flattened mask covers ``[floor(jN/V), ceil((j+1)N/V))``
  (length ``L_j``); keep iff ``S_j · N >= alpha · L_j · V``, i.e. ``S_j >= ceil(alpha·L_j·V/N)``,
  computed once per image with exact rationals. ``L_j`` takes two values at most.
* ``patch``: 2-D adaptive bins over the frame window; keep iff ``count >= alpha``.

``alpha`` is read as the decimal number it prints as (``0.1`` is exactly 1/10, not the binary
double nearest to it), so a bin on the exact boundary ``alpha·L·V/N`` is kept as the written
rule says. Any non-zero byte of a dense mask is one pixel (a ``bool`` tensor can hold other
bytes, e.g. a 0/255 image viewed as bool).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import torch

from . import launch
from .dispatch import use_triton
from .frames import frame_window
from .host import resident
from .phi_torch import flat_counts, flat_thresholds, patch_counts

# Thresholds above any possible count (alpha large) are capped to stay int64.
NEVER = 2**62


@dataclass(frozen=True)
class MaskImage:
    """The masks of one image: dense 0/non-0 bytes ``(N, H, W)`` (bool or uint8), or
    bit-packed ``(N, ceil(H·W/8))`` uint8 (``numpy.packbits`` order)."""

    data: torch.Tensor
    num_masks: int
    height: int
    width: int
    packed: bool

    def byte_view(self) -> torch.Tensor:
        """All mask bytes of the image, flattened (a view of contiguous data)."""
        return self.data.reshape(-1).view(torch.uint8)

    @property
    def slots_per_mask(self) -> int:
        """Pixel slots between the starts of consecutive masks."""
        return 8 * self.data.shape[1] if self.packed else self.height * self.width


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


@functools.lru_cache(maxsize=4096)
def decimal_alpha(alpha: float) -> Fraction:
    """``alpha`` as the decimal it prints as (``repr``): ``0.1`` → 1/10."""
    return Fraction(repr(float(alpha)))


@functools.lru_cache(maxsize=4096)
def bin_geometry(height: int, width: int, grid: tuple[int, int], alpha: float, mode: str, frame: str) -> BinGeometry:
    """Rows, window and exact integer thresholds of one image's bins."""
    gh, gw = grid
    ratio = decimal_alpha(alpha)
    if mode == "flat":
        n_pixels, bins = height * width, gh * gw
        area_lo = -(-n_pixels // bins)
        thresholds = [min(math.ceil(ratio * area * bins / n_pixels), NEVER) for area in (area_lo, area_lo + 1)]
        return BinGeometry(1, n_pixels, 0, 0, 1, n_pixels, area_lo, *thresholds)
    top, left, window_h, window_w = frame_window(height, width, frame)
    threshold = min(math.ceil(ratio), NEVER)
    return BinGeometry(height, width, top, left, window_h, window_w, 0, threshold, threshold)


# ----------------------------------------------------------------------------------------------
# The custom op
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("ogkernels::phi", mutates_args=())
def phi(
    masks: Sequence[torch.Tensor],
    heights: Sequence[int],
    widths: Sequence[int],
    packed: Sequence[bool],
    grid_h: int,
    grid_w: int,
    alpha: float,
    mode: str,
    frame: str,
) -> torch.Tensor:
    """``(M, V)`` bool bitmaps of every mask of every image, in order (``V = grid_h·grid_w``).

    Args:
        masks: per image, contiguous dense bytes ``(N_i, H_i, W_i)`` (bool/uint8) or packed
            bits ``(N_i, ceil(H_i·W_i/8))`` uint8; all on one device.
        heights, widths, packed: per image ``H_i``, ``W_i`` and whether it is bit-packed.
        grid_h, grid_w: the token grid; alpha, mode, frame: as ``downsample_masks``.
    """
    images = [
        MaskImage(data, data.shape[0], int(h), int(w), bool(p))
        for data, h, w, p in zip(masks, heights, widths, packed)
    ]
    grid = (int(grid_h), int(grid_w))
    device = masks[0].device if len(masks) else torch.device("cpu")
    if sum(image.num_masks for image in images) == 0:
        return torch.zeros(0, grid[0] * grid[1], dtype=torch.bool, device=device)
    if use_triton(device):
        return phi_triton(images, grid, alpha, mode, frame)
    return phi_torch(images, grid, alpha, mode, frame)


@phi.register_fake
def _(masks, heights, widths, packed, grid_h, grid_w, alpha, mode, frame):
    total = sum(m.shape[0] for m in masks)
    device = masks[0].device if len(masks) else torch.device("cpu")
    return torch.empty(total, grid_h * grid_w, dtype=torch.bool, device=device)


# ----------------------------------------------------------------------------------------------
# PyTorch path
# ----------------------------------------------------------------------------------------------


def phi_torch(images: list[MaskImage], grid: tuple[int, int], alpha: float, mode: str, frame: str) -> torch.Tensor:
    """The PyTorch path: one vectorised pass per image, no loop over masks."""
    device = images[0].data.device
    bins = grid[0] * grid[1]
    outputs = []
    for image in images:
        if image.num_masks == 0:
            outputs.append(torch.zeros(0, bins, dtype=torch.bool, device=device))
            continue
        geometry = bin_geometry(image.height, image.width, grid, alpha, mode, frame)
        if mode == "flat":
            n_pixels = image.height * image.width
            counts = flat_counts(image.byte_view(), image.packed, image.num_masks, image.slots_per_mask, n_pixels, bins)
            parameters = (n_pixels, bins, geometry.area_lo, geometry.threshold_lo, geometry.threshold_hi)
            thresholds = resident(flat_thresholds(*parameters), torch.int64, device, key=("phi thresholds",) + parameters)
            outputs.append(counts >= thresholds)
        else:
            window = (geometry.top, geometry.left, geometry.window_h, geometry.window_w)
            counts = patch_counts(image.data, image.packed, image.height, image.width, grid, window)
            outputs.append(counts >= geometry.threshold_lo)
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=0)


# ----------------------------------------------------------------------------------------------
# Triton path
# ----------------------------------------------------------------------------------------------


def _word_aligned(image: MaskImage) -> torch.Tensor:
    """The image's bytes, 4-byte aligned (a padded copy only for a misaligned view). A last,
    partial word is read whole: an aligned 4-byte load never crosses a page or allocation."""
    stream = image.byte_view()
    if stream.data_ptr() % 4 == 0:
        return stream
    padded = torch.zeros(launch.cdiv(stream.numel(), 4) * 4, dtype=torch.uint8, device=stream.device)
    padded[: stream.numel()] = stream
    return padded


def phi_triton(images: list[MaskImage], grid: tuple[int, int], alpha: float, mode: str, frame: str) -> torch.Tensor:
    """One launch of ``phi_bins_kernel`` over every mask of every image (two when the batch
    mixes bit-packed and dense images)."""
    kinds = {image.packed for image in images}
    if len(kinds) == 1:
        return _run(phi_launch(images, grid, alpha, mode, frame, []))
    parts = {packed: phi_triton([im for im in images if im.packed == packed], grid, alpha, mode, frame) for packed in kinds}
    taken = {packed: 0 for packed in kinds}
    pieces = []
    for image in images:
        start = taken[image.packed]
        pieces.append(parts[image.packed][start : start + image.num_masks])
        taken[image.packed] = start + image.num_masks
    return torch.cat(pieces, dim=0)


def _run(spec: tuple[launch.Launch, torch.Tensor, list[torch.Tensor]]) -> torch.Tensor:
    run, out, keep_alive = spec
    run.run()
    del keep_alive  # the streams the kernel read, alive until the launch is enqueued
    return out


def phi_launch(
    images: list[MaskImage], grid: tuple[int, int], alpha: float, mode: str, frame: str, streams: list
) -> tuple[launch.Launch, torch.Tensor, list[torch.Tensor]]:
    """The launch of ``phi_bins_kernel`` for images of one kind (all packed or all dense),
    its output ``(M, V)`` bool, and the byte streams it reads."""
    from ..kernels import phi as kernel

    device = images[0].data.device
    gh, gw = grid
    params, mask_image, mask_local = [], [], []
    fields = kernel.NUM_FIELDS.value
    for i, image in enumerate(images):
        stream = _word_aligned(image)
        streams.append(stream)
        g = bin_geometry(image.height, image.width, grid, alpha, mode, frame)
        row = [0] * fields
        row[kernel.FIELD_BASE.value] = stream.data_ptr()
        row[kernel.FIELD_ROWS.value] = g.rows
        row[kernel.FIELD_PITCH.value] = g.pitch
        row[kernel.FIELD_TOP.value] = g.top
        row[kernel.FIELD_LEFT.value] = g.left
        row[kernel.FIELD_WIN_H.value] = g.window_h
        row[kernel.FIELD_WIN_W.value] = g.window_w
        row[kernel.FIELD_SLOTS_PER_MASK.value] = image.slots_per_mask
        row[kernel.FIELD_AREA_LO.value] = g.area_lo
        row[kernel.FIELD_THR_LO.value] = g.threshold_lo
        row[kernel.FIELD_THR_HI.value] = g.threshold_hi
        params += row
        mask_image += [i] * image.num_masks
        mask_local += range(image.num_masks)
    total = len(mask_image)
    counts = tuple(image.num_masks for image in images)
    out = torch.empty(total, gh * gw, dtype=torch.bool, device=device)
    first = images[0]
    if mode == "flat":
        bin_pixels = launch.cdiv(first.height * first.width, gh * gw) + 1
    else:
        bin_pixels = launch.cdiv(frame_window(first.height, first.width, frame)[3], gw) + 1
    settings = launch.phi_bins(bin_pixels, gw, first.packed)
    spec = launch.Launch.of(
        kernel.phi_bins_kernel,
        (total, gh, launch.cdiv(gw, settings["BLOCK_C"])),
        {
            "image_params_ptr": resident(params, torch.int64, device),
            "mask_image_ptr": resident(mask_image, torch.int32, device, key=("phi images", counts)),
            "mask_local_ptr": resident(mask_local, torch.int32, device, key=("phi locals", counts)),
            "out_ptr": out.view(torch.uint8),
            "GH": gh,
            "GW": gw,
        },
        settings,
        PACKED=first.packed,
    )
    return spec, out, streams

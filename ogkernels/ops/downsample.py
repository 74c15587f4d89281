"""Phi_alpha launchers: the Triton kernel and the vectorised PyTorch path.

Both take a list of :class:`MaskImage` (already validated) and return the ``(M, V)`` bool
bitmaps. Bin rule (exact integers, no floats):

* ``flat``: bin ``j`` of the row-major flattened mask covers ``[floor(jN/V), ceil((j+1)N/V))``
  (length ``L_j``); keep iff ``S_j · N >= alpha · L_j · V``, i.e. ``S_j >= ceil(alpha·L_j·V/N)``,
  computed once per image with exact rationals. ``L_j`` takes two values at most.
* ``patch``: 2-D adaptive bins over the frame window; keep iff ``count >= alpha``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction

import torch

from ..packed_masks import PackedMasks
from ..reference.phi import frame_window



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
        thresholds = [math.ceil(ratio * area * bins / n_pixels) for area in (area_lo, area_lo + 1)]
        return BinGeometry(1, n_pixels, 0, 0, 1, n_pixels, area_lo, *thresholds)
    top, left, window_h, window_w = frame_window(image.height, image.width, frame)
    threshold = math.ceil(Fraction(alpha))
    return BinGeometry(
        image.height, image.width, top, left, window_h, window_w, 0, threshold, threshold
    )


def adaptive_bounds(size: int, bins: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Starts and ends of PyTorch's adaptive pooling bins, int64 ``(bins,)`` each."""
    idx = torch.arange(bins, device=device, dtype=torch.int64)
    return (idx * size) // bins, ((idx + 1) * size + bins - 1) // bins


# ----------------------------------------------------------------------------------------------
# PyTorch path
# ----------------------------------------------------------------------------------------------

_BYTE_LANES = 0x0101010101010101


def _fold_byte_lanes(x: torch.Tensor) -> torch.Tensor:
    """Sum the 8 byte lanes of int64 values whose byte-lane prefix sums stay below 256.

    The product's top byte is the lane sum; the multiplication wraps modulo 2**64 (two's
    complement), which every torch backend does for int64.
    """
    return (x * _BYTE_LANES) >> 56


def _popcount64(x: torch.Tensor) -> torch.Tensor:
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    return _fold_byte_lanes(x)


def _as_signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


@functools.lru_cache(maxsize=None)
def _prefix_mask_values(unit_pixels: int, packed: bool) -> tuple[tuple[int, ...], ...]:
    """``table[r]``: the int64 word masks that select pixels ``[0, r)`` of a unit.

    Dense units are ``unit_pixels / 8`` words of eight 0/1 bytes (little-endian); a packed
    unit is one word of 64 bits, MSB first within each byte.
    """
    words = 1 if packed else unit_pixels // 8
    rows = []
    for r in range(unit_pixels):
        row = []
        for w in range(words):
            if packed:
                byte, rem = divmod(r, 8)
                bits = (1 << (8 * byte)) - 1
                bits |= ((0xFF << (8 - rem)) & 0xFF) << (8 * byte)
            else:
                covered = min(max(r - 8 * w, 0), 8)
                bits = _BYTE_LANES & ((1 << (8 * covered)) - 1)
            row.append(_as_signed64(bits))
        rows.append(tuple(row))
    return tuple(rows)


_MASK_TABLES: dict[tuple[int, bool, torch.device], torch.Tensor] = {}


def _prefix_masks(unit_pixels: int, packed: bool, device: torch.device) -> torch.Tensor:
    key = (unit_pixels, packed, device)
    if key not in _MASK_TABLES:
        values = _prefix_mask_values(unit_pixels, packed)
        _MASK_TABLES[key] = torch.tensor(values, dtype=torch.int64, device=device)
    return _MASK_TABLES[key]


class _PrefixCounter:
    """Counts set pixels in ``[0, p)`` of a flat stream of pixel slots, for many ``p`` at once.

    Dense streams are 0/1 bytes; packed streams are bits (MSB first within bytes). The stream
    is cut into units of 64 pixels (8 int64 words dense, one word packed): unit counts are
    summed in one pass over the data and prefix-summed; a query adds the pixels of its
    partial unit, selected with a mask table.
    """

    UNIT_PIXELS = 64

    def __init__(self, stream: torch.Tensor, packed: bool):
        self.packed, self.stream = packed, stream
        device = stream.device
        unit_bytes = 8 if packed else self.UNIT_PIXELS
        total = stream.numel()
        full, rest = divmod(total, unit_bytes)
        body = stream[: full * unit_bytes]
        if body.data_ptr() % 8:
            body = body.clone()
        self.words = body.view(torch.int64).view(full, unit_bytes // 8)
        counts = self._unit_counts(self.words)
        self.tail = None
        if rest:  # the last, partial unit, zero-padded into a small copy of its own
            tail = torch.zeros(unit_bytes, dtype=torch.uint8, device=device)
            tail[:rest] = stream[full * unit_bytes :]
            self.tail = tail.view(torch.int64).view(1, unit_bytes // 8)
            counts = torch.cat([counts, self._unit_counts(self.tail)])
        self.prefix = torch.empty(counts.numel() + 1, dtype=torch.int64, device=device)
        self.prefix[0] = 0
        torch.cumsum(counts, 0, out=self.prefix[1:])
        self.full = full
        self.masks = _prefix_masks(self.UNIT_PIXELS, packed, device)

    def _unit_counts(self, words: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return _popcount64(words[:, 0])
        return _fold_byte_lanes(words.sum(dim=1))

    def count_before(self, positions: torch.Tensor) -> torch.Tensor:
        """Set pixels in ``[0, p)`` for each int64 position ``0 <= p <= len`` (1-D)."""
        unit = positions >> 6  # UNIT_PIXELS = 64
        offset = positions & 63
        if self.tail is None:  # a query at the very end has offset 0: any word will do
            words = self.words.index_select(0, unit.clamp(max=self.full - 1))
        elif self.full:
            words = self.words.index_select(0, unit.clamp(max=self.full - 1))
            words = torch.where((unit >= self.full).unsqueeze(1), self.tail, words)
        else:
            words = self.tail.expand(unit.numel(), -1).clone()
        words &= self.masks.index_select(0, offset)
        return self.prefix.index_select(0, unit) + self._unit_counts(words)

    def pixel(self, positions: torch.Tensor) -> torch.Tensor:
        """The 0/1 value of the pixels at int64 ``positions`` (1-D, in range)."""
        if self.packed:
            byte = self.stream.index_select(0, positions >> 3).to(torch.int64)
            return (byte >> (7 - (positions & 7))) & 1
        return self.stream.index_select(0, positions).to(torch.int64)


def _flat_counts_torch(image: MaskImage, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-bin pixel counts ``(N, V)`` and bin lengths ``(V,)`` of the flat operator.

    ``S_j = P(floor((j+1)N/V)) − P(floor(jN/V))``, plus the pixel at ``floor((j+1)N/V)``
    when ``(j+1)N/V`` is not an integer (the one-pixel overlap of adaptive bins); ``P(p)``
    counts the set pixels before ``p``.
    """
    device = image.data.device
    n_pixels = image.height * image.width
    starts, ends = adaptive_bounds(n_pixels, bins, device)
    cuts = torch.cat([starts, starts.new_tensor([n_pixels])])
    slots = 8 * image.data.shape[1] if image.packed else n_pixels
    mask_base = torch.arange(image.num_masks, device=device, dtype=torch.int64)[:, None] * slots
    counter = _PrefixCounter(image.byte_view(), image.packed)
    positions = mask_base + cuts
    before = counter.count_before(positions.view(-1)).view(image.num_masks, bins + 1)
    counts = before[:, 1:] - before[:, :-1]
    overlapped = ends > cuts[1:]  # never true for the last bin
    overlap_at = torch.where(overlapped, positions[:, 1:], positions[:, :1])
    counts += counter.pixel(overlap_at.view(-1)).view(image.num_masks, bins) * overlapped
    return counts, ends - starts


def _membership(size: int, bins: int, offset: int, window: int, device) -> torch.Tensor:
    """``(bins, size)`` float 0/1: pixel ``x`` of the mask lies in window bin ``i``."""
    starts, ends = adaptive_bounds(window, bins, device)
    x = torch.arange(size, device=device, dtype=torch.int64) - offset
    return ((x >= starts[:, None]) & (x < ends[:, None])).to(torch.float32)


def _patch_counts_torch(image: MaskImage, geometry: BinGeometry, grid: tuple[int, int]) -> torch.Tensor:
    """Per-cell pixel counts ``(N, gh·gw)`` by two membership matmuls (exact in float32)."""
    device = image.data.device
    gh, gw = grid
    dense = (
        PackedMasks(image.data, image.height, image.width).unpack() if image.packed else image.data
    )
    rows = _membership(image.height, gh, geometry.top, geometry.window_h, device)
    cols = _membership(image.width, gw, geometry.left, geometry.window_w, device)
    pixels = dense.to(torch.float32)
    per_row = pixels.reshape(-1, image.width) @ cols.T  # (N·H, gw)
    cells = rows @ per_row.view(image.num_masks, image.height, gw)  # (N, gh, gw)
    return cells.round().to(torch.int64).view(image.num_masks, gh * gw)


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
            counts, lengths = _flat_counts_torch(image, bins)
            threshold = torch.where(
                lengths == geometry.area_lo, geometry.threshold_lo, geometry.threshold_hi
            )
            outputs.append(counts >= threshold)
        else:
            outputs.append(_patch_counts_torch(image, geometry, grid) >= geometry.threshold_lo)
    if len(outputs) == 1:
        return outputs[0]
    return torch.cat(outputs, dim=0)


# ----------------------------------------------------------------------------------------------
# Triton path
# ----------------------------------------------------------------------------------------------


def _word_aligned(image: MaskImage) -> torch.Tensor:
    """The image's bytes, 4-byte aligned; a padded copy only if the tensor is misaligned or
    its last word would be partial at an unaligned end."""
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
        row[kernel.FIELD_THR_LO] = min(geometry.threshold_lo, 1 << 62)
        row[kernel.FIELD_THR_HI] = min(geometry.threshold_hi, 1 << 62)
        params.append(row)
        mask_image += [i] * image.num_masks
        mask_local += list(range(image.num_masks))
    total = len(mask_image)
    out = torch.empty(total, gh * gw, dtype=torch.bool, device=device)
    if total == 0:
        return out
    # One host→device copy of the small tables (non-blocking from pinned memory on CUDA).
    pin = device.type == "cuda"
    tables = [
        torch.tensor(params, dtype=torch.int64),
        torch.tensor(mask_image, dtype=torch.int32),
        torch.tensor(mask_local, dtype=torch.int32),
    ]
    tables = [t.pin_memory().to(device, non_blocking=True) if pin else t.to(device) for t in tables]
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

"""The PyTorch path of Phi_alpha's pixel counting (any device, vectorised per image).

``flat``: the mask stream is read as int64 words (8 bool pixels, or 64 bit-packed pixels).
Bin ``j`` of mask ``m`` is split at ``P_j = m·slots + floor(jN/V)`` into a partition; each
part's count is a sum over its whole words — one gather of fixed-width windows of the word
array and one reduction, byte lanes summed without unpacking — corrected by the pixels of its
two end words that lie outside it. The one-pixel overlap of adaptive bins is added from the
next part's first pixel. ``patch``: two membership matmuls (exact in float32).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from .host import resident

LOW_16 = 0x00FF00FF00FF00FF
ONES_16 = 0x0001000100010001
ONES_8 = 0x0101010101010101


def _as_signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def sum_byte_lanes(x: torch.Tensor) -> torch.Tensor:
    """Sum of the 8 byte lanes of int64 values (each lane <= 255): lanes are paired into
    16-bit lanes, then summed by one multiply (it wraps modulo 2**64, as torch int64 does)."""
    pairs = (x & LOW_16) + ((x >> 8) & LOW_16)
    return (pairs * ONES_16) >> 48 & 0xFFFF


def byte_popcounts(x: torch.Tensor) -> torch.Tensor:
    """Each byte lane of int64 ``x`` replaced by its number of set bits (0..8)."""
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    return (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F


@functools.lru_cache(maxsize=None)
def _prefix_bits(packed: bool) -> tuple[int, ...]:
    """``table[r]``: bits of a word holding its pixels ``[0, r)``. Dense: the low bit of each of
    the first ``r`` bytes; packed: MSB-first bits of 8 little-endian bytes."""
    values = []
    for r in range(64 if packed else 8):
        if packed:
            byte, rem = divmod(r, 8)
            bits = (1 << (8 * byte)) - 1
            bits |= ((0xFF << (8 - rem)) & 0xFF) << (8 * byte)
        else:
            bits = ONES_8 & ((1 << (8 * r)) - 1)
        values.append(_as_signed64(bits))
    return tuple(values)


def prefix_bits(packed: bool, device: torch.device) -> torch.Tensor:
    return resident(_prefix_bits(packed), torch.int64, device, key=("phi prefix bits", packed))


def zero_one_bytes(stream: torch.Tensor) -> torch.Tensor:
    """A dense mask stream (uint8) with every non-zero byte made 1 (a bool tensor may hold
    other bytes: each non-zero one is a pixel). On the CPU one read checks whether any byte
    needs it; on other devices the rewrite runs unconditionally (no host read)."""
    if stream.device.type == "cpu":
        if stream.numel() == 0 or int(stream.max()) <= 1:
            return stream
    return (stream != 0).view(torch.uint8)


class WordStream:
    """A mask stream (bytes of 0/1 pixels, or packed bits) as int64 words, with per-word lane
    counts that can be summed: the words themselves (dense) or their byte popcounts (packed)."""

    def __init__(self, stream: torch.Tensor, packed: bool):
        self.packed = packed
        self.shift = 6 if packed else 3  # log2(pixels per word)
        # words per lane sum, leaving room for two more words' lanes (the part's extra word and
        # its end word) without overflowing a byte lane: 8 px per lane per word if packed
        self.lane_cap = 29 if packed else 253
        if stream.numel() % 8 or stream.data_ptr() % 8:
            padded = torch.zeros((stream.numel() + 7) // 8 * 8, dtype=torch.uint8, device=stream.device)
            padded[: stream.numel()] = stream
            stream = padded
        self.words = stream.view(torch.int64)
        self.lanes = byte_popcounts(self.words) if packed else self.words
        self.bits = prefix_bits(packed, stream.device)

    def window_lanes(self, start: torch.Tensor, width: int, extra: torch.Tensor | None) -> list[torch.Tensor]:
        """Byte-lane sums of the ``width`` words from each ``start`` (one gather, one
        reduction per ``lane_cap`` words), plus the next word where ``extra``."""
        sums = []
        if width:
            rows = self.lanes.unfold(0, width, 1).index_select(0, start)
            sums = [rows[:, i : i + self.lane_cap].sum(dim=1) for i in range(0, width, self.lane_cap)]
        if extra is not None:
            last = (start + width).clamp(max=self.lanes.numel() - 1)
            more = torch.where(extra, self.lanes.index_select(0, last), 0)
            if sums and width % self.lane_cap:
                sums[-1] += more
            else:
                sums.append(more)
        return sums

    def split(self, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For each pixel ``position``: the byte lanes of the pixels of its word that come
        before it, and the pixel itself (0/1) — from one gather of the words."""
        word = (position >> self.shift).clamp(max=self.words.numel() - 1)
        offset = position & ((1 << self.shift) - 1)
        words = self.words.index_select(0, word)
        below = words & self.bits.index_select(0, offset)
        if self.packed:
            bit = ((offset >> 3) << 3) + 7 - (offset & 7)
            below = byte_popcounts(below)
        else:
            bit = offset << 3
        return below, (words >> bit) & 1


@functools.lru_cache(maxsize=256)
def _cuts(n_pixels: int, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Partition cuts ``floor(jN/V)`` (``j = 0..V``) and which bins overlap the next one."""
    j = np.arange(bins + 1, dtype=np.int64)
    cuts = (j * n_pixels) // bins
    ends = -((-(j[:-1] + 1) * n_pixels) // bins)
    return cuts, ends > cuts[1:]


@functools.lru_cache(maxsize=256)
def flat_thresholds(n_pixels: int, bins: int, area_lo: int, threshold_lo: int, threshold_hi: int) -> np.ndarray:
    """Per-bin count thresholds ``(V,)``: bins of ``area_lo`` pixels use ``threshold_lo``."""
    j = np.arange(bins, dtype=np.int64)
    lengths = -((-(j + 1) * n_pixels) // bins) - (j * n_pixels) // bins
    return np.where(lengths == area_lo, threshold_lo, threshold_hi).astype(np.int64)


def flat_counts(
    stream: torch.Tensor, packed: bool, num_masks: int, slots: int, n_pixels: int, bins: int
) -> torch.Tensor:
    """Pixel counts ``(N, V)`` of the flat operator's adaptive bins.

    Args:
        stream: the image's masks as one flat uint8 stream (bytes, or packed bits).
        packed: bits (MSB first) rather than 0/1 bytes.
        num_masks, slots: masks in the stream and pixel slots between mask starts.
        n_pixels, bins: ``N = H·W`` and ``V``.
    """
    device = stream.device
    words = WordStream(stream if packed else zero_one_bytes(stream), packed)
    cuts, overlapped = _cuts(n_pixels, bins)
    # Part j of mask m: pixels [P_j, P_{j+1}), P_j = m·slots + floor(jN/V) (host integers:
    # they fix the window widths).
    positions = np.arange(num_masks, dtype=np.int64)[:, None] * slots + cuts[None, :]
    first_word = positions[:, :-1] >> words.shift
    widths = (positions[:, 1:] >> words.shift) - first_word
    # parts are q or q+1 pixels long, so they span `narrow` or `narrow + 1` whole words
    narrow, wide = int(widths.min()), int(widths.max())
    key = ("phi flat", packed, num_masks, slots, n_pixels, bins)
    position = resident(positions, torch.int64, device, key=key + ("positions",))
    first = resident(first_word.reshape(-1), torch.int64, device, key=key + ("first",))
    extra = resident(widths.reshape(-1) > narrow, torch.bool, device, key=key + ("extra",)) if wide > narrow else None
    lanes = words.window_lanes(first, narrow, extra)
    below, pixel = words.split(position.reshape(-1))
    below = below.view(num_masks, bins + 1)
    # The first window chunk holds the part's first word, so after removing that word's pixels
    # before the start every byte lane of the sum is still in [0, 255] (the int64 arithmetic is
    # exact): one lane sum then counts the whole part.
    ends = (below[:, 1:] - below[:, :-1]).reshape(-1)
    if lanes:
        lanes[0] += ends
    else:
        lanes = [ends]
    counts = sum_byte_lanes(lanes[0])
    for part in lanes[1:]:
        counts += sum_byte_lanes(part)
    counts = counts.view(num_masks, bins)
    # adaptive bins overlap the next part by one pixel when (j+1)N/V is not an integer
    counts += pixel.view(num_masks, bins + 1)[:, 1:] * resident(overlapped, torch.int64, device, key=key + ("overlap",))
    return counts


def unpack_bits(bits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(N, ceil(H·W/8))`` uint8 packed MSB first → ``(N, H, W)`` bool."""
    shifts = torch.arange(7, -1, -1, device=bits.device, dtype=torch.uint8)
    unpacked = (bits.unsqueeze(-1) >> shifts) & 1
    return unpacked.reshape(bits.shape[0], bits.shape[1] * 8)[:, : height * width].reshape(-1, height, width).bool()


def _membership(size: int, bins: int, offset: int, window: int, device) -> torch.Tensor:
    """``(bins, size)`` float 0/1: pixel ``x`` of the mask lies in window bin ``i``."""
    idx = torch.arange(bins, device=device, dtype=torch.int64)
    starts, ends = (idx * window) // bins, ((idx + 1) * window + bins - 1) // bins
    x = torch.arange(size, device=device, dtype=torch.int64) - offset
    return ((x >= starts[:, None]) & (x < ends[:, None])).to(torch.float32)


def patch_counts(
    data: torch.Tensor,
    packed: bool,
    height: int,
    width: int,
    grid: tuple[int, int],
    window: tuple[int, int, int, int],
) -> torch.Tensor:
    """Per-cell pixel counts ``(N, gh·gw)`` of 2-D adaptive bins over the frame ``window``
    ``(top, left, height, width)``, by two membership matmuls (exact in float32)."""
    device = data.device
    gh, gw = grid
    top, left, window_h, window_w = window
    dense = unpack_bits(data, height, width) if packed else data.view(torch.uint8) != 0
    num_masks = dense.shape[0]
    rows = _membership(height, gh, top, window_h, device)
    cols = _membership(width, gw, left, window_w, device)
    per_row = dense.reshape(-1, width).to(torch.float32) @ cols.T  # (N·H, gw)
    cells = rows @ per_row.view(num_masks, height, gw)  # (N, gh, gw)
    return cells.round().to(torch.int64).view(num_masks, gh * gw)

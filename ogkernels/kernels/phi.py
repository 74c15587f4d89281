"""Triton kernel of Phi_alpha: count mask pixels in adaptive bins, threshold, write bitmaps.

One launch covers a whole batch of images of different sizes and mask counts. Masks are read
through 32-bit words straight from each image's own tensor (a table of base addresses, no
concatenation copy): 4 pixels per word for bool/uint8 masks, 32 pixels per word for
bit-packed masks (``numpy.packbits`` order). Each program counts a block of bins of one
mask on one row of the bin grid; a bin is a set of pixel-row segments
``[y·W + x0, y·W + x1)`` (``mode="flat"`` is the single-row case ``H = 1, W = H·W``).

Per word the hot loop does one masked load, a byte or bit sum and an add; pixels of the first
and last word of a segment that lie outside it are subtracted once per segment afterwards.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Fields of the per-image int64 parameter table (one row per image).
FIELD_BASE = tl.constexpr(0)  # data_ptr of the image's mask tensor (4-byte aligned)
FIELD_ROWS = tl.constexpr(1)  # pixel rows H (1 in flat mode)
FIELD_PITCH = tl.constexpr(2)  # pixels per row W (H·W in flat mode)
FIELD_TOP = tl.constexpr(3)  # window origin (may be negative: pad-to-square)
FIELD_LEFT = tl.constexpr(4)
FIELD_WIN_H = tl.constexpr(5)  # window size in pixels
FIELD_WIN_W = tl.constexpr(6)
FIELD_SLOTS_PER_MASK = tl.constexpr(7)  # pixel slots between consecutive masks (bytes, or bits if packed)
FIELD_AREA_LO = tl.constexpr(8)  # bins of this area use THR_LO, the others THR_HI
FIELD_THR_LO = tl.constexpr(9)
FIELD_THR_HI = tl.constexpr(10)
NUM_FIELDS = tl.constexpr(11)


@triton.jit
def _word_count(word, PACKED: tl.constexpr):
    """Set pixels in each 32-bit word: a bit count if packed; for bytes, the number of
    non-zero bytes (a bool tensor may hold bytes other than 0/1: any non-zero byte is one
    pixel)."""
    w = word.to(tl.uint32, bitcast=True)
    if PACKED:
        w = w - ((w >> 1) & 0x55555555)
        w = (w & 0x33333333) + ((w >> 2) & 0x33333333)
        w = (w + (w >> 4)) & 0x0F0F0F0F
    else:
        w = _nonzero_bytes(w)
    return ((w * 0x01010101) >> 24).to(tl.int32)


@triton.jit
def _nonzero_bytes(w):
    """Each byte of ``w`` (uint32) replaced by 1 if it is non-zero, else 0."""
    w = w | (w >> 4)
    w = w | (w >> 2)
    w = w | (w >> 1)
    return w & 0x01010101


@triton.jit
def _prefix_bits(k, PACKED: tl.constexpr):
    """Bits of a word that hold its pixels ``[0, k)``, ``0 <= k < pixels per word``."""
    if PACKED:
        # pixel i lives in byte i // 8, bit 7 - i % 8 (MSB first), bytes little-endian.
        byte = k // 8
        rem = k % 8
        whole = (tl.full(k.shape, 1, tl.uint32) << (byte * 8).to(tl.uint32)) - 1
        part = ((tl.full(k.shape, 0xFF, tl.uint32) << (8 - rem).to(tl.uint32)) & 0xFF) << (
            byte * 8
        ).to(tl.uint32)
        return whole | part
    # one 0/1 byte per pixel, little-endian
    return (tl.full(k.shape, 1, tl.uint32) << (k * 8).to(tl.uint32)) - 1


@triton.jit
def _count_outside(word, keep_from, keep_to, PACKED: tl.constexpr, PPW: tl.constexpr):
    """Set pixels of ``word`` outside its pixel range ``[keep_from, keep_to)``
    (``0 <= keep_from < PPW``, ``0 < keep_to <= PPW``)."""
    w = word.to(tl.uint32, bitcast=True)
    below = _prefix_bits(keep_from, PACKED)
    inside_to = tl.where(keep_to >= PPW, 0xFFFFFFFF, _prefix_bits(keep_to % PPW, PACKED)).to(
        tl.uint32
    )
    outside = w & (below | (inside_to ^ 0xFFFFFFFF))
    return _word_count(outside.to(tl.int32, bitcast=True), PACKED)


@triton.jit
def phi_bins_kernel(
    image_params_ptr,  # int64 [num_images, NUM_FIELDS]
    mask_image_ptr,  # int32 [M]: image of each mask
    mask_local_ptr,  # int32 [M]: index of the mask inside its image
    out_ptr,  # uint8 [M, GH * GW]
    GH,
    GW,
    PACKED: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    PPW: tl.constexpr = 32 if PACKED else 4
    mask_id = tl.program_id(0)
    row_bin = tl.program_id(1)
    col_block = tl.program_id(2)

    image = tl.load(mask_image_ptr + mask_id).to(tl.int64)
    local = tl.load(mask_local_ptr + mask_id).to(tl.int64)
    params = image_params_ptr + image * NUM_FIELDS
    base = tl.load(params + FIELD_BASE).to(tl.pointer_type(tl.int32))
    rows = tl.load(params + FIELD_ROWS)
    pitch = tl.load(params + FIELD_PITCH)
    top = tl.load(params + FIELD_TOP)
    left = tl.load(params + FIELD_LEFT)
    win_h = tl.load(params + FIELD_WIN_H)
    win_w = tl.load(params + FIELD_WIN_W)
    slots_per_mask = tl.load(params + FIELD_SLOTS_PER_MASK)
    area_lo = tl.load(params + FIELD_AREA_LO)
    thr_lo = tl.load(params + FIELD_THR_LO)
    thr_hi = tl.load(params + FIELD_THR_HI)

    # Adaptive bins: [floor(i·size/bins), ceil((i+1)·size/bins)) in window coordinates.
    gh = GH.to(tl.int64)
    gw = GW.to(tl.int64)
    r = row_bin.to(tl.int64)
    wy0 = (r * win_h) // gh
    wy1 = ((r + 1) * win_h + gh - 1) // gh
    y0 = tl.maximum(top + wy0, 0)
    y1 = tl.minimum(top + wy1, rows)

    cols = col_block * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < GW
    c = cols.to(tl.int64)
    wx0 = (c * win_w) // gw
    wx1 = ((c + 1) * win_w + gw - 1) // gw
    x0 = tl.maximum(left + wx0, 0)
    x1 = tl.minimum(left + wx1, pitch)
    seg_ok = col_ok & (x1 > x0)

    mask_slot = local * slots_per_mask
    counts = tl.zeros([BLOCK_C], dtype=tl.int32)
    for y in range(y0, y1):
        seg_from = mask_slot + y * pitch + x0
        seg_to = mask_slot + y * pitch + x1
        first_word = seg_from // PPW
        last_word = (seg_to - 1) // PPW
        num_words = tl.where(seg_ok, last_word - first_word + 1, 0).to(tl.int32)
        longest = tl.max(num_words, axis=0)
        # 64-bit scalar base, 32-bit per-element offsets (fewer registers in the hot loop)
        row_base = tl.min(first_word, axis=0)  # x0 is clamped into the row: offsets stay small
        row_ptr = base + row_base
        rel_first = (first_word - row_base).to(tl.int32)
        for start in range(0, longest, BLOCK_W):
            k = start + tl.arange(0, BLOCK_W)
            valid = k[None, :] < num_words[:, None]
            words = tl.load(row_ptr + rel_first[:, None] + k[None, :], mask=valid, other=0)
            counts += tl.sum(_word_count(words, PACKED), axis=1)
        # Subtract the pixels of the end words that lie outside the segment.
        rel_last = (last_word - row_base).to(tl.int32)
        head = tl.load(row_ptr + rel_first, mask=seg_ok, other=0)
        tail = tl.load(row_ptr + rel_last, mask=seg_ok, other=0)
        head_from = (seg_from - first_word * PPW).to(tl.int32)
        tail_to = (seg_to - last_word * PPW).to(tl.int32)
        single = first_word == last_word
        head_to = tl.where(single, tail_to, PPW)
        outside = _count_outside(head, head_from, head_to, PACKED, PPW)
        outside += tl.where(single, 0, _count_outside(tail, head_from * 0, tail_to, PACKED, PPW))
        counts -= tl.where(seg_ok, outside, 0)

    area = (wy1 - wy0) * (wx1 - wx0)
    threshold = tl.where(area == area_lo, thr_lo, thr_hi)
    keep = counts.to(tl.int64) >= threshold
    out_offsets = mask_id.to(tl.int64) * (gh * gw) + r * gw + c
    tl.store(out_ptr + out_offsets, keep.to(tl.uint8), mask=col_ok)

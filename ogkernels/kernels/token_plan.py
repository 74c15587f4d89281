"""Triton kernels of the OG token plan: per-mask counts and offsets, then the placement table.

``token_plan_kernel``: one program per image walks its masks in order — token count (a sum
over the bitmap row), the reference's cleaning (a lone empty mask selects every token, empty
masks are dropped when there are several), the ``max_masks`` cut, and the running offset of
each kept mask's segment — and writes the image's length. A *plain* image (the batch gate
closed, or a mask-less image under ``maskless="plain"``) drops its masks and takes its ``V``
patch rows. ``place_tokens_kernel``: one program per (mask, block of tokens) turns the bitmap
into ranks with a prefix sum and writes, at each selected token's final row, which table and
row ``gather_rows`` copies from; one extra program row per image writes its global rows (or
its plain patch rows).
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import codes

DROPPED = tl.constexpr(codes.DROPPED)
KEPT = tl.constexpr(codes.KEPT)
KEPT_ALL_TOKENS = tl.constexpr(codes.KEPT_ALL_TOKENS)
PATCH_TABLE = tl.constexpr(codes.PATCH_TABLE)
GLOBAL_TABLE = tl.constexpr(codes.GLOBAL_TABLE)
BOM_TABLE = tl.constexpr(codes.BOM_TABLE)
MASK_MEAN_TABLE = tl.constexpr(codes.MASK_MEAN_TABLE)
BOM_ROW = tl.constexpr(codes.BOM_ROW)
GLOBAL_ROW = tl.constexpr(codes.GLOBAL_ROW)
MASK_MEAN_ROW = tl.constexpr(codes.MASK_MEAN_ROW)
GLOBAL_MEAN = tl.constexpr(codes.GLOBAL_MEAN)
GLOBAL_FULL = tl.constexpr(codes.GLOBAL_FULL)


@triton.jit
def token_plan_kernel(
    bitmaps_ptr,  # uint8 [M, V]
    mask_start_ptr,  # int64 [B + 1]: first mask of each image
    plain_ptr,  # uint8 [B]: 1 if the image takes its V patch rows
    state_ptr,  # int8 [M] out: DROPPED / KEPT / KEPT_ALL_TOKENS
    token_counts_ptr,  # int64 [M] out: tokens of each kept mask (0 if dropped)
    offsets_ptr,  # int64 [M] out: first row of each mask's segment, from its image's start
    lengths_ptr,  # int64 [B] out
    num_tokens,  # V
    global_rows,  # rows before the first mask: 1, V or 0
    max_masks,  # an image with more masks than this keeps its first max_masks kept ones
    BOM: tl.constexpr,
    AVERAGING: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    image = tl.program_id(0)
    first = tl.load(mask_start_ptr + image)
    last = tl.load(mask_start_ptr + image + 1)
    plain = tl.load(plain_ptr + image) != 0
    single = (last - first) == 1
    limited = (last - first) > max_masks
    running = (first * 0).to(tl.int64)
    kept_so_far = (first * 0).to(tl.int64)
    for m in range(first, last):
        count = (first * 0).to(tl.int64)
        for v0 in range(0, num_tokens, BLOCK_V):
            tokens = v0 + tl.arange(0, BLOCK_V)
            bits = tl.load(bitmaps_ptr + m * num_tokens + tokens, mask=tokens < num_tokens, other=0)
            count += tl.sum((bits != 0).to(tl.int64), axis=0)
        fill_all = single & (count == 0)
        keep = ((count > 0) | single) & (plain == 0)
        keep = keep & ((kept_so_far < max_masks) | (limited == 0))
        count = tl.where(fill_all, num_tokens, count)
        rows = 1 if AVERAGING else count
        segment = tl.where(keep, rows + BOM, 0)
        state = tl.where(keep, tl.where(fill_all, KEPT_ALL_TOKENS, KEPT), DROPPED)
        tl.store(state_ptr + m, state.to(tl.int8))
        tl.store(token_counts_ptr + m, tl.where(keep, count, 0))
        tl.store(offsets_ptr + m, global_rows + running)
        running += segment
        kept_so_far += keep.to(tl.int64)
    length = tl.where(plain, num_tokens, global_rows + running)
    tl.store(lengths_ptr + image, length.to(tl.int64))


@triton.jit
def _store_rows(table_ptr, row_ptr, source_ptr, here, ok, table, rows, sources):
    tl.store(table_ptr + here, table, mask=ok)
    tl.store(row_ptr + here, rows, mask=ok)
    tl.store(source_ptr + here, sources, mask=ok)


@triton.jit
def place_tokens_kernel(
    bitmaps_ptr,  # uint8 [M, V]
    state_ptr,  # int8 [M]
    mask_image_ptr,  # int64 [M]
    offsets_ptr,  # int64 [M]: first row of each mask's segment in the buffer
    cu_seqlens_ptr,  # int32 [B + 1]
    plain_ptr,  # uint8 [B]
    table_ptr,  # int32 [R] out: table of each row (rows left untouched stay NO_TABLE)
    row_ptr,  # int64 [R] out: row inside that table
    source_ptr,  # int64 [R] out: VarlenBatch.source_index codes
    num_masks,
    num_tokens,
    buffer_rows,
    GLOBAL_VIEW: tl.constexpr,
    BOM: tl.constexpr,
    AVERAGING: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    pid = tl.program_id(0)
    block = tl.program_id(1)
    tokens = block * BLOCK_V + tl.arange(0, BLOCK_V)
    in_grid = tokens < num_tokens
    first_lane = (tokens == block * BLOCK_V) & (block == 0)
    if pid >= num_masks:  # the global rows, or the plain patch rows, of image pid - num_masks
        image = (pid - num_masks).to(tl.int64)
        start = tl.load(cu_seqlens_ptr + image).to(tl.int64)
        plain = tl.load(plain_ptr + image) != 0
        patch_rows = image * num_tokens + tokens
        if plain | (GLOBAL_VIEW == GLOBAL_FULL):
            here = start + tokens
            ok = in_grid & (here < buffer_rows)
            table = tl.full([BLOCK_V], PATCH_TABLE, tl.int32)
            _store_rows(table_ptr, row_ptr, source_ptr, here, ok, table, patch_rows, patch_rows)
        elif GLOBAL_VIEW == GLOBAL_MEAN:
            here = start + tokens * 0
            ok = first_lane & (here < buffer_rows)
            table = tl.full([BLOCK_V], GLOBAL_TABLE, tl.int32)
            sources = tl.full([BLOCK_V], GLOBAL_ROW, tl.int64)
            _store_rows(table_ptr, row_ptr, source_ptr, here, ok, table, image + tokens * 0, sources)
    else:
        m = pid.to(tl.int64)
        state = tl.load(state_ptr + m).to(tl.int32)
        if state != DROPPED:
            image = tl.load(mask_image_ptr + m)
            base = tl.load(offsets_ptr + m)
            if BOM:
                here = base + tokens * 0
                ok = first_lane & (here < buffer_rows)
                table = tl.full([BLOCK_V], BOM_TABLE, tl.int32)
                sources = tl.full([BLOCK_V], BOM_ROW, tl.int64)
                _store_rows(table_ptr, row_ptr, source_ptr, here, ok, table, tokens.to(tl.int64) * 0, sources)
            if AVERAGING:
                here = base + BOM + tokens * 0
                ok = first_lane & (here < buffer_rows)
                table = tl.full([BLOCK_V], MASK_MEAN_TABLE, tl.int32)
                sources = tl.full([BLOCK_V], MASK_MEAN_ROW, tl.int64)
                _store_rows(table_ptr, row_ptr, source_ptr, here, ok, table, m + tokens * 0, sources)
            else:
                # tokens selected in earlier blocks: the rank of this block's first token
                before = tl.zeros([BLOCK_V], dtype=tl.int64)
                for v0 in range(0, block * BLOCK_V, BLOCK_V):
                    earlier = v0 + tl.arange(0, BLOCK_V)
                    bits = tl.load(bitmaps_ptr + m * num_tokens + earlier, mask=earlier < num_tokens, other=0)
                    before += (((bits != 0) | (state == KEPT_ALL_TOKENS)) & (earlier < num_tokens)).to(tl.int64)
                carry = tl.sum(before, axis=0)
                bits = tl.load(bitmaps_ptr + m * num_tokens + tokens, mask=in_grid, other=0)
                selected = ((bits != 0) | (state == KEPT_ALL_TOKENS)) & in_grid
                rank = carry + tl.cumsum(selected.to(tl.int64), axis=0) - 1
                here = base + BOM + rank
                ok = selected & (here < buffer_rows)
                table = tl.full([BLOCK_V], PATCH_TABLE, tl.int32)
                rows = image * num_tokens + tokens
                _store_rows(table_ptr, row_ptr, source_ptr, here, ok, table, rows, rows)

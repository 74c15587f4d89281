"""Triton kernels of the row gather: place rows from up to four tables, and its backward.

Forward: ``out[t] = tables[table_index[t]][row_index[t]]`` (zeros where ``table_index < 0``);
tiles of ``BLOCK_R`` rows × ``BLOCK_C`` columns, 128-bit accesses when the row width is a
multiple of 16 elements (Triton specialises the width argument and the table pointers on
that divisibility).

Backward: a deterministic CSR segment sum. Output rows are sorted by their source row
(stable), so each source row's gradient is the sum of its output-row gradients in increasing
order, accumulated in float32 (float64 for float64) by one program, with no atomics.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def gather_rows_kernel(
    out_ptr,
    table_index_ptr,  # int32 [T]
    row_index_ptr,  # int64 [T]
    table0_ptr,
    table1_ptr,
    table2_ptr,
    table3_ptr,
    num_rows,
    num_cols,
    NUM_TABLES: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < num_rows
    col_ok = cols < num_cols
    table = tl.load(table_index_ptr + rows, mask=row_ok, other=-1)
    source = tl.load(row_index_ptr + rows, mask=row_ok, other=0)
    tile_ok = row_ok[:, None] & col_ok[None, :]
    src_offsets = source[:, None] * num_cols + cols[None, :]
    values = tl.load(table0_ptr + src_offsets, mask=tile_ok & (table == 0)[:, None], other=0.0)
    if NUM_TABLES > 1:
        pick = (table == 1)[:, None]
        other = tl.load(table1_ptr + src_offsets, mask=tile_ok & pick, other=0.0)
        values = tl.where(pick, other, values)
    if NUM_TABLES > 2:
        pick = (table == 2)[:, None]
        other = tl.load(table2_ptr + src_offsets, mask=tile_ok & pick, other=0.0)
        values = tl.where(pick, other, values)
    if NUM_TABLES > 3:
        pick = (table == 3)[:, None]
        other = tl.load(table3_ptr + src_offsets, mask=tile_ok & pick, other=0.0)
        values = tl.where(pick, other, values)
    out_offsets = rows.to(tl.int64)[:, None] * num_cols + cols[None, :]
    tl.store(out_ptr + out_offsets, values, mask=tile_ok)


@triton.jit
def segment_sum_kernel(
    grad_tables_ptr,  # [num_sources, C]: the tables' gradients, back to back
    grad_out_ptr,  # [T, C]
    order_ptr,  # int64 [T]: output rows sorted (stably) by source row
    row_ptr_ptr,  # int64 [num_sources + 1]: CSR offsets into order
    num_cols,
    ACC_FP64: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    source = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < num_cols
    start = tl.load(row_ptr_ptr + source)
    end = tl.load(row_ptr_ptr + source + 1)
    acc_type: tl.constexpr = tl.float64 if ACC_FP64 else tl.float32
    acc = tl.zeros([BLOCK_C], dtype=acc_type)
    for i in range(start, end):
        row = tl.load(order_ptr + i)
        acc += tl.load(grad_out_ptr + row * num_cols + cols, mask=col_ok, other=0.0).to(acc_type)
    tl.store(
        grad_tables_ptr + source * num_cols + cols,
        acc.to(grad_tables_ptr.dtype.element_ty),
        mask=col_ok,
    )

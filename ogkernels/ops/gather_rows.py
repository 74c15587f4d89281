"""``gather_rows``: place rows of up to four tables into one output, with autograd.

``out[t] = tables[table_index[t]][row_index[t]]``, and zeros where ``table_index[t] < 0``.
It is the placement step of ``og_tokens`` (tables: patch rows, global rows, BOM row, mask
means) and of ``pack_multimodal`` (tables: text embeddings, image tokens).

Gradients reach every table and are deterministic: a row used several times gets the sum of
its output rows' gradients in increasing output order, accumulated in float32 (float64 for float64) — a CSR segment
sum on CUDA (stable sort by source row, one program per source row, no atomics), ``index_add_``
on the CPU, and the sort-based ``index_put_(accumulate=True)`` on other devices.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .._dispatch import use_triton
from .._host import upload
from .._validation import fail

MAX_TABLES = 4


def _check(tables: Sequence[torch.Tensor], table_index: torch.Tensor, row_index: torch.Tensor):
    if not 1 <= len(tables) <= MAX_TABLES:
        fail("tables", f"1 to {MAX_TABLES} tables", f"{len(tables)} tables")
    first = tables[0]
    for k, table in enumerate(tables):
        name = f"tables[{k}]"
        if not isinstance(table, torch.Tensor):
            fail(name, "a 2-D tensor", table, error=TypeError)
        if table.dim() != 2 or table.shape[1] != first.shape[1]:
            fail(name, f"a 2-D tensor (R, {first.shape[1]})", table)
        if table.dtype != first.dtype:
            fail(name, f"dtype {first.dtype} (the dtype of tables[0])", table, error=TypeError)
        if table.device != first.device:
            fail(name, f"a tensor on {first.device} (the device of tables[0])", table)
    for name, index in (("table_index", table_index), ("row_index", row_index)):
        if not isinstance(index, torch.Tensor):
            fail(name, "a 1-D integer tensor", index, error=TypeError)
        if index.dim() != 1 or index.dtype.is_floating_point or index.dtype == torch.bool:
            fail(name, "a 1-D integer tensor", index, error=TypeError)
        if index.device != first.device:
            fail(name, f"a tensor on {first.device} (the tables' device)", index)
    if table_index.numel() != row_index.numel():
        fail("row_index", f"{table_index.numel()} entries (as table_index)", row_index)


# ----------------------------------------------------------------------------------------------
# PyTorch path
# ----------------------------------------------------------------------------------------------


def _forward_torch(tables, table_index, row_index):
    total, width = table_index.numel(), tables[0].shape[1]
    first = tables[0]
    if first.shape[0]:
        out = first.index_select(0, torch.where(table_index == 0, row_index, 0))
    else:
        out = first.new_zeros(total, width)
    for k in range(1, len(tables)):
        where = torch.nonzero(table_index == k).squeeze(1)
        if where.numel():
            out.index_copy_(0, where, tables[k].index_select(0, row_index.index_select(0, where)))
    pad = torch.nonzero(table_index < 0).squeeze(1)
    if pad.numel():
        out.index_fill_(0, pad, 0)
    return out


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other dtype accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _backward_torch(grad_out, table_index, row_index, sizes, needed, dtype):
    acc_dtype = accumulation_dtype(dtype)
    grad32 = grad_out.to(acc_dtype)
    grads = []
    for k, size in enumerate(sizes):
        if not needed[k]:
            grads.append(None)
            continue
        # rows of other tables are routed to a dummy row ``size`` and dropped
        target = torch.where(table_index == k, row_index, size)
        acc = torch.zeros(size + 1, grad_out.shape[1], dtype=acc_dtype, device=grad_out.device)
        if grad_out.device.type == "cpu":
            acc.index_add_(0, target, grad32)
        else:
            acc.index_put_((target,), grad32, accumulate=True)
        grads.append(acc[:size].to(dtype))
    return grads


# ----------------------------------------------------------------------------------------------
# Triton path
# ----------------------------------------------------------------------------------------------


def _block_cols(width: int, element_size: int) -> int:
    limit = 1024 // element_size * 2  # 512 fp32 / 1024 bf16 columns per tile row at most
    return max(16, min(triton_next_power_of_2(width), limit))


def triton_next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _forward_triton(tables, table_index, row_index):
    from ..kernels.gather_rows import gather_rows_kernel

    total, width = table_index.numel(), tables[0].shape[1]
    out = torch.empty(total, width, dtype=tables[0].dtype, device=tables[0].device)
    if total == 0 or width == 0:
        return out
    padded = list(tables) + [tables[0]] * (MAX_TABLES - len(tables))
    block_c = _block_cols(width, tables[0].element_size())
    block_r = max(1, 4096 // block_c)
    grid = ((total + block_r - 1) // block_r, (width + block_c - 1) // block_c)
    gather_rows_kernel[grid](
        out,
        table_index.to(torch.int32),
        row_index.to(torch.int64),
        *padded,
        total,
        width,
        NUM_TABLES=len(tables),
        BLOCK_R=block_r,
        BLOCK_C=block_c,
        num_warps=4,
    )
    return out


def csr_by_source(table_index: torch.Tensor, row_index: torch.Tensor, sizes: Sequence[int]):
    """Output rows grouped by source row: ``(order, row_ptr)`` with ``order`` the output rows
    sorted stably by virtual source row (tables back to back) and ``row_ptr`` its CSR offsets.
    Sync-free: unused output rows sort to a sentinel past the last source."""
    device = table_index.device
    starts = upload([0] + list(sizes), torch.int64, device).cumsum(0)
    num_sources = int(sum(sizes))
    valid = table_index >= 0
    key = torch.where(valid, starts[table_index.clamp(min=0).long()] + row_index, num_sources)
    order = torch.sort(key, stable=True).indices
    counts = torch.zeros(num_sources + 1, dtype=torch.int64, device=device)
    counts.index_add_(0, key, torch.ones_like(key))  # integer adds: exact, no host sync
    counts = counts[:num_sources]
    row_ptr = torch.zeros(num_sources + 1, dtype=torch.int64, device=device)
    torch.cumsum(counts, 0, out=row_ptr[1:])
    return order, row_ptr


def _backward_triton(grad_out, table_index, row_index, sizes, needed, dtype):
    from ..kernels.gather_rows import segment_sum_kernel

    width = grad_out.shape[1]
    num_sources = int(sum(sizes))
    grad_tables = torch.empty(num_sources, width, dtype=dtype, device=grad_out.device)
    if num_sources and width:
        order, row_ptr = csr_by_source(table_index, row_index, sizes)
        block_c = _block_cols(width, grad_out.element_size())
        grid = (num_sources, (width + block_c - 1) // block_c)
        segment_sum_kernel[grid](
            grad_tables,
            grad_out.contiguous(),
            order,
            row_ptr,
            width,
            ACC_FP64=dtype == torch.float64,
            BLOCK_C=block_c,
            num_warps=4,
        )
    grads, start = [], 0
    for k, size in enumerate(sizes):
        grads.append(grad_tables[start : start + size] if needed[k] else None)
        start += size
    return grads


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table_index, row_index, *tables):
        triton_path = use_triton(tables[0].device)
        ctx.triton_path = triton_path
        ctx.sizes = [t.shape[0] for t in tables]
        ctx.dtype = tables[0].dtype
        ctx.save_for_backward(table_index, row_index)
        forward = _forward_triton if triton_path else _forward_torch
        return forward(tables, table_index, row_index)

    @staticmethod
    def backward(ctx, grad_out):
        table_index, row_index = ctx.saved_tensors
        needed = ctx.needs_input_grad[2:]
        if not any(needed):
            return (None, None) + (None,) * len(needed)
        backward = _backward_triton if ctx.triton_path else _backward_torch
        grads = backward(grad_out, table_index, row_index, ctx.sizes, needed, ctx.dtype)
        return (None, None, *grads)


def gather_rows(
    tables: Sequence[torch.Tensor], table_index: torch.Tensor, row_index: torch.Tensor
) -> torch.Tensor:
    """Rows of several tables placed into one ``(T, C)`` output, differentiably.

    Args:
        tables: 1 to 4 tensors ``(R_k, C)``, one dtype, one device (made contiguous).
        table_index: ``(T,)`` integer: the table of each output row; ``< 0`` gives a zero row.
        row_index: ``(T,)`` integer: the row inside that table (``0 <= row < R_k``; not
            checked on the device — callers build these indices).

    Returns:
        ``(T, C)`` in the tables' dtype. Gradients flow to every table that requires them.
    """
    _check(tables, table_index, row_index)
    tables = [t.contiguous() for t in tables]
    return _GatherRows.apply(table_index, row_index.to(torch.int64), *tables)

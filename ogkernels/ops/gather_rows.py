"""``gather_rows``: place rows of up to four tables into one output, with autograd.

``out[t] = tables[table_index[t]][row_index[t]]``, and zeros where ``table_index[t] < 0``.
It is the placement step of ``og_tokens`` (tables: patch rows, global rows, BOM row, mask
means) and of multimodal packing (tables: text embeddings, image tokens).

Two custom ops: ``ogkernels::gather_rows`` and its backward ``ogkernels::gather_rows_backward``
(registered as its autograd formula). Gradients reach every table and are deterministic: a
row used several times gets the sum of its output rows' gradients in increasing output order,
accumulated in float32 (float64 for float64) — a CSR segment sum on CUDA (stable sort by
source row, one program per source row, no atomics), ``index_add_`` on the CPU (sequential),
and the sort-based ``index_put_(accumulate=True)`` on other devices.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .._validation import fail
from ..kernels.codes import NO_TABLE
from . import launch
from .dispatch import use_triton
from .host import resident

MAX_TABLES = 4


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other dtype accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_gather_arguments(tables: Sequence[torch.Tensor], table_index: torch.Tensor, row_index: torch.Tensor) -> None:
    if not isinstance(tables, (list, tuple)) or not 1 <= len(tables) <= MAX_TABLES:
        fail("tables", f"a list of 1 to {MAX_TABLES} tables", tables, error=TypeError)
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
        if index.dim() != 1 or index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
            fail(name, "a 1-D integer tensor", index, error=TypeError)
        if index.device != first.device:
            fail(name, f"a tensor on {first.device} (the tables' device)", index)
    if table_index.numel() != row_index.numel():
        fail("row_index", f"{table_index.numel()} entries (as table_index)", row_index)


def gather_rows(tables: Sequence[torch.Tensor], table_index: torch.Tensor, row_index: torch.Tensor) -> torch.Tensor:
    """Rows of several tables placed into one ``(T, C)`` output, differentiably.

    Args:
        tables: 1 to 4 tensors ``(R_k, C)``, one dtype, one device (made contiguous).
        table_index: ``(T,)`` integer: the table of each output row; ``< 0`` gives a zero row.
        row_index: ``(T,)`` integer: the row inside that table (``0 <= row < R_k``; not
            checked on the device — callers build these indices).

    Returns:
        ``(T, C)`` in the tables' dtype. Gradients flow to every table that requires them.
    """
    check_gather_arguments(tables, table_index, row_index)
    tables = [t.contiguous() for t in tables]
    return torch.ops.ogkernels.gather_rows(tables, table_index.to(torch.int32), row_index.to(torch.int64))


# ----------------------------------------------------------------------------------------------
# The custom ops and their autograd
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("ogkernels::gather_rows", mutates_args=())
def _gather_rows_op(tables: Sequence[torch.Tensor], table_index: torch.Tensor, row_index: torch.Tensor) -> torch.Tensor:
    if use_triton(tables[0].device):
        return _forward_triton(tables, table_index, row_index)
    return _forward_torch(tables, table_index, row_index)


@_gather_rows_op.register_fake
def _(tables, table_index, row_index):
    return tables[0].new_empty(table_index.shape[0], tables[0].shape[1])


@torch.library.custom_op("ogkernels::gather_rows_backward", mutates_args=())
def _gather_rows_backward_op(
    grad_out: torch.Tensor, table_index: torch.Tensor, row_index: torch.Tensor, sizes: Sequence[int]
) -> torch.Tensor:
    """The gradient of every table, back to back: ``(sum(sizes), C)`` in ``grad_out``'s dtype."""
    sizes = [int(s) for s in sizes]
    grad_out = grad_out.contiguous()
    if use_triton(grad_out.device):
        return _backward_triton(grad_out, table_index, row_index, sizes)
    return _backward_torch(grad_out, table_index, row_index, sizes)


@_gather_rows_backward_op.register_fake
def _(grad_out, table_index, row_index, sizes):
    return grad_out.new_empty(sum(sizes), grad_out.shape[1])


def _setup_context(ctx, inputs, output):
    tables, table_index, row_index = inputs
    ctx.sizes = [t.shape[0] for t in tables]
    ctx.save_for_backward(table_index, row_index)


def _backward(ctx, grad_out):
    table_index, row_index = ctx.saved_tensors
    grads = torch.ops.ogkernels.gather_rows_backward(grad_out, table_index, row_index, ctx.sizes)
    return list(torch.split(grads, ctx.sizes)), None, None


torch.library.register_autograd("ogkernels::gather_rows", _backward, setup_context=_setup_context)


def _table_starts(sizes: Sequence[int], device: torch.device) -> torch.Tensor:
    """``(len(sizes) + 1,)`` int64 offsets of the tables back to back."""
    starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    return resident(starts, torch.int64, device, key=("table starts", tuple(sizes)))


def _virtual_rows(table_index: torch.Tensor, row_index: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Each output row's source in the tables back to back; rows with no table get
    ``sum(sizes)`` (a sentinel past the last source)."""
    starts = _table_starts(sizes, table_index.device)
    total = int(sum(sizes))
    valid = table_index != NO_TABLE
    return torch.where(valid, starts.index_select(0, table_index.clamp(min=0).long()) + row_index, total)


# ----------------------------------------------------------------------------------------------
# PyTorch path
# ----------------------------------------------------------------------------------------------


def _forward_torch(tables, table_index, row_index):
    first = tables[0]
    if first.shape[0]:
        out = first.index_select(0, torch.where(table_index == 0, row_index, 0))
    else:
        out = first.new_zeros(table_index.numel(), first.shape[1])
    for k in range(1, len(tables)):
        picked = table_index == k
        if out.device.type == "cpu":  # a few rows: copy just those (no host sync on the CPU)
            where = torch.nonzero(picked).squeeze(1)
            out.index_copy_(0, where, tables[k].index_select(0, row_index.index_select(0, where)))
        else:
            rows = tables[k].index_select(0, torch.where(picked, row_index, 0)) if tables[k].shape[0] else out
            out = torch.where(picked[:, None], rows, out)
    if out.device.type == "cpu":
        return out.index_fill_(0, torch.nonzero(table_index < 0).squeeze(1), 0)
    return torch.where((table_index >= 0)[:, None], out, 0)


def _backward_torch(grad_out, table_index, row_index, sizes):
    acc_dtype = accumulation_dtype(grad_out.dtype)
    target = _virtual_rows(table_index, row_index, sizes)
    acc = torch.zeros(int(sum(sizes)) + 1, grad_out.shape[1], dtype=acc_dtype, device=grad_out.device)
    if grad_out.device.type == "cpu":
        acc.index_add_(0, target, grad_out.to(acc_dtype))
    else:
        acc.index_put_((target,), grad_out.to(acc_dtype), accumulate=True)
    return acc[:-1].to(grad_out.dtype)


# ----------------------------------------------------------------------------------------------
# Triton path
# ----------------------------------------------------------------------------------------------


def gather_launch(out, tables, table_index, row_index) -> launch.Launch:
    from ..kernels.gather_rows import gather_rows_kernel

    total, width = out.shape
    padded = list(tables) + [tables[0]] * (MAX_TABLES - len(tables))
    settings = launch.gather_rows(width, out.element_size())
    return launch.Launch.of(
        gather_rows_kernel,
        (launch.cdiv(total, settings["BLOCK_R"]), launch.cdiv(width, settings["BLOCK_C"])),
        {
            "out_ptr": out,
            "table_index_ptr": table_index,
            "row_index_ptr": row_index,
            **{f"table{k}_ptr": t for k, t in enumerate(padded)},
            "num_rows": total,
            "num_cols": width,
        },
        settings,
        NUM_TABLES=len(tables),
    )


def _forward_triton(tables, table_index, row_index):
    total, width = table_index.numel(), tables[0].shape[1]
    out = torch.empty(total, width, dtype=tables[0].dtype, device=tables[0].device)
    if total and width:
        gather_launch(out, tables, table_index, row_index).run()
    return out


def csr_by_source(table_index: torch.Tensor, row_index: torch.Tensor, sizes: Sequence[int]):
    """Output rows grouped by source row: ``(order, row_ptr)`` with ``order`` the output rows
    sorted stably by virtual source row (tables back to back) and ``row_ptr`` its CSR offsets.
    Sync-free: unused output rows sort to a sentinel past the last source."""
    num_sources = int(sum(sizes))
    key = _virtual_rows(table_index, row_index, sizes)
    order = torch.sort(key, stable=True).indices
    counts = torch.zeros(num_sources + 1, dtype=torch.int64, device=key.device)
    counts.index_add_(0, key, torch.ones_like(key))  # integer adds: exact, no host sync
    row_ptr = torch.zeros(num_sources + 1, dtype=torch.int64, device=key.device)
    torch.cumsum(counts[:num_sources], 0, out=row_ptr[1:])
    return order, row_ptr


def segment_sum_launch(grad_tables, grad_out, order, row_ptr) -> launch.Launch:
    from ..kernels.gather_rows import segment_sum_kernel

    num_sources, width = grad_tables.shape
    settings = launch.segment_sum(width, grad_out.element_size())
    return launch.Launch.of(
        segment_sum_kernel,
        (num_sources, launch.cdiv(width, settings["BLOCK_C"])),
        {"grad_tables_ptr": grad_tables, "grad_out_ptr": grad_out, "order_ptr": order, "row_ptr_ptr": row_ptr,
         "num_cols": width},  # fmt: skip
        settings,
        ACC_FP64=grad_out.dtype == torch.float64,
    )


def _backward_triton(grad_out, table_index, row_index, sizes):
    num_sources, width = int(sum(sizes)), grad_out.shape[1]
    grad_tables = torch.empty(num_sources, width, dtype=grad_out.dtype, device=grad_out.device)
    if num_sources and width:
        order, row_ptr = csr_by_source(table_index, row_index, sizes)
        segment_sum_launch(grad_tables, grad_out, order, row_ptr).run()
    return grad_tables

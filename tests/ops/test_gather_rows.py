"""``ogkernels::gather_rows`` and its backward on every backend.

Forward: copies, bit-exact in every dtype. Backward: each source row's gradient is the sum of
its output rows' gradients accumulated in float32 (float64 for float64) in increasing output
order; compared with float64 autograd of the same gather at the accumulation's precision
rounded to the dtype (fp64/fp32: 1e-6; bf16/fp16: one unit of the dtype, stated per dtype),
and bit-identical run to run.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ogkernels.ops.gather_rows import gather_rows

from ..backends import examples

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 1e-3}


def naive(tables, table_index, row_index):
    width = tables[0].shape[1]
    rows = [tables[t][r] if t >= 0 else torch.zeros(width, dtype=tables[0].dtype) for t, r in zip(table_index.tolist(), row_index.tolist())]
    return torch.stack(rows) if rows else tables[0].new_zeros(0, width)


@pytest.mark.parametrize("dtype", DTYPES)
def test_four_tables_forward_and_backward(backend, device, dtype):
    g = torch.Generator().manual_seed(0)
    cpu_tables = [torch.randn(rows, 40, generator=g).to(dtype) for rows in (12, 3, 1, 5)]
    table_index = torch.tensor([0, 0, 1, 2, 0, -1, 0, 2, 1, 3, 0, 3, 0], dtype=torch.int32)
    row_index = torch.tensor([3, 3, 2, 0, 11, 0, 5, 0, 0, 4, 7, 4, 0])
    tables = [t.to(device).requires_grad_(True) for t in cpu_tables]
    out = gather_rows(tables, table_index.to(device), row_index.to(device))
    assert torch.equal(out.detach().cpu(), naive(cpu_tables, table_index, row_index))
    grad = torch.randn(out.shape, generator=g).to(dtype)
    got = torch.autograd.grad(out, tables, grad.to(device))
    ref_tables = [t.double().requires_grad_(True) for t in cpu_tables]
    expected = torch.autograd.grad(naive(ref_tables, table_index, row_index), ref_tables, grad.double())
    tol = TOLERANCE[dtype]
    for ours, theirs in zip(got, expected):
        torch.testing.assert_close(ours.cpu().double(), theirs, rtol=tol, atol=tol)
    again = torch.autograd.grad(gather_rows(tables, table_index.to(device), row_index.to(device)), tables, grad.to(device))
    for a, b in zip(got, again):
        assert torch.equal(a, b)  # deterministic: no atomics


def test_random_placements(backend, device):
    @settings(max_examples=examples(backend, 100, 6))
    @given(
        sizes=st.lists(st.integers(0, 6), min_size=1, max_size=4),
        total=st.integers(0, 24),
        width=st.sampled_from([1, 3, 16, 33]),
        seed=st.integers(0, 1000),
    )
    def check(sizes, total, width, seed):
        g = torch.Generator().manual_seed(seed)
        tables = [torch.randn(n, width, generator=g) for n in sizes]
        choices = [(t, r) for t, n in enumerate(sizes) for r in range(n)] + [(-1, 0)]
        picks = torch.randint(0, len(choices), (total,), generator=g).tolist()
        table_index = torch.tensor([choices[p][0] for p in picks], dtype=torch.int32)
        row_index = torch.tensor([choices[p][1] for p in picks], dtype=torch.int64)
        leaves = [t.to(device).requires_grad_(True) for t in tables]
        out = gather_rows(leaves, table_index.to(device), row_index.to(device))
        assert torch.equal(out.detach().cpu(), naive(tables, table_index, row_index))
        grad = torch.randn(out.shape, generator=g)
        got = torch.autograd.grad(out, leaves, grad.to(device), allow_unused=True)
        # the gradient of a gather is the transposed one-hot selection applied to the grad
        starts = torch.tensor([0] + sizes).cumsum(0)
        selection = torch.zeros(total, sum(sizes), dtype=torch.float64)
        for i, (t, r) in enumerate(zip(table_index.tolist(), row_index.tolist())):
            if t >= 0:
                selection[i, int(starts[t]) + r] = 1
        expected = torch.split(selection.T @ grad.double(), sizes)
        for ours, theirs in zip(got, expected):
            ours = ours if ours is not None else torch.zeros_like(theirs)
            torch.testing.assert_close(ours.cpu().double(), theirs, rtol=1e-6, atol=1e-6)

    check()


def test_bad_arguments_are_named():
    table = torch.zeros(3, 4)
    with pytest.raises(TypeError, match="tables"):
        gather_rows([], torch.zeros(2, dtype=torch.int32), torch.zeros(2))
    with pytest.raises(TypeError, match=r"tables\[1\]"):
        gather_rows([table, table.double()], torch.zeros(2, dtype=torch.int32), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(TypeError, match="row_index"):
        gather_rows([table], torch.zeros(2, dtype=torch.int32), torch.zeros(2))
    with pytest.raises(ValueError, match="row_index"):
        gather_rows([table], torch.zeros(2, dtype=torch.int32), torch.zeros(3, dtype=torch.int64))


def test_ops_pass_opcheck(device):
    tables = [torch.randn(4, 8, device=device, requires_grad=True), torch.randn(2, 8, device=device, requires_grad=True)]
    table_index = torch.tensor([0, 1, -1, 0, 1], dtype=torch.int32, device=device)
    row_index = torch.tensor([3, 1, 0, 3, 0], dtype=torch.int64, device=device)
    torch.library.opcheck(torch.ops.ogkernels.gather_rows.default, (tables, table_index, row_index))
    grad = torch.randn(5, 8, device=device)
    torch.library.opcheck(torch.ops.ogkernels.gather_rows_backward.default, (grad, table_index, row_index, [4, 2]))


@pytest.mark.parametrize("sizes", [[3], [4, 1], [2, 0, 3], [5, 2, 1, 3]])
def test_csr_by_source_groups_output_rows_by_source(sizes):
    # the backward kernel's CSR: output rows sorted stably by source (tables back to back),
    # row_ptr (num_sources + 1,) offsets; unused rows (NO_TABLE) sort past every source
    from ogkernels.ops.gather_rows import csr_by_source

    g = torch.Generator().manual_seed(len(sizes))
    tables = [t for t, n in enumerate(sizes) if n]
    picks = torch.randint(0, len(tables), (13,), generator=g)
    table_index = torch.tensor([tables[p] for p in picks.tolist()], dtype=torch.int32)
    table_index[[2, 7]] = -1
    row_index = torch.tensor([int(torch.randint(0, max(sizes[t], 1), (1,), generator=g)) if t >= 0 else 0
                              for t in table_index.tolist()])  # fmt: skip
    order, row_ptr = csr_by_source(table_index, row_index, sizes)
    starts = [sum(sizes[:t]) for t in range(len(sizes))]
    source = [starts[t] + r if t >= 0 else sum(sizes) for t, r in zip(table_index.tolist(), row_index.tolist())]
    expected_order = sorted(range(13), key=lambda i: (source[i], i))
    assert order.tolist() == expected_order
    assert row_ptr.shape == (sum(sizes) + 1,)
    assert row_ptr.tolist() == [sum(1 for s in source if s < k) for k in range(sum(sizes) + 1)]

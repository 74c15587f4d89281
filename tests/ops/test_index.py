"""Varlen index helpers against plain Python loops."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from ogkernels.ops import index

lengths_lists = st.lists(st.integers(0, 7), min_size=0, max_size=9)


@given(lengths_lists)
def test_round_trips_match_python_loops(lengths):
    lens = torch.tensor(lengths, dtype=torch.int64)
    cu = index.cu_seqlens_from_lengths(lens)
    expected = [0]
    for n in lengths:
        expected.append(expected[-1] + n)
    assert cu.dtype == torch.int32 and cu.tolist() == expected
    assert index.lengths_from_cu_seqlens(cu).tolist() == lengths
    total = sum(lengths)
    assert index.sequence_ids(lens, total).tolist() == [b for b, n in enumerate(lengths) for _ in range(n)]
    positions = index.position_ids_from_cu_seqlens(cu, total)
    assert positions.tolist() == [p for n in lengths for p in range(n)]
    assert index.max_length(cu) == max(lengths, default=0)
    assert index.exclusive_cumsum(lens).tolist() == expected[:-1]


@given(st.lists(st.integers(1, 7), min_size=1, max_size=9))
def test_cu_seqlens_from_position_ids_inverts_positions(lengths):
    cu = index.cu_seqlens_from_lengths(torch.tensor(lengths))
    positions = index.position_ids_from_cu_seqlens(cu, sum(lengths))
    assert torch.equal(index.cu_seqlens_from_position_ids(positions[None]), cu)


def test_int32_offsets_past_the_limit_are_visible_in_int64_first():
    lens = torch.tensor([2**31 - 1, 5])
    # the int64 total is what a caller checks; the int32 cast wraps
    assert int(torch.cumsum(lens, 0)[-1]) > 2**31 - 1
    assert int(index.cu_seqlens_from_lengths(lens)[-1]) < 0


def test_no_positions_make_an_empty_batch():
    # (1, 0) positions: zero sequences, the offsets [0] (B + 1 = 1 entry)
    cu = index.cu_seqlens_from_position_ids(torch.zeros(1, 0, dtype=torch.int64))
    assert cu.dtype == torch.int32 and cu.tolist() == [0]
    assert index.max_length(cu) == 0

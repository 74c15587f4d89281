"""Hypothesis strategies shared by the op tests."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

DENSITIES = (0.0, 0.002, 0.05, 0.3, 0.7, 1.0)


@st.composite
def mask_stacks(draw, max_masks: int = 4, max_side: int = 40, min_masks: int = 0):
    """One image's masks ``(N, H, W)`` bool: empty, full, sparse, dense and overlapping."""
    n = draw(st.integers(min_masks, max_masks))
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        density = draw(st.sampled_from(DENSITIES))
        rows.append(torch.rand(h, w, generator=g) < density)
    return torch.stack(rows) if rows else torch.zeros(0, h, w, dtype=torch.bool)


token_counts = st.sampled_from([1, 2, 3, 7, 9, 16, 25, 36, 49, 100, 576, 577, 729])
grids = st.tuples(st.integers(1, 7), st.integers(1, 7))


"""MaskBitmaps: stored Phi bitmaps stand in for raw masks, and a mismatch with the options
in use is an error, not a silent wrong answer."""

import pytest
import torch

from ogkernels import MaskBitmaps, OGFusion, downsample_masks, og_tokens
from ogkernels.budget import og_token_counts


def bitmaps_of(masks, grid, **params):
    params = {"alpha": 0.5, "mode": "flat", "frame": "none", **params}
    bits = downsample_masks(masks, grid, **params)
    shape = (1, grid) if isinstance(grid, int) else tuple(grid)
    nonempty = masks.reshape(masks.shape[0], -1).any(dim=1)
    return MaskBitmaps(bits, nonempty, shape, params["alpha"], params["mode"], params["frame"])


def test_bitmaps_give_the_tokens_of_their_masks():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(3, 16, 5, generator=g)
    bom = torch.randn(1, 5, generator=g)
    masks = [torch.rand(3, 20, 17, generator=g) < 0.2, torch.zeros(2, 9, 9, dtype=torch.bool), torch.rand(1, 30, 8, generator=g) < 0.4]
    for params in ({}, {"mode": "patch", "frame": "pad", "alpha": 2}):
        grid = 16 if not params else (4, 4)
        stored = [bitmaps_of(m, grid, **params) for m in masks]
        expected = og_tokens(features, masks, bom, **params)
        got = og_tokens(features, stored, bom, **params)
        assert torch.equal(got.values, expected.values) and torch.equal(got.cu_seqlens, expected.cu_seqlens)
        assert og_token_counts(stored, grid, **params) == expected.lengths.tolist()


def test_the_gate_reads_the_raw_emptiness():
    # a tiny mask downsamples to nothing (N < V/2), yet its pixel opens the reference's gate
    mask = torch.zeros(1, 3, 3, dtype=torch.bool)
    mask[0, 1, 1] = True
    features = torch.randn(1, 576, 4)
    stored = bitmaps_of(mask, 576)
    assert not bool(stored.bits.any())
    raw, from_bitmaps = og_tokens(features, [mask]), og_tokens(features, [stored])
    assert raw.lengths.tolist() == from_bitmaps.lengths.tolist() == [1 + 1 + 576]  # gate open, lone empty mask: all tokens
    assert og_tokens(features, [stored.bits]).lengths.tolist() == [576]  # plain bitmaps carry no raw emptiness: gate closed


@pytest.mark.parametrize("params", [{"alpha": 0.25}, {"mode": "patch"}, {"mode": "patch", "frame": "crop"}])
def test_mismatched_parameters_are_refused(params):
    masks = torch.rand(2, 8, 8) < 0.5
    stored = bitmaps_of(masks, 16)
    with pytest.raises(ValueError, match=r"masks\[0\].*MaskBitmaps made with"):
        og_tokens(torch.randn(1, 16, 3), [stored], **params)
    with pytest.raises(ValueError, match=r"masks\[0\]"):
        OGFusion(3, 4, **params)(torch.randn(1, 16, 3), [stored])


def test_construction_is_validated():
    with pytest.raises(TypeError, match="MaskBitmaps.bits"):
        MaskBitmaps(torch.zeros(2, 16), torch.zeros(2, dtype=torch.bool), (1, 16), 0.5, "flat", "none")
    with pytest.raises(ValueError, match="MaskBitmaps.bits"):
        MaskBitmaps(torch.zeros(2, 16, dtype=torch.bool), torch.zeros(2, dtype=torch.bool), (4, 5), 0.5, "flat", "none")
    with pytest.raises(ValueError, match="MaskBitmaps.nonempty"):
        MaskBitmaps(torch.zeros(2, 16, dtype=torch.bool), torch.zeros(3, dtype=torch.bool), (4, 4), 0.5, "flat", "none")

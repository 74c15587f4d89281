"""``ogkernels::phi`` (Phi_alpha) on every backend against the reference operators.

Tolerance: none — Phi is integer arithmetic; every comparison is bit-exact. Inputs are built
on the ``device`` fixture, the oracles run on the CPU.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ogkernels import PackedMasks, downsample_masks
from ogkernels import reference as R
from ogkernels.ops import launch

from ..backends import examples, interpreted, using
from ..strategies import grids, mask_stacks, token_counts


def reference_flat(masks: torch.Tensor, v: int) -> torch.Tensor:
    if masks.shape[0] == 0:
        return torch.zeros(0, v, dtype=torch.bool)
    return torch.stack([R.downsample_mask_to_1d_counts(m, v) for m in masks])


def exact_flat(masks: torch.Tensor, v: int, alpha: Fraction) -> torch.Tensor:
    """Phi_alpha by its definition, in exact rationals: keep iff S·N >= alpha·L·V."""
    n_pixels = masks.shape[1] * masks.shape[2]
    flat = (masks.reshape(masks.shape[0], n_pixels) != 0).to(torch.int64)
    out = torch.zeros(masks.shape[0], v, dtype=torch.bool)
    for j in range(v):
        s, e = R.adaptive_bin(j, n_pixels, v)
        for i, total in enumerate(flat[:, s:e].sum(1).tolist()):
            out[i, j] = total * n_pixels >= alpha * (e - s) * v
    return out


def reference_patch(masks, grid, alpha, frame):
    if masks.shape[0] == 0:
        return torch.zeros(0, grid[0] * grid[1], dtype=torch.bool)
    return torch.stack([R.downsample_mask_2d_counts(m, grid, alpha, frame) for m in masks])


def test_flat_matches_reference_bit_exact(backend, device):
    small = interpreted(backend, device)

    @settings(max_examples=examples(backend, 300, 12))
    @given(
        images=st.lists(mask_stacks(max_masks=2 if small else 3, max_side=24), min_size=1, max_size=3),
        v=st.sampled_from([1, 7, 9, 16, 33]) if small else token_counts,
    )
    def check(images, v):
        expected = torch.cat([reference_flat(m, v) for m in images])
        dense = downsample_masks([m.to(device) for m in images], v).cpu()
        packed = downsample_masks([PackedMasks.from_dense(m).to(device) for m in images], v).cpu()
        assert torch.equal(dense, expected) and torch.equal(packed, expected)

    check()


def test_flat_any_alpha_matches_the_exact_rule(backend, device):
    @settings(max_examples=examples(backend, 150, 8))
    @given(
        masks=mask_stacks(max_side=24),
        v=st.sampled_from([1, 5, 9, 16, 64, 100]),
        alpha=st.sampled_from([0.1, 0.25, 1 / 3, 0.5, 0.75, 1.0, 1.5, 2.0, 7.0]),
    )
    def check(masks, v, alpha):
        expected = exact_flat(masks, v, Fraction(repr(alpha)))
        assert torch.equal(downsample_masks(masks.to(device), v, alpha=alpha).cpu(), expected)
        packed = PackedMasks.from_dense(masks).to(device)
        assert torch.equal(downsample_masks(packed, v, alpha=alpha).cpu(), expected)

    check()


def test_patch_matches_the_2d_oracle(backend, device):
    small = interpreted(backend, device)

    @settings(max_examples=examples(backend, 200, 8))
    @given(
        masks=mask_stacks(max_masks=2 if small else 4, max_side=14 if small else 30),
        grid=st.tuples(st.integers(1, 4), st.integers(1, 4)) if small else grids,
        alpha=st.sampled_from([0.5, 1, 2, 3.5, 10]),
        frame=st.sampled_from(["none", "pad", "crop"]),
    )
    def check(masks, grid, alpha, frame):
        expected = reference_patch(masks, grid, alpha, frame)
        for source in (masks, PackedMasks.from_dense(masks)):
            got = downsample_masks(source.to(device), grid, alpha=alpha, mode="patch", frame=frame)
            assert torch.equal(got.cpu(), expected)

    check()


@pytest.mark.parametrize("alpha, kept", [(0.1, 10), (0.2, 0)])
def test_alpha_is_read_as_the_decimal_it_prints_as(backend, device, alpha, kept):
    # 1×10 mask, one pixel, V = 100: each bin is one pixel (L = 1), so a bin holding the pixel
    # is kept iff 1·10 >= alpha·1·100, exactly on the boundary for alpha = 1/10. The binary
    # double nearest 0.1 is slightly larger and would keep none.
    mask = torch.zeros(1, 1, 10, dtype=torch.bool)
    mask[0, 0, 4] = True
    assert int(downsample_masks(mask.to(device), 100, alpha=alpha).sum()) == kept


def test_exact_boundaries_of_the_rule(backend, device):
    # alpha·L·V/N integral: the comparison must be >= (inclusive), on both tile paths
    g = torch.Generator().manual_seed(5)
    for n_pixels, v, alpha in ((24, 9, 0.5), (36, 9, 0.25), (40, 10, 0.75), (60, 20, 1.0)):
        masks = torch.rand(6, 1, n_pixels, generator=g) < 0.5
        expected = exact_flat(masks, v, Fraction(repr(alpha)))
        assert torch.equal(downsample_masks(masks.to(device), v, alpha=alpha).cpu(), expected)


def test_any_nonzero_byte_is_one_pixel(backend, device):
    # a 0/255 image or a {0, 2} label map viewed as bool: the bytes are not 0/1
    g = torch.Generator().manual_seed(2)
    labels = (torch.rand(3, 13, 17, generator=g) < 0.3).to(torch.uint8) * torch.randint(1, 256, (3, 13, 17), generator=g, dtype=torch.uint8)
    as_bool = labels.view(torch.bool)
    clean = labels != 0
    for v in (16, 100) if interpreted(backend, device) else (16, 100, 576):
        expected = reference_flat(clean, v)
        assert torch.equal(downsample_masks(as_bool.to(device), v).cpu(), expected)
        assert torch.equal(downsample_masks(labels.to(device), v).cpu(), expected)
    patch = reference_patch(clean, (3, 4), 2, "pad")
    assert torch.equal(downsample_masks(as_bool.to(device), (3, 4), alpha=2, mode="patch", frame="pad").cpu(), patch)


def test_long_bins_and_a_misaligned_view(backend, device):
    # bins longer than one word chunk (N/V = 300 px) and a view starting at an odd byte
    g = torch.Generator().manual_seed(1)
    storage = (torch.rand(1 + 2 * 60 * 50, generator=g) < 0.02).to(device)
    masks = storage[1:].view(2, 60, 50)
    assert torch.equal(downsample_masks(masks, 10).cpu(), reference_flat(masks.cpu(), 10))


def test_tile_settings_do_not_change_the_result(device):
    # the Triton kernel with the smallest tiles: many column blocks, several word steps per bin
    g = torch.Generator().manual_seed(4)
    masks = torch.rand(2, 9, 40, generator=g) < 0.4
    expected = reference_patch(masks, (3, 5), 1, "none")
    with launch.overrides("phi_bins", BLOCK_C=2, BLOCK_W=2, num_warps=1), using("triton"):
        got = downsample_masks(masks.to(device), (3, 5), alpha=1, mode="patch")
    assert torch.equal(got.cpu(), expected)


def test_real_sam2_masks(backend, device, sav_frames):
    dense, _ = sav_frames  # SA-V annotations (Meta, CC BY 4.0)
    masks = torch.from_numpy(dense[0])
    if interpreted(backend, device):
        masks = masks[:2, 300:380, 100:180].contiguous()  # two real object crops, 80×80
    for v in (576, 729):
        expected = reference_flat(masks, v)
        assert torch.equal(downsample_masks(masks.to(device), v).cpu(), expected)
        assert torch.equal(downsample_masks(PackedMasks.from_dense(masks).to(device), v).cpu(), expected)


@pytest.mark.parametrize("shape, bins", [((300, 400), 9), ((333, 517), 7), ((64, 64), 1), ((5, 7), 100)])
@pytest.mark.parametrize("density", [0.3, 1.0])
def test_pytorch_counts_are_exact_for_long_bins_and_full_masks(shape, bins, density):
    # bins of up to 20,000 px: several byte-lane chunks per part; full masks fill every lane
    from ogkernels.ops.phi_torch import flat_counts

    g = torch.Generator().manual_seed(0)
    masks = torch.rand(2, *shape, generator=g) < density
    n_pixels = shape[0] * shape[1]
    flat = masks.reshape(2, n_pixels).to(torch.int64)
    bounds = [R.adaptive_bin(j, n_pixels, bins) for j in range(bins)]
    expected = torch.tensor([[int(row[s:e].sum()) for s, e in bounds] for row in flat])
    dense = flat_counts(masks.reshape(-1).view(torch.uint8), False, 2, n_pixels, n_pixels, bins)
    packed = PackedMasks.from_dense(masks)
    bits = flat_counts(packed.bits.reshape(-1), True, 2, 8 * packed.bits.shape[1], n_pixels, bins)
    assert torch.equal(dense, expected) and torch.equal(bits, expected)


def test_the_op_passes_opcheck(device):
    masks = torch.rand(2, 6, 7, generator=torch.Generator().manual_seed(0)) < 0.5
    args = ([masks.to(device)], [6], [7], [False], 1, 9, 0.5, "flat", "none")
    torch.library.opcheck(torch.ops.ogkernels.phi.default, args)


def _decimal(value: Fraction) -> bool:
    """``value`` is what a float prints as (a terminating decimal that round-trips)."""
    return Fraction(repr(float(value))) == value


def test_random_alpha_exactly_on_a_bins_boundary_is_kept(backend, device):
    # alpha = S_j·N / (L_j·V) for a bin j of the drawn mask: alpha·L·V/N is then an integer
    # (the bin's count), the rule's boundary; the bin must be kept (>=), and the whole row
    # must follow the exact rule (other bins with the same area sit on it too)
    @settings(max_examples=examples(backend, 120, 8))
    @given(
        masks=mask_stacks(max_masks=3, max_side=20),
        v=st.sampled_from([2, 4, 5, 8, 10, 16, 20, 25, 40, 50, 100]),
        data=st.data(),
    )
    def check(masks, v, data):
        n_pixels = masks.shape[1] * masks.shape[2]
        flat = masks.reshape(masks.shape[0], n_pixels).to(torch.int64)
        candidates = []
        for j in range(v):
            s, e = R.adaptive_bin(j, n_pixels, v)
            for i, count in enumerate(flat[:, s:e].sum(1).tolist()):
                alpha = Fraction(count * n_pixels, (e - s) * v)
                if count and _decimal(alpha):
                    candidates.append((i, j, alpha))
        assume(candidates)
        i, j, alpha = data.draw(st.sampled_from(candidates))
        got = downsample_masks(masks.to(device), v, alpha=float(alpha)).cpu()
        assert got[i, j], (i, j, alpha)
        assert torch.equal(got, exact_flat(masks, v, alpha))

    check()


@pytest.mark.parametrize("packed", [False, True])
def test_bins_of_many_word_chunks_after_a_bin_ending_in_set_pixels(backend, device, packed):
    # bins spanning several lane chunks; every other bin ends in set pixels and the next one is
    # empty: the empty bin's first (misaligned) word holds set pixels before its start, whose
    # correction must go into the chunk holding that word — in any other chunk a byte lane
    # of zeros borrows
    v, length = 4, 5003
    n_pixels = v * length - 3
    row = torch.zeros(n_pixels, dtype=torch.bool)
    for j in range(0, v, 2):
        s, e = R.adaptive_bin(j, n_pixels, v)
        row[e - (e - s) // 3 : e] = True
    masks = torch.stack([row, row.roll(7), row.roll(-13)]).view(3, 1, n_pixels)
    source = PackedMasks.from_dense(masks) if packed else masks
    for alpha in (0.1, 0.34, 0.5):
        got = downsample_masks(source.to(device), v, alpha=alpha).cpu()
        assert torch.equal(got, exact_flat(masks, v, Fraction(repr(alpha)))), alpha

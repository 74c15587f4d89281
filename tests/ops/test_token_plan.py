"""``ogkernels::token_plan`` and ``ogkernels::place_tokens``: the Triton plan equals the
PyTorch plan field for field, both equal the reference's lengths, the plain images (gate,
``maskless="plain"``) and the rank carry between token blocks. Everything is integer:
bit-exact comparisons."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ogkernels import reference as R
from ogkernels.kernels import codes
from ogkernels.ops import launch
from ogkernels.ops.place_tokens import placement_indices
from ogkernels.ops.token_plan import Layout, plan_tokens

from ..backends import examples, using

layouts = st.builds(
    Layout,
    global_view=st.sampled_from(["mean", "full", "none"]),
    bom=st.booleans(),
    averaging=st.booleans(),
    max_masks=st.sampled_from([None, 1, 2]),
    maskless=st.sampled_from(["reference", "plain"]),
)


def plan_on(backend, bitmaps, counts, layout, gate_open=None, extra_rows=3):
    with using(backend):
        plan = plan_tokens(bitmaps, counts, layout, gate_open=gate_open)
        rows = int(plan.lengths.sum()) + extra_rows
        return plan, placement_indices(plan, rows)


def assert_same_plan(a, b):
    for field in ("lengths", "cu_seqlens", "state", "token_counts", "plain", "mask_image"):
        assert torch.equal(getattr(a, field).cpu(), getattr(b, field).cpu()), field
    kept = b.keep.cpu()
    assert torch.equal(a.mask_offsets.cpu()[kept], b.mask_offsets.cpu()[kept])


@pytest.mark.triton
def test_triton_plan_and_placement_equal_the_pytorch_ones(device):
    @settings(max_examples=examples("triton", 150, 25))
    @given(
        counts=st.lists(st.integers(0, 4), min_size=1, max_size=4),
        v=st.sampled_from([1, 5, 16, 33]),
        layout=layouts,
        density=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
        gate=st.sampled_from([None, True, False]),
        seed=st.integers(0, 1000),
    )
    def check(counts, v, layout, density, gate, seed):
        g = torch.Generator().manual_seed(seed)
        bitmaps = (torch.rand(sum(counts), v, generator=g) < density).to(device)
        gate_open = None if gate is None else torch.tensor(gate, device=device)
        expected, want = plan_on("torch", bitmaps, counts, layout, gate_open)
        got, have = plan_on("triton", bitmaps, counts, layout, gate_open)
        assert_same_plan(got, expected)
        for ours, theirs in zip(have, want):
            assert torch.equal(ours.cpu(), theirs.cpu())

    check()


@pytest.mark.triton
@pytest.mark.parametrize("v, block", [(40, 8), (2880, 1024)])
def test_rank_carry_between_token_blocks(device, v, block):
    # masks longer than one block of tokens: ranks continue across blocks (AnyRes V = 2,880)
    g = torch.Generator().manual_seed(v)
    bitmaps = (torch.rand(3, v, generator=g) < 0.3).to(device)
    bitmaps[1] = False  # dropped (several masks, empty)
    counts, layout = [2, 1], Layout()
    expected, want = plan_on("torch", bitmaps, counts, layout)
    with launch.overrides("place_tokens", BLOCK_V=block), launch.overrides("token_plan", BLOCK_V=block):
        got, have = plan_on("triton", bitmaps, counts, layout)
    assert_same_plan(got, expected)
    for ours, theirs in zip(have, want):
        assert torch.equal(ours.cpu(), theirs.cpu())


def test_lengths_equal_the_reference(backend, device):
    @settings(max_examples=examples(backend, 120, 20))
    @given(
        counts=st.lists(st.integers(0, 4), min_size=1, max_size=4),
        v=st.sampled_from([1, 4, 9]),
        global_view=st.sampled_from(["mean", "full", "none"]),
        no_masktoken=st.booleans(),
        density=st.sampled_from([0.0, 0.2, 0.7]),
        seed=st.integers(0, 1000),
    )
    def check(counts, v, global_view, no_masktoken, density, seed):
        g = torch.Generator().manual_seed(seed)
        bitmaps = torch.rand(sum(counts), v, generator=g) < density
        flags = R.ReferenceFlags(global_view=global_view != "none", averaging_global_view=global_view == "mean",
                                 no_masktoken=no_masktoken)  # fmt: skip
        per_image = list(torch.split(bitmaps, counts))
        expected = []
        for masks in per_image:
            kept = R.check_resised_image_masks(list(masks))
            rows = {"mean": 1, "full": v, "none": 0}[global_view]
            expected.append(rows + sum(int(m.sum()) + int(not no_masktoken) for m in kept))
        layout = Layout(global_view, not no_masktoken)
        with using(backend):
            plan = plan_tokens(bitmaps.to(device), counts, layout)
        assert plan.lengths.tolist() == expected
        assert flags.global_view == (global_view != "none")

    check()


def test_plain_images_take_their_patch_rows(backend, device):
    bitmaps = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 0]], dtype=torch.bool, device=device)
    counts = [2, 0, 0]
    layout = Layout(maskless="plain")
    with using(backend):
        plan = plan_tokens(bitmaps, counts, layout, gate_open=torch.tensor(True, device=device))
        table, rows, sources = placement_indices(plan, int(plan.lengths.sum()))
    assert plan.lengths.tolist() == [1 + 3 + 3, 4, 4]
    assert plan.plain.tolist() == [False, True, True]
    assert sources.tolist()[7:] == [4, 5, 6, 7, 8, 9, 10, 11]  # images 1, 2: their V patch rows
    assert set(table.tolist()[7:]) == {codes.PATCH_TABLE}
    with using(backend):  # the gate closed: every image is plain, its masks dropped
        closed = plan_tokens(bitmaps, counts, Layout(), gate_open=torch.tensor(False, device=device))
    assert closed.lengths.tolist() == [4, 4, 4] and not bool(closed.keep.any())


@pytest.mark.parametrize("image_filling, max_image_tokens", [(False, None), (True, None), (True, 6)])
def test_ops_pass_opcheck(device, image_filling, max_image_tokens):
    # the fake (meta) implementation must give the real outputs' shapes, fillers included
    bitmaps = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 0]], dtype=torch.bool, device=device)
    args = (bitmaps, [2, 1], None, torch.tensor(True, device=device), "mean", True, False, image_filling, None,
            max_image_tokens, 9, "order", "reference")  # fmt: skip
    torch.library.opcheck(torch.ops.ogkernels.token_plan.default, args)
    plan = plan_tokens(bitmaps, [2, 1], Layout())
    place = (plan.candidates, plan.state, plan.mask_image, plan.mask_offsets, plan.cu_seqlens, plan.plain, 12, 3, "mean", True, False)
    torch.library.opcheck(torch.ops.ogkernels.place_tokens.default, place)

"""Token budgets inside og_tokens / OGFusion: caps hold, priorities are honoured, kept masks
stay in the reference's order, and a capped batch is sized without any host sync."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ogkernels import OGFusion, og_tokens
from ogkernels.budget import og_token_counts
from ogkernels.tools.profiling import HostSyncCounter
from ogkernels.varlen import BOM_ROW

from .strategies import mask_stacks


def mask_segments(out):
    """Per image: the list of masks' source-row tuples, in output order."""
    images = []
    for rows in torch.split(out.source_index[: int(out.cu_seqlens[-1])], out.lengths.tolist()):
        masks, current = [], None
        for r in rows.tolist():
            if r == BOM_ROW:
                current = []
                masks.append(current)
            elif current is not None:
                current.append(r)
        images.append([tuple(m) for m in masks])
    return images


@settings(max_examples=80)
@given(
    masks=st.lists(mask_stacks(max_masks=5, max_side=12), min_size=1, max_size=3),
    image_cap=st.one_of(st.none(), st.integers(1, 40)),
    batch_cap=st.one_of(st.none(), st.integers(3, 80)),
    priority=st.sampled_from(["order", "area", "score"]),
    seed=st.integers(0, 1000),
)
def test_caps_hold_and_kept_masks_keep_reference_order(masks, image_cap, batch_cap, priority, seed):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(len(masks), 16, 3, generator=g)
    bom = torch.randn(1, 3, generator=g)
    scores = [torch.rand(m.shape[0], generator=g) for m in masks]
    options = dict(max_image_tokens=image_cap, max_batch_tokens=batch_cap, drop_priority=priority, mask_scores=scores)
    if batch_cap is not None and batch_cap < len(masks):
        with pytest.raises(ValueError, match="max_batch_tokens"):
            og_tokens(features, masks, bom, **options)
        return
    full = og_tokens(features, masks, bom)
    capped = og_tokens(features, masks, bom, **options)
    lengths = capped.lengths
    if not any(bool(m.any()) for m in masks):  # the gate's plain path: V rows each, outside the caps
        assert lengths.tolist() == [16] * len(masks)
        return
    if image_cap is not None:
        assert int(lengths.max()) <= image_cap
        # a bound: the gate could have sent the batch down the plain path (V rows per image)
        assert int(lengths.max()) <= capped.max_seqlen <= max(image_cap, 16)
    if batch_cap is not None:
        assert int(lengths.sum()) <= batch_cap
    assert og_token_counts(masks, 16, **options) == lengths.tolist()
    # kept masks are a subsequence of the uncapped masks, in the same order
    for kept, every in zip(mask_segments(capped), mask_segments(full)):
        it = iter(every)
        assert all(any(k == e for e in it) for k in kept)
    # rows in use equal the uncapped rows they came from
    for b, rows in enumerate(capped.split()):
        assert torch.equal(rows[0], full.split()[b][0])  # the global row is never dropped


def test_priorities_choose_which_masks_go():
    features = torch.randn(1, 9, 2)
    bom = torch.zeros(1, 2)
    bitmaps = torch.zeros(3, 9, dtype=torch.bool)
    bitmaps[0, :2] = True  # 2 tokens
    bitmaps[1, :6] = True  # 6 tokens
    bitmaps[2, :3] = True  # 3 tokens
    scores = [torch.tensor([0.5, 0.7, 0.9])]
    cap = 1 + 7 + 4  # global + (BOM+6) + (BOM+3)
    for priority, kept in (("order", [2, 6]), ("area", [6, 3]), ("score", [6, 3])):
        out = og_tokens(features, [bitmaps], bom, max_image_tokens=cap, drop_priority=priority, mask_scores=scores)
        assert [len(m) for m in mask_segments(out)[0]] == kept, priority


def test_order_priority_stops_at_the_first_mask_that_does_not_fit():
    features = torch.randn(1, 9, 2)
    bitmaps = torch.zeros(3, 9, dtype=torch.bool)
    bitmaps[0, :2] = True
    bitmaps[1, :8] = True
    bitmaps[2, :1] = True
    out = og_tokens(features, [bitmaps], torch.zeros(1, 2), max_image_tokens=1 + 3 + 2)
    assert [len(m) for m in mask_segments(out)[0]] == [2]


@pytest.mark.triton
def test_capped_batch_needs_no_host_sync(triton_path):
    torch.manual_seed(0)
    features = torch.randn(2, 16, 8)
    bom = torch.randn(1, 8)
    masks = [torch.rand(4, 10, 10) < 0.3, torch.rand(3, 10, 10) < 0.3]
    with HostSyncCounter() as counter:
        out = og_tokens(features, masks, bom, max_batch_tokens=40)
    assert counter.syncs == 0, dict(counter.sync_ops)
    assert out.values.shape[0] == 40 and int(out.cu_seqlens[-1]) <= 40
    fusion = OGFusion(8, 12, max_image_tokens=20)  # the batch gate is evaluated on the device
    with HostSyncCounter() as counter:
        projected = fusion(features, masks)
    assert counter.syncs == 0, dict(counter.sync_ops)
    assert projected.values.shape == (40, 12)
    used = int(projected.cu_seqlens[-1])
    assert not projected.values[used:].any()
    for unbounded in (lambda: og_tokens(features, masks, bom), lambda: OGFusion(8, 12)(features, masks)):
        with HostSyncCounter() as counter:
            unbounded()
        assert counter.syncs == 1, dict(counter.sync_ops)  # the documented read of the total length


def test_budget_argument_errors():
    features = torch.randn(2, 4, 3)
    masks = [torch.ones(1, 2, 2, dtype=torch.bool)] * 2
    with pytest.raises(ValueError, match="max_image_tokens"):
        og_tokens(features, masks, max_image_tokens=3, global_view="full")
    with pytest.raises(ValueError, match="drop_priority"):
        og_tokens(features, masks, max_image_tokens=3, drop_priority="iou")
    with pytest.raises(ValueError, match=r"mask_scores"):
        og_tokens(features, masks, max_image_tokens=3, drop_priority="score")
    with pytest.raises(ValueError, match=r"mask_scores\[1\]"):
        og_tokens(features, masks, max_image_tokens=3, drop_priority="score", mask_scores=[torch.ones(1), torch.ones(2)])


def test_a_cap_keeps_the_means_of_the_kept_masks():
    # averaging: a kept mask's row is the mean of its own rows, capped or not
    g = torch.Generator().manual_seed(0)
    features = torch.randn(1, 9, 4, generator=g)
    bitmaps = torch.zeros(3, 9, dtype=torch.bool)
    bitmaps[0, :2] = True
    bitmaps[1, 2:8] = True
    bitmaps[2, 6:] = True
    bom = torch.randn(1, 4, generator=g)
    full = og_tokens(features, [bitmaps], bom, averaging=True)
    capped = og_tokens(features, [bitmaps], bom, averaging=True, max_image_tokens=1 + 2 + 2)
    assert capped.lengths.tolist() == [5] and full.lengths.tolist() == [7]
    assert torch.equal(capped.values[:5], full.values[:5])
    means = [features[0, bitmaps[i]].mean(0) for i in range(2)]
    torch.testing.assert_close(capped.values[[2, 4]], torch.stack(means), rtol=1e-6, atol=1e-6)


def test_score_priority_with_image_filling_ranks_the_filler_last():
    features = torch.randn(1, 9, 2)
    bitmaps = torch.zeros(2, 9, dtype=torch.bool)
    bitmaps[0, :2] = True  # 2 tokens, score 0.9
    bitmaps[1, 2:4] = True  # 2 tokens, score 0.1; the filler: the other 5 tokens
    scores = [torch.tensor([0.9, 0.1])]
    options = dict(image_filling=True, drop_priority="score", mask_scores=scores)
    full = og_tokens(features, [bitmaps], torch.zeros(1, 2), **options)
    assert [len(m) for m in mask_segments(full)[0]] == [2, 2, 5]
    for cap, kept in ((1 + 3 + 3 + 6, [2, 2, 5]), (1 + 3 + 6, [2, 2]), (1 + 3, [2])):  # the filler goes first, then 0.1
        out = og_tokens(features, [bitmaps], torch.zeros(1, 2), max_image_tokens=cap, **options)
        assert [len(m) for m in mask_segments(out)[0]] == kept, cap


@pytest.mark.parametrize("global_view, global_rows", [("mean", 1), ("full", 9), ("none", 0)])
@pytest.mark.parametrize("priority", ["order", "area", "score"])
def test_masks_filling_the_cap_exactly_are_kept_one_row_more_is_dropped(global_view, global_rows, priority):
    features = torch.randn(1, 9, 2)
    bitmaps = torch.zeros(2, 9, dtype=torch.bool)
    bitmaps[0, :2] = True  # BOM + 2 rows
    bitmaps[1, 3:9] = True  # BOM + 6 rows, lower score and larger: the one to drop by area too
    scores = [torch.tensor([0.9, 0.1])]
    options = dict(global_view=global_view, drop_priority=priority, mask_scores=scores)
    exact = global_rows + 3 + 7
    # one row short: "order" and "score" drop the second mask, "area" the smallest (then 7 rows fit)
    for cap, kept in ((exact, [2, 6]), (exact - 1, [2] if priority != "area" else [6])):
        out = og_tokens(features, [bitmaps], torch.zeros(1, 2), max_image_tokens=cap, **options)
        assert [len(m) for m in mask_segments(out)[0]] == kept, (cap, priority)
        assert int(out.lengths[0]) <= cap
        for batch_cap in (cap, cap + 1) if cap == exact else (cap,):
            batched = og_tokens(features, [bitmaps], torch.zeros(1, 2), max_batch_tokens=batch_cap, **options)
            assert [len(m) for m in mask_segments(batched)[0]] == kept, (batch_cap, priority)

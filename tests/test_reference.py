"""The reference pins the worked examples of ogkernels/reference/BEHAVIOUR.md (§2, §3, §7)."""

from __future__ import annotations

import torch

from ogkernels import reference as R


def test_phi_worked_example_4x6_to_9_bins():
    # §2: mask 4×6, True only in column 5 → tokens {1, 2, 4, 6, 8}
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, 5] = True
    out = R.downsample_mask_to_1d_counts(mask, 9)
    assert torch.nonzero(out).flatten().tolist() == [1, 2, 4, 6, 8]


def test_phi_fallback_3x3_ones_is_empty_then_cleaned_to_all_tokens():
    # §2 / §11.7: the training fallback (float32 all-ones 3×3) → all-False → all-True
    fallback = torch.ones(1, 3, 3, dtype=torch.float32)
    phi = R.downsample_mask_to_1d_counts(fallback[0], 576)
    assert not phi.any()
    kept = R.check_resised_image_masks([phi])
    assert len(kept) == 1 and kept[0].all()
    features = torch.randn(1, 576, 4)
    bom = torch.randn(1, 4)
    embedding = R.og_fusion_embed(features, [fallback.to(torch.bfloat16)], bom)
    assert embedding.lengths == [578]  # mean, BOM, all 576 rows


def test_phi_small_mask_threshold_regimes():
    # N >= 2V: a single pixel keeps its bin; N < V/2: always empty
    big = torch.zeros(40, 40, dtype=torch.bool)
    big[17, 3] = True
    assert R.downsample_mask_to_1d_counts(big, 100).sum() >= 1
    tiny = torch.ones(2, 2, dtype=torch.bool)
    assert not R.downsample_mask_to_1d_counts(tiny, 9).any()


def test_cleaning_rules():
    empty = torch.zeros(5, dtype=torch.bool)
    some = torch.tensor([1, 0, 1, 0, 0], dtype=torch.bool)
    assert R.check_resised_image_masks([]) == []
    assert R.check_resised_image_masks([empty])[0].all()
    kept = R.check_resised_image_masks([empty, some, empty])
    assert len(kept) == 1 and torch.equal(kept[0], some)
    assert R.check_resised_image_masks([empty, empty]) == []


def test_group_ranges_example():
    # §7: default layout, masks with k = (4, 2) → (0,1), (3,6), (8,9)
    assert R.group_ranges(576, [4, 2], R.ReferenceFlags()) == [(0, 1), (3, 6), (8, 9)]
    # no_masktoken: raw (start, end) pairs, masks only
    nmt = R.ReferenceFlags(no_masktoken=True)
    assert R.group_ranges(576, [4, 2], nmt) == [(0, 4), (4, 6)]
    # averaging with BOM: empty ranges
    avg = R.ReferenceFlags(averaging=True)
    assert R.group_ranges(576, [4, 2], avg) == [(0, 1), (3, 3), (5, 5)]


def test_flat_index_shift_quirk():
    tokens = torch.zeros(9, dtype=torch.bool)
    tokens[[1, 2, 4, 6, 8]] = True
    with_zero = torch.zeros(9, dtype=torch.bool)
    with_zero[[0, 1, 2]] = True
    shifted, kept = R.mask_flat_indices([tokens, with_zero])
    assert shifted.tolist() == [0, 1, 3, 5, 7]
    assert kept.tolist() == [0, 1, 2]


def test_default_layout_and_padding():
    torch.manual_seed(0)
    features = torch.randn(2, 9, 3)
    bom = torch.randn(1, 3)
    mask_a = torch.zeros(2, 4, 6, dtype=torch.bool)
    mask_a[0, :, 5] = True  # tokens {1,2,4,6,8}
    mask_a[1, 0, 0:2] = True  # flat pixels 0,1 → bin 0 (and nothing else)
    mask_b = torch.zeros(0, 4, 6, dtype=torch.bool)  # no masks: global row only
    emb = R.og_fusion_embed(features, [mask_a, mask_b], bom)
    assert emb.lengths == [1 + 1 + 5 + 1 + 1, 1]
    seq = emb.block[0]
    assert torch.allclose(seq[0], features[0].mean(0))
    assert torch.equal(seq[1], bom[0])
    assert torch.equal(seq[2:7], features[0, [1, 2, 4, 6, 8]])
    assert torch.equal(seq[7], bom[0]) and torch.equal(seq[8], features[0, 0])
    assert torch.equal(emb.block[1, 1:], torch.zeros(8, 3))


def test_catch_all_layout_inserts_bom_despite_no_masktoken():
    # §4 table: gv=F, agv=T, nmt=T still inserts BOMs (faithful quirk)
    features = torch.randn(1, 9, 3)
    bom = torch.randn(1, 3)
    mask = torch.ones(1, 3, 6, dtype=torch.bool)
    flags = R.ReferenceFlags(global_view=False, averaging_global_view=True, no_masktoken=True)
    emb = R.og_fusion_embed(features, [mask], bom, flags)
    assert emb.lengths == [1 + 9] and torch.equal(emb.block[0, 0], bom[0])


def test_gate_plain_path_when_no_mask_is_nonzero():
    torch.manual_seed(0)
    module = R.ReferenceOGFusion(6, 5)
    features = torch.randn(2, 9, 6)
    zero = torch.zeros(2, 4, 4, dtype=torch.bool)
    out, embedding = module(features, [zero, zero])
    assert embedding is None and out.shape == (2, 9, 5)
    assert torch.allclose(out, module.mm_projector(features))
    some = zero.clone()
    some[0, 1, 1] = True
    out, embedding = module(features, [zero, some])
    assert embedding is not None and out.shape[1] == max(embedding.lengths)

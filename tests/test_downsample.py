"""downsample_masks, the public API: batching, frames, input dtypes and argument checks.

The op itself (every backend against the reference operators) is tested in
``tests/ops/test_phi.py``. Tolerance: none — Phi is integer arithmetic.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ogkernels
from ogkernels import PackedMasks, downsample_masks
from ogkernels import reference as R

from .strategies import mask_stacks, token_counts


def reference_flat(masks: torch.Tensor, v: int) -> torch.Tensor:
    return torch.stack([R.downsample_mask_to_1d_counts(m, v) for m in masks])


@settings(max_examples=60)
@given(images=st.lists(mask_stacks(max_masks=3, max_side=20), min_size=1, max_size=4), v=token_counts)
def test_batch_of_images_is_the_concatenation(images, v):
    mixed = [PackedMasks.from_dense(m) if i % 2 else m for i, m in enumerate(images)]
    expected = torch.cat([reference_flat(m, v) if m.shape[0] else torch.zeros(0, v, dtype=torch.bool) for m in images])
    assert torch.equal(downsample_masks(mixed, v), expected)


def test_spatial_meaning_of_patch_mode():
    # A tall bar: flat mode selects ~V·rows/H tokens, patch mode one column of cells.
    mask = torch.zeros(1, 480, 640, dtype=torch.bool)
    mask[0, 100:300, 310:330] = True
    flat = downsample_masks(mask, 576)
    patch = downsample_masks(mask, (24, 24), mode="patch")
    assert int(flat.sum()) == 240  # §2: 576·200/480 tokens whatever the width
    cells = patch.view(24, 24).nonzero()
    assert set(cells[:, 1].tolist()) == {11, 12}  # columns 310..329 of 640 → cells 11, 12
    assert set(cells[:, 0].tolist()) == set(range(5, 15))  # rows 100..299 of 480 → 5..14
    assert int(patch.sum()) == 20


def test_pad_frame_matches_padded_copy():
    torch.manual_seed(3)
    masks = torch.rand(3, 30, 50) < 0.2
    padded = torch.zeros(3, 50, 50, dtype=torch.bool)
    padded[:, 10:40] = masks  # expand2square: (50 - 30) // 2 rows on top
    got = downsample_masks(masks, (7, 7), mode="patch", frame="pad")
    assert torch.equal(got, downsample_masks(padded, (7, 7), mode="patch"))


def test_uint8_and_float_masks_accepted():
    torch.manual_seed(0)
    masks = torch.rand(2, 9, 11) < 0.3
    expected = downsample_masks(masks, 16)
    assert torch.equal(downsample_masks(masks.to(torch.uint8), 16), expected)
    assert torch.equal(downsample_masks(masks.to(torch.bfloat16), 16), expected)


def test_empty_inputs():
    assert downsample_masks([], 16).shape == (0, 16)
    assert downsample_masks(torch.zeros(0, 5, 5, dtype=torch.bool), 16).shape == (0, 16)


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: downsample_masks(torch.zeros(5, 5, dtype=torch.bool), 9), ValueError, ["masks", "(N, H, W)"]),
        (lambda: downsample_masks(torch.zeros(1, 0, 5, dtype=torch.bool), 9), ValueError, ["masks", "H >= 1"]),
        (lambda: downsample_masks(torch.full((1, 3, 3), 0.5), 9), ValueError, ["masks", "{0, 1}"]),
        (lambda: downsample_masks(torch.zeros(1, 3, 3, dtype=torch.bool), 0), ValueError, ["grid", "V >= 1"]),
        (lambda: downsample_masks(torch.zeros(1, 3, 3, dtype=torch.bool), 10, mode="patch"), ValueError, ["grid", "square"]),
        (lambda: downsample_masks(torch.zeros(1, 3, 3, dtype=torch.bool), 9, alpha=0), ValueError, ["alpha", "> 0"]),
        (lambda: downsample_masks(torch.zeros(1, 3, 3, dtype=torch.bool), 9, alpha=-1.0), ValueError, ["alpha"]),
        (lambda: downsample_masks(torch.zeros(1, 3, 3, dtype=torch.bool), 9, mode="2d"), ValueError, ["mode", "'flat'"]),
        (lambda: downsample_masks(torch.zeros(1, 3, 3, dtype=torch.bool), 9, frame="pad"), ValueError, ["frame", "mode='patch'"]),
        (lambda: downsample_masks("masks", 9), TypeError, ["masks"]),
        (lambda: downsample_masks([torch.zeros(1, 3, 3, dtype=torch.bool), "x"], 9), TypeError, ["masks[1]"]),
        (lambda: downsample_masks(torch.zeros(1, 3, 3, dtype=torch.bool), 9.0), TypeError, ["grid"]),
    ],
)
def test_bad_input_names_the_argument(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value)


def test_mixed_devices_rejected():
    masks = [torch.zeros(1, 3, 3, dtype=torch.bool), torch.zeros(1, 3, 3, dtype=torch.bool, device="meta")]
    with pytest.raises(ValueError, match=r"masks\[1\].*cpu"):
        downsample_masks(masks, 9)


def test_packed_masks_validation():
    with pytest.raises(ValueError, match="PackedMasks.bits"):
        PackedMasks(torch.zeros(2, 3, dtype=torch.uint8), 5, 5)
    with pytest.raises(TypeError, match="uint8"):
        PackedMasks(torch.zeros(2, 4, dtype=torch.int32), 5, 5)
    masks = torch.rand(3, 7, 9) < 0.5
    assert torch.equal(PackedMasks.from_dense(masks).unpack(), masks)
    none = torch.zeros(0, 7, 9, dtype=torch.bool)
    assert torch.equal(PackedMasks.from_dense(none).unpack(), none)


def test_public_exports():
    assert ogkernels.downsample_masks is downsample_masks

"""The Triton kernels under the interpreter (small shapes), against the reference, and their
ahead-of-time compile for sm_80 / sm_90.

The interpreter runs about a thousand program instances per second, so these cases are small
and few; the PyTorch paths carry the exhaustive property tests.
Tolerances: Phi and row placement are exact (bit-for-bit); gradients are sums of the same
float32 terms in a fixed order (deterministic, compared at 1e-6 relative to autograd).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ogkernels import PackedMasks, downsample_masks
from ogkernels import reference as R
from ogkernels.tools.audit import audit_config, kernel_configs
from ogkernels.ops.gather_rows import gather_rows
from ogkernels.tokens import og_tokens

from .strategies import mask_stacks

pytestmark = pytest.mark.triton


@settings(max_examples=12)
@given(
    images=st.lists(mask_stacks(max_masks=2, max_side=18), min_size=1, max_size=3),
    v=st.sampled_from([1, 7, 9, 16]),
    packed=st.lists(st.booleans(), min_size=3, max_size=3),
)
def test_phi_flat_kernel_matches_reference(triton_path, images, v, packed):
    batch = [PackedMasks.from_dense(m) if p else m for m, p in zip(images, packed)]
    expected = [R.downsample_mask_to_1d_counts(mask, v) for m in images for mask in m]
    got = downsample_masks(batch, v)
    assert got.shape == (len(expected), v)
    if expected:
        assert torch.equal(got, torch.stack(expected))


@settings(max_examples=10)
@given(
    masks=mask_stacks(min_masks=1, max_masks=2, max_side=20),
    grid=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    alpha=st.sampled_from([0.5, 2, 5]),
    frame=st.sampled_from(["none", "pad", "crop"]),
    packed=st.booleans(),
)
def test_phi_patch_kernel_matches_oracle(triton_path, masks, grid, alpha, frame, packed):
    expected = torch.stack([R.downsample_mask_2d_counts(m, grid, alpha, frame) for m in masks])
    source = PackedMasks.from_dense(masks) if packed else masks
    got = downsample_masks(source, grid, alpha=alpha, mode="patch", frame=frame)
    assert torch.equal(got, expected)


def test_phi_kernel_long_bins_and_misaligned_tensor(triton_path):
    # bins longer than one word chunk (N/V = 300 px) and a view starting at an odd byte
    torch.manual_seed(1)
    storage = torch.rand(1 + 2 * 60 * 50) < 0.02
    masks = storage[1:].view(2, 60, 50)
    expected = torch.stack([R.downsample_mask_to_1d_counts(m, 10) for m in masks])
    assert torch.equal(downsample_masks(masks, 10), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_gather_rows_kernel_forward_and_backward(triton_path, dtype):
    torch.manual_seed(0)
    tables = [torch.randn(rows, 40, dtype=dtype, requires_grad=True) for rows in (12, 3, 1)]
    table_index = torch.tensor([0, 0, 1, 2, 0, -1, 0, 2, 1, 0, 0, 0], dtype=torch.int32)
    row_index = torch.tensor([3, 3, 2, 0, 11, 0, 5, 0, 0, 3, 7, 0])
    out = gather_rows(tables, table_index, row_index)
    expected = torch.stack(
        [tables[t][r] if t >= 0 else torch.zeros(40, dtype=dtype) for t, r in zip(table_index.tolist(), row_index.tolist())]
    )
    assert torch.equal(out, expected)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, tables, grad)
    ref = torch.autograd.grad(expected, tables, grad.to(torch.float64).to(dtype))
    for g, r in zip(got, ref):
        assert torch.allclose(g.double(), r.double(), rtol=2e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-6, atol=1e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-6)


@settings(max_examples=25)
@given(
    images=st.lists(st.integers(0, 4), min_size=1, max_size=4),
    v=st.sampled_from([1, 5, 16, 33]),
    global_view=st.sampled_from(["mean", "full", "none"]),
    bom=st.booleans(),
    averaging=st.booleans(),
    max_masks=st.sampled_from([None, 1, 2]),
    density=st.sampled_from([0.0, 0.1, 0.5]),
    seed=st.integers(0, 1000),
)
def test_token_plan_kernels_match_the_pytorch_plan(
    monkeypatch, images, v, global_view, bom, averaging, max_masks, density, seed
):
    from ogkernels.ops.place_tokens import placement_indices
    from ogkernels.ops.token_plan import Layout, plan_tokens

    g = torch.Generator().manual_seed(seed)
    bitmaps = torch.rand(sum(images), v, generator=g) < density
    layout = Layout(global_view, bom, averaging, False, max_masks)
    monkeypatch.delenv("OGKERNELS_FORCE_TRITON", raising=False)
    expected = plan_tokens(bitmaps, images, layout)
    want = placement_indices(expected, int(expected.cu_seqlens[-1]) + 3)
    monkeypatch.setenv("OGKERNELS_FORCE_TRITON", "1")
    got = plan_tokens(bitmaps, images, layout)
    assert got.state is not None  # the Triton plan ran
    for field in ("lengths", "cu_seqlens", "keep", "token_counts"):
        assert torch.equal(getattr(got, field), getattr(expected, field)), field
    kept = expected.keep
    assert torch.equal(got.mask_offsets[kept], expected.mask_offsets[kept])
    for ours, theirs in zip(placement_indices(got, int(expected.cu_seqlens[-1]) + 3), want):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("global_view", ["mean", "full", "none"])
def test_og_tokens_triton_matches_reference(triton_path, global_view):
    torch.manual_seed(0)
    features = torch.randn(2, 9, 16)
    bom = torch.randn(1, 16)
    masks = [torch.rand(3, 6, 7) < 0.3, torch.zeros(1, 5, 5, dtype=torch.bool)]
    flags = R.ReferenceFlags(global_view=global_view != "none", averaging_global_view=global_view == "mean")
    ref_x, our_x = features.clone().requires_grad_(True), features.clone().requires_grad_(True)
    ref_b, our_b = bom.clone().requires_grad_(True), bom.clone().requires_grad_(True)
    ref = R.og_fusion_tokens(ref_x, masks, ref_b, flags)
    out = og_tokens(our_x, masks, our_b, global_view=global_view)
    assert out.lengths.tolist() == ref.lengths
    assert torch.equal(out.to_padded(), ref.block)
    # the backward's CSR segment-sum kernel against the reference's autograd (fp32: 1e-5)
    weights = torch.randn(out.values.shape)
    ref_loss = sum((seq * w).sum() for seq, w in zip(ref.sequences, torch.split(weights, ref.lengths)))
    expected = torch.autograd.grad(ref_loss, [ref_x, ref_b])
    got = torch.autograd.grad((out.values * weights).sum(), [our_x, our_b])
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def static_audit() -> dict[tuple[str, int], dict]:
    """``python -m ogkernels.tools.audit --json`` in a process without the interpreter (a Triton
    function cannot be both interpreted and compiled in one process)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "OGKERNELS_FORCE_TRITON")}
    result = subprocess.run(
        [sys.executable, "-m", "ogkernels.tools.audit", "--json"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {(r["name"], r["arch"]): r for r in json.loads(result.stdout)}


@pytest.mark.slow
@pytest.mark.parametrize("config", kernel_configs(), ids=lambda c: c.name)
@pytest.mark.parametrize("arch", [80, 90])
def test_kernels_compile_without_spills(static_audit, config, arch):
    audit = static_audit[(config.name, arch)]
    assert 0 < audit["registers"] <= 255
    assert audit["spill_store_bytes"] == 0 and audit["spill_load_bytes"] == 0, audit
    if config.expect_128bit:
        assert max(audit["load_bits"]) == 128 and max(audit["store_bits"]) == 128, audit


def test_audit_refuses_the_interpreter():
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        audit_config(kernel_configs()[0], 90)

"""og_tokens (PyTorch path) against the reference embedder.

Tolerances: gathered and BOM rows are copies (bit-exact in every dtype); the mean row is the
same torch reduction as the reference (compared exactly); gradients are sums of the same
terms in another order — float32 accumulation in ours, the feature dtype in the reference:
fp64 1e-12, fp32 1e-5, bf16/fp16 a few units of the dtype's precision (stated per test).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ogkernels import reference as R
from ogkernels.budget import og_token_counts
from ogkernels.tokens import og_token_lengths, og_tokens
from ogkernels.varlen import BOM_ROW, GLOBAL_ROW, PAD_ROW

from .oracle import flags_for
from .strategies import mask_stacks

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
GRAD_TOL = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (3e-2, 3e-2),
    torch.float16: (4e-3, 4e-3),
}




options = st.fixed_dictionaries(
    {
        "global_view": st.sampled_from(["mean", "full", "none"]),
        "no_masktoken": st.booleans(),
        "image_filling": st.booleans(),
        "averaging": st.booleans(),
        "max_masks": st.sampled_from([None, 1, 2]),
    }
)


@st.composite
def batches(draw, max_batch=3):
    batch = draw(st.integers(1, max_batch))
    v = draw(st.sampled_from([1, 4, 9, 16, 25]))
    width = draw(st.sampled_from([1, 3, 8]))
    masks = [draw(mask_stacks(max_masks=4, max_side=14)) for _ in range(batch)]
    seed = draw(st.integers(0, 2**31 - 1))
    return batch, v, width, masks, seed


def inputs(data, dtype):
    """Seeded features ``(B, V, F)``, BOM ``(1, F)`` in ``dtype``, and the generator."""
    batch, v, width, _, seed = data
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, v, width, generator=g).to(dtype)
    return features, torch.randn(1, width, generator=g).to(dtype), g


@settings(max_examples=250)
@given(data=batches(), opts=options, dtype=st.sampled_from(DTYPES))
def test_values_and_lengths_match_reference(data, opts, dtype):
    masks, v, (features, bom, _) = data[3], data[1], inputs(data, dtype)
    ref = R.og_fusion_tokens(features, masks, bom, flags_for(**opts))
    out = og_tokens(features, masks, bom, **opts)
    assert out.lengths.tolist() == ref.lengths
    assert out.cu_seqlens.dtype == torch.int32 and out.max_seqlen == max(ref.lengths)
    assert out.values.dtype == dtype
    if opts["averaging"]:
        # mask means: float32 accumulation in both, rounded once to the dtype
        tol = {torch.bfloat16: 1e-2, torch.float16: 1e-3}.get(dtype, 1e-5)
        assert torch.allclose(out.to_padded().double(), ref.block.double(), rtol=tol, atol=tol)
    else:
        assert torch.equal(out.to_padded(), ref.block)
    assert og_token_lengths(masks, v, **opts).tolist() == ref.lengths
    assert og_token_counts(masks, v, **opts) == ref.lengths


@settings(max_examples=60)
@given(data=batches(), opts=options, dtype=st.sampled_from(DTYPES))
def test_gradients_match_reference_autograd(data, opts, dtype):
    masks, (features, bom, g) = data[3], inputs(data, dtype)
    ref_x = features.clone().requires_grad_(True)
    ref_b = bom.clone().requires_grad_(True)
    our_x = features.clone().requires_grad_(True)
    our_b = bom.clone().requires_grad_(True)
    ref = R.og_fusion_tokens(ref_x, masks, ref_b, flags_for(**opts))
    out = og_tokens(our_x, masks, our_b, **opts)
    weights = torch.randn(out.values.shape, generator=g).to(dtype)
    ref_loss = sum((seq * w).sum() for seq, w in zip(ref.sequences, torch.split(weights, ref.lengths)))
    if not torch.is_tensor(ref_loss) or not ref_loss.requires_grad:
        return  # nothing in the output depends on the inputs (empty layout)
    ref_grads = torch.autograd.grad(ref_loss, [ref_x, ref_b], allow_unused=True)
    our_grads = torch.autograd.grad((out.values * weights).sum(), [our_x, our_b], allow_unused=True)
    rtol, atol = GRAD_TOL[dtype]
    for ours, theirs in zip(our_grads, ref_grads):
        theirs = torch.zeros_like(ours) if theirs is None and ours is not None else theirs
        if ours is None:
            assert theirs is None or not theirs.any()
            continue
        scale = 1 + theirs.double().abs().max()
        assert torch.allclose(ours.double(), theirs.double(), rtol=rtol, atol=atol * scale)


def test_gradcheck_float64():
    torch.manual_seed(0)
    masks = [torch.rand(3, 5, 6) < 0.4, torch.ones(2, 4, 4, dtype=torch.bool)]
    features = torch.randn(2, 9, 3, dtype=torch.float64, requires_grad=True)
    bom = torch.randn(1, 3, dtype=torch.float64, requires_grad=True)
    for opts in ({}, {"global_view": "full"}, {"averaging": True}, {"image_filling": True}):
        assert torch.autograd.gradcheck(lambda x, b: og_tokens(x, masks, b, **opts).values, (features, bom))


def test_deterministic_values_and_gradients():
    torch.manual_seed(0)
    masks = [torch.rand(6, 20, 20) < 0.5 for _ in range(3)]
    features = torch.randn(3, 16, 64)
    bom = torch.randn(1, 64)
    weights = torch.randn(1000, 64)
    results = []
    for _ in range(3):
        x = features.clone().requires_grad_(True)
        b = bom.clone().requires_grad_(True)
        out = og_tokens(x, masks, b)
        (out.values * weights[: out.values.shape[0]]).sum().backward()
        results.append((out.values, x.grad, b.grad))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_source_index_codes_and_overlapping_rows():
    features = torch.randn(1, 4, 2)
    bom = torch.randn(1, 2)
    masks = [torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)]  # bitmaps (N, V)
    out = og_tokens(features, masks, bom)
    assert out.source_index.tolist() == [GLOBAL_ROW, BOM_ROW, 0, 1, BOM_ROW, 1, 2]
    assert torch.equal(out.values[3], out.values[5])  # token 1 repeats across masks


def test_image_without_masks_and_all_empty_masks():
    features = torch.randn(3, 9, 4)
    bom = torch.randn(1, 4)
    masks = [None, torch.zeros(0, 6, 6, dtype=torch.bool), torch.zeros(3, 6, 6, dtype=torch.bool)]
    out = og_tokens(features, masks, bom, gate=False)  # the embedder alone: global rows only
    assert out.lengths.tolist() == [1, 1, 1]
    gated = og_tokens(features, masks, bom)  # no mask has a pixel: the plain path, V rows each
    assert gated.lengths.tolist() == [9, 9, 9] and torch.equal(gated.values, features.reshape(27, 4))
    single_empty = og_tokens(features[:1], [torch.zeros(1, 6, 6, dtype=torch.bool)], bom, gate=False)
    assert single_empty.lengths.tolist() == [1 + 1 + 9]


def test_bom_none_leaves_zero_rows():
    features = torch.randn(1, 4, 3)
    out = og_tokens(features, [torch.ones(1, 2, 2, dtype=torch.bool)])
    assert out.source_index[1] == BOM_ROW and not out.values[1].any()


def test_max_tokens_bound_removes_the_sync_and_pads():
    torch.manual_seed(0)
    features = torch.randn(2, 9, 5)
    bom = torch.randn(1, 5)
    masks = [torch.rand(2, 6, 6) < 0.3, torch.rand(3, 6, 6) < 0.3]
    exact = og_tokens(features, masks, bom)
    total = int(exact.cu_seqlens[-1])
    bounded = og_tokens(features, masks, bom, max_tokens=total + 7)
    assert bounded.values.shape[0] == total + 7
    assert torch.equal(bounded.values[:total], exact.values)
    assert not bounded.values[total:].any()
    assert (bounded.source_index[total:] == PAD_ROW).all()
    assert torch.equal(bounded.cu_seqlens, exact.cu_seqlens)
    assert bounded.max_seqlen >= exact.max_seqlen
    with pytest.raises(ValueError, match="max_tokens"):
        og_tokens(features, masks, bom, max_tokens=total - 1)


def test_max_masks_keeps_the_first_masks():
    features = torch.randn(1, 4, 2)
    bitmaps = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    out = og_tokens(features, [bitmaps], torch.zeros(1, 2), max_masks=2)
    assert out.source_index.tolist() == [GLOBAL_ROW, BOM_ROW, 0, BOM_ROW, 1]


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda x, m, b: og_tokens(x[0], m, b), ValueError, ["features", "(B, V, F)"]),
        (lambda x, m, b: og_tokens(x.int(), m, None), TypeError, ["features", "dtype"]),
        (lambda x, m, b: og_tokens(x, m[:1], b), ValueError, ["masks", "2 entries"]),
        (lambda x, m, b: og_tokens(x, "m", b), TypeError, ["masks"]),
        (lambda x, m, b: og_tokens(x, [m[0], torch.zeros(2, 8, dtype=torch.bool)], b), ValueError, ["masks[1]", "V = 9"]),
        (lambda x, m, b: og_tokens(x, [m[0], torch.zeros(1, 3, 3, device="meta")], b), ValueError, ["masks[1]", "cpu"]),
        (lambda x, m, b: og_tokens(x, m, torch.zeros(1, 5)), ValueError, ["bom_token", "(1, 4)"]),
        (lambda x, m, b: og_tokens(x, m, b.double()), TypeError, ["bom_token", "dtype"]),
        (lambda x, m, b: og_tokens(x, m, b, global_view="avg"), ValueError, ["global_view"]),
        (lambda x, m, b: og_tokens(x, m, b, max_masks=0), ValueError, ["max_masks"]),
        (lambda x, m, b: og_tokens(x, m, b, max_tokens=2**31), ValueError, ["max_tokens", "int32"]),
        (lambda x, m, b: og_tokens(x, m, b, mode="patch", grid=(2, 3)), ValueError, ["grid", "V = 9"]),
    ],
)
def test_bad_input_names_the_argument(call, error, words):
    features = torch.randn(2, 9, 4)
    masks = [torch.ones(1, 3, 3, dtype=torch.bool), torch.ones(2, 3, 3, dtype=torch.bool)]
    bom = torch.randn(1, 4)
    with pytest.raises(error) as info:
        call(features, masks, bom)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("averaging", [False, True])
@pytest.mark.parametrize("global_view", ["mean", "full", "none"])
def test_every_backend_matches_the_reference(backend, device, global_view, averaging):
    # the Triton path on the CPU runs under the interpreter; averaging uses all four tables
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 9, 16, generator=g)
    bom = torch.randn(1, 16, generator=g)
    masks = [torch.rand(3, 6, 7, generator=g) < 0.3, torch.zeros(1, 5, 5, dtype=torch.bool)]
    flags = flags_for(global_view=global_view, averaging=averaging)
    ref_x, ref_b = features.clone().requires_grad_(True), bom.clone().requires_grad_(True)
    ref = R.og_fusion_tokens(ref_x, masks, ref_b, flags)
    our_x, our_b = features.to(device).requires_grad_(True), bom.to(device).requires_grad_(True)
    out = og_tokens(our_x, [m.to(device) for m in masks], our_b, global_view=global_view, averaging=averaging)
    assert out.lengths.tolist() == ref.lengths
    torch.testing.assert_close(out.to_padded().cpu(), ref.block, rtol=1e-6, atol=1e-6)  # means: fp32 sums
    weights = torch.randn(out.values.shape, generator=g)
    ref_loss = sum((seq * w).sum() for seq, w in zip(ref.sequences, torch.split(weights, ref.lengths)))
    expected = torch.autograd.grad(ref_loss, [ref_x, ref_b])
    got = torch.autograd.grad((out.values * weights.to(device)).sum(), [our_x, our_b])
    for ours, theirs in zip(got, expected):
        torch.testing.assert_close(ours.cpu(), theirs, rtol=1e-5, atol=1e-5)

"""``varlen_attention``: the PyTorch fallback against a naive float64 per-sequence oracle.

Tolerances. The fallback computes in float32 and rounds once to the input dtype, so against a
float64 oracle fed the same (already rounded) inputs:
  - float32: atol = rtol = 1e-5 (float32 accumulation over <= 64 keys);
  - bfloat16: rtol = 2**-8 (half an ulp, the final rounding), atol = 1e-5;
  - float16:  rtol = 2**-11 (half an ulp), atol = 1e-5.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ogkernels.attention import varlen_attention, varlen_attention_torch

TOLERANCES = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=2**-8, atol=1e-5),
    torch.float16: dict(rtol=2**-11, atol=1e-5),
}


def cu(lengths: list[int]) -> torch.Tensor:
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32)


def naive(q, k, v, lens_q, lens_k, causal, scale=None):
    """Per sequence, per head, float64: softmax(q kᵀ·scale + bottom-right causal mask) v.
    Rows that see no key are zero."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    groups = q.shape[1] // k.shape[1]
    out = torch.zeros(q.shape, dtype=torch.float64)
    sq = sk = 0
    for lq, lk in zip(lens_q, lens_k):
        for h in range(q.shape[1]):
            qh = q[sq : sq + lq, h].double()
            kh = k[sk : sk + lk, h // groups].double()
            vh = v[sk : sk + lk, h // groups].double()
            for i in range(lq):
                allowed = torch.ones(lk, dtype=torch.bool)
                if causal:
                    allowed = torch.arange(lk) <= i + lk - lq
                if not allowed.any():
                    continue
                scores = (kh @ qh[i]) * scale
                scores = scores.masked_fill(~allowed, float("-inf"))
                out[sq + i, h] = torch.softmax(scores, 0) @ vh
        sq += lq
        sk += lk
    return out


def make(lens_q, lens_k, heads, heads_k, dim, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(sum(lens_q), heads, dim, generator=g).to(dtype)
    k = torch.randn(sum(lens_k), heads_k, dim, generator=g).to(dtype)
    v = torch.randn(sum(lens_k), heads_k, dim, generator=g).to(dtype)
    return q, k, v


def run(q, k, v, lens_q, lens_k, causal, scale=None):
    return varlen_attention(
        q, k, v, cu(lens_q), cu(lens_k), max(lens_q, default=0), max(lens_k, default=0),
        causal=causal, softmax_scale=scale,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
def test_matches_naive_equal_lengths_gqa(dtype, causal):
    lens = [5, 1, 17, 9]
    q, k, v = make(lens, lens, heads=4, heads_k=2, dim=16, dtype=dtype)
    out = run(q, k, v, lens, lens, causal)
    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(out.double(), naive(q, k, v, lens, lens, causal), **TOLERANCES[dtype])


@pytest.mark.parametrize("causal", [False, True])
def test_q_shorter_and_longer_than_k_bottom_right(causal):
    # q shorter than k (decode-like), q longer than k (rows that see nothing), empty sequences.
    lens_q = [3, 7, 0, 4, 2]
    lens_k = [8, 2, 5, 0, 2]
    q, k, v = make(lens_q, lens_k, heads=6, heads_k=3, dim=8, dtype=torch.float32, seed=1)
    out = run(q, k, v, lens_q, lens_k, causal)
    torch.testing.assert_close(out.double(), naive(q, k, v, lens_q, lens_k, causal), **TOLERANCES[torch.float32])
    if causal:
        # sequence 1: 7 queries, 2 keys → the first 5 queries see no key → zeros
        assert torch.count_nonzero(out[3:8]) == 0 and torch.count_nonzero(out[8:10]) > 0
    # sequence 3 has no key at all → zeros either way
    assert torch.count_nonzero(out[10:14]) == 0


def test_causal_is_bottom_right_not_top_left():
    # One query against 4 keys: bottom-right causal lets it see all 4 keys (top-left: only 1).
    q, k, v = make([1], [4], heads=1, heads_k=1, dim=4, dtype=torch.float64, seed=2)
    out = run(q, k, v, [1], [4], causal=True)
    full = run(q, k, v, [1], [4], causal=False)
    torch.testing.assert_close(out, full, rtol=0, atol=1e-12)
    top_left = v[0:1]  # what a top-left mask would give: the first value row only
    assert not torch.allclose(out, top_left)


def test_softmax_scale_and_sequences_are_isolated():
    lens = [6, 6]
    q, k, v = make(lens, lens, heads=2, heads_k=2, dim=8, dtype=torch.float32, seed=3)
    out = run(q, k, v, lens, lens, causal=False, scale=0.3)
    torch.testing.assert_close(out.double(), naive(q, k, v, lens, lens, False, scale=0.3), **TOLERANCES[torch.float32])
    # Changing sequence 1 must not change sequence 0's output.
    k2 = k.clone()
    k2[6:] = torch.randn(6, 2, 8)
    out2 = run(q, k2, v, lens, lens, causal=False, scale=0.3)
    assert torch.equal(out[:6], out2[:6]) and not torch.allclose(out[6:], out2[6:])


def test_gradients_match_autograd_of_naive():
    lens_q, lens_k = [3, 4], [5, 4]
    q, k, v = make(lens_q, lens_k, heads=4, heads_k=2, dim=4, dtype=torch.float64, seed=4)
    for t in (q, k, v):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b, c: varlen_attention_torch(a, b, c, cu(lens_q), cu(lens_k), 4, 5, causal=True),
        (q, k, v),
    )


@settings(max_examples=30, deadline=None)
@given(
    data=st.data(),
    batch=st.integers(0, 4),
    heads_k=st.sampled_from([1, 2]),
    groups=st.sampled_from([1, 2, 3]),
    dim=st.sampled_from([1, 4, 8]),
    causal=st.booleans(),
    same_lengths=st.booleans(),
)
def test_hypothesis_shapes(data, batch, heads_k, groups, dim, causal, same_lengths):
    lens_q = data.draw(st.lists(st.integers(0, 9), min_size=batch, max_size=batch))
    lens_k = lens_q if same_lengths else data.draw(st.lists(st.integers(0, 9), min_size=batch, max_size=batch))
    q, k, v = make(lens_q, lens_k, heads=heads_k * groups, heads_k=heads_k, dim=dim, dtype=torch.float32)
    out = run(q, k, v, lens_q, lens_k, causal)
    assert out.shape == q.shape
    torch.testing.assert_close(out.double(), naive(q, k, v, lens_q, lens_k, causal), **TOLERANCES[torch.float32])


def _valid():
    q, k, v = make([3, 2], [3, 2], heads=4, heads_k=2, dim=8, dtype=torch.float32)
    return dict(q=q, k=k, v=v, cu_seqlens_q=cu([3, 2]), cu_seqlens_k=cu([3, 2]), max_seqlen_q=3, max_seqlen_k=3)


@pytest.mark.parametrize(
    "change, error, words",
    [
        (dict(cu_seqlens_q=torch.tensor([0, 3, 5])), TypeError, ["cu_seqlens_q", "int32", "int64"]),
        (dict(cu_seqlens_k=torch.tensor([[0, 3, 5]], dtype=torch.int32)), ValueError, ["cu_seqlens_k", "1-D"]),
        (dict(cu_seqlens_k=cu([3])), ValueError, ["cu_seqlens_k", "3 entries"]),
        (dict(cu_seqlens_q=cu([3, 1])), ValueError, ["cu_seqlens_q", "last entry", "(5)", "4"]),
        (dict(cu_seqlens_k=torch.tensor([1, 3, 5], dtype=torch.int32)), ValueError, ["cu_seqlens_k", "first entry"]),
        (dict(cu_seqlens_k=torch.tensor([0, 6, 5], dtype=torch.int32)), ValueError, ["cu_seqlens_k", "non-decreasing"]),
        (dict(max_seqlen_q=2), ValueError, ["max_seqlen_q", "longest", "(3)"]),
        (dict(max_seqlen_k=3.0), TypeError, ["max_seqlen_k", "int"]),
        (dict(q=torch.zeros(5, 3, 8)), ValueError, ["k", "dividing nheads=3"]),
        (dict(q=torch.zeros(5, 4)), ValueError, ["q", "3-D"]),
        (dict(v=torch.zeros(5, 2, 4)), ValueError, ["v", "shape (5, 2, 8)"]),
        (dict(k=torch.zeros(5, 2, 8, dtype=torch.float64)), TypeError, ["k", "float32"]),
        (dict(q=torch.zeros(5, 4, 8, dtype=torch.int64)), TypeError, ["q", "float16"]),
        (dict(k=torch.zeros(5, 2, 8, device="meta")), ValueError, ["k", "device"]),
        (dict(cu_seqlens_q=[0, 3, 5]), TypeError, ["cu_seqlens_q", "torch.Tensor"]),
    ],
)
def test_bad_arguments_name_the_argument(change, error, words):
    args = _valid()
    args.update(change)
    with pytest.raises(error) as info:
        varlen_attention(**args)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_bad_softmax_scale():
    with pytest.raises(ValueError, match="softmax_scale"):
        varlen_attention(**_valid(), softmax_scale=float("nan"))
    with pytest.raises(TypeError, match="softmax_scale"):
        varlen_attention(**_valid(), softmax_scale="0.1")


def test_import_needs_no_flash_attn():
    code = "import sys, ogkernels, ogkernels.attention; assert 'flash_attn' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash-attn path needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_matches_fallback(dtype):
    lens_q, lens_k = [5, 33, 1, 64], [9, 33, 4, 70]
    q, k, v = (t.cuda() for t in make(lens_q, lens_k, heads=8, heads_k=2, dim=64, dtype=dtype))
    args = (q, k, v, cu(lens_q).cuda(), cu(lens_k).cuda(), 64, 70)
    for causal in (False, True):
        fast = varlen_attention(*args, causal=causal)
        slow = varlen_attention_torch(*args, causal=causal)
        # flash-attn accumulates in fp32 too; both round once: allow two half-ulps.
        tol = dict(rtol=2**-7, atol=1e-3) if dtype == torch.bfloat16 else dict(rtol=2**-10, atol=1e-4)
        torch.testing.assert_close(fast.float(), slow.float(), **tol)

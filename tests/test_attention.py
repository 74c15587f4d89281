"""``varlen_attention``: the PyTorch fallback against a naive float64 per-sequence oracle, the
backend choice, the adapters of the two flash backends, and (on CUDA) every backend against
the fallback.

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

from ogkernels import attention as A
from ogkernels.attention import attention_backend, usable_backends, varlen_attention, varlen_attention_torch

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



# ----------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_takes_the_exact_path(dtype):
    q = torch.zeros(3, 2, 8, dtype=dtype)
    assert usable_backends(q) == ("torch",)
    assert attention_backend(q) == "torch" == attention_backend(q, backend="torch")


@pytest.mark.parametrize("backend", ["flash_attn", "torch_varlen"])
def test_a_backend_that_cannot_run_is_refused(backend):
    with pytest.raises(ValueError) as info:
        varlen_attention(**_valid(), backend=backend)
    message = str(info.value)
    assert "backend" in message and "'torch'" in message and backend in message
    with pytest.raises(ValueError, match="backend"):
        varlen_attention(**_valid(), backend="fast")


def test_torch_varlen_is_found_from_torch_2_11_on():
    from torch.torch_version import TorchVersion

    # torch 2.10 introduced varlen_attn without scale/window_size; 2.11 has both
    expected = TorchVersion(torch.__version__) >= "2.11"
    assert A.torch_varlen_available() == expected


def _fake_varlen_attn(with_gqa: bool):
    """A stand-in for ``torch.nn.attention.varlen.varlen_attn`` with the signature of torch 2.11
    (``with_gqa=False``) or 2.12+, computing what torch documents with the exact path."""
    calls = []

    def attend(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale, window_size, enable_gqa):
        calls.append(dict(scale=scale, window_size=window_size, heads_k=key.shape[1], enable_gqa=enable_gqa))
        if not enable_gqa and key.shape[1] != query.shape[1]:
            raise ValueError("Expect query and key/value to have the same number of heads")
        causal = {(-1, -1): False, (-1, 0): True}[tuple(window_size)]
        return varlen_attention_torch(
            query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, causal=causal, softmax_scale=scale
        )

    def varlen_attn_2_11(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None,
                         scale=None, window_size=(-1, -1)):  # fmt: skip
        return attend(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale, window_size, False)

    def varlen_attn_2_12(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None,
                         scale=None, window_size=(-1, -1), enable_gqa=False, seqused_k=None):  # fmt: skip
        return attend(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale, window_size, enable_gqa)

    return (varlen_attn_2_12 if with_gqa else varlen_attn_2_11), calls


@pytest.mark.parametrize("with_gqa", [False, True], ids=["torch-2.11", "torch-2.12+"])
@pytest.mark.parametrize("causal", [False, True])
def test_torch_varlen_adapter_passes_scale_causality_and_groups(with_gqa, causal):
    lens_q, lens_k = [3, 0, 6], [5, 2, 6]
    q, k, v = make(lens_q, lens_k, heads=6, heads_k=2, dim=8, dtype=torch.float32, seed=5)
    fake, calls = _fake_varlen_attn(with_gqa)
    out = A._attention_torch_varlen(fake, q, k, v, cu(lens_q), cu(lens_k), 6, 6, causal, 0.2)
    torch.testing.assert_close(out.double(), naive(q, k, v, lens_q, lens_k, causal, scale=0.2), **TOLERANCES[torch.float32])
    (call,) = calls
    assert call["scale"] == 0.2 and call["window_size"] == ((-1, 0) if causal else (-1, -1))
    # torch 2.12+ reads the grouped heads itself; 2.11 gets them repeated
    assert call["heads_k"] == (2 if with_gqa else 6) and call["enable_gqa"] == with_gqa


def test_flash_attn_adapter_keeps_flash_attns_contract():
    lens = [4, 1]
    q, k, v = make(lens, lens, heads=2, heads_k=1, dim=8, dtype=torch.float32, seed=6)
    seen = {}

    def flash(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, softmax_scale, causal):
        seen.update(dropout_p=dropout_p, softmax_scale=softmax_scale, causal=causal, heads_k=k.shape[1])
        return varlen_attention_torch(q, k, v, cu_q, cu_k, max_q, max_k, causal=causal, softmax_scale=softmax_scale)

    out = A._attention_flash_attn(flash, q, k, v, cu(lens), cu(lens), 4, 4, True, 0.5)
    torch.testing.assert_close(out.double(), naive(q, k, v, lens, lens, True, scale=0.5), **TOLERANCES[torch.float32])
    assert seen == dict(dropout_p=0.0, softmax_scale=0.5, causal=True, heads_k=1)


# ----------------------------------------------------------------------------------------------
# The transformers attention ("ogkernels_varlen")
# ----------------------------------------------------------------------------------------------


class _Layer(torch.nn.Module):
    is_causal = True


def test_hf_attention_finds_the_same_sequences_three_ways():
    from ogkernels.integrations.hf_attention import varlen_attention_forward

    lens = [3, 5, 1]
    total = sum(lens)
    q, k, v = make(lens, lens, heads=4, heads_k=2, dim=8, dtype=torch.float32, seed=7)
    query, key, value = (t.transpose(0, 1)[None] for t in (q, k, v))  # (1, H, S, D)
    expected = naive(q, k, v, lens, lens, causal=True)
    positions = torch.cat([torch.arange(n) for n in lens])[None]
    by_cu, _ = varlen_attention_forward(
        _Layer(), query, key, value, None, cu_seq_lens_q=cu(lens), cu_seq_lens_k=cu(lens),
        max_length_q=5, max_length_k=5,
    )  # fmt: skip
    by_positions, _ = varlen_attention_forward(_Layer(), query, key, value, None, position_ids=positions)
    for out in (by_cu, by_positions):
        assert out.shape == (1, total, 4, 8)
        torch.testing.assert_close(out[0].double(), expected, **TOLERANCES[torch.float32])
    # the same sequences as padded rows of a (3, 5) batch, left padding
    rows = torch.zeros(3, 5, dtype=torch.bool)
    for b, n in enumerate(lens):
        rows[b, 5 - n :] = True
    padded = [torch.zeros(3, 5, t.shape[1], 8) for t in (q, k, v)]
    for t, dense in zip((q, k, v), padded):
        dense[rows] = t
    by_mask, _ = varlen_attention_forward(
        _Layer(), *(d.transpose(1, 2) for d in padded), rows.long()
    )
    torch.testing.assert_close(by_mask[rows].double(), expected, **TOLERANCES[torch.float32])
    assert torch.count_nonzero(by_mask[~rows]) == 0


# ----------------------------------------------------------------------------------------------
# CUDA: every backend that can run against the exact path (the GPU check runs these)
# ----------------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# Relative error ||fast - exact|| / ||exact||: both accumulate in fp32 and round once to the
# dtype (forward); gradients go through one more rounded product each.
RELATIVE = {torch.bfloat16: 1e-2, torch.float16: 2e-3}


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@cuda
@pytest.mark.parametrize("backend", ["flash_attn", "torch_varlen"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_backend_matches_fallback_forward_and_backward(backend, dtype, causal):
    lens_q, lens_k = [5, 33, 0, 1, 64, 7], [9, 33, 3, 4, 70, 2]  # empty, q > k (blind rows), GQA
    q, k, v = (t.cuda().requires_grad_(True) for t in make(lens_q, lens_k, heads=8, heads_k=2, dim=64, dtype=dtype))
    if backend not in usable_backends(q):
        pytest.skip(f"{backend} cannot run here (usable: {usable_backends(q)})")
    args = (cu(lens_q).cuda(), cu(lens_k).cuda(), 64, 70)
    fast = varlen_attention(q, k, v, *args, causal=causal, backend=backend)
    slow = varlen_attention_torch(q, k, v, *args, causal=causal)
    assert fast.dtype == dtype and fast.shape == q.shape
    assert _relative_error(fast, slow) < RELATIVE[dtype]
    # rows that see no key are zero on every backend
    blind = torch.cat([torch.arange(s, s + max(lq - lk, 0) if causal else s) for s, lq, lk in
                       zip(cu(lens_q)[:-1].tolist(), lens_q, lens_k)])  # fmt: skip
    assert torch.count_nonzero(fast[blind.cuda()]) == 0
    grad = torch.randn_like(slow)
    got = torch.autograd.grad(fast, (q, k, v), grad)
    want = torch.autograd.grad(slow, (q, k, v), grad)
    for g, w in zip(got, want):
        assert _relative_error(g, w) < 2 * RELATIVE[dtype]


@cuda
def test_cuda_auto_backend_is_a_flash_backend_where_one_runs():
    q = torch.zeros(4, 8, 64, dtype=torch.bfloat16, device="cuda")
    capability = torch.cuda.get_device_capability()
    if A.flash_attn_available():
        assert attention_backend(q) == "flash_attn"
    elif A.torch_varlen_available() and capability >= (8, 0):
        assert attention_backend(q) == "torch_varlen"
    assert attention_backend(q.float()) == "torch"  # fp32: exact path
    assert attention_backend(torch.zeros(4, 8, 12, dtype=torch.bfloat16, device="cuda")) in ("flash_attn", "torch")


@cuda
def test_cuda_hf_attention_takes_the_auto_backend():
    from ogkernels.integrations.hf_attention import varlen_attention_forward

    lens = [17, 40, 3]
    q, k, v = (t.cuda() for t in make(lens, lens, heads=8, heads_k=4, dim=64, dtype=torch.bfloat16, seed=8))
    query, key, value = (t.transpose(0, 1)[None] for t in (q, k, v))
    positions = torch.cat([torch.arange(n) for n in lens])[None].cuda()
    out, _ = varlen_attention_forward(_Layer(), query, key, value, None, position_ids=positions)
    exact = varlen_attention_torch(q, k, v, cu(lens).cuda(), cu(lens).cuda(), 40, 40, causal=True)
    assert _relative_error(out[0], exact) < RELATIVE[torch.bfloat16]

"""``varlen_attention``: attention over packed variable-length sequences (flash-attn's contract).

Sequences are packed back to back without padding; ``cu_seqlens`` marks where each starts.
On CUDA fp16/bf16 tensors it calls ``flash_attn.flash_attn_varlen_func`` when flash-attn is
installed (imported lazily: ``import ogkernels`` never needs flash-attn or a GPU). Everywhere
else it runs an exact PyTorch path: one ``scaled_dot_product_attention`` call per sequence in
float32, the result cast back to the input dtype.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ._validation import check_tensor, fail

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
FLASH_DTYPES = (torch.float16, torch.bfloat16)


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    causal: bool = False,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention of ``B`` packed sequences, each attending only to itself.

    Args:
        q: ``(total_q, nheads, headdim)``; sequence ``b`` is ``q[cu_seqlens_q[b]:cu_seqlens_q[b+1]]``.
        k: ``(total_k, nheads_k, headdim)`` with ``nheads % nheads_k == 0`` (grouped-query
            attention: query head ``h`` reads key/value head ``h // (nheads // nheads_k)``).
        v: ``(total_k, nheads_k, headdim)``, same shape as ``k``.
        cu_seqlens_q: ``(B + 1,)`` int32 cumulative query lengths, ``[0, …, total_q]``.
        cu_seqlens_k: ``(B + 1,)`` int32 cumulative key lengths, ``[0, …, total_k]``.
        max_seqlen_q: Python int >= the longest query sequence.
        max_seqlen_k: Python int >= the longest key sequence.
        causal: causal mask aligned to the bottom-right corner of each sequence's
            ``(L_q, L_k)`` score matrix: query ``i`` sees keys ``j <= i + L_k - L_q``. Query rows
            that see no key (``L_q > L_k``, or ``L_k == 0``) output zeros, as flash-attn does.
        softmax_scale: score scale, default ``1 / sqrt(headdim)``.

    q, k, v share one floating dtype and device; ``cu_seqlens_*`` live on that device.

    Returns:
        ``(total_q, nheads, headdim)`` in ``q``'s dtype. flash-attn on CUDA fp16/bf16 when
        importable; otherwise the exact fallback :func:`varlen_attention_torch` (differentiable,
        float32 accumulation). On the flash-attn path ``cu_seqlens`` values are not read on the
        host (that would cost a device sync per layer); only their dtype, shape and device are
        checked there.

    Raises:
        TypeError: a non-tensor, a non-floating q/k/v, mixed dtypes, non-int32 ``cu_seqlens``,
            a non-int ``max_seqlen``.
        ValueError: wrong ranks or shapes, ``nheads % nheads_k != 0``, mixed devices,
            ``cu_seqlens`` not starting at 0, decreasing, not ending at the total, or a sequence
            longer than ``max_seqlen``.
    """
    scale = _check_arguments(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale)
    flash = _flash_varlen_func() if (q.is_cuda and q.dtype in FLASH_DTYPES) else None
    if flash is not None:
        return flash(
            q,
            k,
            v,
            cu_seqlens_q.contiguous(),
            cu_seqlens_k.contiguous(),
            max_seqlen_q,
            max_seqlen_k,
            dropout_p=0.0,
            softmax_scale=scale,
            causal=bool(causal),
        )
    return _attention_torch(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale)


def varlen_attention_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    causal: bool = False,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """The exact PyTorch path of :func:`varlen_attention` on any device (same arguments).

    Per sequence: q, k, v upcast to float32 (float64 stays float64), one
    ``scaled_dot_product_attention`` call, the output cast back to ``q.dtype``. One host read of
    ``cu_seqlens`` per call. Supports autograd.
    """
    scale = _check_arguments(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale)
    return _attention_torch(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale)


@functools.lru_cache(maxsize=1)
def _flash_varlen_func() -> Callable[..., torch.Tensor] | None:
    """``flash_attn.flash_attn_varlen_func``, or None when flash-attn does not import."""
    try:
        from flash_attn import flash_attn_varlen_func
    except Exception:  # ImportError, or a broken build missing flash_attn_2_cuda
        return None
    return flash_attn_varlen_func


def flash_attn_available() -> bool:
    """True when flash-attn imports (it is then used for CUDA fp16/bf16 inputs)."""
    return _flash_varlen_func() is not None


def _check_arguments(
    q: Any,
    k: Any,
    v: Any,
    cu_seqlens_q: Any,
    cu_seqlens_k: Any,
    max_seqlen_q: Any,
    max_seqlen_k: Any,
    softmax_scale: Any,
) -> float:
    """Validate the flash-attn contract; return the softmax scale to use."""
    for name, value in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, value)
        if value.dim() != 3:
            fail(name, "a 3-D (tokens, heads, headdim) tensor", value)
        if value.dtype not in FLOAT_DTYPES:
            fail(name, "a float16, bfloat16, float32 or float64 tensor", value, error=TypeError)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        bad, other = ("k", k) if k.dtype != q.dtype else ("v", v)
        fail(bad, f"dtype {q.dtype} (the dtype of q)", other, error=TypeError)
    for name, value in (("k", k), ("v", v)):
        if value.device != q.device:
            fail(name, f"a tensor on {q.device} (the device of q)", value)
    if v.shape != k.shape:
        fail("v", f"shape {tuple(k.shape)} (the shape of k)", v)
    if k.shape[2] != q.shape[2]:
        fail("k", f"headdim {q.shape[2]} (the headdim of q)", k)
    nheads, nheads_k = q.shape[1], k.shape[1]
    if nheads_k < 1 or nheads % nheads_k != 0:
        fail("k", f"a number of heads dividing nheads={nheads} (grouped-query attention)", k)
    for name, value in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        check_tensor(name, value)
        if value.dtype != torch.int32:
            fail(name, "an int32 tensor", value, error=TypeError)
        if value.dim() != 1 or value.numel() < 1:
            fail(name, "a 1-D (batch + 1,) tensor", value)
        if value.device != q.device:
            fail(name, f"a tensor on {q.device} (the device of q)", value)
    if cu_seqlens_k.numel() != cu_seqlens_q.numel():
        fail("cu_seqlens_k", f"{cu_seqlens_q.numel()} entries (as many as cu_seqlens_q)", cu_seqlens_k)
    for name, value in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if isinstance(value, bool) or not isinstance(value, int):
            fail(name, "a Python int", value, error=TypeError)
        if value < 0:
            fail(name, "an int >= 0", value)
    if softmax_scale is None:
        return 1.0 / math.sqrt(q.shape[2]) if q.shape[2] else 1.0
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)):
        fail("softmax_scale", "None or a real number", softmax_scale, error=TypeError)
    if not math.isfinite(softmax_scale):
        fail("softmax_scale", "a finite number", softmax_scale)
    return float(softmax_scale)


def _check_offsets(name: str, offsets: list[int], total: int, max_seqlen: int, max_name: str) -> None:
    """Host-side checks of one ``cu_seqlens`` list."""
    if offsets[0] != 0:
        fail(name, "a first entry of 0", f"{offsets[0]} in {_short(offsets)}")
    if offsets[-1] != total:
        fail(name, f"a last entry equal to the number of rows ({total})", f"{offsets[-1]} in {_short(offsets)}")
    lengths = [b - a for a, b in zip(offsets[:-1], offsets[1:])]
    if lengths and min(lengths) < 0:
        fail(name, "non-decreasing entries", _short(offsets))
    if lengths and max(lengths) > max_seqlen:
        fail(max_name, f"an int >= the longest sequence ({max(lengths)})", max_seqlen)


def _short(values: list[int], limit: int = 12) -> str:
    text = ", ".join(str(x) for x in values[:limit])
    return f"[{text}{', …' if len(values) > limit else ''}]"


def _attention_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    causal: bool,
    scale: float,
) -> torch.Tensor:
    """Sequences with the same ``(L_q, L_k)`` attend in one batched SDPA call (a uniform batch
    is a single call); the results are concatenated back in order."""
    offsets_q = cu_seqlens_q.tolist()
    offsets_k = cu_seqlens_k.tolist()
    _check_offsets("cu_seqlens_q", offsets_q, q.shape[0], max_seqlen_q, "max_seqlen_q")
    _check_offsets("cu_seqlens_k", offsets_k, k.shape[0], max_seqlen_k, "max_seqlen_k")
    batch = len(offsets_q) - 1
    if batch == 0:
        return q.new_zeros(q.shape)
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    groups = q.shape[1] // k.shape[1]
    by_shape: dict[tuple[int, int], list[int]] = {}
    for b in range(batch):
        shape = (offsets_q[b + 1] - offsets_q[b], offsets_k[b + 1] - offsets_k[b])
        by_shape.setdefault(shape, []).append(b)
    pieces: list[torch.Tensor | None] = [None] * batch
    for members in by_shape.values():
        q_g = torch.stack([q[offsets_q[b] : offsets_q[b + 1]] for b in members]).to(compute)
        k_g = torch.stack([k[offsets_k[b] : offsets_k[b + 1]] for b in members]).to(compute)
        v_g = torch.stack([v[offsets_k[b] : offsets_k[b + 1]] for b in members]).to(compute)
        out = _attend(q_g, k_g, v_g, groups, causal, scale)
        for j, b in enumerate(members):
            pieces[b] = out[j]
    return torch.cat(pieces, dim=0).to(q.dtype)


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: int, causal: bool, scale: float
) -> torch.Tensor:
    """``N`` sequences of one shape: ``q (N, L_q, H, D)``, ``k/v (N, L_k, H_k, D)`` →
    ``(N, L_q, H, D)``."""
    len_q, len_k = q.shape[1], k.shape[1]
    # Bottom-right causal alignment: query i sees keys j <= i + len_k - len_q. The first
    # len_q - len_k queries see no key at all: their output is zero (flash-attn's convention).
    if len_k == 0:
        blind = len_q
    else:
        blind = max(len_q - len_k, 0) if causal else 0
    out = q.new_zeros(q.shape[0], blind, q.shape[2], v.shape[3])
    seeing = q[:, blind:]
    if seeing.shape[1] == 0:
        return out
    if groups > 1:
        k = k.repeat_interleave(groups, dim=2)
        v = v.repeat_interleave(groups, dim=2)
    query, key, value = seeing.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    mask, square = None, seeing.shape[1] == len_k
    if causal and not square:
        rows = torch.arange(seeing.shape[1], device=q.device)[:, None] + (blind + len_k - len_q)
        mask = torch.arange(len_k, device=q.device)[None, :] <= rows
    attended = F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, is_causal=causal and square, scale=scale
    )
    return torch.cat([out, attended.transpose(1, 2)], dim=1)

"""``varlen_attention``: attention over packed variable-length sequences (flash-attn's contract).

Sequences are packed back to back without padding; ``cu_seqlens`` marks where each starts.
Three backends compute the same function (:func:`attention_backend` says which one a call
takes; ``backend=`` picks one):

* ``"flash_attn"``: ``flash_attn.flash_attn_varlen_func``, for CUDA fp16/bf16 inputs when
  flash-attn is installed;
* ``"torch_varlen"``: torch's own flash attention, ``torch.nn.attention.varlen.varlen_attn``
  (torch >= 2.11: nothing to install), for CUDA fp16/bf16 inputs on sm_80+ with
  ``headdim % 8 == 0`` and ``headdim <= 256``, when flash-attn is not installed;
* ``"torch"``: the exact PyTorch path everywhere else — per group of equally long sequences
  one ``scaled_dot_product_attention`` call in float32 (grouped-query heads without copies), the result cast back.

Everything is imported lazily: ``import ogkernels`` needs neither flash-attn nor a GPU.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ._validation import check_bool, check_choice, check_tensor, fail

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
FLASH_DTYPES = (torch.float16, torch.bfloat16)
BACKENDS = ("flash_attn", "torch_varlen", "torch")
# torch's varlen flash kernels: head dims that are multiples of 8 up to 256, sm_80 and newer
TORCH_VARLEN_MAX_HEADDIM = 256
TORCH_VARLEN_MIN_CAPABILITY = (8, 0)


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
    backend: str = "auto",
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
        backend: ``"auto"`` (:func:`attention_backend`), or one of :data:`BACKENDS` that can
            run these inputs (``ValueError`` otherwise).

    q, k, v share one floating dtype and device; ``cu_seqlens_*`` live on that device.

    Returns:
        ``(total_q, nheads, headdim)`` in ``q``'s dtype, differentiable on every backend. On
        the two flash backends ``cu_seqlens`` values are not read on the host (that would cost
        a device sync per layer); only their dtype, shape and device are checked there.

    Raises:
        TypeError: a non-tensor, a non-floating q/k/v, mixed dtypes, non-int32 ``cu_seqlens``,
            a non-int ``max_seqlen``, a non-bool ``causal``.
        ValueError: wrong ranks or shapes, ``nheads % nheads_k != 0``, mixed devices, meta tensors,
            ``cu_seqlens`` not starting at 0, decreasing, not ending at the total, or a sequence
            longer than ``max_seqlen``; a ``backend`` that cannot run these inputs.
    """
    scale = _check_arguments(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale)
    check_bool("causal", causal)
    chosen = attention_backend(q, backend=backend)
    args = (q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale)
    if chosen == "torch":
        return _attention_torch(*args)
    if q.shape[0] == 0:
        return q.new_zeros(q.shape)
    if chosen == "flash_attn":
        return _attention_flash_attn(_flash_varlen_func(), *args)
    return _attention_torch_varlen(_torch_varlen_func(), *args)


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
    """The exact PyTorch path of :func:`varlen_attention` on any device (same arguments;
    ``backend="torch"``).

    Per sequence: q, k, v upcast to float32 (float64 stays float64), one
    ``scaled_dot_product_attention`` call, the output cast back to ``q.dtype``. One host read of
    ``cu_seqlens`` per call. Supports autograd.
    """
    return varlen_attention(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
        causal=causal, softmax_scale=softmax_scale, backend="torch",
    )  # fmt: skip


def attention_backend(q: torch.Tensor, *, backend: str = "auto") -> str:
    """The backend :func:`varlen_attention` takes for queries like ``q`` (any layout with the
    head dimension last): ``"flash_attn"``, ``"torch_varlen"`` or ``"torch"``.

    ``backend="auto"``: flash-attn, else torch's varlen flash attention, else the exact path,
    each where it can run (module docstring). A named backend is returned when it can run
    ``q``; otherwise ``ValueError`` names the backends that can.
    """
    check_tensor("q", q)
    check_choice("backend", backend, ("auto",) + BACKENDS)
    usable = usable_backends(q)
    if backend == "auto":
        return usable[0]
    if backend not in usable:
        fail(
            "backend",
            f"one of {', '.join(repr(b) for b in ('auto',) + usable)} for {q.dtype} queries on "
            f"{q.device} with headdim {q.shape[-1]} (see ogkernels.attention)",
            backend,
        )
    return backend


def usable_backends(q: torch.Tensor) -> tuple[str, ...]:
    """The backends that can run queries like ``q``, in the order ``"auto"`` prefers them
    (``"torch"`` always last)."""
    usable = []
    if q.is_cuda and q.dtype in FLASH_DTYPES:
        if _flash_varlen_func() is not None:
            usable.append("flash_attn")
        if _torch_varlen_func() is not None and _torch_varlen_fits(q):
            usable.append("torch_varlen")
    return tuple(usable) + ("torch",)


def _torch_varlen_fits(q: torch.Tensor) -> bool:
    headdim = q.shape[-1]
    capability = torch.cuda.get_device_capability(q.device)
    return (
        headdim % 8 == 0
        and 0 < headdim <= TORCH_VARLEN_MAX_HEADDIM
        and tuple(capability) >= TORCH_VARLEN_MIN_CAPABILITY
    )


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


@functools.lru_cache(maxsize=1)
def _torch_varlen_func() -> Callable[..., torch.Tensor] | None:
    """``torch.nn.attention.varlen.varlen_attn`` when this torch has the keyword-only ``scale``
    and ``window_size`` arguments (torch >= 2.11; torch 2.10 introduced the function without
    them), else None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except Exception:
        return None
    if not (_accepts(varlen_attn, "scale") and _accepts(varlen_attn, "window_size")):
        return None
    return varlen_attn


@functools.lru_cache(maxsize=16)
def _accepts(fn: Callable[..., Any], argument: str) -> bool:
    return argument in inspect.signature(fn).parameters


def torch_varlen_available() -> bool:
    """True when this torch ships a usable ``varlen_attn`` (torch >= 2.11)."""
    return _torch_varlen_func() is not None


def _attention_flash_attn(flash, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale):
    return flash(
        q, k, v, cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous(), max_seqlen_q, max_seqlen_k,
        dropout_p=0.0, softmax_scale=scale, causal=causal,
    )  # fmt: skip


def _attention_torch_varlen(varlen_attn, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale):
    """``varlen_attn`` with flash-attn's conventions. Causal is ``window_size=(-1, 0)``
    (bottom-right aligned); grouped-query attention passes ``enable_gqa=True`` where torch
    has it (2.12+) and repeats the key/value heads where it does not (2.11)."""
    options: dict[str, Any] = {"scale": scale, "window_size": (-1, 0) if causal else (-1, -1)}
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        if _accepts(varlen_attn, "enable_gqa"):
            options["enable_gqa"] = True
        else:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
    return varlen_attn(
        q.contiguous(), k.contiguous(), v.contiguous(), cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous(),
        max_seqlen_q, max_seqlen_k, **options,
    )  # fmt: skip


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
    if q.device.type == "meta":
        fail("q", "a tensor with data (not on the meta device)", q)
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
    # one split per tensor (its backward is one concatenation, not a zero-filled full-size
    # gradient per sequence slice)
    q_parts = torch.split(q, [offsets_q[b + 1] - offsets_q[b] for b in range(batch)])
    k_parts = torch.split(k, [offsets_k[b + 1] - offsets_k[b] for b in range(batch)])
    v_parts = torch.split(v, [offsets_k[b + 1] - offsets_k[b] for b in range(batch)])
    pieces: list[torch.Tensor | None] = [None] * batch
    for members in by_shape.values():
        q_g = torch.stack([q_parts[b] for b in members]).to(compute)
        k_g = torch.stack([k_parts[b] for b in members]).to(compute)
        v_g = torch.stack([v_parts[b] for b in members]).to(compute)
        for b, out in zip(members, _attend(q_g, k_g, v_g, groups, causal, scale).unbind(0)):
            pieces[b] = out
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
    query, key, value = seeing.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    mask, square = None, seeing.shape[1] == len_k
    if causal and not square:
        rows = torch.arange(seeing.shape[1], device=q.device)[:, None] + (blind + len_k - len_q)
        mask = torch.arange(len_k, device=q.device)[None, :] <= rows
    attended = F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, is_causal=causal and square, scale=scale, enable_gqa=groups > 1
    )
    return torch.cat([out, attended.transpose(1, 2)], dim=1)

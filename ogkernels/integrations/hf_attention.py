"""``varlen_attention`` as a transformers attention implementation (``"ogkernels_varlen"``).

After :func:`register_varlen_attention`, a model built or switched with
``attn_implementation="ogkernels_varlen"`` attends packed sequences through
:func:`ogkernels.varlen_attention` and its backend choice (``ogkernels.attention``): on CUDA
fp16/bf16 flash-attn when installed, else torch's own varlen flash attention (torch >= 2.11),
the exact PyTorch fallback elsewhere; no ``(S, S)`` mask is ever built.
``ogkernels.attention.attention_backend(query)`` says which one a layer takes. Masks are
prepared as for flash-attn: sequence boundaries come from the ``FlashAttentionKwargs``
(``cu_seq_lens_q/k``, ``max_length_q/k``), a 2-D padding mask, or packed ``position_ids``.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from .._validation import fail, numpy_hint
from ..attention import varlen_attention
from ..ops.index import cu_seqlens_from_lengths, cu_seqlens_from_position_ids, max_length

ATTENTION_NAME = "ogkernels_varlen"


def register_varlen_attention(name: str = ATTENTION_NAME) -> str:
    """Register :func:`varlen_attention_forward` in transformers' ``AttentionInterface``
    under ``name``, with flash-attn's mask preparation (a 2-D padding mask, or None when
    there is no padding) in ``AttentionMaskInterface``. Idempotent; returns ``name``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(name, varlen_attention_forward)
    AttentionMaskInterface.register(name, flash_attention_mask)
    return name


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: ``query (B, H, S, D)``, ``key/value (B, H_k, S_k, D)``
    → ``((B, S, H, D), None)``.

    Sequences, in this order of precedence:
    - ``cu_seq_lens_q/k`` in ``kwargs``: one packed row (``B == 1``); packed
      ``position_ids`` given too must restart exactly where these sequences start
      (``ValueError`` naming both; asserted on the device on a GPU, no sync);
    - a 2-D padding ``attention_mask (B, S_k)``: each row's unmasked tokens (padded query rows
      output zeros);
    - packed ``position_ids`` (``B == 1``, no cache): a new sequence wherever positions restart;
    - otherwise each batch row is one sequence.
    Causal attention is bottom-right aligned, so decoding with a cache works. Attention
    dropout is not supported (``ValueError``).
    """
    if dropout:
        fail("dropout", f"0.0 with attn_implementation={ATTENTION_NAME!r}", dropout)
    batch, heads, length, dim = query.shape
    length_k = key.shape[2]
    causal = bool(getattr(module, "is_causal", True))
    q = query.transpose(1, 2)
    k = key.transpose(1, 2)
    v = value.transpose(1, 2)
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    position_ids = kwargs.get("position_ids")
    if cu_q is not None:
        if batch != 1:
            fail("query", "one packed row (batch 1) with cu_seq_lens_q", query)
        if attention_mask is not None:
            fail("attention_mask", "None with cu_seq_lens_q (a packed batch)", attention_mask)
        cu_q = _check_offsets("cu_seq_lens_q", cu_q)
        cu_k = cu_q if cu_k is None else _check_offsets("cu_seq_lens_k", cu_k)
        max_q = _check_max_length("max_length_q", kwargs.get("max_length_q"))
        max_k = _check_max_length("max_length_k", kwargs.get("max_length_k", max_q))
        if position_ids is not None and not _already_checked(cu_q, cu_k, position_ids):
            positions = _check_position_ids(position_ids, length)
            _check_against_positions("cu_seq_lens_q", cu_q, positions)
            if length == length_k and cu_k is not cu_q:
                _check_against_positions("cu_seq_lens_k", cu_k, positions)
            _remember_checked(cu_q, cu_k, position_ids)
        out = _attend(q[0], k[0], v[0], cu_q, cu_k, max_q, max_k, causal, scaling, _PACKED_NAMES)
        return out.reshape(1, length, heads, -1), None
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2 or attention_mask.shape != (batch, length_k):
            fail("attention_mask", f"a 2-D padding mask ({batch}, {length_k})", attention_mask)
        keys = attention_mask.bool()
        queries = keys[:, -length:]
        cu_q = cu_seqlens_from_lengths(queries.sum(1))
        cu_k = cu_seqlens_from_lengths(keys.sum(1))
        max_q, max_k = max_length(cu_q), max_length(cu_k)
        rows = _attend(q[queries], k[keys], v[keys], cu_q, cu_k, max_q, max_k, causal, scaling)
        out = rows.new_zeros(batch, length, heads, rows.shape[-1])
        out[queries] = rows
        return out, None
    if position_ids is not None and batch == 1 and length == length_k and length > 1:
        cu_q = cu_seqlens_from_position_ids(_check_position_ids(position_ids, length))
        max_q = max_length(cu_q)
        out = _attend(q[0], k[0], v[0], cu_q, cu_q, max_q, max_q, causal, scaling)
        return out.reshape(1, length, heads, -1), None
    # every row is one sequence: the lengths are known on the host (no sync)
    cu_q = cu_seqlens_from_lengths(torch.full((batch,), length, device=query.device))
    cu_k = cu_seqlens_from_lengths(torch.full((batch,), length_k, device=query.device))
    max_q, max_k = length, length_k
    flat_q = q.reshape(batch * length, heads, dim)
    flat_k = k.reshape(batch * length_k, k.shape[2], dim)
    flat_v = v.reshape(batch * length_k, v.shape[2], v.shape[3])
    out = _attend(flat_q, flat_k, flat_v, cu_q, cu_k, max_q, max_k, causal, scaling)
    return out.reshape(batch, length, heads, -1), None


# varlen_attention's argument names → the FlashAttentionKwargs the caller passed
_PACKED_NAMES = {"cu_seqlens_q": "cu_seq_lens_q", "cu_seqlens_k": "cu_seq_lens_k",
                 "max_seqlen_q": "max_length_q", "max_seqlen_k": "max_length_k"}  # fmt: skip


def _attend(q, k, v, cu_q, cu_k, max_q, max_k, causal, scale, names: dict[str, str] | None = None) -> torch.Tensor:
    """:func:`varlen_attention`; an error about ``cu_seqlens_*``/``max_seqlen_*`` is re-raised
    under the caller's names (``names``) so the message names what the user passed."""
    try:
        return varlen_attention(
            q.contiguous(),
            k.contiguous(),
            v.contiguous(),
            cu_q.to(device=q.device, dtype=torch.int32),
            cu_k.to(device=q.device, dtype=torch.int32),
            int(max_q),
            int(max_k),
            causal=causal,
            softmax_scale=scale,
        )
    except (TypeError, ValueError) as error:
        argument, sep, rest = str(error).partition(": ")
        if not names or not sep or argument not in names:
            raise
        raise type(error)(f"{names[argument]}: {rest}") from error


def _check_offsets(argument: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        fail(argument, "a 1-D integer tensor of sequence offsets", value, error=TypeError)
    if value.dtype not in (torch.int32, torch.int64) or value.dim() != 1 or value.numel() < 1:
        fail(argument, "a 1-D int32 (or int64) tensor of sequence offsets", value, error=TypeError if value.dim() == 1 else ValueError)
    return value


def _check_max_length(argument: str, value: Any) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_floating_point:
        value = int(value)  # transformers' collators may hand a 0-d tensor
    if isinstance(value, bool) or not isinstance(value, int):
        fail(argument, "an int (the longest sequence) with cu_seq_lens_q", value, error=TypeError if value is not None else ValueError)
    return value


def _check_position_ids(value: Any, length: int) -> torch.Tensor:
    """Packed ``position_ids``: an integer ``(1, S)`` or ``(S,)`` tensor, ``S`` the query rows."""
    if not isinstance(value, torch.Tensor):
        fail("position_ids", "an integer tensor (1, S)" + numpy_hint(value), value, error=TypeError)
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        fail("position_ids", "an integer tensor (1, S)", value, error=TypeError)
    if value.numel() != length or value.dim() not in (1, 2):
        fail("position_ids", f"shape (1, {length}) (one position per query row)", value)
    return value.reshape(-1)


# the last (cu_seq_lens_q, cu_seq_lens_k, position_ids) checked: every layer of a forward gets
# the same tensors, so the cross-check runs once per forward, not once per layer
_CHECKED: list[tuple[Any, ...]] = []


def _identity(tensors: tuple[torch.Tensor, ...]) -> tuple[Any, ...]:
    return tuple((weakref.ref(t), t._version) for t in tensors)


def _already_checked(*tensors: torch.Tensor) -> bool:
    if torch.compiler.is_compiling() or not _CHECKED:
        return False
    return all(ref() is t and version == t._version for (ref, version), t in zip(_CHECKED[0], tensors))


def _remember_checked(*tensors: torch.Tensor) -> None:
    if not torch.compiler.is_compiling():
        _CHECKED[:] = [_identity(tensors)]


def _check_against_positions(argument: str, cu: torch.Tensor, positions: torch.Tensor) -> None:
    """The sequences of ``cu`` start exactly where ``positions`` restart (transformers' rule:
    a position that does not follow the previous one starts a sequence). No host read on a
    GPU: the comparison is asserted on the device."""
    total = positions.numel()
    if total < 2:
        return
    inner = cu[1:-1].to(device=positions.device, dtype=torch.int64).clamp(0, total)
    from_cu = torch.zeros(total + 1, dtype=torch.bool, device=positions.device).index_fill_(0, inner, True)[1:total]
    from_positions = positions[1:] != positions[:-1] + 1
    if positions.device.type == "cpu" and not torch.compiler.is_compiling():
        if not torch.equal(from_cu, from_positions):
            starts = [0] + (torch.nonzero(from_positions).flatten() + 1).tolist()
            fail(argument, f"sequences starting where position_ids restart (at rows {starts})", f"{argument} = {cu.tolist()}")
    else:
        torch._assert_async((from_cu == from_positions).all(), f"{argument}: expected sequences starting where position_ids restart")

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

from typing import Any

import torch

from .._validation import fail
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
    - ``cu_seq_lens_q/k`` in ``kwargs``: one packed row (``B == 1``);
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
    if cu_q is not None:
        if batch != 1:
            fail("query", "one packed row (batch 1) with cu_seq_lens_q", query)
        if attention_mask is not None:
            fail("attention_mask", "None with cu_seq_lens_q (a packed batch)", attention_mask)
        max_q = kwargs.get("max_length_q")
        cu_k = cu_q if cu_k is None else cu_k
        max_k = kwargs.get("max_length_k", max_q)
        out = _attend(q[0], k[0], v[0], cu_q, cu_k, max_q, max_k, causal, scaling)
        return out.reshape(1, length, heads, -1), None
    if attention_mask is not None:
        if attention_mask.dim() != 2 or attention_mask.shape != (batch, length_k):
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
    position_ids = kwargs.get("position_ids")
    if position_ids is not None and batch == 1 and length == length_k and length > 1:
        cu_q = cu_seqlens_from_position_ids(position_ids)
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


def _attend(q, k, v, cu_q, cu_k, max_q, max_k, causal, scale) -> torch.Tensor:
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

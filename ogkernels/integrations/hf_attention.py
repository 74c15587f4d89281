"""``varlen_attention`` as a transformers attention implementation (``"ogkernels_varlen"``).

After :func:`register_varlen_attention`, a model built or switched with
``attn_implementation="ogkernels_varlen"`` attends packed sequences through
:func:`ogkernels.varlen_attention`: flash-attn on CUDA fp16/bf16 when installed, the exact
PyTorch fallback elsewhere (no ``(S, S)`` mask is ever built). transformers builds no mask for
an implementation it does not know, so sequence boundaries come from the
``FlashAttentionKwargs`` (``cu_seq_lens_q/k``, ``max_length_q/k``) or, failing those, from
``position_ids`` restarting at 0 per sample.
"""

from __future__ import annotations

from typing import Any

import torch

from .._validation import fail
from ..attention import varlen_attention

ATTENTION_NAME = "ogkernels_varlen"


def register_varlen_attention(name: str = ATTENTION_NAME) -> str:
    """Register :func:`varlen_attention_forward` in transformers' ``AttentionInterface``
    under ``name`` (idempotent); returns ``name``."""
    from transformers import AttentionInterface

    AttentionInterface.register(name, varlen_attention_forward)
    return name


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(cu_seqlens int32 (B+1,), max_seqlen)`` of sequences packed in one row, each starting
    where ``position_ids`` drops back to 0. ``position_ids``: ``(1, S)`` or ``(S,)``."""
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).flatten()
    if flat.numel() and (starts.numel() == 0 or int(starts[0]) != 0):
        fail("position_ids", "packed positions starting at 0 for every sequence", position_ids)
    bounds = torch.cat([starts, torch.tensor([flat.numel()], device=flat.device)])
    lengths = bounds[1:] - bounds[:-1]
    return bounds.to(torch.int32), int(lengths.max()) if lengths.numel() else 0


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

    With ``cu_seq_lens_q`` in ``kwargs`` (or packed ``position_ids``) the batch must be one
    packed row (``B == 1``); otherwise each batch row is one sequence. A padding
    ``attention_mask`` cannot be honoured (pack instead), nor attention dropout: both raise
    ``ValueError``.
    """
    if attention_mask is not None:
        fail("attention_mask", f"None with attn_implementation={ATTENTION_NAME!r} (pack sequences instead)", attention_mask)
    if dropout:
        fail("dropout", f"0.0 with attn_implementation={ATTENTION_NAME!r}", dropout)
    batch, heads, length, dim = query.shape
    length_k = key.shape[2]
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    max_q, max_k = kwargs.get("max_length_q"), kwargs.get("max_length_k")
    position_ids = kwargs.get("position_ids")
    if cu_q is None and position_ids is not None and batch == 1 and length == length_k and length > 1:
        cu_q, max_q = cu_seqlens_from_position_ids(position_ids)
        cu_k, max_k = cu_q, max_q
    if cu_q is None:
        cu_q = torch.arange(0, (batch + 1) * length, length, dtype=torch.int32, device=query.device)
        cu_k = torch.arange(0, (batch + 1) * length_k, length_k, dtype=torch.int32, device=query.device)
        max_q, max_k = length, length_k
    elif batch != 1:
        fail("query", "one packed row (batch 1) with cu_seq_lens_q", query)
    cu_k = cu_q if cu_k is None else cu_k
    max_k = max_q if max_k is None else max_k
    q = query.transpose(1, 2).reshape(batch * length, heads, dim)
    k = key.transpose(1, 2).reshape(batch * length_k, key.shape[1], dim)
    v = value.transpose(1, 2).reshape(batch * length_k, value.shape[1], value.shape[3])
    out = varlen_attention(
        q,
        k,
        v,
        cu_q.to(device=q.device, dtype=torch.int32),
        cu_k.to(device=q.device, dtype=torch.int32),
        int(max_q),
        int(max_k),
        causal=bool(getattr(module, "is_causal", True)),
        softmax_scale=scaling,
    )
    return out.reshape(batch, length, heads, -1), None

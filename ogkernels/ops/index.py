"""Varlen index helpers: lengths ⇄ cu_seqlens ⇄ position_ids ⇄ sequence ids.

Every packed layout in ogkernels (OG tokens, multimodal packing, the HF attention) goes
through these, so ``cu_seqlens`` is built one way: int32, contiguous, starting at 0, on the
device of its input. None of them reads a value on the host unless its docstring says so.
"""

from __future__ import annotations

import torch


def cu_seqlens_from_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """``(B,)`` integer lengths → ``(B + 1,)`` int32 offsets ``[0, l0, l0 + l1, …]``.

    The prefix sum runs in int64 and is cast once, so callers can check the int64 total
    against ``2**31 - 1`` before trusting the int32 values (:func:`total_tokens`)."""
    cu = torch.zeros(lengths.numel() + 1, dtype=torch.int64, device=lengths.device)
    torch.cumsum(lengths.reshape(-1).to(torch.int64), 0, out=cu[1:])
    return cu.to(torch.int32)


def exclusive_cumsum(values: torch.Tensor) -> torch.Tensor:
    """1-D ``[0, v0, v0 + v1, …]`` without the total: each entry's offset, same shape and dtype."""
    return torch.cumsum(values, 0) - values


def lengths_from_cu_seqlens(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """``(B + 1,)`` offsets → ``(B,)`` int64 lengths."""
    return (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int64)


def sequence_ids(lengths: torch.Tensor, total: int) -> torch.Tensor:
    """``(total,)`` int64: the sequence each packed row belongs to (``[0]*l0 + [1]*l1 + …``).
    ``total`` must equal ``lengths.sum()`` (it sizes the output: no host read)."""
    ids = torch.arange(lengths.numel(), device=lengths.device)
    return torch.repeat_interleave(ids, lengths.to(torch.int64), output_size=total)


def position_ids_from_cu_seqlens(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """``(total,)`` int64 positions restarting at 0 in each sequence. ``total`` =
    ``cu_seqlens[-1]`` as a Python int (no host read)."""
    lengths = lengths_from_cu_seqlens(cu_seqlens)
    rows = torch.arange(total, device=cu_seqlens.device)
    starts = cu_seqlens[:-1].to(torch.int64)
    return rows - starts.repeat_interleave(lengths, output_size=total)


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """``(1, S)`` or ``(S,)`` packed positions → int32 offsets: a new sequence starts wherever
    the position does not follow the previous one (transformers' rule). One host read (the
    number of sequences sizes the output)."""
    flat = position_ids.reshape(-1)
    if flat.numel() == 0:
        return torch.zeros(1, dtype=torch.int32, device=flat.device)
    starts = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    starts[1:] = flat[1:] != flat[:-1] + 1
    bounds = torch.nonzero(starts).flatten()
    end = torch.full((1,), flat.numel(), dtype=bounds.dtype, device=flat.device)
    return torch.cat([bounds, end]).to(torch.int32)


def max_length(cu_seqlens: torch.Tensor) -> int:
    """The longest sequence, as a Python int (one host read; 0 for an empty batch)."""
    if cu_seqlens.numel() < 2:
        return 0
    return int(lengths_from_cu_seqlens(cu_seqlens).max())
